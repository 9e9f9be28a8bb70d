"""The MPI transport against the shared-memory one and the sequential trainer, under a real ``mpiexec``.

- one synchronous worker over MPI gives the sequential trainer's model bit for bit;
- two synchronous workers give the same model over MPI as over shared memory;
- these and the array-level tests below run twice: with the workers reaching rank 0's window through
  shared memory, as on its node, and through ``MPI_Get``/``MPI_Put`` over TCP, as from another machine;
- a gradient of an old topology, pushed through the window, updates exactly the surviving connections, and
  a worker's own step over the window is momentum SGD on the layers it pulled at their current version;
- phase two's replicas, published through the window, average and prune as dense numpy does;
- an asynchronous run with phase two completes and leaves no MPI shared segment behind;
- ``--transport mpi`` without a launcher, or with a worker count the job does not have, is a clear error
  that ends the job in order (no abort, no MPI shared segment left);
- a worker rank killed mid-run ends the job at once, leaves the last checkpoint and no segment, and
  ``--resume`` over MPI goes on to the model of the uninterrupted run.

Each job runs with a timeout; the tests skip, saying why, where mpi4py or ``mpiexec`` is missing.
"""

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from wasap.checkpoint import CHECKPOINT_FILE, load_checkpoint
from wasap.parallel.mpi_transport import MPICH_NETWORK_PATH

import mpi_ranks
from test_parallel import _dense_of

pytest.importorskip("mpi4py", reason="the MPI transport needs mpi4py (pip install 'wasap[mpi]' mpich)")
MPIEXEC = shutil.which("mpiexec") or shutil.which(os.path.join(os.path.dirname(sys.executable), "mpiexec"))
if MPIEXEC is None:
    pytest.skip("no mpiexec on PATH (pip install mpich)", allow_module_level=True)

RANKS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_ranks.py")
#: How the workers reach rank 0's window: as its node's ranks do, by copies in shared memory; or as ranks on
#: another machine do, by MPI_Get and MPI_Put (MPICH told to share no memory, and to use TCP over loopback).
PATHS = {"node": {}, "network": MPICH_NETWORK_PATH}
MPICH = "MPICH" in subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
RUN = ["--dataset", "madelon", "--epochs", "3", "--threads", "1", "--quiet"]


def _command(out, flags, ranks=None):
    if ranks is None:
        return [sys.executable, "-m", "wasap.run", *RUN, "--out", str(out), *flags]
    return [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "wasap.run", *RUN,
            "--out", str(out), "--transport", "mpi", *flags]


def _run(out, *flags, ranks=None, timeout=240, path="node"):
    return subprocess.run(_command(out, flags, ranks), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ, **PATHS[path]})


def _assert_same_model(a, b):
    first, second = np.load(os.path.join(a, "model.npz")), np.load(os.path.join(b, "model.npz"))
    assert sorted(first.files) == sorted(second.files)
    compared = 0
    for name in first.files:
        if first[name].dtype.kind in "fiu":
            np.testing.assert_array_equal(first[name], second[name], err_msg=name)
            compared += 1
    assert compared >= 8  # every layer's arrays, not an empty file


def _mpich_segments():
    return set(glob.glob("/dev/shm/mpich_shm_*"))


def test_one_synchronous_worker_over_mpi_is_the_sequential_trainer(tmp_path):
    flags = ("--sync", "--warmup-epochs", "0")
    sequential = _run(tmp_path / "seq", *flags)
    assert sequential.returncode == 0, sequential.stderr
    over_mpi = _run(tmp_path / "mpi", *flags, ranks=2)
    assert over_mpi.returncode == 0, over_mpi.stdout + over_mpi.stderr
    assert "completed" in over_mpi.stdout
    _assert_same_model(tmp_path / "seq", tmp_path / "mpi")


