"""wasap.train.fit end to end: learning, the output folder contract, Ctrl-C, divergence, Importance Pruning."""

import json
import os

import numpy as np
import pytest
from sklearn.datasets import make_classification

from wasap.config import TrainConfig
from wasap.data import Dataset
from wasap.model import SparseMLP
from wasap.records import OutputDirError
from wasap.train import SequentialTrainer, fit

EPOCH_KEYS = {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "nnz", "train_seconds",
              "eval_seconds", "evolve_seconds"}
SUMMARY_KEYS = {"config", "best_test_accuracy", "final_test_accuracy", "nnz_start", "nnz_end", "init_seconds",
                "total_seconds", "peak_rss_bytes"}


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=600, n_features=20, n_informative=8, n_redundant=4, n_classes=2,
                               class_sep=1.5, random_state=0)
    X = ((X - X.mean(axis=0)) / X.std(axis=0)).astype(np.float32)
    y = y.astype(np.int64)
    return Dataset("blobs", X[:420], y[:420], X[420:], y[420:], np.array(["no", "yes"]))


@pytest.fixture(scope="module")
def dataset(data):
    return data


def _config(**changes):
    values = dict(hidden=(32, 16), epsilon=4, epochs=4, batch_size=32, lr=0.02, dropout=0.2, threads=1, seed=1)
    values.update(changes)
    return TrainConfig(**values)


def _model(data, config):
    return SparseMLP.from_config(data.X_train.shape[1], 2, config, warn=False)


def _fit(data, config, **kwargs):
    model = _model(data, config)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("log", None)
    return model, fit(model, data, config, **kwargs)


def _same_weights(a, b):
    return all(np.array_equal(getattr(x, n), getattr(y, n))
               for x, y in zip(a.layers, b.layers) for n in ("indptr", "indices", "data", "bias"))


class Wrapped:
    """A trainer around SequentialTrainer that can misbehave in a given epoch."""

    def __init__(self, model, config, *, interrupt_in=None, poison_in=None):
        self.inner = SequentialTrainer(model, config)
        self.model = model
        self.epoch = 0
        self.interrupt_in = interrupt_in
        self.poison_in = poison_in
        self.snapshots = {}
        self.topology_after_training = None

    def train_epoch(self, X, y, *, progress=None):
        self.epoch += 1
        if self.epoch == self.interrupt_in:
            raise KeyboardInterrupt
        result = self.inner.train_epoch(X, y, progress=progress)
        if self.epoch == self.poison_in:
            self.model.layers[1].data[3] = np.nan
        self.topology_after_training = [layer.keys().copy() for layer in self.model.layers]
        return result

    def end_of_epoch(self, epoch, last):
        self.inner.end_of_epoch(epoch, last)
        self.snapshots[epoch] = self.model.copy()


def test_fit_learns(data):
    config = _config(epochs=30)
    model, summary = _fit(data, config)
    assert summary["stopped"] == "completed"
    assert len(summary["history"]) == 30
    assert summary["final_test_accuracy"] > 0.8
    assert summary["best_test_accuracy"] >= summary["final_test_accuracy"]
    _, accuracy = model.evaluate(data.X_test, data.y_test)
    assert accuracy == pytest.approx(summary["final_test_accuracy"])
    losses = [r["train_loss"] for r in summary["history"]]
    assert losses[-1] < losses[0]


def test_output_folder(dataset, tmp_path):
    data = dataset
    out = tmp_path / "run"
    config = _config(epochs=3)
    model, summary = _fit(data, config, out_dir=str(out))
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "metrics.jsonl", "model.npz", "summary.json"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    for epoch, record in enumerate(records, start=1):
        assert EPOCH_KEYS <= set(record)
        assert record["epoch"] == epoch
        assert record["nnz"] == summary["history"][epoch - 1]["nnz"]
        assert isinstance(record["nnz"], list) and len(record["nnz"]) == 3
        assert all(isinstance(n, int) for n in record["nnz"])
        for key in ("train_seconds", "eval_seconds", "evolve_seconds"):
            assert record[key] >= 0
        assert 0 <= record["test_accuracy"] <= 1
    written = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(written)
    assert written["config"] == config.to_dict()
    assert TrainConfig.from_dict(written["config"]) == config
    assert written["nnz_start"] == _model(data, config).nnz_per_layer()
    assert written["nnz_end"] == model.nnz_per_layer() == records[-1]["nnz"]
    assert written["final_test_accuracy"] == records[-1]["test_accuracy"]
    assert written["best_test_accuracy"] == max(r["test_accuracy"] for r in records)
    assert written["peak_rss_bytes"] > 10 * 2 ** 20
    assert written["total_seconds"] > 0
    loaded = SparseMLP.load(out / "model.npz")
    np.testing.assert_array_equal(loaded.predict_output(data.X_test), model.predict_output(data.X_test))
    np.testing.assert_array_equal(loaded.classes, data.classes)


