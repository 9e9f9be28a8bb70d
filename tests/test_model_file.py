"""Loading a model file checks everything in it: damaged files raise ModelFileError, never crash or mislead.

Run as a script (``python tests/test_model_file.py FILE...``) it loads each file and checks each model
that loads against an independent oracle; the fuzz test runs it in a subprocess, so that a load that
ended the process by a signal shows as a negative return code instead of killing pytest.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse

import wasap.model
from wasap import ModelFileError, SparseMLP
from wasap.preprocessing import Preprocessing

SIZES = [6, 9, 7, 3]


def _model():
    model = SparseMLP.random(SIZES, epsilon=2, alpha=0.5, seed=3, warn=False)
    rng = np.random.default_rng(4)
    for layer in model.layers:
        layer.bias[:] = rng.normal(0, 0.2, layer.n_out)
        layer.velocity[:] = rng.normal(0, 0.01, layer.nnz)
    return model


def _preprocessing():
    rng = np.random.default_rng(5)
    return Preprocessing(SIZES[0], mean=rng.normal(size=SIZES[0]), scale=rng.uniform(0.5, 2, SIZES[0]),
                         classes=np.array(["ant", "bee", "cow"]))


@pytest.fixture
def saved(tmp_path):
    """A saved model (with momentum and preprocessing), its path and its arrays."""
    path = tmp_path / "model.npz"
    _model().save(path, preprocessing=_preprocessing(), include_momentum=True)
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return path, arrays


def _rewrite(path, arrays, **changes):
    """``arrays`` with ``changes`` (None removes an array) written to ``path`` through np.savez."""
    changed = {name: value for name, value in {**arrays, **changes}.items() if value is not None}
    np.savez(path, **changed)
    return path


def _a_row_with(indptr, n):
    """A row of at least ``n`` weights and the position of its first weight."""
    row = int(np.flatnonzero(np.diff(indptr) >= n)[0])
    return row, int(indptr[row])


# -- the oracle: what a loaded model must satisfy -----------------------------------------------------------


def _check_loaded(model):
    """Raise AssertionError unless ``model`` is structurally sound and predicts as its own dense weights do."""
    assert len(model.layers) == len(model.sizes) - 1
    a = np.random.default_rng(0).normal(size=(5, model.n_features))
    slopes = [-model.alpha, model.alpha]
    for l, layer in enumerate(model.layers):
        matrix = scipy.sparse.csr_matrix((layer.data, layer.indices, layer.indptr), shape=(layer.n_in, layer.n_out))
        matrix.check_format(full_check=True)
        assert matrix.has_canonical_format, f"layer {l}: unsorted or duplicate columns"
        assert np.isfinite(layer.data).all() and np.isfinite(layer.bias).all()
        z = a @ matrix.toarray().astype(np.float64) + layer.bias
        a = np.where(z > 0, z, slopes[l % 2] * z) if l < len(model.layers) - 1 else z
    expected = np.exp(a - a.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    X = np.random.default_rng(0).normal(size=(5, model.n_features)).astype(np.float32)
    np.testing.assert_allclose(model.predict_output(X), expected, rtol=1e-3, atol=1e-5)


def _load_all(paths):
    """Load each file; print 'loaded', 'refused' or 'FAILED ...' per file; 0 when none failed."""
    failed = 0
    for path in paths:
        try:
            _check_loaded(SparseMLP.load(path))
            print("loaded", path, flush=True)
        except ModelFileError:
            print("refused", path, flush=True)
        except Exception as error:  # noqa: BLE001 - any other outcome is the failure this reports
            failed += 1
            print(f"FAILED {path}: {type(error).__name__}: {error}", flush=True)
    return 1 if failed else 0


# -- the fuzz test ---------------------------------------------------------------------------------------


def _array_corruptions(arrays, rng):
    """(name, changes, breaks) triples: array-level damage, and whether it breaks an invariant."""
    l = int(rng.integers(len(SIZES) - 1))
    indptr, indices, data = arrays[f"indptr_{l}"], arrays[f"indices_{l}"], arrays[f"data_{l}"]
    n_out, nnz = SIZES[l + 1], len(indices)
    k = int(rng.integers(nnz))
    row, start = _a_row_with(indptr, 2)

    def with_value(array, position, value):
        copy = array.copy()
        copy[position] = value
        return copy

    swapped = indices.copy()
    swapped[[start, start + 1]] = swapped[[start + 1, start]]
    return [
        ("index out of range", {f"indices_{l}": with_value(indices, k, n_out + int(rng.integers(0, 1000)))}, True),
        ("negative index", {f"indices_{l}": with_value(indices, k, -int(rng.integers(1, 1000)))}, True),
        ("huge index", {f"indices_{l}": with_value(indices.astype(np.int64), k, 2**40)}, True),
        ("unsorted row", {f"indices_{l}": swapped}, True),
        ("duplicate column", {f"indices_{l}": with_value(indices, start + 1, indices[start])}, True),
        ("indptr not monotone", {f"indptr_{l}": with_value(indptr, 1 + int(rng.integers(len(indptr) - 2)),
                                                           nnz + int(rng.integers(1, 50)))}, True),
        ("indptr start", {f"indptr_{l}": with_value(indptr, 0, int(rng.integers(1, 3)))}, True),
        ("indptr end", {f"indptr_{l}": with_value(indptr, -1, nnz - 1)}, True),
        ("indptr negative", {f"indptr_{l}": with_value(indptr, 1, -5)}, True),
        ("short indices", {f"indices_{l}": indices[:-1]}, True),
        ("long data", {f"data_{l}": np.append(data, data[:3])}, True),
        ("nan weight", {f"data_{l}": with_value(data, k, np.nan)}, True),
        ("infinite weight", {f"data_{l}": with_value(data, k, -np.inf)}, True),
        ("weight beyond float32", {f"data_{l}": with_value(data.astype(np.float64), k, 1e300)}, True),
        ("float indices", {f"indices_{l}": indices.astype(np.float32)}, True),
        ("2-D data", {f"data_{l}": data.reshape(1, -1)}, True),
        ("missing indptr", {f"indptr_{l}": None}, True),
        ("other finite weight", {f"data_{l}": with_value(data, k, float(rng.normal()))}, False),
        ("int16 indices", {f"indices_{l}": indices.astype(np.int16)}, False),
    ]


def test_random_corruptions_never_crash(saved, tmp_path):
    path, arrays = saved
    raw = path.read_bytes()
    rng = np.random.default_rng(12)
    folder = tmp_path / "damaged"
    folder.mkdir()
    files, must_refuse = [], set()
    for i in range(40):
        damaged = bytearray(raw)
        position = int(rng.integers(len(raw)))
        damaged[position] = (damaged[position] + int(rng.integers(1, 256))) % 256
        files.append(folder / f"byte-{i}.npz")
        files[-1].write_bytes(bytes(damaged))
    for i in range(20):
        files.append(folder / f"truncated-{i}.npz")
        files[-1].write_bytes(raw[:int(rng.integers(len(raw)))])
        must_refuse.add(files[-1])
    while len(files) < 100:
        options = _array_corruptions(arrays, rng)
        name, changes, breaks = options[int(rng.integers(len(options)))]
        files.append(_rewrite(folder / f"array-{len(files)}-{name.replace(' ', '-')}.npz", arrays, **changes))
        if breaks:
            must_refuse.add(files[-1])
    result = subprocess.run([sys.executable, __file__, *map(str, files)], capture_output=True, text=True,
                            timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, f"return code {result.returncode}:\n{result.stdout}\n{result.stderr}"
    outcomes = dict(line.split(" ", 1)[::-1] for line in result.stdout.splitlines())
    assert len(outcomes) == 100
    refused = {file for file in files if outcomes[str(file)] == "refused"}
    assert must_refuse <= refused, sorted(str(file) for file in must_refuse - refused)


# -- each invariant, one at a time --------------------------------------------------------------------------


def _refused(path, *fragments):
    with pytest.raises(ModelFileError) as caught:
        SparseMLP.load(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return caught.value


def test_intact_file_loads_with_its_preprocessing(saved):
    path, _ = saved
    model = SparseMLP.load(path)
    _check_loaded(model)
    expected = _preprocessing()
    np.testing.assert_array_equal(model.preprocessing.mean, expected.mean)
    np.testing.assert_array_equal(model.preprocessing.scale, expected.scale)
    assert model.classes.tolist() == model.preprocessing.classes.tolist() == ["ant", "bee", "cow"]


def test_index_out_of_range(saved, tmp_path):
    path, arrays = saved
    indices = arrays["indices_1"].copy()
    indices[4] = SIZES[2]
    error = _refused(_rewrite(tmp_path / "bad.npz", arrays, indices_1=indices), "layer 1 (9 -> 7)",
                     f"column {SIZES[2]}", "0..6")
    assert error.layer == "layer 1 (9 -> 7)"


def test_negative_index(saved, tmp_path):
    path, arrays = saved
    indices = arrays["indices_0"].copy()
    indices[-1] = -1
    _refused(_rewrite(tmp_path / "bad.npz", arrays, indices_0=indices), "layer 0", "column -1")


@pytest.mark.parametrize("damage", ["swap", "duplicate"])
def test_row_not_sorted_and_unique(saved, tmp_path, damage):
    path, arrays = saved
    indices = arrays["indices_2"].copy()
    row, start = _a_row_with(arrays["indptr_2"], 2)
    if damage == "swap":
        indices[[start, start + 1]] = indices[[start + 1, start]]
    else:
        indices[start + 1] = indices[start]
    _refused(_rewrite(tmp_path / "bad.npz", arrays, indices_2=indices), "layer 2", f"row {row} ",
             "sorted and unique")


@pytest.mark.parametrize("block", [1, 2, 3, 7])
def test_row_order_check_agrees_with_scipy_across_block_edges(saved, tmp_path, monkeypatch, block):
    """Checked in blocks of a few weights, each row's order is judged as scipy's canonical format judges it."""
    monkeypatch.setattr(wasap.model, "_CHECK_BLOCK", block)
    path, arrays = saved
    rng = np.random.default_rng(block)
    indptr, n_out = arrays["indptr_1"], SIZES[2]
    outcomes = set()
    row_ends = indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < len(arrays["indices_1"]))] - 1
    for trial in range(40):
        indices = arrays["indices_1"].copy()
        # Half the changes straddle the end of a row, where a decrease is allowed.
        k = int(rng.choice(row_ends)) if trial % 4 < 2 else int(rng.integers(len(indices) - 1))
        if trial % 2:
            indices[[k, k + 1]] = indices[[k + 1, k]]  # within a row or across a row's end
        else:
            indices[k + 1] = indices[k]
        matrix = scipy.sparse.csr_matrix((arrays["data_1"], indices, indptr), shape=(SIZES[1], n_out))
        valid = matrix.has_canonical_format
        try:
            SparseMLP.load(_rewrite(tmp_path / "order.npz", arrays, indices_1=indices))
            loaded = True
        except ModelFileError as error:
            assert "sorted and unique" in str(error)
            loaded = False
        assert loaded == valid, (k, trial)
        outcomes.add(loaded)
    assert outcomes == {True, False}


def test_rows_may_restart_at_low_columns(saved, tmp_path):
    """A decrease between the last column of one row and the first of the next is no fault."""
    path, arrays = saved
    model = SparseMLP.load(_rewrite(tmp_path / "same.npz", arrays))
    layer = model.layers[0]
    starts = layer.indptr[1:-1][(layer.indptr[1:-1] > 0) & (layer.indptr[1:-1] < layer.nnz)]
    assert (layer.indices[starts] < layer.indices[starts - 1]).any()


@pytest.mark.parametrize("position, value, fragment", [
    (0, 1, "starts at 1"), (-1, None, "ends at"), (3, 10_000, "decreases after row"),
])
def test_indptr_invariants(saved, tmp_path, position, value, fragment):
    path, arrays = saved
    indptr = arrays["indptr_1"].copy()
    indptr[position] = indptr[-1] - 1 if value is None else value
    _refused(_rewrite(tmp_path / "bad.npz", arrays, indptr_1=indptr), "layer 1", "indptr_1", fragment)


@pytest.mark.parametrize("name", ["data_0", "bias_1", "velocity_2", "bias_velocity_0"])
@pytest.mark.parametrize("value", [np.nan, np.inf, 1e39])
def test_non_finite_values(saved, tmp_path, name, value):
    path, arrays = saved
    values = arrays[name].astype(np.float64)
    values[1] = value
    _refused(_rewrite(tmp_path / "bad.npz", arrays, **{name: values}), name, "finite")


@pytest.mark.parametrize("name, replacement, fragment", [
    ("indices_0", lambda a: a.astype(np.float64), "must hold integers"),
    ("indptr_1", lambda a: a.astype(bool), "must hold integers"),
    ("data_2", lambda a: a.astype(np.int32), "must hold floating-point"),
    ("bias_0", lambda a: a.astype(np.complex64), "must hold floating-point"),
    ("data_1", lambda a: a.reshape(1, -1), "must be 1-D"),
    ("bias_2", lambda a: a[:-1], "entries; it must have 3"),
    ("indptr_0", lambda a: np.append(a, a[-1]), "it must have 7"),
    ("velocity_1", lambda a: a[1:], "one per weight"),
    ("data_0", lambda a: None, "data_0 is missing"),
])
def test_array_types_and_shapes(saved, tmp_path, name, replacement, fragment):
    path, arrays = saved
    _refused(_rewrite(tmp_path / "bad.npz", arrays, **{name: replacement(arrays[name])}), fragment)


def test_other_integer_and_float_types_load(saved, tmp_path):
    path, arrays = saved
    changes = dict(indices_0=arrays["indices_0"].astype(np.uint16), indptr_0=arrays["indptr_0"].astype(np.int32),
                   data_0=arrays["data_0"].astype(np.float64))
    model = SparseMLP.load(_rewrite(tmp_path / "other.npz", arrays, **changes))
    _check_loaded(model)
    assert model.layers[0].indices.dtype == np.int32 and model.layers[0].indptr.dtype == np.int64
    np.testing.assert_array_equal(model.layers[0].indices, arrays["indices_0"])


def _header(arrays, **changes):
    header = {**json.loads(str(arrays["header"])), **changes}
    return np.array(json.dumps({key: value for key, value in header.items() if value is not None}))


@pytest.mark.parametrize("header, fragment", [
    (lambda a: np.array("not json {"), "not valid JSON"),
    (lambda a: np.array("[1, 2]"), "not an object"),
    (lambda a: np.array(["x", "y"]), "not one JSON text"),
    (lambda a: _header(a, format="wasap-model-0"), "model format 'wasap-model-0'"),
    (lambda a: _header(a, sizes=[6]), "at least 2 layer sizes"),
    (lambda a: _header(a, sizes=[6, -9, 7, 3]), "positive integer"),
    (lambda a: _header(a, sizes=[6, 9.5, 7, 3]), "positive integer"),
    (lambda a: _header(a, sizes="6-9-7-3"), "sizes"),
    (lambda a: _header(a, sizes=[6, 9, 7]), "3 classes for 7 outputs"),
    (lambda a: _header(a, activation="swish"), "activation is 'swish'"),
    (lambda a: _header(a, output_activation="softplus"), "output_activation"),
    (lambda a: _header(a, loss="hinge"), "loss is 'hinge'"),
    (lambda a: _header(a, alpha="half"), "alpha"),
    (lambda a: _header(a, alpha=float("nan")), "alpha"),
    (lambda a: _header(a, metadata=[1]), "metadata"),
])
def test_header_checks(saved, tmp_path, header, fragment):
    path, arrays = saved
    _refused(_rewrite(tmp_path / "bad.npz", arrays, header=header(arrays)), fragment)


@pytest.mark.parametrize("changes, fragment", [
    (dict(classes=np.array(["a", "b"])), "2 classes for 3 outputs"),
    (dict(classes=np.zeros((3, 1))), "classes"),
    (dict(preprocessing_mean=np.zeros(5)), "shape (6,)"),
    (dict(preprocessing_scale=-np.ones(6)), "positive"),
    (dict(preprocessing_scale=None), "give scale with mean"),
    (dict(preprocessing_n_features=np.array(5)), "preprocessing"),
    (dict(preprocessing_n_features=np.array([6])), "preprocessing_n_features"),
    (dict(preprocessing_mean=np.full(6, np.nan)), "NaN"),
])
def test_preprocessing_and_classes_checks(saved, tmp_path, changes, fragment):
    path, arrays = saved
    _refused(_rewrite(tmp_path / "bad.npz", arrays, **changes), fragment)


def test_truncated_and_garbled_archives(saved, tmp_path):
    path, arrays = saved
    raw = path.read_bytes()
    for length in (0, 10, len(raw) // 2, len(raw) - 30):
        (tmp_path / "cut.npz").write_bytes(raw[:length])
        _refused(tmp_path / "cut.npz")
    # A changed byte inside an entry fails its CRC check.
    garbled = bytearray(raw)
    garbled[raw.find(arrays["data_1"].tobytes()) + 5] ^= 0xFF
    (tmp_path / "garbled.npz").write_bytes(bytes(garbled))
    _refused(tmp_path / "garbled.npz", "damaged")


def test_not_a_model_file(tmp_path):
    _refused(tmp_path / "missing.npz", "no such file")
    _refused(tmp_path, "folder")
    np.save(tmp_path / "array.npy", np.arange(3))
    _refused(tmp_path / "array.npy", "single .npy array")
    np.savez(tmp_path / "other.npz", a=np.arange(3))
    _refused(tmp_path / "other.npz", "no 'header' entry")
    np.savez(tmp_path / "pickled.npz", header=np.array([{"format": 1}], dtype=object))
    _refused(tmp_path / "pickled.npz")


def test_error_is_a_value_error_and_pickles(tmp_path):
    import pickle

    error = _refused(tmp_path / "missing.npz")
    assert isinstance(error, ValueError)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


if __name__ == "__main__":
    sys.exit(_load_all(sys.argv[1:]))
