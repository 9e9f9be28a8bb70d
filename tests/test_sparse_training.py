"""Training and prediction on a scipy.sparse ``X``, against the dense path on the same values and finite differences.

The kernels themselves are checked in test_sparse_input.py; here the network's batch methods take a
:class:`wasap.batches.SparseBatch` where they took a dense ``(n_features, batch)`` block, and a sparse
:class:`wasap.data.Dataset` trains through :func:`wasap.train.fit`, the command line and ``wasap.predict``
without a dense copy of the data. Sums over a batch's nonzeros are taken in another order than sums over
its dense rows, so the two paths agree to float32 rounding, not bit for bit.
"""

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import scipy.sparse
from sklearn.datasets import dump_svmlight_file

from test_gradients import HIDDEN, _finite_differences
from test_parallel import REPO
from test_resume import _same_model, interrupted_at_batch
from wasap.batches import SparseBatch, gather_transposed
from wasap.checkpoint import CHECKPOINT_FILE, load_checkpoint
from wasap.config import TrainConfig, sparse_batch_size
from wasap.data import Dataset, load_dataset
from wasap.memory import estimate_parallel_config, estimate_run
from wasap.model import SparseMLP
from wasap.sparse_input import SETTLE_EVERY, DeferredDecay
from wasap.train import fit

SIZES = [40, 24, 16, 3]


def _sparse_rows(rng, n_rows, n_features, density, *, empty_rows=(), empty_columns=()):
    """A float32 CSR matrix of about ``density`` nonzeros, with the given rows and columns all zero."""
    X = scipy.sparse.random(n_rows, n_features, density=density, format="csr", dtype=np.float32,
                            random_state=rng, data_rvs=lambda k: rng.normal(0, 1, k))
    X = X.tolil()
    for row in empty_rows:
        X[row, :] = 0
    for column in empty_columns:
        X[:, column] = 0
    X = X.tocsr()
    X.eliminate_zeros()
    X.indices, X.indptr = X.indices.astype(np.int32), X.indptr.astype(np.int32)
    return X


def _both(X, rows):
    """The batch ``rows`` of ``X`` as a SparseBatch and as the dense block the kernels take."""
    return SparseBatch.of(X, rows), np.ascontiguousarray(X[rows].toarray().T)


