"""The memory estimate against the real objects and allocations, the micro-batch choice, refusals and guards."""

import argparse
import json
import re
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from wasap import memory, run
from wasap.config import ConfigError, TrainConfig
from wasap.data import DataError, load_dataset
from wasap.model import SparseMLP, Workspace
from wasap.train import SequentialTrainer, fit

MIB = 1 << 20


def _layer_nbytes(layer):
    return sum(getattr(layer, name).nbytes for name in ("indptr", "indices", "data", "velocity", "bias",
                                                        "bias_velocity", "col_indptr", "col_rows", "col_perm"))


def _distinct_nbytes(arrays):
    """Bytes of the memory blocks behind ``arrays`` (views of one block count once)."""
    blocks = {}
    for array in arrays:
        base = array
        while base.base is not None:
            base = base.base
        blocks[id(base)] = base.nbytes
    return sum(blocks.values())


def test_layer_bytes_are_those_of_the_real_layers():
    sizes = [300, 2000, 500, 7]
    model = SparseMLP.random(sizes, epsilon=10, seed=1)
    assert model.nnz_per_layer() == memory.network_nnz(sizes, 10)
    for layer in model.layers:
        assert memory.layer_bytes(layer.n_in, layer.n_out, layer.nnz) == _layer_nbytes(layer)
    copy = model.copy()
    assert sum(map(_layer_nbytes, copy.layers)) == sum(map(_layer_nbytes, model.layers))


@pytest.mark.parametrize("batch", [1, 16, 37, 128])
def test_workspace_bytes_are_those_of_the_real_workspaces(batch):
    sizes = [300, 2000, 500, 7]
    training = Workspace(sizes, batch, training=True)
    real = _distinct_nbytes([training.x_t, *training.activations[1:], *training.derivs[1:], training.delta_out])
    estimate = memory.training_workspace_bytes(sizes, batch)
    assert real <= estimate <= real + 64 * 2 * len(sizes)  # each buffer's alignment slack, at most
    inference = Workspace(sizes, batch, training=False)
    real = _distinct_nbytes([inference.x_t, *inference.activations[1:]])
    assert real <= memory.evaluation_workspace_bytes(sizes, batch) <= real + 3 * 64


def test_eval_batch_size_is_the_models():
    for sizes in ([784, 1000, 10], [10, 600_000, 2], [10, 5_000_000, 2]):
        model = SparseMLP.random(sizes, epsilon=1e-6, seed=0, warn=False)  # a weight or so a layer
        assert memory.eval_batch_size(sizes) == model.eval_batch_size()