@pytest.mark.parametrize("path", PATHS)
def test_two_synchronous_workers_give_the_same_model_over_mpi_as_over_shared_memory(tmp_path, path):
    shared = _run(tmp_path / "shm", "--sync", "--workers", "2")
    assert shared.returncode == 0, shared.stderr
    over_mpi = _run(tmp_path / "mpi", "--sync", ranks=3, path=path)
    assert over_mpi.returncode == 0, over_mpi.stdout + over_mpi.stderr
    _assert_same_model(tmp_path / "shm", tmp_path / "mpi")


def test_sparse_data_trains_the_same_over_mpi_as_over_shared_memory(tmp_path):
    """Each worker rank receives its rows as CSR arrays and keeps them sparse, as a shared-memory worker does."""
    import scipy.sparse
    from sklearn.datasets import dump_svmlight_file

    rng = np.random.default_rng(3)
    X = scipy.sparse.random(900, 400, density=0.02, format="csr", random_state=rng,
                            data_rvs=lambda k: rng.integers(1, 4, k).astype(float))
    signal_sum = np.asarray(X[:, :40].sum(axis=1)).ravel()
    y = (signal_sum > np.median(signal_sum)).astype(int)
    dump_svmlight_file(X[:700], y[:700], str(tmp_path / "train.svm"))
    dump_svmlight_file(X[700:], y[700:], str(tmp_path / "test.svm"))
    flags = ("--dataset", f"{tmp_path / 'train.svm'},{tmp_path / 'test.svm'}", "--hidden", "32,32", "--epsilon", "5",
             "--sync")
    shared = _run(tmp_path / "shm", *flags, "--workers", "2")
    assert shared.returncode == 0, shared.stderr
    over_mpi = _run(tmp_path / "mpi", *flags, ranks=3)
    assert over_mpi.returncode == 0, over_mpi.stdout + over_mpi.stderr
    _assert_same_model(tmp_path / "shm", tmp_path / "mpi")


def _scenario(tmp_path, name, ranks, path):
    """Run one of :mod:`mpi_ranks`'s scenarios; what rank 0 saved, by name."""
    out = tmp_path / f"{name}.npz"
    before = _mpich_segments()
    result = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", RANKS_SCRIPT, name, str(out)],
                            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
                            env={**os.environ, **PATHS[path]})
    assert result.returncode == 0, result.stdout + result.stderr
    assert _mpich_segments() <= before
    saved = dict(np.load(out))
    if MPICH:  # elsewhere the variables that choose the path mean nothing
        assert (saved.pop("worker_local") == (path == "node")).all()
    return saved


def _layers(saved, prefix, n_layers):
    return [{name: saved[f"{prefix}_{name}_{l}"] for name in ("indptr", "indices", "data", "bias", "velocity",
                                                              "bias_velocity")} for l in range(n_layers)]


def _dense(layer, values, n_out):
    """``values``, in ``layer``'s nonzero order, as a dense (n_in, n_out) float64 matrix."""
    return _dense_of(layer["indptr"], layer["indices"], values, n_out)