def test_output_folder_not_empty(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    config = _config(epochs=1)
    with pytest.raises(OutputDirError):
        _fit(data, config, out_dir=str(out))
    assert os.listdir(out) == ["notes.txt"]
    _fit(data, config, out_dir=str(out), overwrite=True)
    assert {"metrics.jsonl", "summary.json", "model.npz"} <= set(os.listdir(out))
    # Overwriting a previous run starts metrics.jsonl afresh.
    _fit(data, config, out_dir=str(out), overwrite=True)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_keyboard_interrupt_keeps_the_run(data, tmp_path):
    out = tmp_path / "run"
    config = _config(epochs=5)
    model = _model(data, config)
    trainer = Wrapped(model, config, interrupt_in=3)
    summary = fit(model, data, config, out_dir=str(out), trainer=trainer, progress=False, log=None)
    assert summary["stopped"] == "interrupted"
    assert len(summary["history"]) == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "summary.json").read_text())["stopped"] == "interrupted"
    loaded = SparseMLP.load(out / "model.npz")
    assert _same_weights(loaded, model)
    assert _same_weights(model, trainer.snapshots[2])


def test_divergence_restores_last_good_epoch(data, tmp_path):
    out = tmp_path / "run"
    config = _config(epochs=5)
    model = _model(data, config)
    trainer = Wrapped(model, config, poison_in=3)
    summary = fit(model, data, config, out_dir=str(out), trainer=trainer, progress=False, log=None)
    assert summary["stopped"] == "diverged"
    assert len(summary["history"]) == 2
    assert model.is_finite()
    assert _same_weights(model, trainer.snapshots[2])
    loaded = SparseMLP.load(out / "model.npz")
    assert _same_weights(loaded, model)
    assert np.isfinite(loaded.predict_output(data.X_test)).all()


LAYER_ARRAYS = ("indptr", "indices", "data", "bias", "velocity", "bias_velocity", "col_indptr", "col_rows",
                "col_perm")


def test_divergence_restores_the_last_good_epoch_bit_for_bit_from_memory(data):
    """Without checkpoints, the snapshot in memory (no column view) gives back every array of the model."""
    config = _config(epochs=5)
    model = _model(data, config)
    trainer = Wrapped(model, config, poison_in=3)
    lines = []
    summary = fit(model, data, config, trainer=trainer, progress=False, log=lines.append)
    assert summary["stopped"] == "diverged" and len(summary["history"]) == 2
    assert any("kept the model of the last good epoch" in line for line in lines)
    good = trainer.snapshots[2]  # SparseMLP.copy after epoch 2, column view and momentum included
    assert len(model.layers) == len(good.layers)
    for restored, expected in zip(model.layers, good.layers):
        for name in LAYER_ARRAYS:
            got, want = getattr(restored, name), getattr(expected, name)
            assert got.dtype == want.dtype and np.array_equal(got, want), name
    # The momentum came back too: training goes on from there exactly as from a copy of that model.
    SequentialTrainer(model, config).train_epoch(data.X_train, data.y_train)
    SequentialTrainer(good, config).train_epoch(data.X_train, data.y_train)
    assert _same_weights(model, good)


def test_the_snapshot_holds_no_column_view(data):
    from wasap.train import _LastGood

    model = _model(data, _config())
    last_good = _LastGood(model, None)
    kept = sum(array.nbytes for saved in last_good.snapshot for array in saved if isinstance(array, np.ndarray))
    column_view = sum(getattr(layer, name).nbytes for layer in model.layers
                      for name in ("col_indptr", "col_rows", "col_perm"))
    whole = sum(getattr(layer, name).nbytes for layer in model.layers for name in LAYER_ARRAYS)
    assert kept == whole - column_view


def test_without_keep_last_good_no_copy_is_made_and_a_divergence_keeps_the_model_as_it_stopped(data, monkeypatch):
    from wasap import train as train_module

    made = []

    class Counted(train_module._LastGood):
        def __init__(self, *args, **kwargs):
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(train_module, "_LastGood", Counted)
    config = _config(epochs=5)
    model = _model(data, config)
    lines = []
    summary = fit(model, data, config, trainer=Wrapped(model, config, poison_in=3), progress=False,
                  log=lines.append, keep_last_good=False)
    assert summary["stopped"] == "diverged" and not made
    assert not model.is_finite()
    assert any("left as it was when training stopped" in line for line in lines)
    fit(_model(data, config), data, _config(epochs=1), progress=False, log=None)
    assert len(made) == 1  # the default keeps one


def test_huge_learning_rate_diverges_cleanly(data):
    config = _config(epochs=3, lr=1e6)
    initial = _model(data, config)
    model, summary = _fit(data, config)
    assert summary["stopped"] == "diverged"
    assert model.is_finite()
    if summary["history"]:
        assert len(summary["history"]) < 3
    else:  # diverged in the first epoch: the last good model is the initial one
        assert _same_weights(model, initial)
    assert np.isfinite(model.predict_output(data.X_test)).all()


