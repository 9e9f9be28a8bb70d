"""Each TrainConfig field shows on the command line, on the estimators and in the docs as it is declared.

The oracles are the faces themselves, read from outside: the flags of ``build_parser()``, the estimators'
``get_params()``, the text of ``docs/reference/parameters.md``.
"""

import argparse
import dataclasses
import os

import pytest

from wasap import run
from wasap.config import HYPERPARAMETERS, TrainConfig, parameter_table
from wasap.estimator import SparseMLPClassifier, SparseMLPRegressor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = [field.name for field in dataclasses.fields(TrainConfig)]

#: The flags that say what to train on, where to write and how to run, rather than what to train.
NOT_HYPERPARAMETERS = {"help", "version", "dataset", "data_dir", "n_samples", "n_features", "n_classes",
                       "standardize", "recipe", "memory_budget", "out", "overwrite", "resume",
                       "checkpoint_every", "quiet"}
#: The estimators' parameters that are no TrainConfig field.
ESTIMATOR_ONLY = {"warm_start", "verbose"}
#: SparseMLPRegressor's defaults where they differ from TrainConfig's, as its docstring gives them.
REGRESSOR_DIFFERENCES = dict(activation="relu", dropout=0.0, batch_size=32, zero_output=True)


def flags():
    """``--help``'s actions, by destination."""
    return {action.dest: action for action in run.build_parser()._actions}


def test_every_field_is_declared():
    assert list(HYPERPARAMETERS) == FIELDS
    internal = {name for name, spec in HYPERPARAMETERS.items() if spec.internal}
    # The estimator class fixes the output and the loss; the command line trains classifiers.
    assert internal == {"output_activation", "loss"}


@pytest.mark.parametrize("name", FIELDS)
def test_a_field_has_exactly_the_faces_it_declares(name):
    spec = HYPERPARAMETERS[name]
    actions = flags()
    params = SparseMLPClassifier().get_params()
    assert (name in actions) == spec.cli, f"{name}: declared cli={spec.cli}"
    if spec.cli:
        assert actions[name].option_strings == ["--" + name.replace("_", "-")]
    if spec.estimator:
        for estimator in (SparseMLPClassifier(), SparseMLPRegressor()):
            assert spec.estimator_parameter in estimator.get_params(), f"{type(estimator).__name__} lacks {name}"
    else:
        assert name not in params


def test_every_hyperparameter_flag_maps_to_a_field():
    hyperparameter_flags = set(flags()) - NOT_HYPERPARAMETERS
    assert hyperparameter_flags == {name for name, spec in HYPERPARAMETERS.items() if spec.cli}


def test_every_estimator_parameter_maps_to_a_field():
    faces = {spec.estimator_parameter for spec in HYPERPARAMETERS.values() if spec.estimator}
    for estimator in (SparseMLPClassifier(), SparseMLPRegressor()):
        assert set(estimator.get_params()) - ESTIMATOR_ONLY == faces


@pytest.mark.parametrize("name", [name for name, spec in HYPERPARAMETERS.items() if spec.cli])
def test_a_flags_default_and_choices_are_the_declarations(name):
    spec, action = HYPERPARAMETERS[name], flags()[name]
    if name in run.PRESET_KEYS:
        # None: the data set's preset, else the declared default (test_cli checks that a PATH gets it).
        assert action.default is None and "preset, else" in action.help
    else:
        assert action.default == spec.default and type(action.default) is type(spec.default)
    assert (None if action.choices is None else tuple(action.choices)) == spec.choices
    if spec.type is bool:
        assert isinstance(action, argparse._StoreTrueAction)


def test_preset_keys_are_fields_with_flags():
    for preset in run.PRESETS.values():
        assert set(preset) <= set(run.PRESET_KEYS)
        TrainConfig(**preset)  # every preset is a valid configuration
    assert all(HYPERPARAMETERS[name].cli for name in run.PRESET_KEYS)


def test_classifier_defaults_are_train_configs():
    params, defaults = SparseMLPClassifier().get_params(), TrainConfig()
    for name, spec in HYPERPARAMETERS.items():
        if spec.estimator is True:
            assert params[name] == getattr(defaults, name), name
    assert params["hidden_layer_sizes"] == defaults.hidden
    assert params["random_state"] is None  # scikit-learn's convention, not seed 0


def test_regressor_defaults_are_train_configs_but_its_declared_differences():
    params, defaults = SparseMLPRegressor().get_params(), TrainConfig()
    for name, spec in HYPERPARAMETERS.items():
        if spec.estimator is True:
            assert params[name] == REGRESSOR_DIFFERENCES.get(name, getattr(defaults, name)), name
    assert params["hidden_layer_sizes"] == defaults.hidden and params["random_state"] is None


@pytest.mark.parametrize("estimator", [SparseMLPClassifier, SparseMLPRegressor])
def test_the_docstrings_document_every_parameter_with_its_default(estimator):
    doc = estimator.__doc__
    for name, value in estimator().get_params().items():
        assert f"\n    {name} : " in doc, name
        line = doc.split(f"\n    {name} : ", 1)[1].split("\n", 1)[0]
        assert line.endswith(f"default={value!r}" if not isinstance(value, str) else f'default="{value}"'), line


def test_train_configs_docstring_documents_every_field_with_its_default():
    for name, spec in HYPERPARAMETERS.items():
        assert f"\n    {name} : {spec.type_text() if spec.choices is None else '{'}" in TrainConfig.__doc__, name
        line = TrainConfig.__doc__.split(f"\n    {name} : ", 1)[1].split("\n", 1)[0]
        assert line.endswith(f"default={spec.default!r}" if not isinstance(spec.default, str)
                             else f'default="{spec.default}"'), line


def test_docs_parameter_table_is_up_to_date():
    path = os.path.join(REPO, "docs", "reference", "parameters.md")
    with open(path, encoding="utf-8") as stream:
        written = stream.read()
    assert written == parameter_table(), (
        "docs/reference/parameters.md is out of date; regenerate it with the command on its first line")


def test_parameter_table_has_a_row_per_field():
    rows = [line for line in parameter_table().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == FIELDS
    for row, spec in zip(rows, HYPERPARAMETERS.values()):
        assert (f"`{spec.flag}`" in row) == spec.cli
