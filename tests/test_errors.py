"""Bad input gets an error that names the problem (the Python API's side; the CLI's is in test_cli and test_run)."""

import types
import warnings

import numpy as np
import pytest

from wasap import DataError, Dataset, SparseMLP, TrainConfig, fit, load_dataset
from wasap.config import ConfigError
from wasap.topology import DensityCapWarning


def small_arrays(n=60, features=5, classes=2, seed=0):
    """The arrays of a small Dataset, to spoil before making one."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features)).astype(np.float32)
    y = rng.integers(0, classes, n)
    y[:classes] = np.arange(classes)
    return types.SimpleNamespace(X_train=X, y_train=y, X_test=X[:10].copy(), y_test=y[:10].copy(),
                                 classes=np.arange(classes))


def dataset(arrays):
    return Dataset("small", arrays.X_train, arrays.y_train, arrays.X_test, arrays.y_test, arrays.classes)


def small_data(**kwargs):
    return dataset(small_arrays(**kwargs))


def quick_config(**changes):
    values = dict(hidden=(8,), epsilon=2, epochs=2, batch_size=16, threads=1)
    values.update(changes)
    return TrainConfig(**values)


def model_for(data, config):
    return SparseMLP.from_config(data.X_train.shape[1], len(data.classes), config)


# The arrays are checked when the Dataset is made, before any model or run exists.


def test_x_and_y_of_different_lengths():
    arrays = small_arrays()
    arrays.y_train = arrays.y_train[:-7]
    with pytest.raises(DataError, match=r"60 samples.*53 labels"):
        dataset(arrays)


def test_nan_and_inf_in_x_name_the_position():
    arrays = small_arrays()
    arrays.X_train[17, 3] = np.nan
    with pytest.raises(DataError, match=r"NaN|nan") as raised:
        dataset(arrays)
    assert "row 17, column 3" in str(raised.value)
    arrays = small_arrays()
    arrays.X_test[4, 1] = np.inf
    with pytest.raises(DataError, match=r"inf"):
        dataset(arrays)


def test_a_single_class_is_refused():
    arrays = small_arrays()
    arrays.y_train[:] = 1
    with pytest.raises(DataError, match=r"single class"):
        dataset(arrays)


def test_fit_takes_a_dataset_only():
    arrays = small_arrays()
    config = quick_config()
    with pytest.raises(TypeError, match=r"must be a wasap.data.Dataset, got SimpleNamespace"):
        fit(model_for(arrays, config), arrays, config, log=None)


def test_a_classifier_needs_classes_and_enough_outputs():
    arrays = small_arrays(classes=3)
    config = quick_config()
    with pytest.raises(DataError, match=r"3 classes but the model has 2 outputs"):
        fit(SparseMLP.from_config(5, 2, config), dataset(arrays), config, log=None)
    targets = np.zeros((60, 2), dtype=np.float32)
    values = Dataset("values", arrays.X_train, targets, arrays.X_test, targets[:10], np.empty(0))
    with pytest.raises(DataError, match=r"regression targets"):
        fit(SparseMLP.from_config(5, 2, config), values, config, log=None)


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


# -- csv files: the message names the file's own line (from 1, the header included) and column (from 1) ----------


def csv_with(tmp_path, hole_row, hole_column, text, *, header=True, delimiter=","):
    """A csv of 6 rows x 3 features + label whose (hole_row, hole_column) field is ``text``; its path, line, column."""
    rows = [[str(r + c) for c in range(3)] + ["yes" if r % 2 else "no"] for r in range(6)]
    rows[hole_row][hole_column] = text
    lines = ([delimiter.join(["a", "b", "c", "label"])] if header else []) + [delimiter.join(r) for r in rows]
    path = tmp_path / "table.csv"
    path.write_text("\n".join(lines) + "\n")
    line = lines.index(delimiter.join(rows[hole_row])) + 1
    return path, line, hole_column + 1


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("delimiter", [",", ";"])
def test_csv_missing_value_names_its_line_and_column(tmp_path, header, delimiter):
    path, line, column = csv_with(tmp_path, 4, 1, "", header=header, delimiter=delimiter)
    with pytest.raises(DataError, match=rf"missing value at line {line}, column {column}\b") as raised:
        load_dataset(str(path))
    assert str(path) in str(raised.value) and "drop the row" in str(raised.value)


def test_csv_missing_label_names_its_line(tmp_path):
    path, line, column = csv_with(tmp_path, 2, 3, "")
    with pytest.raises(DataError, match=rf"missing label at line {line}, column {column}\b"):
        load_dataset(str(path))


def test_csv_text_in_a_feature_column_names_it_and_its_place(tmp_path):
    path, line, column = csv_with(tmp_path, 5, 0, "n/a")
    with pytest.raises(DataError, match=rf"'n/a' at line {line}, column {column}\b.*not a number"):
        load_dataset(str(path))


def test_csv_short_row_names_its_line(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("a,b,label\n1,2,x\n3,4,y\n5,z\n")
    with pytest.raises(DataError, match=r"line 4 has 2 columns but line 1 has 3"):
        load_dataset(str(path))
