"""The command line, as a user runs it: outputs, presets and error messages."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from wasap import run
from wasap.model import SparseMLP

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wasap_run(*args, cwd=None):
    """Run ``python -m wasap.run`` in a subprocess; return (exit code, stdout, stderr)."""
    completed = subprocess.run([sys.executable, "-m", "wasap.run", *args], capture_output=True, text=True,
                               cwd=cwd or REPO, timeout=300)
    return completed.returncode, completed.stdout, completed.stderr


def test_short_madelon_run_writes_the_contracted_outputs(tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = wasap_run("--epochs", "3", "--threads", "1", "--out", str(out), "--quiet")
    assert code == 0, stderr
    assert "test accuracy" in stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert set(record) >= {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "nnz",
                               "train_seconds", "eval_seconds", "evolve_seconds"}
        assert len(record["nnz"]) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["hidden"] == [400, 100, 400]
    assert summary["config"]["epsilon"] == 10 and summary["config"]["batch_size"] == 32
    assert summary["config"]["weight_decay"] == pytest.approx(6e-3)
    assert summary["nnz_start"] == records[0]["nnz"]
    assert summary["best_test_accuracy"] == max(r["test_accuracy"] for r in records)
    assert summary["init_seconds"] > 0 and summary["peak_rss_bytes"] > 0
    model = SparseMLP.load(out / "model.npz")
    assert model.sizes == [500, 400, 100, 400, 2]
    assert list(model.classes) == [-1, 1]


def test_explicit_flags_override_the_preset():
    args = run.build_parser().parse_args(["--hidden", "50,20", "--alpha", "0.3", "--epochs", "7",
                                          "--weight-decay", "1e-4", "--threads", "1"])
    config = run.config_from_args(args)
    assert config.hidden == (50, 20) and config.alpha == 0.3 and config.epochs == 7
    assert config.weight_decay == 1e-4 and config.batch_size == 32


def test_every_hyperparameter_flag_reaches_the_config():
    argv = ["--hidden", "7,5", "--activation", "leaky-relu", "--alpha", "0.2", "--epsilon", "3", "--init", "xavier",
            "--zeta", "0.1", "--epochs", "4", "--batch-size", "9", "--micro-batch", "3", "--augment", "1x2x3", "--lr", "0.2",
            "--momentum", "0.5", "--weight-decay", "0.001", "--dropout", "0.1", "--lr-fan-in", "8",
            "--output-lr", "0.05", "--zero-output", "--importance-pruning", "--ip-start", "2", "--ip-every", "3",
            "--ip-percentile", "10", "--gradient-flow", "--seed", "5", "--threads", "1", "--workers", "2", "--sync",
            "--phase2-start", "3", "--warmup-epochs", "2", "--transport", "mpi", "--stall-timeout", "30"]
    config = run.config_from_args(run.build_parser().parse_args(argv))
    assert config.to_dict() == dict(
        hidden=[7, 5], activation="leaky-relu", alpha=0.2, epsilon=3.0, init="xavier", zeta=0.1, epochs=4,
        batch_size=9, micro_batch=3, augment="1x2x3", lr=0.2, momentum=0.5, weight_decay=0.001, dropout=0.1, lr_fan_in=8.0,
        output_lr=0.05, zero_output=True, importance_pruning=True, ip_start=2, ip_every=3, ip_percentile=10.0,
        gradient_flow=True, seed=5, threads=1, workers=2, sync=True, phase2_start=3, warmup_epochs=2,
        transport="mpi", stall_timeout=30.0, output_activation="softmax", loss="cross-entropy")


def test_help_says_what_data_without_a_preset_gets():
    text = " ".join(run.build_parser().format_help().split())
    assert "for data without a preset (a PATH) it takes TrainConfig's default, as the Python API does" in text
    assert "--lr LR learning rate of momentum SGD (default: the data set's preset, else 0.01)" in text


def test_width_aware_recipe_replaces_the_preset_but_not_explicit_flags():
    # Madelon's preset says weight decay 6e-3 and the defaults say dropout 0.3 and all-relu: the recipe
    # replaces them; --lr given on the command line stays. 400 x 2 at epsilon 10 is dense: n = 400.
    argv = ["--recipe", "width-aware", "--lr", "0.05", "--epochs", "3", "--threads", "1"]
    config = run.config_from_args(run.build_parser().parse_args(argv))
    recipe = run.apply_recipe(config, 2, run.explicit_flags(argv))
    assert (recipe.activation, recipe.init, recipe.zero_output, recipe.dropout) == ("tanh", "he-uniform-sparse",
                                                                                     True, 0.0)
    assert recipe.output_lr == pytest.approx(50 / 400) and recipe.lr == 0.05
    assert recipe.weight_decay == pytest.approx(2e-6 / 0.05)  # the paper's shrink per step at the lr in force
    assert (recipe.hidden, recipe.epsilon, recipe.epochs, recipe.batch_size) == ((400, 100, 400), 10, 3, 32)


def test_width_aware_run_records_the_recipe(tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = wasap_run("--recipe", "width-aware", "--dropout", "0.1", "--epochs", "2", "--threads",
                                     "1", "--out", str(out))
    assert code == 0, stderr
    assert "recipe width-aware: activation tanh" in stdout
    config = json.loads((out / "summary.json").read_text())["config"]
    assert config["activation"] == "tanh" and config["zero_output"] and config["dropout"] == 0.1
    assert config["output_lr"] == pytest.approx(50 / 400)


def test_non_empty_out_folder_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "old.txt").write_text("keep me")
    code, _, stderr = wasap_run("--epochs", "1", "--threads", "1", "--out", str(tmp_path), "--quiet")
    assert code == 2
    assert "not empty" in stderr and "--overwrite" in stderr
    assert (tmp_path / "old.txt").read_text() == "keep me"
    code, _, stderr = wasap_run("--epochs", "1", "--threads", "1", "--out", str(tmp_path), "--quiet",
                                "--overwrite")
    assert code == 0, stderr
    assert (tmp_path / "summary.json").exists()


def test_unreadable_path_names_the_path(tmp_path):
    missing = tmp_path / "nowhere.npz"
    code, _, stderr = wasap_run("--dataset", str(missing), "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2
    assert str(missing) in stderr


def test_hidden_size_zero_is_refused(tmp_path):
    code, _, stderr = wasap_run("--hidden", "400,0", "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2
    assert "hidden" in stderr and "0" in stderr


def test_user_npz_with_string_labels(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    labels = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    path = tmp_path / "mine.npz"
    np.savez(path, X_train=X[:200], y_train=labels[:200], X_test=X[200:], y_test=labels[200:])
    out = tmp_path / "run"
    code, stdout, stderr = wasap_run("--dataset", str(path), "--hidden", "32,16", "--epsilon", "4",
                                     "--epochs", "30", "--batch-size", "16", "--threads", "1", "--out", str(out), "--quiet")
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_test_accuracy"] > 0.8
    assert list(SparseMLP.load(out / "model.npz").classes) == ["no", "yes"]
