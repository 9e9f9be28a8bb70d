"""What the command line says when a user asks for something it cannot or will not do.

Bad values give ``error: ...`` and exit status 2 without a traceback; flags that would not do what they
suggest (too many threads, pruning that never starts, workers with too little work) give one warning.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numba
import pytest

from wasap import run, threads
from wasap.config import ConfigError, TrainConfig
from wasap.threads import default_threads
from wasap.train import SequentialTrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def keep_thread_count():
    """main() sets this process's kernel threads; put them back for the tests that follow."""
    before = threads.get_threads()
    yield
    threads.set_threads(before)


def run_main(argv, capsys):
    """``wasap.run.main(argv)`` in this process; returns (exit status, stderr)."""
    try:
        status = run.main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    return status, capsys.readouterr().err


@pytest.fixture
def paths(tmp_path):
    """Placeholders the bad command lines below use, made real under ``tmp_path``."""
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    csv_path = tmp_path / "holes.csv"
    csv_path.write_text("f1,f2,label\n1,2,a\n3,,b\n5,6,a\n")
    return dict(empty=str(empty), file=str(a_file), missing=str(tmp_path / "nowhere.npz"), csv=str(csv_path),
                out=str(tmp_path / "out"))


#: Command lines with one bad value each, and a word the error must contain (the flag or the setting).
BAD_COMMAND_LINES = [
    ("--epochs 0", "--epochs"), ("--epochs -3", "--epochs"), ("--epochs 2.5", "--epochs"),
    ("--epochs many", "--epochs"),
    ("--threads 0", "--threads"), ("--threads -1", "--threads"), ("--threads two", "--threads"),
    ("--workers 0", "--workers"), ("--workers -2", "--workers"), ("--workers lots", "--workers"),
    ("--hidden 400,0", "hidden"), ("--hidden 400,-5", "hidden"), ("--hidden 400,x", "--hidden"),
    ("--hidden ,", "--hidden"),
    ("--activation swish", "--activation"), ("--init magic", "--init"), ("--recipe fast", "--recipe"),
    ("--alpha nan", "alpha"), ("--alpha 2", "alpha"), ("--alpha x", "--alpha"),
    ("--activation leaky-relu --alpha 1", "alpha"),
    ("--epsilon 0", "epsilon"), ("--epsilon -1", "epsilon"), ("--epsilon nan", "epsilon"),
    ("--epsilon inf", "epsilon"),
    ("--batch-size 0", "batch_size"), ("--batch-size -4", "batch_size"), ("--batch-size 1.5", "--batch-size"),
    ("--micro-batch 0", "micro_batch"),
    ("--lr 0", "lr"), ("--lr -0.1", "lr"), ("--lr nan", "lr"), ("--lr inf", "lr"),
    ("--recipe width-aware --lr 0", "lr"),
    ("--lr-fan-in 0", "lr_fan_in"), ("--output-lr -1", "output_lr"),
    ("--momentum 1", "momentum"), ("--momentum -0.5", "momentum"), ("--momentum nan", "momentum"),
    ("--weight-decay -1", "weight_decay"), ("--weight-decay nan", "weight_decay"),
    ("--weight-decay inf", "weight_decay"),
    ("--dropout 1", "dropout"), ("--dropout -0.1", "dropout"), ("--dropout nan", "dropout"),
    ("--zeta 1.5", "zeta"), ("--zeta nan", "zeta"),
    ("--ip-start -1", "ip_start"), ("--ip-every 0", "ip_every"), ("--ip-percentile 101", "ip_percentile"),
    ("--ip-percentile nan", "ip_percentile"),
    ("--seed -1", "seed"), ("--seed x", "--seed"),
    ("--phase2-start -1", "phase2_start"),
    ("--checkpoint-every -1", "--checkpoint-every"), ("--checkpoint-every nan", "--checkpoint-every"),
    ("--stall-timeout 0", "stall_timeout"), ("--stall-timeout nan", "stall_timeout"),
    ("--memory-budget lots", "--memory-budget"),
    ("--dataset {missing}", "nowhere.npz"), ("--dataset {empty}", "no data set files"),
    ("--dataset {csv}", "missing value at line 3, column 2"), ("--dataset unknown-name", "unknown data set"),
    ("--dataset fashion-mnist --data-dir {empty}", "fashion-mnist"),
    ("--dataset synthetic --n-samples 0", "n_samples"), ("--dataset synthetic --n-samples -5", "n_samples"),
    ("--dataset synthetic --n-features 0", "n_features"), ("--dataset synthetic --n-classes 1", "n_classes"),
    ("--dataset synthetic --n-samples 4 --workers 3", "--workers 3"),
    ("--out {file}", "not a folder"),
    ("--resume {empty}", "checkpoint"),
    ("--no-such-flag", "unrecognized"),
]


@pytest.mark.parametrize("command_line,what", BAD_COMMAND_LINES, ids=[c for c, _ in BAD_COMMAND_LINES])
def test_a_bad_value_is_an_error_line_and_exit_status_2(command_line, what, paths, capsys):
    argv = command_line.format(**paths).split()
    if "--epochs" not in argv and "--resume" not in argv:
        argv += ["--epochs", "1"]  # should a bad value slip through, the run stays short
    if "--out" not in argv and "--resume" not in argv:
        argv += ["--out", paths["out"]]
    status, stderr = run_main(argv + ["--quiet"] * ("--resume" not in argv), capsys)
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert "error: " in stderr and what in stderr
    assert not os.path.exists(os.path.join(paths["out"], "summary.json"))


# -- threads ----------------------------------------------------------------------------------------------------


