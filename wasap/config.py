"""Every hyperparameter of a wasap run, declared once: type, default, allowed values, help, faces.

Each field of :class:`TrainConfig` is declared by :func:`hyperparameter`, and
everything else is made from those declarations: the checks of a value
(:meth:`Hyperparameter.check`), the command line's flags
(:func:`wasap.run.add_config_arguments`), the scikit-learn estimators'
parameters and their docstrings (:mod:`wasap.estimator`), and the
documentation's parameter table (:func:`parameter_table`). Checks that
involve several values are written out in :meth:`TrainConfig.validate`.

The defaults are the paper's code's.
"""

import dataclasses
import math
import numbers
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from .activations import HIDDEN_ACTIVATIONS, LOSSES, OUTPUT_ACTIVATIONS
from .augment import parse_image_shape
from .optim import LayerRates
from .topology import INIT_SCHEMES, erdos_renyi_nnz

#: :meth:`TrainConfig.width_aware`: with ``n`` inputs an output neuron, the hidden layers step at
#: ``WIDTH_AWARE_LR_PER_INPUT * n`` and the output layer at ``WIDTH_AWARE_OUTPUT_LR_TIMES_INPUTS / n``
#: (maximal-update scaling; ``tools/wide_learning.py`` measures the range of both that learns).
WIDTH_AWARE_LR_PER_INPUT = 6e-5
WIDTH_AWARE_OUTPUT_LR_TIMES_INPUTS = 50.0
#: The values :meth:`TrainConfig.width_aware` sets (anything else keeps its default), which
#: ``--recipe width-aware`` leaves to the flags given explicitly.
WIDTH_AWARE_KEYS = ("activation", "init", "zero_output", "lr", "output_lr", "dropout", "weight_decay")
#: What :meth:`TrainConfig.for_sparse_input` sets: on bag-of-words data a first-layer neuron sees about one
#: nonzero input a sample, and more, smaller steps and plain ReLU learn more from it (docs/sparse-data.md).
#: The batch size is the largest; smaller training sets get smaller batches (:func:`sparse_batch_size`).
SPARSE_INPUT_DEFAULTS = dict(batch_size=32, activation="relu")
#: :func:`sparse_batch_size`: steps an epoch that a small sparse training set is given, down to batches of
#: ``SPARSE_MIN_BATCH`` rows (400 text rows learnt as a tuned linear model does in batches of 8, not of 32).
SPARSE_STEPS_PER_EPOCH = 50
SPARSE_MIN_BATCH = 8
#: The paper's weight decay per step, ``lr * weight_decay = 0.01 * 2e-4``, kept whatever the rate.
_PAPER_DECAY_PER_STEP = 2e-6

#: Where the command line groups a hyperparameter's flag, in this order.
SECTIONS = ("network", "training", "parallel")
#: Keys that configs saved by earlier versions of wasap carry and this one no longer has:
#: :meth:`TrainConfig.from_dict` drops them, so that those files still load.
_RETIRED_KEYS = ("extra",)