@pytest.mark.parametrize("path", PATHS)
def test_an_old_topologys_gradient_through_the_window_updates_exactly_the_surviving_connections(tmp_path, path):
    saved = _scenario(tmp_path, "stale", ranks=2, path=path)
    sizes, config = mpi_ranks.STALE_SIZES, mpi_ranks.STALE_CONFIG
    old, evolved, stale, worker = (_layers(saved, prefix, 2) for prefix in ("old", "evolved", "stale", "worker"))
    # Version 0 as served is the model the scenario built.
    for layer, built in zip(old, mpi_ranks.stale_model().layers):
        for name, array in layer.items():
            np.testing.assert_array_equal(array, getattr(built, name), err_msg=name)
    assert list(saved["stale_counts"]) == [1, 0]  # applied through the remap, nothing dropped
    grads, bias_grads = mpi_ranks.gradients([len(layer["data"]) for layer in old], sizes, seed=7)
    lr, mu, wd = config.lr, config.momentum, config.weight_decay
    for l, n_out in enumerate(sizes[1:]):
        W, V = _dense(evolved[l], evolved[l]["data"], n_out), _dense(evolved[l], evolved[l]["velocity"], n_out)
        G = _dense(old[l], grads[l], n_out)
        both = (_dense(old[l], 1, n_out) > 0) & (_dense(evolved[l], 1, n_out) > 0)
        assert both.sum() < len(evolved[l]["data"]), "the evolution should have replaced some connections"
        V_expected = np.where(both, mu * V - lr * (G + wd * W), V)
        np.testing.assert_array_equal(stale[l]["indices"], evolved[l]["indices"])
        np.testing.assert_allclose(_dense(stale[l], stale[l]["data"], n_out), np.where(both, W + V_expected, W),
                                   atol=1e-6)
        np.testing.assert_allclose(_dense(stale[l], stale[l]["velocity"], n_out), V_expected, atol=1e-6)
        bias_velocity = mu * evolved[l]["bias_velocity"] - lr * bias_grads[l]
        np.testing.assert_allclose(stale[l]["bias"], evolved[l]["bias"] + bias_velocity, atol=1e-6)
    # The worker's own step: layer 0 (pulled at its current version) by momentum SGD, layer 1 left alone.
    assert list(saved["worker_applied"]) == [True, False]
    grads, bias_grads = mpi_ranks.gradients([len(layer["data"]) for layer in stale], sizes, seed=8)
    rate = mpi_ranks.WORKER_LRS[0]
    velocity = mu * stale[0]["velocity"].astype(np.float64) - rate * (grads[0] + wd * stale[0]["data"])
    np.testing.assert_allclose(worker[0]["velocity"], velocity, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(worker[0]["data"], stale[0]["data"] + velocity, rtol=1e-6, atol=1e-7)
    bias_velocity = mu * stale[0]["bias_velocity"].astype(np.float64) - rate * bias_grads[0]
    np.testing.assert_allclose(worker[0]["bias"], stale[0]["bias"] + bias_velocity, rtol=1e-6, atol=1e-7)
    for name, array in worker[1].items():
        np.testing.assert_array_equal(array, stale[1][name], err_msg=name)


@pytest.mark.parametrize("path", PATHS)
def test_phase_two_replicas_through_the_window_average_and_prune_as_dense_numpy(tmp_path, path):
    saved = _scenario(tmp_path, "average", ranks=3, path=path)
    sizes = mpi_ranks.AVERAGE_SIZES
    replicas = [mpi_ranks.replica(w) for w in range(2)]
    for w, model in enumerate(replicas):  # gathered as published, bit for bit
        for layer, built in zip(_layers(saved, f"gathered{w}", 2), model.layers):
            for name in ("indptr", "indices", "data", "bias"):
                np.testing.assert_array_equal(layer[name], getattr(built, name), err_msg=name)
    targets = list(saved["targets"])
    assert targets == mpi_ranks.average_model().nnz_per_layer()
    for l, (layer, n_out) in enumerate(zip(_layers(saved, "average", 2), sizes[1:])):
        members = [{"indptr": r.layers[l].indptr, "indices": r.layers[l].indices} for r in replicas]
        mean = np.mean([_dense(m, r.layers[l].data, n_out) for m, r in zip(members, replicas)], axis=0).ravel()
        union = np.flatnonzero(np.sum([_dense(m, 1, n_out) for m in members], axis=0).ravel())
        assert union.shape[0] > targets[l], "the union should be larger than the target: pruning is tested"
        # The largest |mean| values; ties broken by the lower position (row-major key).
        kept = sorted(union, key=lambda key: (-abs(mean[key]), key))[:targets[l]]
        expected = np.zeros_like(mean)
        expected[kept] = mean[kept]
        assert layer["data"].shape[0] == targets[l]
        np.testing.assert_allclose(_dense(layer, layer["data"], n_out).ravel(), expected, atol=1e-6)
        np.testing.assert_allclose(layer["bias"], np.mean([r.layers[l].bias for r in replicas], axis=0), atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_an_asynchronous_run_with_phase_two_completes_and_cleans_up(tmp_path, path):
    before = _mpich_segments()
    # Long enough (a few seconds) for the profile's sampler to see the workers' reports.
    result = _run(tmp_path / "mpi", "--epochs", "16", "--phase2-start", "14", ranks=3, path=path)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(tmp_path / "mpi" / "summary.json") as stream:
        summary = json.load(stream)
    assert summary["stopped"] == "completed" and summary["epochs_completed"] == 16
    assert summary["parallel"]["workers"] == 2
    assert _mpich_segments() <= before
    with open(tmp_path / "mpi" / "profile.json") as stream:
        profile = json.load(stream)
    for worker in ("worker 0", "worker 1"):
        phase1 = profile["time_breakdown"][worker]["phase1"]  # the time inside MPI calls, within the rest
        assert 0 < phase1["in_mpi"] < phase1["wall"] and phase1["count"] > 0
        # Each worker rank reported its own CPU use and memory (as it would from another machine).
        samples = profile["samples"]["processes"][worker]
        assert any(cpu is not None and cpu > 0 for cpu in samples["cpu_percent"])
        assert max(rss or 0 for rss in samples["rss"]) > 50e6  # an interpreter with numpy and numba
        assert profile["summary"][worker]["mean_cpu_percent_phase1"] > 0


def test_mpi_without_a_launcher_says_how_to_launch(tmp_path):
    result = _run(tmp_path / "out", "--transport", "mpi")
    assert result.returncode == 2
    assert "mpiexec -n 3 python -m mpi4py -m wasap.run --transport mpi" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_count_the_job_does_not_have_is_refused(tmp_path):
    before = _mpich_segments()
    result = _run(tmp_path / "out", "--workers", "3", ranks=2, timeout=120)
    assert result.returncode == 2
    assert "--workers 3 does not match the MPI job: 2 ranks" in result.stderr
    assert "Traceback" not in result.stderr and "MPI_Abort" not in result.stdout + result.stderr
    assert _mpich_segments() <= before


def _rank_processes(launcher):
    """``{rank: psutil.Process}`` of the job started by ``launcher`` (MPICH and Open MPI name the rank)."""
    ranks = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            environment = child.environ()
            rank = environment.get("PMI_RANK", environment.get("OMPI_COMM_WORLD_RANK"))
            if rank is not None and "python" in child.name():
                ranks[int(rank)] = child
    return ranks


def _assert_same_metrics(out_a, out_b):
    a, b = ([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] for out in (out_a, out_b))
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        # Phase one sums the workers' losses in the order they arrive: only train_loss's last bits may differ.
        assert ra.pop("train_loss") == pytest.approx(rb.pop("train_loss"), rel=1e-12)
        assert {k: v for k, v in ra.items() if not k.endswith("_seconds")} == \
            {k: v for k, v in rb.items() if not k.endswith("_seconds")}


def test_a_killed_worker_rank_ends_the_job_and_the_run_resumes_to_the_uninterrupted_model(tmp_path):
    flags = ("--sync", "--epochs", "20")
    reference = _run(tmp_path / "shm", *flags, "--workers", "2")
    assert reference.returncode == 0, reference.stderr
    before = _mpich_segments()
    out = tmp_path / "mpi"
    job = subprocess.Popen(_command(out, flags, ranks=3), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 3):
            assert job.poll() is None and time.monotonic() < deadline, "the job did not reach epoch 3"
            time.sleep(0.02)
        _rank_processes(job)[1].kill()
        killed = time.monotonic()
        output, _ = job.communicate(timeout=60)
    finally:
        job.kill()
    assert time.monotonic() - killed < 30
    assert job.returncode != 0 and not (out / "summary.json").exists(), output
    assert _mpich_segments() <= before  # unlinked as soon as every rank had mapped them
    _, state = load_checkpoint(out / CHECKPOINT_FILE)
    assert 1 <= state["epoch"] < 20  # the last one written (one an epoch, unless epochs are short)
    resumed = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "-m", "mpi4py", "-m", "wasap.run", "--resume",
                              str(out), "--quiet"], capture_output=True, text=True, timeout=240,
                             stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == state["epoch"] and summary["epochs_completed"] == 20
    _assert_same_model(tmp_path / "shm", out)
    _assert_same_metrics(out, tmp_path / "shm")