def affinity():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_more_threads_than_the_pool_are_capped_with_one_warning_that_never_oversubscribes(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    with pytest.warns(threads.ThreadCountWarning) as caught:
        assert threads.capped_threads(5, name="--threads") == 1
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "--threads 5" in message and "using 1" in message and "NUMBA_NUM_THREADS=1" in message
    # The advice never names more threads than the cores this process may run on.
    advised = [int(word.split("=")[1].rstrip(".,)")) for word in message.split() if word.startswith("NUMBA_NUM")]
    assert max(advised) <= 4


def test_more_threads_than_cores_are_capped_to_the_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 4)
    with pytest.warns(threads.ThreadCountWarning, match=r"threads=3 .*using 1: this process may run on 1 core"):
        assert threads.capped_threads(3) == 1
    assert threads.capped_threads(1) == 1  # what fits is kept, silently


def test_set_threads_never_asks_numba_for_more_than_it_has():
    limit = min(affinity(), numba.config.NUMBA_NUM_THREADS)
    assert threads.set_threads(None) == limit == numba.get_num_threads()
    with pytest.warns(threads.ThreadCountWarning):
        assert threads.set_threads(limit + 7) == limit
    assert numba.get_num_threads() == limit


def test_default_threads_stays_within_numbas_pool_on_an_idle_machine(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    assert default_threads() == 1
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 64)
    assert default_threads() == min(affinity(), 64)


def test_threads_beyond_numbas_pool_run_with_one_warning_line(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "wasap.run", "--threads", "2", "--epochs", "1", "--quiet",
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    warning_lines = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning_lines) == 1 and "--threads 2" in warning_lines[0] and "using 1" in warning_lines[0]
    assert "Traceback" not in done.stderr and "ThreadCountWarning" not in done.stderr
    assert json.loads((out / "summary.json").read_text())["config"]["threads"] == 1


# -- defaults and plans -----------------------------------------------------------------------------------------


def test_data_without_a_preset_gets_train_configs_defaults():
    args = run.build_parser().parse_args(["--dataset", "mine.csv", "--threads", "1"])
    assert run.config_from_args(args).to_dict() == TrainConfig(threads=1).to_dict()


def config_for(**values):
    return TrainConfig(**dict(dict(hidden=(8,), threads=1), **values))


@pytest.mark.parametrize("workers,phase2_start", [(1, None), (2, None), (2, 17)])
def test_pruning_epochs_are_those_the_trainer_prunes_after(workers, phase2_start):
    for epochs in (1, 2, 10, 30, 41):
        for ip_start in (0, 1, 5, 10, 200):
            for ip_every in (1, 3, 10):
                config = config_for(importance_pruning=True, epochs=epochs, ip_start=ip_start, ip_every=ip_every,
                                    workers=workers, phase2_start=phase2_start)
                trainer = SequentialTrainer(None, config)
                phase_one = range(1, min(epochs, phase2_start or epochs + 1))
                expected = [e for e in phase_one if e < epochs and trainer.importance_pruning_due(e)]
                assert list(run.pruning_epochs(config)) == expected


def test_pruning_that_never_starts_is_named(capsys, tmp_path):
    argv = ["--dataset", "synthetic", "--n-samples", "200", "--n-features", "6", "--hidden", "16", "--epsilon", "2",
            "--epochs", "2", "--importance-pruning", "--threads", "1", "--quiet", "--out", str(tmp_path / "o")]
    with pytest.warns(run.RunWarning, match=r"prunes nothing.*--ip-start 200.*--epochs"):
        assert run_main(argv, capsys)[0] == 0
    assert not any("prunes nothing" in p for p in run.plan_problems(config_for(
        importance_pruning=True, epochs=30, ip_start=10), n_train=1000))


def partition_batches(n_train, workers, batch_size):
    """Batches in worker 0's partition (rows 0, K, 2K, ...), the largest."""
    rows = len(range(0, n_train, workers))
    return -(-rows // batch_size)


def test_workers_with_short_shares_of_an_epoch_are_told_to_use_one_process():
    madelon = config_for(workers=2, batch_size=32)
    (problem,) = [p for p in run.plan_problems(madelon, n_train=2000) if "share" in p]
    assert f"{partition_batches(2000, 2, 32)} batches of 32" in problem and "--workers 1" in problem
    fashion = config_for(workers=2, batch_size=128)
    assert partition_batches(60000, 2, 128) >= run.MIN_BATCHES_PER_WORKER
    assert not [p for p in run.plan_problems(fashion, n_train=60000) if "share" in p]


def test_more_workers_than_cores_or_samples(monkeypatch):
    monkeypatch.setattr(run, "available_cores", lambda: 2)
    (problem,) = [p for p in run.plan_problems(config_for(workers=4), n_train=10 ** 6) if "core" in p]
    assert "--workers 4 on 2 core(s)" in problem
    with pytest.raises(ConfigError, match=r"--workers 4 needs at least 4 training samples"):
        run.plan_problems(config_for(workers=4), n_train=3)


def test_parallel_flags_in_a_run_of_one_process_are_named():
    (problem,) = run.plan_problems(config_for(sync=True, phase2_start=5), n_train=1000)
    assert "--sync and --phase2-start" in problem and "--workers" in problem
    assert run.plan_problems(config_for(), n_train=1000) == []


# -- tools ------------------------------------------------------------------------------------------------------


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_profile_on_a_sequential_run_says_profiles_come_from_parallel_runs(tmp_path, capsys):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        load_tool("plot_profile").main([str(tmp_path)])
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert "profile.json is written by parallel runs" in stderr and "--workers" in stderr
    (tmp_path / "profile.json").write_text("[1, 2]")
    with pytest.raises(SystemExit):
        load_tool("plot_profile").main([str(tmp_path)])
    assert "not a profile" in capsys.readouterr().err
