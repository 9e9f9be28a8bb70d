"""SparseMLP as a whole: persistence, scipy view, repeatability, prediction and evaluation."""

import os

import numba
import numpy as np
import pytest

from wasap.config import TrainConfig
from wasap.model import SparseMLP
from wasap.threads import ThreadGovernor, set_threads
from wasap.train import SequentialTrainer

SIZES = [10, 12, 8, 3]


def _model(seed=0, **kwargs):
    model = SparseMLP.random(SIZES, epsilon=2, alpha=0.5, seed=seed, warn=False, **kwargs)
    rng = np.random.default_rng(seed + 50)
    for layer in model.layers:
        layer.bias[:] = rng.normal(0, 0.2, layer.n_out).astype(np.float32)
        layer.velocity[:] = rng.normal(0, 0.01, layer.nnz).astype(np.float32)
        layer.bias_velocity[:] = rng.normal(0, 0.01, layer.n_out).astype(np.float32)
    return model


def _X(n=37, seed=1):
    return np.random.default_rng(seed).normal(size=(n, SIZES[0])).astype(np.float32)


def _dense_forward(model, X, hidden_slopes):
    """Independent float64 forward pass; returns softmax probabilities (or outputs for non-softmax)."""
    a = X.astype(np.float64)
    for l, layer in enumerate(model.layers):
        z = a @ layer.to_scipy().toarray().astype(np.float64) + layer.bias
        if l < len(model.layers) - 1:
            a = np.where(z > 0, z, hidden_slopes[l] * z)
        else:
            a = z
    if model.output_activation == "softmax":
        e = np.exp(a - a.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if model.output_activation == "sigmoid":
        return 1 / (1 + np.exp(-a))
    return a


# -- persistence ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("include_momentum", [False, True])
def test_save_load_round_trip(tmp_path, include_momentum):
    model = _model()
    classes = np.array(["cat", "dog", "emu"])
    metadata = {"config": {"lr": 0.01, "hidden": [12, 8]}, "note": "x"}
    path = tmp_path / "model.npz"
    model.save(path, metadata=metadata, classes=classes, include_momentum=include_momentum)
    loaded = SparseMLP.load(path)
    assert loaded.sizes == model.sizes
    assert (loaded.activation, loaded.alpha, loaded.output_activation, loaded.loss) == \
           (model.activation, model.alpha, model.output_activation, model.loss)
    for a, b in zip(model.layers, loaded.layers):
        for name in ("indptr", "indices", "data", "bias", "col_indptr", "col_rows", "col_perm"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
            assert getattr(a, name).dtype == getattr(b, name).dtype, name
        if include_momentum:
            np.testing.assert_array_equal(a.velocity, b.velocity)
            np.testing.assert_array_equal(a.bias_velocity, b.bias_velocity)
        else:
            assert not b.velocity.any() and not b.bias_velocity.any()
    X = _X()
    np.testing.assert_array_equal(model.predict_output(X), loaded.predict_output(X))
    assert loaded.metadata == metadata
    np.testing.assert_array_equal(loaded.classes, classes)
    assert loaded.classes.dtype.kind == "U"
    assert os.listdir(tmp_path) == ["model.npz"]  # written atomically: no temporary file left behind


def test_save_load_without_classes_or_metadata(tmp_path):
    model = _model(output_activation="identity", loss="mse")
    model.save(tmp_path / "m.npz")
    loaded = SparseMLP.load(str(tmp_path / "m.npz"))
    assert loaded.classes is None and loaded.metadata == {}
    X = _X()
    np.testing.assert_array_equal(model.predict_output(X), loaded.predict_output(X))


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "model.npz"
    _model(seed=1).save(path)
    second = _model(seed=2)
    second.save(path)
    np.testing.assert_array_equal(SparseMLP.load(path).layers[0].data, second.layers[0].data)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_failed_save_leaves_no_temporary(tmp_path):
    with pytest.raises(TypeError):
        _model().save(tmp_path / "model.npz", metadata={"bad": object()})  # not JSON-serialisable
    assert os.listdir(tmp_path) == []


def test_save_load_object_dtype_classes(tmp_path):
    """Labels often arrive as an object array (pandas, np.unique of object labels): they must load back as str."""
    model = _model()
    classes = np.array(["cat", "dog", "emu"], dtype=object)
    model.save(tmp_path / "model.npz", classes=classes)
    loaded = SparseMLP.load(tmp_path / "model.npz")
    assert loaded.classes.dtype.kind == "U"
    assert loaded.classes.tolist() == ["cat", "dog", "emu"]


def test_saved_file_permissions_follow_umask(tmp_path):
    """An atomic write must not leave the file readable by its owner only (mkstemp's 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    path = tmp_path / "model.npz"
    _model().save(path)
    np.save(tmp_path / "plain.npy", np.zeros(1))
    assert os.stat(path).st_mode & 0o777 == os.stat(tmp_path / "plain.npy").st_mode & 0o777 == 0o666 & ~mask


def test_load_rejects_npy_file(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.arange(3))
    with pytest.raises(ValueError, match="array.npy"):
        SparseMLP.load(path)


def test_load_rejects_other_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.arange(3))
    with pytest.raises(ValueError, match="other.npz"):
        SparseMLP.load(path)


def test_load_rejects_missing_file(tmp_path):
    path = tmp_path / "missing.npz"
    with pytest.raises(ValueError, match="missing.npz"):
        SparseMLP.load(path)


def test_load_rejects_non_npz(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("not an archive")
    with pytest.raises(ValueError, match="text.npz"):
        SparseMLP.load(path)


# -- views and predictions ----------------------------------------------------------------------------------


def test_to_scipy_equals_dense_weights():
    model = _model()
    for layer in model.layers:
        dense = np.zeros((layer.n_in, layer.n_out), dtype=np.float32)
        for i in range(layer.n_in):
            for k in range(layer.indptr[i], layer.indptr[i + 1]):
                dense[i, layer.indices[k]] = layer.data[k]
        matrix = layer.to_scipy()
        assert matrix.shape == (layer.n_in, layer.n_out)
        np.testing.assert_array_equal(matrix.toarray(), dense)
        matrix.data[:] = 0  # a copy: the layer is not affected
        assert np.count_nonzero(layer.data) == layer.nnz


@pytest.mark.parametrize("batch_size", [None, 1, 5])
def test_predict_output_softmax_matches_dense(batch_size):
    model = _model()
    X = _X()
    out = model.predict_output(X, batch_size=batch_size)
    assert out.shape == (X.shape[0], SIZES[-1]) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out, _dense_forward(model, X, [-0.5, 0.5]), rtol=1e-4, atol=1e-6)


def test_predict_output_sigmoid_matches_dense():
    model = _model(activation="relu", output_activation="sigmoid", loss="mse")
    X = _X()
    np.testing.assert_allclose(model.predict_output(X, batch_size=8), _dense_forward(model, X, [0.0, 0.0]),
                               rtol=1e-4, atol=1e-6)


def test_evaluate_cross_entropy_matches_numpy():
    model = _model()
    X = _X()
    y = np.random.default_rng(3).integers(0, SIZES[-1], X.shape[0])
    p = _dense_forward(model, X, [-0.5, 0.5])
    loss, accuracy = model.evaluate(X, y, batch_size=8)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(len(y)), y])), rel=1e-4)
    assert accuracy == pytest.approx(np.mean(p.argmax(axis=1) == y))


def test_zero_output_starts_the_logits_equal_on_the_same_topology():
    config = TrainConfig(hidden=SIZES[1:-1], epsilon=2, seed=4)
    usual = SparseMLP.from_config(SIZES[0], SIZES[-1], config, warn=False)
    zeroed = SparseMLP.from_config(SIZES[0], SIZES[-1], config.replace(zero_output=True), warn=False)
    for a, b in zip(usual.layers, zeroed.layers):
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.indices, b.indices)
    for a, b in zip(usual.layers[:-1], zeroed.layers[:-1]):
        np.testing.assert_array_equal(a.data, b.data)
    assert zeroed.layers[-1].nnz == usual.layers[-1].nnz and not zeroed.layers[-1].data.any()
    X = _X()
    loss, _ = zeroed.evaluate(X, np.zeros(X.shape[0], dtype=np.int64))
    assert loss == pytest.approx(np.log(SIZES[-1]), rel=1e-6)


def test_evaluate_mse_matches_numpy():
    model = _model(output_activation="identity", loss="mse")
    X = _X()
    y = np.random.default_rng(4).normal(size=(X.shape[0], SIZES[-1])).astype(np.float32)
    out = _dense_forward(model, X, [-0.5, 0.5])
    loss, accuracy = model.evaluate(X, y)
    assert loss == pytest.approx(0.5 * np.mean(np.sum((out - y) ** 2, axis=1)), rel=1e-4)
    assert np.isnan(accuracy)


# -- repeatability ---------------------------------------------------------------------------------------------


def _train(seed, epochs=3, threads=1, governor=None):
    set_threads(threads)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, SIZES[0])).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)
    config = TrainConfig(hidden=tuple(SIZES[1:-1]), epsilon=2, seed=seed, epochs=epochs, batch_size=16,
                         dropout=0.3, lr=0.05)
    model = SparseMLP.from_config(X.shape[1], SIZES[-1], config, warn=False)
    trainer = SequentialTrainer(model, config, governor=governor)
    try:
        for epoch in range(1, epochs + 1):
            trainer.train_epoch(X, y)
            trainer.end_of_epoch(epoch, last=epoch == epochs)
    finally:
        set_threads(1)
    return model


def _same(a, b):
    return all(np.array_equal(getattr(x, n), getattr(y, n))
               for x, y in zip(a.layers, b.layers)
               for n in ("indptr", "indices", "data", "velocity", "bias", "bias_velocity"))


def test_same_seed_one_thread_is_bit_identical():
    first = _train(seed=3)
    second = _train(seed=3)
    assert _same(first, second)
    other = _train(seed=4)
    assert not _same(first, other)
    assert not np.array_equal(first.layers[0].indices, other.layers[0].indices)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba runs one thread here")
def test_results_do_not_depend_on_the_thread_count():
    one = _train(seed=3, threads=1)
    two = _train(seed=3, threads=2)
    assert _same(one, two)


class _Alternating(ThreadGovernor):
    """A governor that changes the count every step (1, 2, 1, ...), recording the counts it set."""

    def __init__(self):
        super().__init__(2)
        self.counts = []

    def threads(self):
        self.counts.append(1 + len(self.counts) % 2)
        return self.counts[-1]

    def record(self, seconds, n_samples):
        pass


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba runs one thread here")
def test_a_thread_count_that_changes_between_steps_gives_the_same_bits():
    governor = _Alternating()
    assert _same(_train(seed=3, threads=1), _train(seed=3, threads=2, governor=governor))
    assert set(governor.counts) == {1, 2} and len(governor.counts) == 3 * 6  # every step of 3 epochs of 6


def test_training_changes_topology_but_not_nnz():
    model = _train(seed=3)
    fresh = SparseMLP.from_config(SIZES[0], SIZES[-1], TrainConfig(hidden=tuple(SIZES[1:-1]), epsilon=2, seed=3),
                                  warn=False)
    assert model.nnz_per_layer() == fresh.nnz_per_layer()
    assert not np.array_equal(model.layers[0].indices, fresh.layers[0].indices)  # SET evolved the sparse layer


# -- Importance Pruning through the model --------------------------------------------------------------------


def test_importance_prune_touches_only_hidden_layers():
    model = _model()
    before = model.copy()
    pruned = model.importance_prune(25)
    assert len(pruned) == len(SIZES) - 2
    out_before, out_after = before.layers[-1], model.layers[-1]
    for name in ("indptr", "indices", "data", "velocity", "bias"):
        np.testing.assert_array_equal(getattr(out_before, name), getattr(out_after, name))
    for l, (old, new) in enumerate(zip(before.layers[:-1], model.layers[:-1])):
        W = old.to_scipy().toarray()
        importance = np.abs(W).sum(axis=0)
        cut = importance <= np.percentile(importance, 25)
        assert cut.any()
        W[:, cut] = 0
        np.testing.assert_array_equal(new.to_scipy().toarray(), W)
        np.testing.assert_array_equal(np.sort(pruned[l]), np.flatnonzero(cut))
        np.testing.assert_array_equal(new.bias, old.bias)
        # The column view follows the new structure (forward uses it).
        assert new.col_indptr[-1] == new.nnz
    X = _X()
    assert np.isfinite(model.predict_output(X)).all()