def test_importance_pruning_shrinks_hidden_layers_only(data):
    config = _config(epochs=6, importance_pruning=True, ip_start=2, ip_every=2, ip_percentile=20)
    model, summary = _fit(data, config)
    nnz = [r["nnz"] for r in summary["history"]]
    start = summary["nnz_start"]
    # Pruning after epochs 2 and 4 (not after 6, the last): hidden layers shrink there and only there.
    for epoch, counts in enumerate(nnz, start=1):
        previous = start if epoch == 1 else nnz[epoch - 2]
        for l in (0, 1):
            if epoch in (2, 4):
                assert counts[l] < previous[l], f"layer {l} epoch {epoch}"
            else:
                assert counts[l] == previous[l], f"layer {l} epoch {epoch}"
        assert counts[2] == start[2]  # never the output layer
    assert summary["nnz_end"] == nnz[-1] == model.nnz_per_layer()


def test_no_topology_change_after_last_epoch(data):
    config = _config(epochs=3)
    model = _model(data, config)
    trainer = Wrapped(model, config)
    summary = fit(model, data, config, trainer=trainer, progress=False, log=None)
    assert summary["stopped"] == "completed"
    assert summary["nnz_end"] == summary["history"][-1]["nnz"]
    for keys, layer in zip(trainer.topology_after_training, model.layers):
        np.testing.assert_array_equal(keys, layer.keys())
    # ... while between epochs SET did change it.
    assert not np.array_equal(trainer.snapshots[1].layers[0].keys(), _model(data, config).layers[0].keys())


def test_output_files_follow_umask(data, tmp_path):
    """Atomic writes (mkstemp + replace) must not leave summary.json and model.npz private (0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    out = tmp_path / "run"
    _fit(data, _config(epochs=1), out_dir=str(out))
    expected = 0o666 & ~mask
    modes = {name: oct(os.stat(out / name).st_mode & 0o777) for name in sorted(os.listdir(out))}
    assert modes == {name: oct(expected) for name in modes}


def _strict_json(line):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON (RFC 8259)")
    return json.loads(line, parse_constant=refuse)


def test_regression_run_writes_strict_json(tmp_path):
    """mse runs have no accuracy; metrics.jsonl must still be valid JSON (null, not NaN) for other tools."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6)).astype(np.float32)
    Y = np.stack([X[:, 0] - X[:, 1], 0.5 * X[:, 2]], axis=1).astype(np.float32)
    data = Dataset("values", X[:150], Y[:150], X[150:], Y[150:], np.empty(0))
    config = _config(hidden=(16,), epochs=4, output_activation="identity", loss="mse", dropout=0.0)
    model = SparseMLP.from_config(6, 2, config, warn=False)
    out = tmp_path / "run"
    summary = fit(model, data, config, out_dir=str(out), progress=False, log=None)
    assert summary["stopped"] == "completed"
    losses = [r["test_loss"] for r in summary["history"]]
    assert losses[-1] < losses[0]
    records = [_strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4
    assert all(EPOCH_KEYS <= set(r) for r in records)
    _strict_json((out / "summary.json").read_text())


def test_fit_accepts_float64_features(data):
    """Features straight from numpy/sklearn are float64: the Dataset converts them, once, as prediction does."""
    config = _config(epochs=2)
    as64 = Dataset("blobs", data.X_train.astype(np.float64), data.y_train, data.X_test.astype(np.float64),
                   data.y_test, data.classes)
    assert as64.X_train.dtype == np.float32
    model64, summary64 = _fit(as64, config)
    model32, summary32 = _fit(data, config)
    assert summary64["stopped"] == "completed"
    assert _same_weights(model64, model32)


def test_summary_records_how_the_run_started_and_the_compile_time(dataset, tmp_path):
    import wasap
    from wasap import train as train_module

    config = _config(epochs=2)
    train_module._PREPARED.clear()
    lines = []
    model = _model(dataset, config)
    fit(model, dataset, config, out_dir=str(tmp_path / "run"), progress=False, log=lines.append,
        command_line=["--epochs", "2"])
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["dataset"] == "blobs"
    assert written["wasap_version"] == wasap.__version__
    assert written["command_line"] == ["--epochs", "2"]
    assert written["started_at"].endswith("+00:00") and written["resumed_from"] is None
    assert written["compile_seconds"] > 0
    assert sum("preparing the numba kernels" in line for line in lines) == 1
    # The kernels are prepared once a process: a second run says nothing about them.
    lines.clear()
    fit(_model(dataset, config), dataset, config, progress=False, log=lines.append)
    assert not any("numba kernels" in line for line in lines)