@pytest.mark.parametrize("activation", ["all-relu", "relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("batch", [1, 7, 35])
def test_forward_of_a_sparse_batch_equals_the_dense_batch(activation, batch):
    rng = np.random.default_rng(batch)
    X = _sparse_rows(rng, 60, SIZES[0], 0.1, empty_rows=(0, 3), empty_columns=(5, 6))
    alpha = 0.5 if activation == "all-relu" else None
    model = SparseMLP.random(SIZES, epsilon=3, activation=activation, alpha=alpha, seed=1, warn=False)
    rows = rng.permutation(60)[:batch]
    rows[0] = 0  # an empty row in every batch
    sparse_batch, dense_batch = _both(X, rows)
    for dropout in (0.0, 0.3):
        outputs = []
        for x_t in (sparse_batch, dense_batch):
            ws = model.workspace(batch, training=True)
            out = model.forward(x_t, ws, dropout=dropout, dropout_seed=9).copy()
            outputs.append((out, ws.activations[1].copy(), ws.derivs[1].copy()))
        for (sparse, dense), name in zip(zip(*outputs), ("output", "first layer", "its derivative")):
            np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-6, err_msg=f"{name}, dropout {dropout}")
        # Dropout draws the same mask for a sparse batch as for a dense one.
        np.testing.assert_array_equal(outputs[0][2] == 0, outputs[1][2] == 0)


@pytest.mark.parametrize("activation", ["all-relu", "tanh"])
def test_gradient_of_a_sparse_batch_equals_finite_differences(activation):
    rng = np.random.default_rng(3)
    sizes = [12, 7, 5, 4, 3]
    alpha, hidden_fns = HIDDEN[activation]
    model = SparseMLP.random(sizes, epsilon=2, activation=activation, alpha=alpha, seed=2, warn=False)
    for layer in model.layers:
        layer.bias[:] = rng.uniform(-0.3, 0.3, layer.n_out).astype(np.float32)
    X = _sparse_rows(rng, 5, sizes[0], 0.3, empty_rows=(2,), empty_columns=(0,))
    target = rng.integers(0, sizes[-1], 5)
    grads = [np.full(layer.nnz, np.nan, dtype=np.float32) for layer in model.layers]
    bias_grads = [np.full(layer.n_out, np.nan, dtype=np.float32) for layer in model.layers]
    loss, _ = model.gradient_batch(SparseBatch.of(X, np.arange(5)), target, grads, bias_grads)
    fd_grads, fd_bias_grads, oracle_loss = _finite_differences(model, hidden_fns, X.toarray(), target, "softmax",
                                                               "cross-entropy")
    assert loss == pytest.approx(oracle_loss, rel=1e-5)
    for l in range(len(model.layers)):
        np.testing.assert_allclose(grads[l], fd_grads[l], rtol=1e-3, atol=1e-4, err_msg=f"weights of layer {l}")
        np.testing.assert_allclose(bias_grads[l], fd_bias_grads[l], rtol=1e-3, atol=1e-4, err_msg=f"biases {l}")
    # Not vacuous: the first layer has real gradients, and zeros exactly where its feature is absent.
    assert np.abs(fd_grads[0]).max() > 1e-3
    absent = np.flatnonzero(np.asarray(X.sum(axis=0) == 0).ravel() & (np.diff(X.tocsc().indptr) == 0))
    first = model.layers[0]
    for feature in absent:
        assert np.all(grads[0][first.indptr[feature]:first.indptr[feature + 1]] == 0)


@pytest.mark.parametrize("micro_batch", [None, 8])
def test_training_steps_on_sparse_batches_equal_those_on_dense_batches(micro_batch):
    rng = np.random.default_rng(4)
    X = _sparse_rows(rng, 96, SIZES[0], 0.08, empty_rows=(1,), empty_columns=(2, 30))
    y = rng.integers(0, SIZES[-1], 96)
    sparse_model = SparseMLP.random(SIZES, epsilon=3, activation="all-relu", alpha=0.5, seed=5, warn=False)
    dense_model = sparse_model.copy()
    for step in range(4):
        rows = rng.permutation(96)[:20]
        sparse_batch, dense_batch = _both(X, rows)
        settings = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, dropout=0.2, dropout_seed=step,
                        micro_batch=micro_batch)
        sparse_loss, sparse_correct = sparse_model.train_batch(sparse_batch, y[rows], **settings)
        dense_loss, dense_correct = dense_model.train_batch(dense_batch, y[rows], **settings)
        assert sparse_loss == pytest.approx(dense_loss, rel=1e-5) and sparse_correct == dense_correct
    for l, (sparse, dense) in enumerate(zip(sparse_model.layers, dense_model.layers)):
        np.testing.assert_allclose(sparse.data, dense.data, rtol=1e-5, atol=1e-6, err_msg=f"weights {l}")
        np.testing.assert_allclose(sparse.velocity, dense.velocity, rtol=1e-4, atol=1e-6, err_msg=f"velocity {l}")
        np.testing.assert_allclose(sparse.bias, dense.bias, rtol=1e-5, atol=1e-6, err_msg=f"bias {l}")
    # Momentum and weight decay moved the weights of features absent from every batch too, as dense SGD does.
    first_before = SparseMLP.random(SIZES, epsilon=3, activation="all-relu", alpha=0.5, seed=5, warn=False).layers[0]
    column = first_before.indptr[2], first_before.indptr[3]
    assert not np.array_equal(sparse_model.layers[0].data[slice(*column)], first_before.data[slice(*column)])


