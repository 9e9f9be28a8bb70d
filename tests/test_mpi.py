"""The MPI transport against the shared-memory one and the sequential trainer, under a real ``mpiexec``.

- one synchronous worker over MPI gives the sequential trainer's model bit for bit;
- two synchronous workers give the same model over MPI as over shared memory;
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

pytest.importorskip("mpi4py", reason="the MPI transport needs mpi4py (pip install 'wasap[mpi]' mpich)")
MPIEXEC = shutil.which("mpiexec") or shutil.which(os.path.join(os.path.dirname(sys.executable), "mpiexec"))
if MPIEXEC is None:
    pytest.skip("no mpiexec on PATH (pip install mpich)", allow_module_level=True)

RUN = ["--dataset", "madelon", "--epochs", "3", "--threads", "1", "--quiet"]


def _command(out, flags, ranks=None):
    if ranks is None:
        return [sys.executable, "-m", "wasap.run", *RUN, "--out", str(out), *flags]
    return [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "wasap.run", *RUN,
            "--out", str(out), "--transport", "mpi", *flags]


def _run(out, *flags, ranks=None, timeout=240):
    return subprocess.run(_command(out, flags, ranks), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


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


def test_two_synchronous_workers_give_the_same_model_over_mpi_as_over_shared_memory(tmp_path):
    shared = _run(tmp_path / "shm", "--sync", "--workers", "2")
    assert shared.returncode == 0, shared.stderr
    over_mpi = _run(tmp_path / "mpi", "--sync", ranks=3)
    assert over_mpi.returncode == 0, over_mpi.stdout + over_mpi.stderr
    _assert_same_model(tmp_path / "shm", tmp_path / "mpi")


def test_an_asynchronous_run_with_phase_two_completes_and_cleans_up(tmp_path):
    before = _mpich_segments()
    # Long enough (a few seconds) for the profile's sampler to see the workers' reports.
    result = _run(tmp_path / "mpi", "--epochs", "16", "--phase2-start", "14", ranks=3)
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
