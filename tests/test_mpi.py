"""The MPI transport against the shared-memory one and the sequential trainer, under a real ``mpiexec``.

- one synchronous worker over MPI gives the sequential trainer's model bit for bit;
- two synchronous workers give the same model over MPI as over shared memory;
- an asynchronous run with phase two completes and leaves no MPI shared segment behind;
- ``--transport mpi`` without a launcher, or with a worker count the job does not have, is a clear error.

Each job runs with a timeout; the tests skip, saying why, where mpi4py or ``mpiexec`` is missing.
"""

import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="the MPI transport needs mpi4py (pip install 'wasap[mpi]' mpich)")
MPIEXEC = shutil.which("mpiexec") or shutil.which(os.path.join(os.path.dirname(sys.executable), "mpiexec"))
if MPIEXEC is None:
    pytest.skip("no mpiexec on PATH (pip install mpich)", allow_module_level=True)

RUN = ["--dataset", "madelon", "--epochs", "3", "--threads", "1", "--quiet"]


def _run(out, *flags, ranks=None, timeout=240):
    command = [sys.executable, "-m", "wasap.run", *RUN, "--out", str(out), *flags]
    if ranks is not None:
        command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "wasap.run", *RUN,
                   "--out", str(out), "--transport", "mpi", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


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
    result = _run(tmp_path / "mpi", "--epochs", "4", "--phase2-start", "3", ranks=3)
    assert result.returncode == 0, result.stdout + result.stderr
    import json

    with open(tmp_path / "mpi" / "summary.json") as stream:
        summary = json.load(stream)
    assert summary["stopped"] == "completed" and summary["epochs_completed"] == 4
    assert summary["parallel"]["workers"] == 2
    assert _mpich_segments() <= before


def test_mpi_without_a_launcher_says_how_to_launch(tmp_path):
    result = _run(tmp_path / "out", "--transport", "mpi")
    assert result.returncode == 2
    assert "mpiexec -n 3 python -m mpi4py -m wasap.run --transport mpi" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_count_the_job_does_not_have_is_refused(tmp_path):
    result = _run(tmp_path / "out", "--workers", "3", ranks=2, timeout=120)
    assert result.returncode != 0
    assert "--workers 3 does not match the MPI job: 2 ranks" in result.stderr
    assert "Traceback" not in result.stderr