def test_deferred_first_layer_steps_train_as_the_dense_batches_do():
    """What the trainer runs on sparse data (the first layer's steps at gradient 0 pending) against dense steps."""
    rng = np.random.default_rng(10)
    X = _sparse_rows(rng, 96, SIZES[0], 0.05, empty_rows=(1,), empty_columns=(2, 30))
    y = rng.integers(0, SIZES[-1], 96)
    sparse_model = SparseMLP.random(SIZES, epsilon=3, activation="all-relu", alpha=0.5, seed=5, warn=False)
    dense_model = sparse_model.copy()
    deferred = DeferredDecay(sparse_model.layers[0], every=5)
    for step in range(23):
        rows = rng.permutation(96)[:int(rng.integers(1, 21))]
        sparse_batch, dense_batch = _both(X, rows)
        settings = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, dropout=0.2, dropout_seed=step)
        sparse_loss, sparse_correct = sparse_model.train_batch(sparse_batch, y[rows], deferred=deferred, **settings)
        dense_loss, dense_correct = dense_model.train_batch(dense_batch, y[rows], **settings)
        assert sparse_loss == pytest.approx(dense_loss, rel=1e-4) and sparse_correct == dense_correct
    assert not deferred.settled  # 23 steps: 3 pending since the settlement at step 20
    deferred.settle()
    for l, (sparse, dense) in enumerate(zip(sparse_model.layers, dense_model.layers)):
        np.testing.assert_allclose(sparse.data, dense.data, rtol=1e-4, atol=1e-6, err_msg=f"weights {l}")
        np.testing.assert_allclose(sparse.velocity, dense.velocity, rtol=1e-3, atol=1e-6, err_msg=f"velocity {l}")
        np.testing.assert_allclose(sparse.bias, dense.bias, rtol=1e-4, atol=1e-6, err_msg=f"bias {l}")
    sparse_batch, dense_batch = _both(X, np.arange(16))
    settings = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    with pytest.raises(ValueError, match="sparse batch"):
        sparse_model.train_batch(dense_batch, y[:16], deferred=deferred, **settings)
    with pytest.raises(ValueError, match="first layer"):
        dense_model.train_batch(sparse_batch, y[:16], deferred=deferred, **settings)
    with pytest.raises(ValueError, match="micro_batch"):
        sparse_model.train_batch(sparse_batch, y[:16], deferred=deferred, micro_batch=4, **settings)


def test_a_sparse_run_resumes_from_a_mid_epoch_checkpoint_to_the_same_model(tmp_path, monkeypatch):
    """Mid-epoch checkpoints of sparse data are taken where no step is pending: the resumed run is the same."""
    rng = np.random.default_rng(11)
    informative = rng.normal(0, 1, (3, 100))
    X = _sparse_rows(rng, 1600, 100, 0.05)
    y = np.asarray((X @ informative.T).argmax(axis=1)).ravel()
    data = Dataset("sparse", X[:1300], y[:1300], X[1300:], y[1300:], np.arange(3))
    config = TrainConfig(hidden=(16, 8), epsilon=4, epochs=3, batch_size=10, threads=1, seed=5)
    reference = SparseMLP.from_config(data.n_features, 3, config, warn=False)
    fit(reference, data, config, out_dir=str(tmp_path / "reference"), progress=False, log=None)

    batches_per_epoch = 130
    assert SETTLE_EVERY < 100 < batches_per_epoch
    model = SparseMLP.from_config(data.n_features, 3, config, warn=False)
    out = tmp_path / "run"
    with interrupted_at_batch(monkeypatch, model, batches_per_epoch + 101):  # epoch 2, after 100 of its batches
        summary = fit(model, data, config, out_dir=str(out), progress=False, log=None, checkpoint_every=0)
    assert summary["stopped"] == "interrupted"
    resumed, state = load_checkpoint(out / CHECKPOINT_FILE)
    # Checkpoints were due after every batch; the last was taken where the trainer was settled.
    assert state["epoch"] == 1 and state["trainer"]["position"]["batches"] == SETTLE_EVERY
    summary = fit(resumed, data, config, out_dir=str(out), progress=False, log=None, resume=state)
    assert summary["stopped"] == "completed"
    _same_model(tmp_path / "reference" / "model.npz", out / "model.npz")


def test_fit_on_a_sparse_dataset_equals_fit_on_its_dense_copy():
    rng = np.random.default_rng(6)
    informative = rng.normal(0, 1, (3, 100))
    X = _sparse_rows(rng, 300, 100, 0.2)
    y = np.asarray((X @ informative.T).argmax(axis=1)).ravel()
    sparse = Dataset("sparse", X[:240], y[:240], X[240:], y[240:], np.arange(3))
    dense = Dataset("dense", X[:240].toarray(), y[:240], X[240:].toarray(), y[240:], np.arange(3))
    assert sparse.is_sparse and not dense.is_sparse
    config = TrainConfig(hidden=(32, 32), epsilon=10, batch_size=16, epochs=6, lr=0.05, dropout=0.0, seed=0, threads=1,
                         importance_pruning=True, ip_start=4, ip_every=1)
    histories = []
    for data in (sparse, dense):
        model = SparseMLP.from_config(data.n_features, 3, config, warn=False)
        histories.append(fit(model, data, config, progress=False, log=None)["history"])
    for sparse_epoch, dense_epoch in zip(*histories):
        assert sparse_epoch["train_loss"] == pytest.approx(dense_epoch["train_loss"], rel=1e-4)
        assert sparse_epoch["test_accuracy"] == pytest.approx(dense_epoch["test_accuracy"], abs=1 / 60)
    assert histories[0][-1]["train_loss"] < 0.8 * histories[0][0]["train_loss"]  # not vacuous: it learns


