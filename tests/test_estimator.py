"""The scikit-learn estimators: scikit-learn's own checks, equivalence with wasap.train.fit, persistence, errors."""

import pickle
import re
import signal
import warnings

import numpy as np
import pytest
import scipy.sparse
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import wasap.estimator
from wasap.config import TrainConfig
from wasap.data import Dataset
from wasap.estimator import SparseMLPClassifier, SparseMLPRegressor
from wasap.model import SparseMLP
from wasap.signals import StopRequested
from wasap.topology import DensityCapWarning
from wasap.train import TrainingDiverged, fit

SMALL = dict(hidden_layer_sizes=(16,), epsilon=4, epochs=10, batch_size=16, random_state=0, threads=1)


def _instances():
    return [
        SparseMLPClassifier(**SMALL),
        SparseMLPClassifier(**{**SMALL, "hidden_layer_sizes": (12, 8), "activation": "relu", "alpha": None,
                               "importance_pruning": True, "ip_start": 2, "ip_every": 2}),
        SparseMLPRegressor(**SMALL),
    ]


# Every check passes (pandas and array-API checks skip themselves when those libraries are absent), so the
# list of expected failures is empty; a check that starts failing must be fixed or listed here with a reason.
EXPECTED_FAILED_CHECKS = {}


@parametrize_with_checks(_instances(), expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        # The regressor standardises its targets, so no check's data makes training diverge.
        warnings.filterwarnings("error", message=".*diverged.*")
        check(estimator)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_classification(n_samples=240, n_features=12, n_informative=6, n_classes=3, random_state=0)
    X = StandardScaler().fit_transform(X)
    return X[:180], y[:180], X[180:], y[180:]


def _classifier(**changes):
    return SparseMLPClassifier(**{**SMALL, "hidden_layer_sizes": (24, 16), "epochs": 4, **changes})


def _same_weights(a, b):
    for left, right in zip(a.layers, b.layers):
        np.testing.assert_array_equal(left.indptr, right.indptr)
        np.testing.assert_array_equal(left.indices, right.indices)
        np.testing.assert_array_equal(left.data, right.data)
        np.testing.assert_array_equal(left.bias, right.bias)


def test_fit_trains_like_wasap_fit(blobs):
    X, y, _, _ = blobs
    clf = _classifier(random_state=7).fit(X, y)
    config = TrainConfig(hidden=(24, 16), epsilon=4, epochs=4, batch_size=16, seed=7, threads=1)
    model = SparseMLP.from_config(X.shape[1], 3, config, warn=False)
    data = Dataset("blobs", X.astype(np.float32), y, X.astype(np.float32), y, np.arange(3))
    summary = fit(model, data, config, progress=False, log=None)
    _same_weights(clf.model_, model)
    assert clf.loss_curve_ == [record["train_loss"] for record in summary["history"]]
    assert clf.n_iter_ == 4


def test_partial_fit_and_warm_start_continue_fit(blobs):
    X, y, X_test, _ = blobs
    once = _classifier(importance_pruning=True, ip_start=2, ip_every=1).fit(X, y)
    warm = _classifier(importance_pruning=True, ip_start=2, ip_every=1, epochs=1, warm_start=True)
    stepped = _classifier(importance_pruning=True, ip_start=2, ip_every=1)
    for _ in range(4):
        warm.fit(X, y)
        stepped.partial_fit(X, y, classes=np.unique(y))
    for other in (warm, stepped):
        _same_weights(once.model_, other.model_)
        np.testing.assert_array_equal(once.predict_proba(X_test), other.predict_proba(X_test))
        assert other.n_iter_ == 4 and len(other.loss_curve_) == 4
    # Importance Pruning ran on schedule (after epochs 2 and 3) across the separate calls.
    assert stepped.history_[-1]["nnz"][0] < stepped.history_[0]["nnz"][0]


def test_validation_data_goes_into_history(blobs):
    X, y, X_test, y_test = blobs
    clf = _classifier().fit(X, y, X_val=X_test, y_val=y_test)
    assert len(clf.history_) == 4
    assert clf.history_[-1]["test_accuracy"] == pytest.approx(clf.score(X_test, y_test))
    assert "test_accuracy" not in _classifier().fit(X, y).history_[-1]


def test_pickle_round_trip_predicts_the_same(blobs):
    X, y, X_test, _ = blobs
    for estimator, target in ((_classifier(), y), (SparseMLPRegressor(**SMALL), X[:, 0] - X[:, 1])):
        estimator.fit(X, target)
        before = estimator.predict(X_test)
        restored = pickle.loads(pickle.dumps(estimator))
        assert restored.model_._workspaces == {}
        np.testing.assert_array_equal(restored.predict(X_test), before)
        # The restored estimator trains on from where the original stopped.
        restored.partial_fit(X, target)
        assert restored.n_iter_ == estimator.n_iter_ + 1


def test_saved_model_loads_and_predicts_the_same(blobs, tmp_path):
    X, y, X_test, _ = blobs
    clf = _classifier().fit(X, y)
    clf.model_.save(tmp_path / "model.npz", classes=clf.classes_)
    loaded = SparseMLP.load(tmp_path / "model.npz")
    np.testing.assert_array_equal(loaded.predict_output(X_test), clf.predict_proba(X_test))
    np.testing.assert_array_equal(loaded.classes[loaded.predict_output(X_test).argmax(axis=1)], clf.predict(X_test))


def test_sparse_input_stays_sparse_and_trains_as_dense_input_does(blobs, monkeypatch):
    X, y, X_test, y_test = blobs
    X = np.where(np.abs(X) < 0.5, 0.0, X)
    dense = _classifier().fit(X, y)

    def densify(*_, **__):
        raise AssertionError("a sparse X was densified")

    # The oracle is the dense path on the same values; the sparse path must get there without a dense copy.
    for kind in (scipy.sparse.csr_matrix, scipy.sparse.csc_matrix, scipy.sparse.coo_matrix):
        monkeypatch.setattr(kind, "toarray", densify)
    sparse = _classifier().fit(scipy.sparse.csr_matrix(X), y)
    proba = sparse.predict_proba(scipy.sparse.csc_matrix(X_test))
    monkeypatch.undo()
    # Sums over a batch's nonzeros round differently from sums over its dense rows: close, not equal.
    np.testing.assert_allclose(proba, dense.predict_proba(X_test), atol=1e-4)
    np.testing.assert_array_equal(sparse.predict(scipy.sparse.csr_matrix(X_test)), dense.predict(X_test))
    # Two workers (WASAP-SGD over shared memory) train on it too, and the server densifies nothing.
    monkeypatch.setattr(scipy.sparse.csr_matrix, "toarray", densify)
    parallel = _classifier(workers=2).fit(scipy.sparse.csr_matrix(X), y)
    monkeypatch.undo()
    assert parallel.n_iter_ == 4 and parallel.loss_curve_[-1] < parallel.loss_curve_[0]
    assert parallel.predict(scipy.sparse.csr_matrix(X_test)).shape == y_test.shape


def test_hyperparameters_reach_the_network(blobs):
    X, y, _, _ = blobs
    clf = _classifier(alpha=0.25, epsilon=2, epochs=0, random_state=3).fit(X, y)
    assert clf.model_.alpha == 0.25 and clf.model_.activation == "all-relu"
    # An int random_state is the command line's --seed.
    config = TrainConfig(hidden=(24, 16), epsilon=2, alpha=0.25, seed=3)
    _same_weights(clf.model_, SparseMLP.from_config(X.shape[1], 3, config, warn=False))
    hidden = np.int64(10)  # as a parameter grid hands it over
    assert _classifier(hidden_layer_sizes=hidden, epochs=1).fit(X, y).model_.sizes == [12, 10, 3]


def test_dense_layers_on_tiny_data_warn_only_when_verbose(blobs, capsys):
    X, y, _, _ = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("error", DensityCapWarning)
        _classifier(epsilon=50, epochs=1).fit(X, y)
    with pytest.warns(DensityCapWarning):
        _classifier(epsilon=50, epochs=1, verbose=True).fit(X, y)
    assert "epoch 1" in capsys.readouterr().out


@pytest.mark.parametrize("make_input, message", [
    (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), y), "NaN"),
    (lambda X, y: (X, y[:-1]), "inconsistent numbers of samples"),
    (lambda X, y: (X, np.zeros_like(y)), "single class"),
    (lambda X, y: (X, X[:, 0]), "Unknown label type"),
    (lambda X, y: (X[:, 0], y), "Expected 2D array"),
])
def test_bad_training_input_is_refused_clearly(blobs, make_input, message):
    X, y, _, _ = blobs
    with pytest.raises(ValueError, match=message):
        _classifier().fit(*make_input(X, y))