def sparse_batch_size(n_train: int) -> int:
    """The batch size for sparse data of ``n_train`` training rows.

    :data:`SPARSE_INPUT_DEFAULTS`'s, or fewer rows for a small set so that an epoch takes at least
    :data:`SPARSE_STEPS_PER_EPOCH` steps, but never fewer than :data:`SPARSE_MIN_BATCH`.

    Examples
    --------
    >>> sparse_batch_size(8887), sparse_batch_size(1000), sparse_batch_size(400), sparse_batch_size(50)
    (32, 20, 8, 8)
    """
    largest = SPARSE_INPUT_DEFAULTS["batch_size"]
    return int(min(largest, max(SPARSE_MIN_BATCH, int(n_train) // SPARSE_STEPS_PER_EPOCH)))


class ConfigError(ValueError):
    """A hyperparameter is out of range; the message says which and what is allowed."""


@dataclass(frozen=True)
class Interval:
    """The numbers from ``low`` to ``high`` (None: unbounded), ends included as ``closed`` says.

    ``closed`` is "both", "left" (``low <= x < high``), "right" (``low < x <= high``) or "neither",
    as in scikit-learn's ``Interval`` constraint.
    """

    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def __contains__(self, value: float) -> bool:
        low_in = self.closed in ("both", "left")
        high_in = self.closed in ("both", "right")
        if self.low is not None and (value < self.low or (value == self.low and not low_in)):
            return False
        return self.high is None or value < self.high or (value == self.high and high_in)

    def __str__(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        if self.high is None:
            return f"{'>=' if left == '[' else '>'} {_number_text(self.low)}"
        if self.low is None:
            return f"{'<=' if right == ']' else '<'} {_number_text(self.high)}"
        return f"{left}{_number_text(self.low)}, {_number_text(self.high)}{right}"


def _number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Hyperparameter:
    """The whole declaration of one :class:`TrainConfig` field.

    Attributes
    ----------
    name : str
        The field's name.
    type : type
        ``int``, ``float``, ``bool``, ``str`` or ``tuple`` (of ints: layer sizes), from the field's annotation.
    optional : bool
        Whether None is allowed (the annotation is ``... | None``).
    default : object
    help : str
        One line, lower case, as ``--help`` shows it.
    section : str
        One of :data:`SECTIONS`: where the command line lists the flag.
    range : Interval or None
        The numbers allowed (for ``tuple``: each element's).
    choices : tuple of str or None
        The strings allowed.
    unset : str or None
        What None means, when it is allowed.
    cli : bool
        Whether the command line has a flag ``--name-with-dashes`` for it.
    estimator : bool or str
        Whether the scikit-learn estimators have a parameter for it: True for one of the same name, a
        string for a parameter of the estimator's own name that sets it (``random_state``), False for
        none (the estimator class fixes the value, as it does the loss).
    """

    name: str
    type: type
    optional: bool
    default: object
    help: str
    section: str
    range: Interval | None = None
    choices: tuple | None = None
    unset: str | None = None
    cli: bool = True
    estimator: bool | str = True

    @property
    def internal(self) -> bool:
        """Whether neither the command line nor the estimators show it."""
        return not self.cli and not self.estimator

    @property
    def flag(self) -> str | None:
        """The command-line flag (``--batch-size``), or None."""
        return "--" + self.name.replace("_", "-") if self.cli else None

    @property
    def estimator_parameter(self) -> str | None:
        """The estimators' parameter that sets it, or None."""
        if not self.estimator:
            return None
        return self.name if self.estimator is True else self.estimator

    def type_text(self) -> str:
        """The type as the docs name it: ``float or None``, ``tuple of int``."""
        text = "tuple of int" if self.type is tuple else self.type.__name__
        return text + " or None" if self.optional else text

    def allowed_text(self) -> str:
        """The values allowed, as the docs say it (``[0, 1)``, ``> 0``, ``all-relu, relu``), or ''."""
        if self.choices is not None:
            return ", ".join(self.choices)
        return "" if self.range is None else str(self.range)

    def check(self, value: object) -> object:
        """``value`` as the field stores it (numpy scalars as Python ones), or a ConfigError.

        Raises
        ------
        ConfigError
            Naming the field and what it allows.
        """
        if value is None and self.optional:
            return None
        if self.type is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise ConfigError(f"{self.name} must be True or False, got {value!r}.")
            return bool(value)
        if self.type is str:
            if self.choices is not None and value not in self.choices:
                raise ConfigError(f"{self.name} must be one of {', '.join(self.choices)}; got {value!r}.")
            return value
        if self.type is tuple:
            return self._check_sizes(value)
        return self._check_number(value)

    def _check_number(self, value):
        if self.type is int:
            if not _is_integer(value):
                raise ConfigError(f"{self.name} must be a whole number, got {value!r}.")
            value = int(value)
        else:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or math.isnan(value):
                raise ConfigError(f"{self.name} must be a number, got {value!r}.")
            value = float(value)
            if math.isinf(value):
                raise ConfigError(f"{self.name} must be a finite number{self._range_clause()}, got {value}.")
        if self.range is not None and value not in self.range:
            raise ConfigError(f"{self.name} must be {self.range_words()}, got {value}.")
        return value

    def _check_sizes(self, value):
        try:
            sizes = None if isinstance(value, str) else tuple(value)
        except TypeError:
            sizes = None
        if sizes is None or not all(_is_integer(size) and (self.range is None or size in self.range)
                                    for size in sizes):
            raise ConfigError(f"{self.name} must be whole numbers {self.range} (layer sizes), got {value!r}.")
        return tuple(int(size) for size in sizes)

    def range_words(self) -> str:
        """The range as a sentence ends: ``> 0``, ``in [0, 1)``."""
        text = str(self.range)
        return text if text[0] in "<>" else f"in {text}"

    def _range_clause(self):
        return "" if self.range is None else " " + self.range_words()


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def hyperparameter(default: object, help: str, *, section: str, range: Interval | None = None,
                   choices: tuple | None = None, unset: str | None = None, cli: bool = True,
                   estimator: bool | str = True) -> dataclasses.Field:
    """A :class:`TrainConfig` field declared by :class:`Hyperparameter`'s attributes (name and type aside)."""
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
    return field(default=default, metadata=dict(hyperparameter=dict(
        help=help, section=section, range=range, choices=choices, unset=unset, cli=cli, estimator=estimator)))


_POSITIVE = Interval(0, None, closed="neither")
_FRACTION_BELOW_ONE = Interval(0.0, 1.0, closed="left")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a sparse MLP and its training; validated when made, never changed after.

    Make a changed copy with :meth:`replace`. Each field is one :class:`Hyperparameter`
    (:data:`HYPERPARAMETERS`); ``docs/reference/parameters.md`` tabulates them.

    Parameters
    ----------
    {hyperparameters}
    """

    hidden: tuple[int, ...] = hyperparameter(
        (400, 100, 400), "neurons of each hidden layer", section="network", range=Interval(1, None),
        estimator="hidden_layer_sizes")
    activation: str = hyperparameter(
        "all-relu", "hidden activation", section="network", choices=HIDDEN_ACTIVATIONS)
    alpha: float | None = hyperparameter(
        0.5, "All-ReLU slope (paper eq. 3), in [0, 1]; or leaky ReLU's, in [0, 1)", section="network",
        unset="leaky-relu's default slope (all-relu needs one)")
    epsilon: float = hyperparameter(
        20.0, "sparsity: a layer has about epsilon * (n_in + n_out) weights, at most n_in * n_out",
        section="network", range=_POSITIVE)
    init: str = hyperparameter(
        "he-uniform", "initial weights: he-uniform (the paper's); he-uniform-sparse, scaled to the connections "
        "a neuron has (layers far wider than their connections per neuron); xavier; normal",
        section="network", choices=INIT_SCHEMES)
    output_activation: str = hyperparameter(
        "softmax", "output activation: softmax (classification), or identity or sigmoid (regression)",
        section="network", choices=OUTPUT_ACTIVATIONS, cli=False, estimator=False)
    loss: str = hyperparameter(
        "cross-entropy", "loss: cross-entropy with softmax, mse with identity or sigmoid",
        section="network", choices=LOSSES, cli=False, estimator=False)
    zeta: float = hyperparameter(
        0.3, "fraction of each sign's weights that SET removes and regrows after each epoch but the last",
        section="training", range=Interval(0.0, 1.0))
    epochs: int = hyperparameter(
        100, "passes over the training data", section="training", range=Interval(0, None))
    batch_size: int = hyperparameter(
        128, "samples per gradient step", section="training", range=Interval(1, None))
    micro_batch: int | None = hyperparameter(
        None, "split each batch into parts of at most this many samples whose gradients accumulate: the same "
        "update, activation memory for fewer samples (wide layers)", section="training",
        range=Interval(1, None), unset="whole batches")
    augment: str | None = hyperparameter(
        None, "augment the training images as the paper's code did for CIFAR-10 (a random rotation of up to 10 "
        "degrees, shifts of up to a tenth of a side, a horizontal flip per sample and step): their shape CxHxW, "
        "channel-major (3x32x32), or auto for a data set wasap knows (cifar10, fashion-mnist); none on the command "
        "line turns off a preset's",
        section="training", unset="no augmentation")
    lr: float = hyperparameter(
        0.01, "learning rate of momentum SGD", section="training", range=_POSITIVE)
    momentum: float = hyperparameter(
        0.9, "momentum of SGD", section="training", range=_FRACTION_BELOW_ONE)
    weight_decay: float = hyperparameter(
        2e-4, "L2 weight decay inside momentum SGD", section="training", range=Interval(0.0, None))
    dropout: float = hyperparameter(
        0.3, "inverted dropout rate on the hidden layers", section="training", range=_FRACTION_BELOW_ONE)
    lr_fan_in: float | None = hyperparameter(
        None, "layers whose mean fan-in (nnz / neurons) exceeds this take steps of lr * lr_fan_in / fan-in "
        "(very wide layers)", section="training", range=_POSITIVE, unset="lr for every layer")
    output_lr: float | None = hyperparameter(
        None, "the output layer's own learning rate (see TrainConfig.width_aware)", section="training",
        range=_POSITIVE, unset="lr, times the lr_fan_in factor")
    zero_output: bool = hyperparameter(
        False, "start the output layer's weights at 0 (part of the width-aware recipe)", section="training")
    importance_pruning: bool = hyperparameter(
        False, "Importance Pruning of hidden neurons (paper Algorithm 2)", section="training")
    ip_start: int = hyperparameter(
        200, "Importance Pruning runs after the epochs e >= ip_start with e % ip_every == 0",
        section="training", range=Interval(0, None))
    ip_every: int = hyperparameter(
        10, "epochs between Importance Prunings", section="training", range=Interval(1, None))
    ip_percentile: float = hyperparameter(
        20.0, "hidden neurons at or below this percentile of their layer's importance lose their inputs",
        section="training", range=Interval(0.0, 100.0))
    gradient_flow: bool = hyperparameter(
        False, "record each epoch's gradient flow in metrics.jsonl: the squared norm of the training loss's "
        "gradient over a fixed sample of training rows, without dropout (the sequential trainer)",
        section="training", estimator=False)
    seed: int = hyperparameter(
        0, "seeds every random stream: topology, weights, shuffling, dropout", section="training",
        range=Interval(0, None), estimator="random_state")
    threads: int | None = hyperparameter(
        None, "kernel threads per process, capped to the cores the process may use", section="parallel",
        range=Interval(1, None), unset="adapts to the machine as the run goes (1 up to the cores)")
    workers: int = hyperparameter(
        1, "1: the sequential trainer; K > 1: WASAP-SGD with K worker processes", section="parallel",
        range=Interval(1, None))
    sync: bool = hyperparameter(
        False, "synchronous phase one (WASSP-SGD) instead of asynchronous, with workers > 1", section="parallel")
    phase2_start: int | None = hyperparameter(
        None, "epoch at which phase two (independent replicas) starts, with workers > 1", section="parallel",
        range=Interval(0, None), unset="never")
    warmup_epochs: int = hyperparameter(
        5, "epochs of gradual learning-rate warm-up of synchronous phase one (sync)", section="parallel",
        range=Interval(0, None))
    transport: str = hyperparameter(
        "shm", "how WASAP-SGD's server and workers share the model: shm (shared memory, one machine) or mpi "
        "(MPI one-sided windows, across machines: launch with mpiexec or srun, one rank per worker plus one)",
        section="parallel", choices=("shm", "mpi"), estimator=False)
    stall_timeout: float = hyperparameter(
        600.0, "seconds a parallel worker may go without progress (no batch done, no lock or slot reached) "
        "before the run stops with WorkerStalled", section="parallel", range=_POSITIVE)

    def __post_init__(self):
        for spec in HYPERPARAMETERS.values():
            object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values allowed alone but not together.

        Each value alone is checked against its declaration (:meth:`Hyperparameter.check`) before.
        """
        if self.activation == "all-relu" and (self.alpha is None or not 0 <= self.alpha <= 1):
            raise ConfigError(f"alpha must be in [0, 1] for all-relu, got {self.alpha}.")
        if self.activation == "leaky-relu" and self.alpha is not None and not 0 <= self.alpha < 1:
            raise ConfigError(f"alpha (the leaky ReLU slope) must be in [0, 1), got {self.alpha}.")
        if self.output_activation == "softmax" and self.loss != "cross-entropy":
            raise ConfigError("softmax output goes with loss='cross-entropy'; use identity or sigmoid with mse.")
        if self.loss == "cross-entropy" and self.output_activation != "softmax":
            raise ConfigError("loss='cross-entropy' needs output_activation='softmax'.")
        if self.augment not in (None, "auto"):
            try:
                parse_image_shape(self.augment)
            except ValueError as error:
                raise ConfigError(f"augment: {error}.") from None

    @classmethod
    def width_aware(cls, hidden: Iterable[int], n_outputs: int, *, epsilon: float, **overrides) -> "TrainConfig":
        """The training recipe under which networks 0.5M to 5M neurons wide learn in their first epoch.

        With the paper's recipe such networks keep the loss at ln 2: weights sized for the dense
        fan-in shrink the signal a hundred-fold per layer, and an output neuron's millions of
        inputs turn any usable output rate unstable. Here:

        - ``init="he-uniform-sparse"``: weights sized for the connections a neuron has;
        - ``activation="tanh"``: zero-mean activations, no common mode through the output layer;
        - ``zero_output=True``: the logits start equal;
        - ``output_lr = 50 / n`` and ``lr = 6e-5 * n``, where ``n`` is an output neuron's mean
          fan-in (``nnz / n_outputs`` of the output layer): the hidden gradients pass through
          output weights of order ``1 / n`` (maximal-update scaling, Yang & Hu 2021);
        - ``dropout=0``: with the two inputs a neuron of an epsilon-1 layer has, ten layers of
          dropout cut every path from the input;
        - ``weight_decay = 2e-6 / lr`` (the ``lr`` in force, an override's included): the paper's
          shrink per step.

        Parameters
        ----------
        hidden : tuple of int
            Hidden layer sizes.
        n_outputs : int
            Classes (or regression outputs).
        epsilon : float
        **overrides
            Any other :class:`TrainConfig` value (``epochs``, ``seed``, ``micro_batch``...), or one of
            the recipe's to change it.

        Returns
        -------
        TrainConfig

        Examples
        --------
        >>> config = TrainConfig.width_aware((500_000, 500_000), 2, epsilon=10, epochs=1)
        >>> round(config.lr, 6), round(config.output_lr, 8), config.activation
        (30.0, 0.0001, 'tanh')
        """
        hidden = tuple(hidden)
        if not hidden:
            raise ConfigError("the width-aware recipe needs at least one hidden layer.")
        inputs = erdos_renyi_nnz(int(hidden[-1]), int(n_outputs), epsilon, warn=False) / n_outputs
        lr = overrides.get("lr", WIDTH_AWARE_LR_PER_INPUT * inputs)
        values = dict(hidden=hidden, epsilon=epsilon, activation="tanh", init="he-uniform-sparse",
                      zero_output=True, lr=lr, output_lr=WIDTH_AWARE_OUTPUT_LR_TIMES_INPUTS / inputs,
                      dropout=0.0, weight_decay=_PAPER_DECAY_PER_STEP / lr)
        values.update(overrides)
        return cls(**values)

    def layer_rates(self) -> LayerRates:
        """Each layer's learning rate relative to ``lr`` (:class:`wasap.optim.LayerRates`)."""
        output_ratio = None if self.output_lr is None else self.output_lr / self.lr
        return LayerRates(lr_fan_in=self.lr_fan_in, output_ratio=output_ratio)

    def for_sparse_input(self, n_train: int | None = None, keep: Iterable[str] = ()) -> "TrainConfig":
        """This config with the defaults for sparse input (:data:`SPARSE_INPUT_DEFAULTS`), but for ``keep``.

        The command line trains sparse data so where ``--batch-size`` and ``--activation`` are not
        given, as it applies a named data set's preset; the estimators take their parameters as given.

        Parameters
        ----------
        n_train : int, optional
            Training rows: the batch size is :func:`sparse_batch_size` of them (default: the largest).
        keep : iterable of str
            Names whose values stay (the hyperparameters set explicitly). ``alpha`` is dropped with
            All-ReLU unless kept.

        Examples
        --------
        >>> config = TrainConfig().for_sparse_input(5000)
        >>> config.batch_size, config.activation, config.alpha
        (32, 'relu', None)
        >>> TrainConfig().for_sparse_input(400).batch_size
        8
        >>> TrainConfig(batch_size=64).for_sparse_input(400, keep={"batch_size"}).batch_size
        64
        """
        keep = set(keep)
        defaults = dict(SPARSE_INPUT_DEFAULTS)
        if n_train is not None:
            defaults["batch_size"] = sparse_batch_size(n_train)
        changes = {name: value for name, value in defaults.items() if name not in keep}
        if changes.get("activation", self.activation) != "all-relu" and "alpha" not in keep:
            changes["alpha"] = None
        return self.replace(**changes)

    def replace(self, **changes) -> "TrainConfig":
        """A validated copy with some values changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of every hyperparameter."""
        values = dataclasses.asdict(self)
        values["hidden"] = list(self.hidden)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are refused by name.

        Keys that earlier versions of wasap wrote and this one no longer has (``extra``) are dropped,
        so that their checkpoints, summaries and models still load.
        """
        values = {name: value for name, value in values.items() if name not in _RETIRED_KEYS}
        unknown = sorted(set(values) - set(HYPERPARAMETERS))
        if unknown:
            raise ConfigError(f"unknown hyperparameters {unknown}; known ones: {sorted(HYPERPARAMETERS)}.")
        return cls(**values)


def _declarations(cls):
    """The :class:`Hyperparameter` of each field of ``cls``, by name, in declaration order."""
    hints = typing.get_type_hints(cls)
    declared = {}
    for spec in dataclasses.fields(cls):
        kind, optional = _type_and_optional(hints[spec.name])
        declared[spec.name] = Hyperparameter(name=spec.name, type=kind, optional=optional, default=spec.default,
                                             **spec.metadata["hyperparameter"])
    return declared


def _type_and_optional(annotation):
    """``(int, True)`` for ``int | None``, ``(tuple, False)`` for ``tuple[int, ...]``."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (kind,) = [arg for arg in args if arg is not type(None)]
        return _type_and_optional(kind)[0], True
    return typing.get_origin(annotation) or annotation, False


#: The declaration of every :class:`TrainConfig` field, by name, in the order of the fields.
HYPERPARAMETERS: dict = _declarations(TrainConfig)


def value_text(value: object) -> str:
    """A default as the docs write it: ``0.01``, ``"all-relu"``, ``(400, 100, 400)``, ``None``."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def numpydoc_parameters(names: Iterable[str], defaults: "TrainConfig", *, notes: Mapping[str, str] = None,
                        parameter_names: bool = False) -> str:
    """The numpydoc entries of the hyperparameters ``names``, with the defaults of ``defaults``.

    Parameters
    ----------
    names : iterable of str
        :class:`TrainConfig` field names, in the order to list them.
    defaults : TrainConfig
        Whose values are shown as the defaults.
    notes : mapping of str to str, optional
        Sentences to add to a parameter's description, by field name.
    parameter_names : bool
        List each under its estimator parameter's name instead of the field's.

    Returns
    -------
    str
        Lines without indentation, each ending in a newline.
    """
    notes = notes or {}
    entries = []
    for name in names:
        spec = HYPERPARAMETERS[name]
        kind = ("{" + ", ".join(f'"{choice}"' for choice in spec.choices) + "}" if spec.choices
                else spec.type_text())
        sentences = [spec.help[0].upper() + spec.help[1:] + "."]
        if spec.optional and spec.unset:
            sentences.append(f"None: {spec.unset}.")
        if spec.range is not None:
            sentences.append(f"{'Each must' if spec.type is tuple else 'Must'} be {spec.range_words()}.")
        if name in notes:
            sentences.append(notes[name])
        shown = spec.estimator_parameter if parameter_names else name
        entries.append(f"{shown} : {kind}, default={value_text(getattr(defaults, name))}\n"
                       + textwrap.indent(textwrap.fill(" ".join(sentences), 96, break_on_hyphens=False), "    ") + "\n")
    return "".join(entries)


def fill_parameters_doc(doc: str, entries: str) -> str:
    """``doc`` with its ``{hyperparameters}`` line replaced by ``entries``, indented as that line was.

    A docstring without that line (None, or the one ``dataclass`` makes, under ``python -OO``) is
    returned as it is.
    """
    marker = None if doc is None else re.search(r"^([ \t]*)\{hyperparameters\}\n", doc, flags=re.MULTILINE)
    if marker is None:
        return doc
    return doc[:marker.start()] + textwrap.indent(entries, marker.group(1)) + doc[marker.end():]


TrainConfig.__doc__ = fill_parameters_doc(TrainConfig.__doc__, numpydoc_parameters(HYPERPARAMETERS, TrainConfig()))

#: The command that writes ``docs/reference/parameters.md``; its first line names it.
PARAMETER_TABLE_COMMAND = ("python -c \"import wasap.config as c; print(c.parameter_table(), end='')\" "
                           "> docs/reference/parameters.md")


def parameter_table() -> str:
    """The documentation's page of hyperparameters (MyST Markdown): one table row per field.

    Columns: name, command-line flag, estimator parameter, type, default, allowed values, help.
    ``docs/reference/parameters.md`` holds its output (:data:`PARAMETER_TABLE_COMMAND` writes it).

    Returns
    -------
    str
    """
    rows = ["| name | command-line flag | estimator parameter | type | default | allowed | help |",
            "|---|---|---|---|---|---|---|"]
    for spec in HYPERPARAMETERS.values():
        flag = f"`{spec.flag}`" if spec.cli else "none"
        parameter = f"`{spec.estimator_parameter}`" if spec.estimator else "set by the estimator class"
        default = f"`{value_text(spec.default)}`"
        if spec.default is None and spec.unset:
            default += f": {spec.unset}"
        allowed = spec.allowed_text()
        cells = [f"`{spec.name}`", flag, parameter, spec.type_text(), default,
                 f"`{allowed}`" if allowed else "", spec.help]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join([
        f"% Generated from wasap/config.py by: {PARAMETER_TABLE_COMMAND}",
        "% Edit the declarations there, not this file; tests/test_config_faces.py checks that they agree.",
        "",
        "# Hyperparameters",
        "",
        "Every hyperparameter is a field of `wasap.TrainConfig`, declared once in `wasap/config.py`. The",
        "command line's flags and the scikit-learn estimators' parameters are made from those declarations,",
        "so a setting means the same in all three. On the command line a few of them default to the paper's",
        "setting for a named data set (`python -m wasap.run --help` says which); for data of your own they",
        "take the defaults below, as the Python API does. `SparseMLPRegressor` has defaults of its own for",
        "some (its docstring lists them). Values out of the allowed range are refused with a `ConfigError`",
        "naming the field; `alpha`'s range depends on `activation`.",
        "",
        *rows,
        "",
    ])
