"""Bad input gets an error that names the problem (the Python API's side; the CLI's is in test_run)."""

import types
import warnings

import numpy as np
import pytest

from wasap import DataError, SparseMLP, TrainConfig, fit
from wasap.config import ConfigError
from wasap.topology import DensityCapWarning


def small_data(n=60, features=5, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features)).astype(np.float32)
    y = rng.integers(0, classes, n)
    y[:classes] = np.arange(classes)
    return types.SimpleNamespace(X_train=X, y_train=y, X_test=X[:10].copy(), y_test=y[:10].copy(),
                                 classes=np.arange(classes))


def quick_config(**changes):
    values = dict(hidden=(8,), epsilon=2, epochs=2, batch_size=16, threads=1)
    values.update(changes)
    return TrainConfig(**values)


def model_for(data, config):
    return SparseMLP.from_config(data.X_train.shape[1], len(data.classes), config)


def test_x_and_y_of_different_lengths():
    data = small_data()
    data.y_train = data.y_train[:-7]
    config = quick_config()
    with pytest.raises(DataError, match=r"60 samples.*53 labels"):
        fit(model_for(data, config), data, config, log=None)


def test_nan_and_inf_in_x_name_the_position():
    data = small_data()
    data.X_train[17, 3] = np.nan
    config = quick_config()
    with pytest.raises(DataError, match=r"NaN|nan") as raised:
        fit(model_for(data, config), data, config, log=None)
    assert "17" in str(raised.value)
    data = small_data()
    data.X_test[4, 1] = np.inf
    with pytest.raises(DataError, match=r"inf"):
        fit(model_for(data, config), data, config, log=None)


def test_a_single_class_is_refused():
    data = small_data()
    data.y_train[:] = 1
    config = quick_config()
    with pytest.raises(DataError, match=r"class"):
        fit(model_for(data, config), data, config, log=None)


def test_wrong_feature_count_at_predict():
    model = SparseMLP.random([5, 8, 2], epsilon=2, seed=0)
    with pytest.raises(ValueError, match=r"takes 5 features"):
        model.predict_output(np.zeros((3, 6), dtype=np.float32))


def test_wrong_feature_count_at_fit():
    data = small_data(features=5)
    config = quick_config()
    model = SparseMLP.from_config(6, 2, config)
    with pytest.raises(DataError, match=r"5 features.*6"):
        fit(model, data, config, log=None)


def test_hidden_size_zero():
    with pytest.raises(ConfigError, match=r"hidden"):
        TrainConfig(hidden=(400, 0, 10))


def test_dense_hidden_layer_is_capped_with_a_warning():
    with pytest.warns(DensityCapWarning, match=r"dense"):
        model = SparseMLP.random([10, 10, 3], epsilon=50, seed=0)
    assert model.layers[0].nnz == 100


def test_dense_output_layer_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = SparseMLP.random([100, 100, 3], epsilon=20, seed=0)
    assert model.layers[1].nnz == 300


def test_unreadable_model_file_names_the_path(tmp_path):
    bad = tmp_path / "not-a-model.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not-a-model.npz"):
        SparseMLP.load(bad)


def test_divergence_stops_and_keeps_the_last_good_model():
    data = small_data(n=200)
    config = quick_config(lr=1e30, epochs=5, dropout=0.0)
    model = model_for(data, config)
    lines = []
    summary = fit(model, data, config, log=lines.append)
    assert summary["stopped"] == "diverged"
    assert model.is_finite()
    assert any("diverged" in line for line in lines)