def test_bad_prediction_input_is_refused_clearly(blobs):
    X, y, X_test, _ = blobs
    clf = _classifier(epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="X has 11 features, but SparseMLPClassifier is expecting 12"):
        clf.predict(X_test[:, :11])
    X_test = X_test.copy()
    X_test[2, 3] = np.inf
    with pytest.raises(ValueError, match="1 NaN or infinite value.*row 2, column 3"):
        clf.predict(X_test)
    with pytest.raises(ValueError, match="lacks"):
        clf.partial_fit(X, np.where(y == 0, 9, y))


def test_configuration_errors_name_the_parameter(blobs):
    X, y, _, _ = blobs
    with pytest.raises(ValueError, match="alpha must be in"):
        _classifier(alpha=2.0).fit(X, y)
    with pytest.raises(ValueError, match="hidden_layer_sizes must be integers"):
        _classifier(hidden_layer_sizes=(2.5,)).fit(X, y)
    with pytest.raises(ValueError, match="both X_val and y_val"):
        _classifier().fit(X, y, X_val=X)


def test_workers_need_the_parallel_trainer(blobs):
    X, y, _, _ = blobs
    try:
        from wasap.parallel import fit_parallel  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="parallel trainer"):
            _classifier(workers=2).fit(X, y)
    else:
        # Synchronous: the same seed gives the same model (asynchronous arrival order depends on timing).
        clf = _classifier(workers=2, sync=True, epochs=30).fit(X, y)
        assert clf.n_iter_ == 30 and len(clf.history_) == 30
        assert clf.score(X, y) > 0.6  # three classes: chance is 1/3
        # The workers and their shared memory are gone: the fitted network pickles as plain arrays.
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), clf.predict_proba(X))