def test_the_memory_estimate_counts_the_nonzeros_of_a_sparse_input():
    shape = dict(epsilon=20, batch_size=128, n_train=10_000, n_test=1_000)
    sizes = [100_000, 1000, 1000, 2]
    dense = estimate_run(sizes, **shape)
    sparse = estimate_run(sizes, **shape, sparse_row_nnz=100)
    # Dense: 4 bytes per feature and sample; sparse: 8 bytes a nonzero (value and int32 index).
    assert dense.parts["data"] >= 4 * 100_000 * 11_000
    assert sparse.parts["data"] <= 8 * 100 * 11_000 + 12 * 11_000
    # The input block of a batch (4 * 128 * 100,000 bytes) is gone from the training buffers too.
    assert sparse.total < dense.total - 4 * 100_000 * 11_000


def test_the_parallel_memory_estimate_counts_the_nonzeros_of_a_sparse_input():
    config = TrainConfig(hidden=(1000, 1000), epsilon=20, batch_size=128, workers=4)
    shape = (100_000, 2, 10_000, 1_000)
    dense = estimate_parallel_config(config, *shape)
    sparse = estimate_parallel_config(config, *shape, sparse_row_nnz=100)
    # The shared copy of the training rows: 4 bytes per feature and row dense, 8 a nonzero sparse.
    assert dense.parts["shared blocks"] - sparse.parts["shared blocks"] >= 4 * 100_000 * 10_000 - 12 * 100 * 10_000
    assert sparse.parts["server: data set"] <= 8 * 100 * 11_000 + 12 * 11_000
    assert sparse.total < dense.total - 2 * 4 * 100_000 * 10_000


def test_a_million_sparse_features_train_in_memory_far_below_one_dense_batch():
    n_features, n_rows, per_row, batch = 1_000_000, 512, 100, 128  # 0.01% nonzeros
    rng = np.random.default_rng(7)
    indices = np.concatenate([np.sort(rng.choice(n_features, per_row, replace=False)) for _ in range(n_rows)])
    X = scipy.sparse.csr_matrix((rng.normal(0, 1, n_rows * per_row).astype(np.float32), indices.astype(np.int32),
                                 np.arange(n_rows + 1, dtype=np.int32) * per_row), shape=(n_rows, n_features))
    y = rng.integers(0, 2, n_rows)
    model = SparseMLP.random([n_features, 32, 2], epsilon=1, seed=0, warn=False)
    settings = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)
    # As the trainer steps: the first layer's steps deferred where the batch has no nonzero.
    deferred = DeferredDecay(model.layers[0], every=3)
    model.train_batch(gather_transposed(X, np.arange(batch)), y[:batch], **settings, deferred=deferred)
    deferred.settle()  # compiled, buffers made
    tracemalloc.start()
    try:
        for start in range(0, n_rows, batch):
            rows = np.arange(start, start + batch)
            model.train_batch(gather_transposed(X, rows), y[rows], **settings, deferred=deferred)
        deferred.settle()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    dense_batch = 4 * batch * n_features
    print(f"peak traced memory of {n_rows // batch} training steps: {peak:,} bytes; one dense ({batch}, "
          f"{n_features:,}) float32 batch: {dense_batch:,} bytes")
    assert peak < dense_batch / 50


def _svmlight_files(tmp_path, rng):
    informative = rng.normal(0, 1, (2, 100))
    X = _sparse_rows(rng, 400, 100, 0.2)
    y = np.asarray((X @ informative.T).argmax(axis=1)).ravel() * 2 - 1
    dump_svmlight_file(X[:320], y[:320], str(tmp_path / "train.svm"))
    dump_svmlight_file(X[320:], y[320:], str(tmp_path / "test.svm"))
    return X, y