@pytest.mark.parametrize("micro_batch", [None, 16, 24, 64])
def test_training_part_sizes_are_the_workspaces_an_epoch_builds(micro_batch):
    sizes = [20, 40, 3]
    config = TrainConfig(hidden=(40,), epsilon=2, batch_size=64, micro_batch=micro_batch, epochs=1, seed=0)
    model = SparseMLP.random(sizes, epsilon=2, seed=0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((150, 20)).astype(np.float32)  # two batches of 64 and one of 22
    y = rng.integers(0, 3, 150)
    SequentialTrainer(model, config).train_epoch(X, y)
    built = sorted(batch for batch, training in model._workspaces if training)
    assert memory.training_part_sizes(150, 64, micro_batch) == built


@pytest.mark.parametrize("micro_batch", [None, 16])
def test_estimate_of_training_and_evaluation_against_traced_allocations(micro_batch):
    # Everything a one-epoch fit without an output folder (a fallback copy in memory) allocates
    # beyond the model and the data, traced by tracemalloc (numpy reports its buffers to it),
    # against the estimate's parts for the same moments.
    sizes = [200, 3000, 3000, 5]
    config = TrainConfig(hidden=(3000, 3000), epsilon=20, batch_size=64, micro_batch=micro_batch, epochs=1,
                         seed=0, threads=1)
    data = load_dataset("synthetic", n_samples=400, n_features=200, n_classes=5, seed=0)
    model = SparseMLP.from_config(200, 5, config)
    estimate = memory.estimate_run(sizes, epsilon=20, batch_size=64, n_train=data.n_train, n_test=data.n_test,
                                   micro_batch=micro_batch, epochs=1, fallback_copy=True)
    fit(model, data, config, log=None, progress=False)  # compiles or loads the kernels first
    model = SparseMLP.from_config(200, 5, config)
    tracemalloc.start()
    try:
        fit(model, data, config, log=None, progress=False)
        _, traced = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = estimate.total - sum(estimate.parts[name] for name in
                                    ("baseline", "data", "weights", "freed heap malloc keeps"))
    # Tolerance: Python objects, the progress machinery and the per-batch label arrays are not estimated.
    assert expected == pytest.approx(traced, rel=0.10)
    assert estimate.phase == "evaluation"


_BUILD_ONE_LAYER = """
import sys
from wasap.model import SparseMLP

def peak_and_current():
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024

n_in, n_out, epsilon = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
SparseMLP.random([50, 50, 2], epsilon=2, seed=0)  # the kernels, loaded before measuring
with open("/proc/self/clear_refs", "w") as stream:
    stream.write("5")  # the peak starts again from the current size
before = peak_and_current()[1]
layer = SparseMLP.random([n_in, n_out], epsilon=epsilon, seed=0, warn=False).layers[0]
print(layer.nnz, peak_and_current()[0] - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resets the peak through /proc/self/clear_refs")
@pytest.mark.parametrize("n_in, n_out, epsilon", [(3000, 3000, 200), (400_000, 400_000, 2), (200_000, 6, 10)])
def test_initialisation_estimate_against_the_measured_peak(n_in, n_out, epsilon):
    # The peak resident memory of building one layer in a fresh process (whose heap holds no
    # freed blocks to reuse), against the estimate of that build: at least 90% of it, at most
    # the estimate plus what malloc may keep of freed blocks.
    completed = subprocess.run([sys.executable, "-c", _BUILD_ONE_LAYER, str(n_in), str(n_out), str(epsilon)],
                               capture_output=True, text=True, timeout=120, check=True)
    nnz, measured = map(int, completed.stdout.split())
    estimate = memory.init_peak_bytes(n_in, n_out, nnz)
    assert 0.9 * estimate <= measured <= estimate + 2 * min(32 * MIB, 8 * nnz)


def test_evolution_phase_is_estimated_when_epochs_follow():
    shape = dict(epsilon=20, batch_size=128, n_train=700, n_test=300)
    one = memory.estimate_run([1000, 20000, 2], epochs=1, **shape)
    two = memory.estimate_run([1000, 20000, 2], epochs=2, **shape)
    assert "evolution" not in one.phases and "evolution" in two.phases
    layer = memory.network_nnz([1000, 20000, 2], 20)[0]
    assert two.phases["evolution"] >= memory.evolution_transient_bytes(1000, 20000, layer, 0.3)


def test_micro_batch_candidates_prefer_divisors_of_the_batch():
    assert memory.micro_batch_candidates(128) == [None, 64, 32, 16, 8, 4, 2, 1]
    assert memory.micro_batch_candidates(100) == [None, 96, 80, 64, 48, 32, 16, 8, 4, 2, 1]
    assert memory.micro_batch_candidates(16) == [None, 8, 4, 2, 1]
    assert memory.micro_batch_candidates(1) == [None]


def _wide_shape():
    return memory.DataShape(n_features=2000, n_classes=2, n_train=700, n_test=300, nbytes=(4 * 2000 + 8) * 1000)


def _wide_config(**changes):
    return TrainConfig(hidden=(200_000, 200_000), epsilon=1, batch_size=128, epochs=1, **changes)


def _estimate(config, shape):
    return memory.estimate_config(config, shape.n_features, shape.n_classes, shape.n_train, shape.n_test,
                                  data_bytes=shape.nbytes)


def test_plan_chooses_the_largest_micro_batch_that_fits():
    shape, config = _wide_shape(), _wide_config()
    totals = {m: _estimate(config.replace(micro_batch=m), shape).total for m in (None, 64, 32, 16)}
    assert totals[None] > totals[64] > totals[32] > totals[16]
    lines = []
    assert memory.plan_run(config, shape, budget=memory.MemoryBudget(bytes=totals[None]),
                           log=lines.append) == config
    planned = memory.plan_run(config, shape, budget=memory.MemoryBudget(bytes=totals[32]), log=lines.append)
    assert planned.micro_batch == 32
    assert len(lines) == 2 and "micro-batches of 32" in lines[1]
    # A fraction of the memory available scales with it.
    planned = memory.plan_run(config, shape, budget=memory.MemoryBudget(fraction=0.5), available=2 * totals[64])
    assert planned.micro_batch == 64


def test_an_explicit_micro_batch_is_kept_or_refused_with_what_fits():
    shape, config = _wide_shape(), _wide_config(micro_batch=64)
    fits_32 = memory.MemoryBudget(bytes=_estimate(config.replace(micro_batch=32), shape).total)
    assert memory.plan_run(config.replace(micro_batch=16), shape, budget=fits_32).micro_batch == 16
    with pytest.raises(memory.MemoryBudgetError, match="--micro-batch 32"):
        memory.plan_run(config, shape, budget=fits_32)


def test_a_run_that_fits_nowhere_is_refused_with_its_estimate_and_what_would_fit():
    shape = memory.DataShape(n_features=100, n_classes=2, n_train=7000, n_test=3000, nbytes=(4 * 100 + 8) * 10000)
    config = TrainConfig(hidden=(100_000_000, 100_000_000), epsilon=20, epochs=20)
    budget = memory.MemoryBudget(bytes=8 << 30)
    with pytest.raises(memory.MemoryBudgetError) as caught:
        memory.plan_run(config, shape, budget=budget)
    assert isinstance(caught.value, ConfigError)
    message = str(caught.value)
    assert "this run needs an estimated" in message and "budget of 8 GiB" in message
    assert re.search(r"weights [0-9.]+ GiB", message)
    hidden = re.search(r"--hidden ([0-9,]+)", message).group(1)
    suggested = config.replace(hidden=tuple(int(n) for n in hidden.split(",")))
    assert memory.plan_run(suggested, shape, budget=budget).micro_batch is not None


def test_a_smaller_epsilon_is_suggested_when_weights_are_what_does_not_fit():
    shape = memory.DataShape(n_features=1000, n_classes=2, n_train=700, n_test=300, nbytes=(4 * 1000 + 8) * 1000)
    config = TrainConfig(hidden=(20000, 20000), epsilon=2000, epochs=1)
    budget = memory.MemoryBudget(bytes=2 << 30)
    with pytest.raises(memory.MemoryBudgetError) as caught:
        memory.plan_run(config, shape, budget=budget)
    epsilon = float(re.search(r"--epsilon ([0-9.]+)", str(caught.value)).group(1))
    assert epsilon < 2000
    memory.plan_run(config.replace(epsilon=epsilon), shape, budget=budget)  # fits


def test_command_line_refuses_in_seconds_with_exit_status_2(tmp_path, capsys):
    code = run.main(["--dataset", "synthetic", "--n-samples", "300", "--hidden", "100000000,100000000",
                     "--epsilon", "20", "--memory-budget", "8G", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: this run needs an estimated") and "--memory-budget" in error
    assert not (tmp_path / "run" / "model.npz").exists()


def test_command_line_chooses_a_micro_batch_and_records_it(tmp_path, capsys):
    argv = ["--dataset", "synthetic", "--n-samples", "300", "--n-features", "50", "--hidden", "3000,3000",
            "--epsilon", "2", "--epochs", "1", "--threads", "1", "--batch-size", "64"]
    data = load_dataset("synthetic", n_samples=300, n_features=50, n_classes=2, seed=0)
    config = run.config_from_args(run.build_parser().parse_args(argv))
    total = _estimate(config.replace(micro_batch=32), memory.DataShape.of(data)).total
    out = tmp_path / "run"
    code = run.main(argv + ["--memory-budget", f"{-(-total // 1024)}K", "--out", str(out)])
    assert code == 0
    assert "memory: micro-batches of 32" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["config"]["micro_batch"] == 32


@pytest.mark.parametrize("text, expected", [
    ("8G", memory.MemoryBudget(bytes=8 << 30)), ("500M", memory.MemoryBudget(bytes=500 << 20)),
    ("1.5GiB", memory.MemoryBudget(bytes=3 << 29)), ("64GB", memory.MemoryBudget(bytes=64 << 30)),
    ("2t", memory.MemoryBudget(bytes=2 << 40)), ("0.5", memory.MemoryBudget(fraction=0.5)),
    ("50%", memory.MemoryBudget(fraction=0.5)), ("1", memory.MemoryBudget(fraction=1.0)),
])
def test_budget_parsing(text, expected):
    assert memory.parse_budget(text) == expected


@pytest.mark.parametrize("text", ["3", "0", "-1G", "0G", "8X", "50%G", "150%", "", "lots"])
def test_budget_parsing_refuses_with_the_forms_accepted(text):
    with pytest.raises(ValueError, match="memory budget|fraction"):
        memory.parse_budget(text)


def test_memory_budget_flag(capsys):
    parser = run.build_parser()
    assert parser.parse_args([]).memory_budget == memory.DEFAULT_BUDGET
    assert parser.parse_args(["--memory-budget", "8G"]).memory_budget.bytes == 8 << 30
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--memory-budget", "8"])
    assert caught.value.code == 2
    assert "add a unit" in capsys.readouterr().err


def test_budget_resolves_a_fraction_of_what_is_available():
    assert memory.MemoryBudget(fraction=0.25).resolve(available=4000) == 1000
    assert memory.MemoryBudget(bytes=123).resolve(available=4000) == 123


@pytest.mark.parametrize("version, files, expected", [
    ("v2", {"memory.max": "1000000", "memory.current": "600000", "memory.stat": "anon 1\ninactive_file 100000\n"},
     500000),
    ("v2", {"memory.max": "max", "memory.current": "600000"}, None),
    ("v1", {"memory.limit_in_bytes": "2000000", "memory.usage_in_bytes": "500000",
            "memory.stat": "total_inactive_file 0\n"}, 1500000),
    ("v1", {"memory.limit_in_bytes": "9223372036854771712", "memory.usage_in_bytes": "5"}, None),
])
def test_cgroup_headroom(tmp_path, monkeypatch, version, files, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(memory, "_cgroup_folders", lambda: [str(tmp_path)])
    assert memory.cgroup_headroom_bytes() == expected
    if expected is not None:
        assert memory.available_bytes() == expected  # below what the machine has free


def test_svmlight_reader_refuses_a_huge_feature_index_with_how_to_renumber(tmp_path):
    path = tmp_path / "wide.svm"
    lines = [f"{i % 2} 1:0.5 {3 + i}:1.0" for i in range(1999)] + ["1 1000000000:2.0"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        load_dataset(str(path))
    message = str(caught.value)
    assert "2000 rows name features up to index 1000000000" in message and "16 bytes for each" in message
    assert "Only 2001 distinct features occur" in message


def test_svmlight_guard_uses_the_memory_available(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    rows = [f"{i % 2} " + " ".join(f"{j}:{rng.random():.3f}" for j in sorted(rng.choice(5000, 3, replace=False) + 1))
            for i in range(200)]
    train, test = tmp_path / "train.svm", tmp_path / "test.svm"
    train.write_text("\n".join(rows[:150] + ["0 5000:1"]) + "\n")
    test.write_text("\n".join(rows[150:] + ["1 5000:1"]) + "\n")
    data = load_dataset(f"{train},{test}")
    assert data.X_train.shape[1] == 5000 and data.is_sparse
    monkeypatch.setattr(memory, "available_bytes", lambda: 16 * 5000)  # a budget of half of the 16 bytes a feature
    with pytest.raises(DataError, match="16 bytes for each"):
        load_dataset(f"{train},{test}")
    with pytest.raises(DataError, match="16 bytes for each"):
        load_dataset(str(train))


def test_describe_names_the_phase_and_the_largest_parts():
    estimate = memory.estimate_run([65536, 5_000_000, 5_000_000, 2], epsilon=1, batch_size=128, n_train=700,
                                   n_test=300)
    text = estimate.describe()
    assert text.startswith(memory.format_bytes(estimate.total)) and f"at {estimate.phase}" in text
    assert estimate.largest(1)[0][0] in text
    assert memory.format_bytes(512) == "512 B" and memory.format_bytes(3 << 29) == "1.5 GiB"


def test_flag_type_errors_are_argparse_errors():
    with pytest.raises(argparse.ArgumentTypeError):
        run._memory_budget("8X")


def test_parallel_estimate_against_the_processes_measured_peaks(tmp_path):
    """All processes of a WASAP-SGD run together: the sum of their peak resident memory (profile.json)."""
    data = load_dataset("synthetic", n_samples=4000, n_features=200, n_classes=3, seed=0)
    config = TrainConfig(hidden=(800, 800), epsilon=20, epochs=2, workers=2, threads=1)
    estimate = memory.estimate_parallel_config(config, data.n_features, data.n_classes, data.n_train,
                                               data.n_test, data_bytes=memory.DataShape.of(data).nbytes)
    sequential = memory.estimate_config(config.replace(workers=1), data.n_features, data.n_classes,
                                        data.n_train, data.n_test)
    assert estimate.total > sequential.total  # more processes, more copies
    script = (
        "import json, sys\n"
        "from wasap import SparseMLP, TrainConfig, load_dataset\n"
        "from wasap.parallel import fit_parallel\n"
        "if __name__ == '__main__':\n"
        "    data = load_dataset('synthetic', n_samples=4000, n_features=200, n_classes=3, seed=0)\n"
        "    config = TrainConfig(hidden=(800, 800), epsilon=20, epochs=2, workers=2, threads=1)\n"
        "    model = SparseMLP.from_config(data.n_features, data.n_classes, config)\n"
        f"    fit_parallel(model, data, config, out_dir={str(tmp_path / 'run')!r}, log=None, profile_interval=0.05,\n"
        "                 overwrite=True)\n"
    )
    (tmp_path / "train.py").write_text(script)
    # Twice: a first run on a fresh checkout compiles the kernels, and compiling holds memory that
    # later runs, which load them from numba's cache, do not.
    for _ in range(2):
        result = subprocess.run([sys.executable, str(tmp_path / "train.py")], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
    profile = json.loads((tmp_path / "run" / "profile.json").read_text())
    measured = sum(entry["peak_rss_bytes"] for entry in profile["summary"].values()
                   if entry.get("peak_rss_bytes"))
    # Resident memory counts a shared page in every process that touched it, and samples miss short peaks.
    assert 0.7 * measured <= estimate.total <= 1.3 * measured, (estimate.describe(), measured)


def test_csv_reader_refuses_a_file_that_would_not_fit_before_reading_it(tmp_path, monkeypatch):
    path = tmp_path / "big.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{i + 1},{'xy'[i % 2]}\n" for i in range(2000)))
    # The real file is small; an availability of a few KiB stands in for a machine it would overflow.
    monkeypatch.setattr(memory, "available_bytes", lambda: 40_000)
    with pytest.raises(DataError, match=r"about \d+ rows x 3 columns .* more than the"):
        load_dataset(str(path))
    monkeypatch.setattr(memory, "available_bytes", lambda: 10 ** 9)
    assert load_dataset(str(path)).n_train + load_dataset(str(path)).n_test == 2000