def test_regressor_learns_and_handles_several_targets():
    X, y = make_regression(n_samples=300, n_features=8, n_targets=2, noise=0.1, random_state=0)
    X = StandardScaler().fit_transform(X)  # y stays raw: the regressor standardises it
    reg = SparseMLPRegressor(**{**SMALL, "hidden_layer_sizes": (32,), "epochs": 30, "zeta": 0.1}).fit(X, y)
    assert reg.predict(X).shape == (300, 2) and reg.n_outputs_ == 2
    assert reg.score(X, y) > 0.85
    single = SparseMLPRegressor(**{**SMALL, "epochs": 2}).fit(X, y[:, 0])
    assert single.predict(X).shape == (300,)


def test_pipeline_in_grid_search_with_processes(blobs):
    X, y, X_test, y_test = blobs
    pipeline = make_pipeline(StandardScaler(), _classifier(epochs=6))
    grid = {"sparsemlpclassifier__epsilon": [2, 6], "sparsemlpclassifier__alpha": [0.25, 0.5]}
    search = GridSearchCV(pipeline, grid, cv=2, n_jobs=2).fit(X, y)
    assert set(search.best_params_) == set(grid)
    assert len(search.cv_results_["mean_test_score"]) == 4
    assert search.score(X_test, y_test) > 0.5
    # The processes trained exactly what this process trains.
    here = GridSearchCV(pipeline, grid, cv=2, n_jobs=1).fit(X, y)
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"], here.cv_results_["mean_test_score"])