@pytest.mark.parametrize("scaling", [[], ["--standardize"]], ids=["raw by default", "standardize"])
def test_the_command_line_trains_on_svmlight_files_and_predicts_them_sparse(tmp_path, scaling):
    rng = np.random.default_rng(8)
    _svmlight_files(tmp_path, rng)
    pair = f"{tmp_path / 'train.svm'},{tmp_path / 'test.svm'}"
    data = load_dataset(pair, standardize=True if scaling else None)
    assert data.is_sparse and data.feature_mean is None and (data.feature_scale is not None) == bool(scaling)
    assert ("scaled without centering" if scaling else "values kept as they are") in data.description
    out = tmp_path / "run"
    completed = subprocess.run([sys.executable, "-m", "wasap.run", "--dataset", pair, "--hidden", "32,32",
                                "--epochs", "20", "--epsilon", "10", *scaling,
                                "--dropout", "0", "--batch-size", "16", "--out", str(out), "--quiet"],
                               capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "completed" and summary["best_test_accuracy"] > 0.6
    predicted = tmp_path / "predicted.csv"
    completed = subprocess.run([sys.executable, "-m", "wasap.predict", str(out / "model.npz"),
                                str(tmp_path / "test.svm"), "--out", str(predicted)],
                               capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr
    # The saved model scales new rows as its training rows were (without centering, or not at all) and keeps
    # them sparse.
    model = SparseMLP.load(str(out / "model.npz"))
    assert model.preprocessing.standardized == bool(scaling) and not model.preprocessing.centered
    raw_test = load_dataset(pair, standardize=False).X_test
    assert scipy.sparse.issparse(model.preprocessing.transform(raw_test))
    expected = model.predict(raw_test)
    assert predicted.read_text().split() == [str(label) for label in expected]
    assert set(expected) <= {-1, 1} and "accuracy:" in completed.stdout + completed.stderr


def test_the_sparse_batch_size_gives_small_sets_fifty_steps_an_epoch_in_batches_of_8_to_32():
    for n_train, batch in [(1, 8), (399, 8), (400, 8), (449, 8), (450, 9), (1000, 20), (1599, 31), (1600, 32),
                           (10 ** 6, 32)]:
        assert sparse_batch_size(n_train) == batch, n_train
    assert TrainConfig().for_sparse_input(1000).batch_size == 20
    assert TrainConfig().for_sparse_input().batch_size == 32


#: The batch size for the 320 training rows of _svmlight_files: 320 // 50 = 6 steps' worth, raised to 8.
SMALL_SET_BATCH = 8


@pytest.mark.parametrize("flags, expected", [
    ([], dict(batch_size=SMALL_SET_BATCH, activation="relu", alpha=None)),
    (["--batch-size", "64"], dict(batch_size=64, activation="relu", alpha=None)),
    (["--activation", "all-relu"], dict(batch_size=SMALL_SET_BATCH, activation="all-relu",
                                        alpha=TrainConfig().alpha)),
    (["--activation", "all-relu", "--alpha", "0.3"], dict(batch_size=SMALL_SET_BATCH, activation="all-relu",
                                                          alpha=0.3)),
])
def test_sparse_data_trains_with_the_sparse_defaults_where_no_flag_sets_them(tmp_path, capsys, flags, expected):
    from wasap.run import main

    _svmlight_files(tmp_path, np.random.default_rng(12))
    out = tmp_path / "run"
    assert main(["--dataset", f"{tmp_path / 'train.svm'},{tmp_path / 'test.svm'}", "--hidden", "16", "--epsilon", "5",
                 "--epochs", "1", "--threads", "1", "--out", str(out), *flags]) == 0
    config = json.loads((out / "summary.json").read_text())["config"]
    assert {name: config[name] for name in expected} == expected
    assert f"sparse input: batch size {expected['batch_size']}, activation {expected['activation']}" in \
        capsys.readouterr().out
    if flags:
        return
    # A dense copy of the same rows keeps the dense defaults.
    dense = tmp_path / "dense.npz"
    data = load_dataset(f"{tmp_path / 'train.svm'},{tmp_path / 'test.svm'}", standardize=False)
    np.savez(dense, X_train=data.X_train.toarray(), y_train=data.classes[data.y_train],
             X_test=data.X_test.toarray(), y_test=data.classes[data.y_test])
    assert main(["--dataset", str(dense), "--hidden", "16", "--epsilon", "5", "--epochs", "1", "--threads", "1",
                 "--out", str(tmp_path / "dense-run")]) == 0
    config = json.loads((tmp_path / "dense-run" / "summary.json").read_text())["config"]
    assert (config["batch_size"], config["activation"]) == (TrainConfig().batch_size, TrainConfig().activation)


def test_a_resumed_sparse_run_loads_its_data_as_the_run_did(tmp_path):
    from wasap.checkpoint import save_checkpoint
    from wasap.run import main, resume_point

    _svmlight_files(tmp_path, np.random.default_rng(13))
    pair = f"{tmp_path / 'train.svm'},{tmp_path / 'test.svm'}"
    out = tmp_path / "run"
    assert main(["--dataset", pair, "--hidden", "16", "--epsilon", "5", "--epochs", "2", "--threads", "1",
                 "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["standardized"] is False
    # As if the run had been stopped after its last checkpoint.
    (out / "summary.json").write_text(json.dumps(dict(summary, stopped="interrupted")))
    args, _, state = resume_point(str(out), ["--resume", str(out)])
    assert state["run"]["standardized"] is False and args.standardize is False
    # A checkpoint that does not record it: the description of the data in summary.json says how the run
    # scaled them.
    model, state = load_checkpoint(out / CHECKPOINT_FILE)
    save_checkpoint(out / CHECKPOINT_FILE, model, dict(state, run=dict(command_line=state["run"]["command_line"])))
    for description, expected in [("x.svm: ...; scaled without centering (sparse input)", True),
                                  ("x.svm: ...; values kept as they are (sparse input)", None)]:
        (out / "summary.json").write_text(json.dumps(dict(summary, stopped="interrupted", dataset=description)))
        assert resume_point(str(out), ["--resume", str(out)])[0].standardize is expected
    # Given on the command line, the flag is what counts.
    save_checkpoint(out / CHECKPOINT_FILE, model, dict(state, run=dict(
        standardized=False, command_line=[*state["run"]["command_line"], "--standardize"])))
    assert resume_point(str(out), ["--resume", str(out)])[0].standardize is True


def test_several_workers_train_sparse_data_over_shared_memory(tmp_path):
    rng = np.random.default_rng(9)
    _svmlight_files(tmp_path, rng)
    out = tmp_path / "run"
    completed = subprocess.run([sys.executable, "-m", "wasap.run", "--dataset", str(tmp_path / "train.svm"),
                                "--workers", "2", "--hidden", "32,32", "--epsilon", "10", "--epochs", "3",
                                "--threads", "1", "--out", str(out), "--quiet"],
                               capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "completed" and summary["parallel"]["workers"] == 2
    # The sparse defaults hold for the parallel trainer too: the file's 224 training rows (70%) in batches of 8.
    assert summary["config"]["batch_size"] == SMALL_SET_BATCH


def test_sparse_features_are_scaled_as_standard_scaler_without_mean_scales_them():
    from sklearn.preprocessing import StandardScaler

    from wasap.preprocessing import sparse_column_scale, standardize

    rng = np.random.default_rng(10)
    X = _sparse_rows(rng, 50, 30, 0.2, empty_columns=(4,)).tolil()
    X[:, 7] = 2.5  # a constant column with no zero
    X[:, 8] = 0
    X[3, 8] = 1.0  # a column with a single nonzero
    X = X.tocsr()
    expected = StandardScaler(with_mean=False).fit(X).scale_
    np.testing.assert_allclose(sparse_column_scale(X), expected, rtol=1e-6)
    assert sparse_column_scale(X)[4] == 1.0 and sparse_column_scale(X)[7] == 1.0
    X_test = _sparse_rows(rng, 10, 30, 0.2)
    train, test = standardize(X, X_test)
    assert scipy.sparse.issparse(train) and scipy.sparse.issparse(test)
    np.testing.assert_allclose(train.toarray(), X.toarray() / expected, rtol=1e-6)
    np.testing.assert_allclose(test.toarray(), X_test.toarray() / expected, rtol=1e-6)
    # Features up to index 10**8 of which a handful occur cost a byte and a scale each, not statistics each.
    wide = scipy.sparse.csr_matrix((np.ones(3, dtype=np.float32), np.array([5, 70_000_000, 99_999_999]),
                                    np.array([0, 1, 3])), shape=(2, 100_000_000))
    tracemalloc.start()
    try:
        scale = sparse_column_scale(wide)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 100_000_000 and scale[70_000_000] == pytest.approx(0.5) and scale[6] == 1.0
