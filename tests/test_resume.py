"""Checkpoints, --resume and stop signals: a stopped run continues to the model of an uninterrupted one."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from wasap import SparseMLP
from wasap.checkpoint import CHECKPOINT_FILE, CheckpointError, Checkpointer, load_checkpoint, peek_checkpoint_config
from wasap.config import TrainConfig
from wasap.data import load_dataset
from wasap.records import OutputDirError, OutputWriteError
from wasap.run import main
from wasap.signals import StopRequested, StopSignals
from wasap.train import fit

#: A small run of 30 short epochs of 14 batches each.
RUN = ["--dataset", "synthetic", "--n-samples", "2500", "--n-features", "30", "--n-classes", "3",
       "--hidden", "40,30", "--epsilon", "5", "--batch-size", "128", "--epochs", "30", "--threads", "1",
       "--seed", "3", "--importance-pruning", "--ip-start", "2", "--ip-every", "2"]
TIMING_KEYS = ("train_seconds", "eval_seconds", "evolve_seconds")
ARRAYS = ("indptr", "indices", "data", "bias")


def _same_model(path_a, path_b):
    a, b = SparseMLP.load(path_a), SparseMLP.load(path_b)
    assert a.sizes == b.sizes
    for la, lb in zip(a.layers, b.layers):
        for name in ARRAYS:
            np.testing.assert_array_equal(getattr(la, name), getattr(lb, name), err_msg=name)


def _metrics(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "wasap.run", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _start(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "wasap.run", *RUN, "--out", str(out), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_epochs(process, out, count, timeout=120):
    deadline = time.monotonic() + timeout
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= count):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the run did not reach epoch {count}:\n{process.communicate()[0]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = _cli(*RUN, "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    return out


def test_sigkill_then_resume_gives_the_uninterrupted_model(reference, tmp_path):
    out = tmp_path / "run"
    # Checkpoints after every batch: the kill lands after some batch of some epoch, wherever it lands.
    process = _start(out, "--checkpoint-every", "0")
    _wait_for_epochs(process, out, 2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (out / "summary.json").exists()
    _, state = load_checkpoint(out / CHECKPOINT_FILE)
    assert 1 <= state["epoch"] < 30
    result = _cli("--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    _same_model(reference / "model.npz", out / "model.npz")
    assert _metrics(out) == _metrics(reference)  # each epoch once, with the same figures
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == state["epoch"] and summary["stopped"] == "completed"
    assert summary["epochs_completed"] == 30


def test_sigterm_writes_the_outputs_and_the_run_resumes_exactly(reference, tmp_path):
    out = tmp_path / "run"
    process = _start(out)
    _wait_for_epochs(process, out, 1)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 143, output
    assert "Traceback" not in output and f"--resume {out}" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "terminated"
    assert (out / "model.npz").exists()
    # The stop came between two batches, and the checkpoint taken there continues exactly.
    result = _cli("--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    _same_model(reference / "model.npz", out / "model.npz")
    assert _metrics(out) == _metrics(reference)


def test_two_signals_stop_at_once_and_leave_a_readable_checkpoint(tmp_path):
    out = tmp_path / "run"
    process = _start(out, "--epochs", "100000")
    _wait_for_epochs(process, out, 1)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "Traceback" not in output
    model, state = load_checkpoint(out / CHECKPOINT_FILE)
    assert state["epoch"] >= 1 and model.is_finite()


@contextlib.contextmanager
def interrupted_at_batch(monkeypatch, model, call):
    """Within the block, ``model``'s ``call``-th :meth:`SparseMLP.train_batch` raises KeyboardInterrupt instead.

    An interrupt outside the safe points of the stop signals: no checkpoint is taken for it, so the
    last one on disk is the last the run took on its own.
    """
    original = SparseMLP.train_batch
    calls = {"n": 0}

    def stopping(self, *args, **kwargs):
        if self is model:
            calls["n"] += 1
            if calls["n"] == call:
                raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SparseMLP, "train_batch", stopping)
    try:
        yield
    finally:
        monkeypatch.setattr(SparseMLP, "train_batch", original)


def test_resume_in_process_from_a_mid_epoch_checkpoint(tmp_path, monkeypatch):
    """A stop inside a batch: the checkpoint of the batch before it continues to the same model."""
    data = load_dataset("synthetic", n_samples=1200, n_features=12, n_classes=2, seed=1)
    config = TrainConfig(hidden=(16, 8), epsilon=4, epochs=3, batch_size=100, threads=1, seed=5)
    reference = SparseMLP.from_config(data.n_features, data.n_classes, config)
    fit(reference, data, config, out_dir=str(tmp_path / "reference"), progress=False, log=None)

    batches_per_epoch = -(-data.n_train // config.batch_size)
    out = tmp_path / "run"
    model = SparseMLP.from_config(data.n_features, data.n_classes, config)
    with interrupted_at_batch(monkeypatch, model, batches_per_epoch + 5):  # epoch 2, after 4 of its batches
        summary = fit(model, data, config, out_dir=str(out), progress=False, log=None, checkpoint_every=0)
    assert summary["stopped"] == "interrupted"
    resumed, state = load_checkpoint(out / CHECKPOINT_FILE)
    assert state["epoch"] == 1 and state["trainer"]["position"]["batches"] == 4
    summary = fit(resumed, data, config, out_dir=str(out), progress=False, log=None, resume=state)
    assert summary["stopped"] == "completed" and summary["resumed_from"] == 1
    _same_model(tmp_path / "reference" / "model.npz", out / "model.npz")


def test_resume_refuses_other_flags_and_missing_checkpoints(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--resume", str(empty)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["--resume", str(empty), "--lr", "0.1"]) == 2
    assert "remove --lr" in capsys.readouterr().err


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    process = _start(out, "--epochs", "100000")
    try:
        _wait_for_epochs(process, out, 1)
        result = _cli(*RUN, "--out", str(out), "--overwrite", "--quiet")
        assert result.returncode == 2
        assert "another wasap run is writing" in result.stderr and "Traceback" not in result.stderr
    finally:
        process.kill()
        process.wait(timeout=30)


def test_overwrite_removes_stray_temporary_files_and_keeps_foreign_ones(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".wasap-abc123.tmp").write_bytes(b"half a file")
    (out / "notes.txt").write_text("mine")
    assert main([*RUN, "--epochs", "3", "--out", str(out), "--overwrite", "--quiet"]) == 0
    names = set(os.listdir(out))
    assert "notes.txt" in names and not any(name.endswith(".tmp") for name in names)


def test_disk_full_is_a_clear_error_that_says_what_was_kept(tmp_path):
    """A real full file system: a small tmpfs in a private mount namespace (root only)."""
    script = (
        "mount -t tmpfs -o size=200k tmpfs {dir} && cd {cwd} && "
        "{python} -m wasap.run --dataset synthetic --n-samples 400 --n-features 20 --hidden 3000,3000 "
        "--epsilon 2 --epochs 2 --threads 1 --out {dir}/run --quiet"
    ).format(dir=tmp_path, cwd=os.getcwd(), python=sys.executable)
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here (unshare: {probe.stderr.decode().strip()})")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode in (1, 2), result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "No space left on device" in result.stderr and "checkpoint" in result.stderr, result.stderr


def test_write_errors_name_the_file_and_the_checkpoint(tmp_path, monkeypatch):
    data = load_dataset("synthetic", n_samples=300, n_features=8, n_classes=2, seed=0)
    config = TrainConfig(hidden=(8,), epsilon=2, epochs=2, threads=1)
    model = SparseMLP.from_config(data.n_features, data.n_classes, config)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("wasap.records.write_json_atomic", full)
    with pytest.raises(OutputWriteError, match="summary.json: No space left on device. The last checkpoint"):
        fit(model, data, config, out_dir=str(tmp_path / "run"), progress=False, log=None)


def test_checkpoint_policy():
    now = [0.0]
    every = Checkpointer("unused", every=100.0, clock=lambda: now[0])
    every.write_seconds = 1.0
    now[0] = 25.0  # writing took 1 s: after an epoch, 20 s of training pays for it
    assert every.due(mid_epoch=False) and not every.due(mid_epoch=True)
    now[0] = 100.0
    assert every.due(mid_epoch=True)
    always = Checkpointer("unused", every=0.0, clock=lambda: now[0])
    assert always.due(mid_epoch=True) and always.due(mid_epoch=False)
    with pytest.raises(ValueError):
        Checkpointer("unused", every=-1)


def test_stop_signals_first_waits_for_a_safe_point_second_stops_at_once():
    lines = []
    with StopSignals(lines.append) as stop:
        stop.check()  # nothing requested: no exception
        stop._handle(signal.SIGTERM, None)
        assert lines and "after the batch" in lines[0]
        with pytest.raises(StopRequested) as safe:
            stop.check()
        assert safe.value.at_safe_point and safe.value.signum == signal.SIGTERM
        with pytest.raises(StopRequested) as at_once:
            stop._handle(signal.SIGINT, None)
        assert not at_once.value.at_safe_point
    with StopSignals(lines.append) as stop:
        with stop.deferred():
            stop._handle(signal.SIGINT, None)  # noted while the outputs are written
            stop.check()
            with pytest.raises(StopRequested):
                stop._handle(signal.SIGINT, None)


def test_load_checkpoint_refuses_a_plain_model_file(tmp_path):
    model = SparseMLP.random([4, 3, 2], epsilon=1, seed=0)
    model.save(tmp_path / "model.npz")
    with pytest.raises(CheckpointError, match="not a wasap-checkpoint"):
        load_checkpoint(tmp_path / "model.npz")


def test_output_dir_error_is_still_an_output_dir_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError):
        fit(SparseMLP.random([4, 3, 2], epsilon=1), load_dataset("synthetic", n_samples=50, n_features=4),
            TrainConfig(hidden=(3,), epochs=1), out_dir=str(tmp_path / "file"), log=None)


PARALLEL = ["--dataset", "synthetic", "--n-samples", "3000", "--n-features", "30", "--n-classes", "3",
            "--hidden", "40,30", "--epsilon", "5", "--epochs", "12", "--threads", "1", "--seed", "3",
            "--workers", "2", "--quiet"]


def _kill_after(out, args, epochs):
    process = subprocess.Popen([sys.executable, "-m", "wasap.run", *args, "--out", str(out),
                                "--checkpoint-every", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    _wait_for_epochs(process, out, epochs)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def _same_metrics_up_to_summation_order(out_a, out_b):
    # Phase one sums the workers' losses in the order they arrive: the last bit of train_loss may differ.
    a, b = _metrics(out_a), _metrics(out_b)
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.pop("train_loss") == pytest.approx(rb.pop("train_loss"), rel=1e-12)
        assert ra == rb


@pytest.mark.parametrize("extra", [["--sync"], ["--sync", "--phase2-start", "8"]], ids=["sync", "phase-two"])
def test_synchronous_parallel_run_resumes_to_the_uninterrupted_model(tmp_path, extra):
    reference, out = tmp_path / "reference", tmp_path / "run"
    result = _cli(*PARALLEL, *extra, "--out", str(reference))
    assert result.returncode == 0, result.stderr
    _kill_after(out, [*PARALLEL, *extra], 4 if "--phase2-start" not in extra else 9)
    _, state = load_checkpoint(out / CHECKPOINT_FILE)
    result = _cli("--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == state["epoch"] and summary["epochs_completed"] == 12
    if "--phase2-start" in extra:
        # Phase two's replicas start again from the checkpoint's average: the run goes on, each epoch once.
        assert state["trainer"]["phase"] == 2
        assert [r["epoch"] for r in _metrics(out)] == list(range(1, 13))
    else:
        _same_model(reference / "model.npz", out / "model.npz")
        _same_metrics_up_to_summation_order(reference, out)


def test_asynchronous_parallel_run_resumes_and_completes(tmp_path):
    out = tmp_path / "run"
    _kill_after(out, PARALLEL, 3)
    result = _cli("--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert [r["epoch"] for r in _metrics(out)] == list(range(1, 13))
    assert json.loads((out / "summary.json").read_text())["stopped"] == "completed"


def test_a_run_that_diverges_in_epoch_1_writes_its_outputs_and_says_why(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*RUN, "--epochs", "5", "--lr", "1e30", "--out", str(out), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "no epoch completed (diverged)" in captured.out
    assert "Training diverged" in captured.err and "--lr" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "diverged" and summary["epochs_completed"] == 0
    assert "Training diverged" in summary["error"]
    # The model kept is the one the run started from (its first checkpoint), finite.
    model = SparseMLP.load(out / "model.npz")
    initial, _ = load_checkpoint(out / CHECKPOINT_FILE)
    assert model.is_finite()
    for a, b in zip(model.layers, initial.layers):
        np.testing.assert_array_equal(a.data, b.data)


def test_the_config_of_a_checkpoint_is_read_from_its_header_alone(reference, tmp_path):
    _, state = load_checkpoint(reference / CHECKPOINT_FILE)
    assert peek_checkpoint_config(reference / CHECKPOINT_FILE) == state["config"]
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes((reference / CHECKPOINT_FILE).read_bytes()[:200])
    assert peek_checkpoint_config(damaged) is None
    assert peek_checkpoint_config(tmp_path / "missing.npz") is None
    assert peek_checkpoint_config(reference / "model.npz") is None  # a model file, not a checkpoint