def _stop_when_epoch_starts(monkeypatch, epoch, error):
    """Make the estimators' trainer raise ``error`` as its ``epoch``-th epoch (over all calls) starts."""
    original = wasap.estimator._ContinuedTrainer.train_epoch
    started = []

    def train_epoch(self, X, y, *, progress=None):
        started.append(epoch)
        if len(started) == epoch:
            raise error
        return original(self, X, y, progress=progress)

    monkeypatch.setattr(wasap.estimator._ContinuedTrainer, "train_epoch", train_epoch)


@pytest.mark.parametrize("error, message", [
    (KeyboardInterrupt(), r"interrupted by user \(Ctrl-C\): keeping the model trained so far"),
    (TrainingDiverged("the loss became nan at step 25"),
     r"diverged after 2 epoch\(s\); the model of the last good epoch is kept\. Lower lr"),
])
def test_a_fit_stopped_in_epoch_three_keeps_two_and_resumes_exactly(blobs, monkeypatch, error, message):
    X, y, _, _ = blobs
    uninterrupted = _classifier().fit(X, y)
    _stop_when_epoch_starts(monkeypatch, 3, error)
    clf = _classifier()
    with pytest.warns(ConvergenceWarning, match=message):
        clf.fit(X, y)
    assert clf.n_iter_ == 2 and clf.loss_curve_ == uninterrupted.loss_curve_[:2]
    monkeypatch.undo()
    # The two epochs (and the SET step after the second) are kept: two more give the uninterrupted network.
    clf.set_params(warm_start=True, epochs=2).fit(X, y)
    _same_weights(clf.model_, uninterrupted.model_)
    assert clf.loss_curve_ == uninterrupted.loss_curve_


def test_sigterm_in_fit_keeps_the_model_then_exits_with_143(blobs, monkeypatch):
    X, y, _, _ = blobs
    uninterrupted = _classifier().fit(X, y)
    # What wasap.train.fit's signal handler raises when SIGTERM arrives (no real signal is sent here).
    _stop_when_epoch_starts(monkeypatch, 3, StopRequested(signal.SIGTERM, at_safe_point=True))
    clf = _classifier()
    with pytest.warns(ConvergenceWarning, match=r"terminated \(SIGTERM\): keeping the model trained so far"):
        with pytest.raises(SystemExit) as exited:
            clf.fit(X, y)
    assert exited.value.code == 143
    assert clf.n_iter_ == 2 and clf.loss_curve_ == uninterrupted.loss_curve_[:2] and len(clf.history_) == 2
    assert clf.predict(X).shape == y.shape


def _interrupt_at_batch(monkeypatch, batch):
    """Make the network raise KeyboardInterrupt as its ``batch``-th training batch (from now on) starts.

    Returns the list that gets one item per batch started.
    """
    original = SparseMLP.train_batch
    started = []

    def train_batch(self, *args, **kwargs):
        started.append(batch)
        if len(started) == batch:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SparseMLP, "train_batch", train_batch)
    return started


def test_ctrl_c_in_partial_fit_warns_and_keeps_the_batches_trained(blobs, monkeypatch):
    X, y, _, _ = blobs
    kept = []
    for stop_at in (1, 2):  # Ctrl-C before the second epoch's first batch, and after it
        clf = _classifier().partial_fit(X, y, classes=np.unique(y))
        _interrupt_at_batch(monkeypatch, stop_at)
        with pytest.warns(ConvergenceWarning, match=r"interrupted by user \(Ctrl-C\)"):
            clf.partial_fit(X, y)
        monkeypatch.undo()
        assert clf.n_iter_ == 1 and len(clf.loss_curve_) == 1  # the unfinished epoch is not counted
        kept.append(clf)
    # The batch trained before Ctrl-C stayed in the network: it was not rolled back.
    assert not all(np.array_equal(a.data, b.data) for a, b in zip(kept[0].model_.layers, kept[1].model_.layers))
    # The next call is a whole epoch over its own data, not the rest of the interrupted one.
    batches = _interrupt_at_batch(monkeypatch, None)
    kept[1].partial_fit(X[:50], y[:50])
    assert len(batches) == 4 and kept[1].n_iter_ == 2  # 50 samples in batches of 16


@pytest.mark.parametrize("scale, changes, cause", [
    (1000.0, {}, r"inputs are far from unit scale.*StandardScaler"),
    (1.0, {"lr": 100.0}, r"Lower lr \(now 100\)"),
])
def test_divergence_in_the_first_epoch_raises_in_fit_and_partial_fit(blobs, scale, changes, cause):
    X, y, _, _ = blobs
    expected = rf"before it completed an epoch, so this call learnt nothing; the network is left untrained\. .*{cause}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow warning may leak
        clf = _classifier(**changes)
        with pytest.raises(TrainingDiverged, match=expected):
            clf.fit(X * scale, y)
        assert clf.n_iter_ == 0 and clf.loss_curve_ == [] and clf.model_.is_finite()
        with pytest.raises(TrainingDiverged, match=expected):
            _classifier(**changes).partial_fit(X * scale, y, classes=np.unique(y))


def test_a_diverging_partial_fit_leaves_the_network_as_it_found_it(blobs, monkeypatch):
    X, y, _, _ = blobs
    diverged = _classifier().partial_fit(X, y, classes=np.unique(y))
    with pytest.raises(TrainingDiverged, match="left as the previous call trained it.*unit scale"):
        diverged.partial_fit(X * 1000, y)
    assert diverged.n_iter_ == 1 and len(diverged.loss_curve_) == 1
    # The oracle: the same second call stopped before its first batch (SET between the calls has run).
    untouched = _classifier().partial_fit(X, y, classes=np.unique(y))
    _interrupt_at_batch(monkeypatch, 1)
    with pytest.warns(ConvergenceWarning, match="Ctrl-C"):
        untouched.partial_fit(X * 1000, y)
    _same_weights(diverged.model_, untouched.model_)


def _epoch_lines(text):
    return [line for line in text.splitlines() if line.startswith("epoch ")]


def test_verbose_names_the_data_it_evaluated(blobs, capsys):
    X, y, X_test, y_test = blobs
    clf = _classifier(epochs=2, verbose=True).fit(X, y)
    lines = _epoch_lines(capsys.readouterr().out)
    assert len(lines) == 2 and not any("test" in line for line in lines)
    # The figure is the training data's accuracy (no SET after the last epoch: the final network's).
    shown = float(re.search(r"training-set accuracy ([\d.]+)%", lines[-1]).group(1))
    assert shown == pytest.approx(100 * clf.score(X, y), abs=0.006)
    clf = _classifier(epochs=2, verbose=True).fit(X, y, X_val=X_test, y_val=y_test)
    lines = _epoch_lines(capsys.readouterr().out)
    shown = float(re.search(r"test accuracy ([\d.]+)%", lines[-1]).group(1))
    assert shown == pytest.approx(100 * clf.score(X_test, y_test), abs=0.006)
    SparseMLPRegressor(**{**SMALL, "epochs": 2, "verbose": True}).fit(X, X[:, 0])
    lines = _epoch_lines(capsys.readouterr().out)
    assert len(lines) == 2 and all("training-set loss" in line and "test" not in line for line in lines)
