"""The parallel trainer under faults: it never hangs, never dies of SIGBUS, checks its data, and reports the
real error.

- A worker stopped with SIGSTOP (inside a layer's lock, or wherever it was) ends the run within the stall
  timeout plus a margin with :class:`wasap.parallel.WorkerStalled` saying what it was doing; the outputs are
  written, the worker is gone and no segment of the run is left.
- A worker whose server was SIGKILLed while holding every layer's lock exits by itself.
- Segments of dead runs are swept at start; those of live pids, or still held open, are kept.
- :func:`wasap.parallel.fit_parallel` refuses what :func:`wasap.train.fit` refuses, with DataError.
- A run stopped inside its first epoch writes model.npz, summary.json and profile.json and reports why.
- Two runs racing for a /dev/shm that holds one: at most one is refused, with SharedMemoryFull's message,
  and neither dies of a signal (in a private mount namespace with a small tmpfs on /dev/shm).
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from test_parallel import REPO, _blobs, _no_segments_of, _worker_pids
from wasap.config import ConfigError, TrainConfig
from wasap.data import DataError
from wasap.model import SparseMLP
from wasap.parallel import fit_parallel
from wasap.parallel.server import ParameterServer
from wasap.parallel.shm import SHM_DIR, SharedBlocks, leftover_segments, sweep_stale_segments
from wasap.parallel.transport import StallWatch
from wasap.train import fit

# One script, several faults (FAULT in the environment, which the spawned workers inherit and re-read when
# they import this file as their main module: so the patches below apply inside the workers too).
_SCRIPT = textwrap.dedent("""
    import contextlib
    import json
    import os
    import signal
    import sys
    import time

    import numpy as np
    import psutil

    from wasap.config import TrainConfig
    from wasap.data import Dataset
    from wasap.model import SparseMLP
    from wasap.parallel import WorkerFailed, fit_parallel, server, shm_transport
    from wasap.parallel.messages import Command
    from wasap.parallel.shm import SharedMemoryFull

    FAULT = os.environ.get("FAULT", "")
    MARK = os.environ.get("FAULT_MARK", "")
    BARRIER = os.environ.get("RACE_BARRIER", "")  # a folder: runs that share it start training together

    def mark(**facts):
        with open(MARK, "w") as stream:
            json.dump(dict(facts, at=time.monotonic()), stream)

    if FAULT == "stop-holding-lock":
        # Worker 1 stops itself with layer 1's lock held, at its first step of phase one.
        locked_layer = shm_transport.SharedMemoryWorkerTransport._locked_layer

        @contextlib.contextmanager
        def stop_inside(self, layer):
            with locked_layer(self, layer) as state:
                if self.worker == 1 and layer == 1 and self.command() == Command.RUN:
                    mark(pid=os.getpid())
                    os.kill(os.getpid(), signal.SIGSTOP)
                yield state

        shm_transport.SharedMemoryWorkerTransport._locked_layer = stop_inside

    if FAULT == "server-dies-holding-locks":
        # The server kills itself at its first end of epoch, inside model_lock(): every layer's lock held.
        def die(self, epoch, snapshot):
            workers = [c.pid for c in psutil.Process().children() if "resource_tracker" not in " ".join(c.cmdline())]
            mark(pid=os.getpid(), workers=workers)
            os.kill(os.getpid(), signal.SIGKILL)

        server.ParameterServer.end_of_epoch = die

    if __name__ == "__main__":
        out, n, n_features, epochs, stall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \\
            float(sys.argv[5])
        rng = np.random.default_rng(0)
        X = rng.standard_normal((n, n_features)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.int64)
        cut = int(0.8 * n)
        data = Dataset("toy", X[:cut], y[:cut], X[cut:], y[cut:], np.arange(2), "toy")
        config = TrainConfig(hidden=(32, 32), epsilon=4, epochs=epochs, batch_size=16, workers=2, seed=0, threads=1,
                             stall_timeout=stall)
        model = SparseMLP.from_config(n_features, 2, config)
        if BARRIER:
            open(os.path.join(BARRIER, str(os.getpid())), "w").close()
            deadline = time.monotonic() + 60
            while len(os.listdir(BARRIER)) < 2 and time.monotonic() < deadline:
                time.sleep(0.001)
        try:
            summary = fit_parallel(model, data, config, out_dir=out, log=lambda line: print(line, flush=True))
        except SharedMemoryFull as error:
            print("REFUSED", error, flush=True)
            sys.exit(3)
        except WorkerFailed as error:
            print("FAILED", type(error).__name__, error, flush=True)
            sys.exit(4)
        print("STOPPED", summary["stopped"], flush=True)
""")


def _script(tmp_path):
    path = tmp_path / "faulty_run.py"
    path.write_text(_SCRIPT)
    return path


def _env(**values):
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **values)


def _communicate(process, timeout, what):
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"{what}:\n{process.communicate()[0]}")


def _wait_for_file(path, process, timeout):
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path.name} never appeared:\n{process.communicate()[0]}")
        time.sleep(0.1)


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids, timeout):
    """The pids still alive (zombies count as gone) after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


# -- a stalled worker ----------------------------------------------------------------------------------------

_STALL = 4.0


def _assert_stalled_run(process, out, output, stopped_at, worker_pid):
    elapsed = time.monotonic() - stopped_at
    assert process.returncode == 4, output
    assert "FAILED WorkerStalled worker" in output and f"(pid {worker_pid}) made no progress" in output, output
    assert f"stall timeout is {_STALL:g}s" in output, output
    # Not before the timeout, and not much after it.
    assert _STALL - 1.0 < elapsed < _STALL + 20.0, (elapsed, output)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "worker-stalled" and f"(pid {worker_pid})" in summary["error"]
    assert (out / "model.npz").exists() and (out / "profile.json").exists()
    assert SparseMLP.load(str(out / "model.npz")).is_finite()
    assert _wait_gone([worker_pid], 5.0) == []
    assert _no_segments_of(process.pid) == []
    return summary


def _kill_if_alive(pid):
    """Never leave a stopped worker behind a failed test."""
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_a_worker_stopped_holding_a_lock_ends_the_run_within_the_stall_timeout(tmp_path):
    out, mark = tmp_path / "out", tmp_path / "stopped.json"
    process = subprocess.Popen([sys.executable, str(_script(tmp_path)), str(out), "3000", "20", "10000", str(_STALL)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=_env(FAULT="stop-holding-lock", FAULT_MARK=str(mark)))
    try:
        output = _communicate(process, 120, "the run hung with a worker stopped inside a lock")
    finally:
        if mark.exists():
            _kill_if_alive(json.loads(mark.read_text())["pid"])
    facts = json.loads(mark.read_text())
    summary = _assert_stalled_run(process, out, output, facts["at"], facts["pid"])
    assert f"worker 1 (pid {facts['pid']}) made no progress" in summary["error"]
    assert "while holding layer 1's lock" in summary["error"] and "the process is stopped" in summary["error"]
    assert summary["epochs_completed"] == 0  # stopped in epoch 1: the outputs are written all the same


def test_a_worker_stopped_from_outside_ends_the_run_within_the_stall_timeout(tmp_path):
    # The run is in its second epoch or later, and worker 1 may hold no lock: the other worker could go on
    # alone, with half the data; the run must stop instead.
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(_script(tmp_path)), str(out), "6000", "20", "10000", str(_STALL)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    _wait_for_file(out / "metrics.jsonl", process, 120)
    workers = _worker_pids(process.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        output = _communicate(process, 120, "the run hung with a stopped worker")
    finally:
        _kill_if_alive(workers[1])
    summary = _assert_stalled_run(process, out, output, stopped_at, workers[1])
    assert "the process is stopped" in summary["error"]


def test_stall_watch_counts_only_the_time_the_server_watches():
    watch = StallWatch(2, timeout=5.0, max_step=1.0)
    counts = np.array([1, 1], dtype=np.int64)
    assert watch.stalled(counts, 100.0) is None
    # The server itself was stopped for 1000 s (Ctrl-Z on the whole job): one step of at most 1 s counts.
    assert watch.stalled(counts, 1100.0) is None
    now = 1100.0
    for _ in range(8):  # worker 0 beats, worker 1 does not: 4 more watched seconds, 5 in all
        now += 0.5
        counts[0] += 1
        assert watch.stalled(counts, now) is None
    now += 0.5
    counts[0] += 1
    stalled = watch.stalled(counts, now)
    assert stalled is not None and stalled[0] == 1
    assert stalled[1] == pytest.approx(now - 100.0)  # the wall seconds since its last beat
    # A worker not started yet (count 0) is the startup timeout's business, however long it is quiet.
    fresh = StallWatch(1, timeout=1.0, max_step=1.0)
    assert all(fresh.stalled(np.zeros(1, dtype=np.int64), t) is None for t in range(10))


def test_stall_timeout_must_be_positive():
    with pytest.raises(ConfigError, match="stall_timeout"):
        TrainConfig(stall_timeout=0)


# -- a dead server -------------------------------------------------------------------------------------------


def test_workers_exit_when_their_server_dies_holding_every_lock(tmp_path):
    out, mark = tmp_path / "out", tmp_path / "dying.json"
    process = subprocess.Popen([sys.executable, str(_script(tmp_path)), str(out), "3000", "20", "10000", "600"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=_env(FAULT="server-dies-holding-locks", FAULT_MARK=str(mark)))
    output = _communicate(process, 120, "the server did not get to its first end of epoch")
    assert process.returncode == -signal.SIGKILL, output
    facts = json.loads(mark.read_text())
    assert len(facts["workers"]) == 2
    # Blocked on a lock the dead server held, a worker must still notice and go: then Python's resource
    # tracker unlinks the segments.
    assert _wait_gone(facts["workers"], 10.0) == [], "workers outlived their server"
    deadline = time.monotonic() + 10.0
    while _no_segments_of(facts["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _no_segments_of(facts["pid"]) == []


# -- stale segments ------------------------------------------------------------------------------------------


def _dead_pid():
    child = subprocess.Popen(["true"])
    child.wait()
    assert not psutil.pid_exists(child.pid)
    return child.pid


def _plant(name, nbytes=8192):
    with open(os.path.join(SHM_DIR, name), "wb") as stream:
        stream.write(b"\0" * nbytes)
    return name


@pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="no /dev/shm on this platform")
def test_segments_of_dead_pids_are_swept_and_those_of_live_or_held_ones_kept():
    import fcntl

    dead = _dead_pid()
    stale = _plant(f"wasap_{dead}_0a0b0c_data_0")
    live = _plant(f"wasap_{os.getpid()}_0d0e0f_data_0")
    held = _plant(f"wasap_{dead}_1a1b1c_data_0")  # a dead pid, but a process (another pid namespace?) has it open
    holder = os.open(os.path.join(SHM_DIR, held), os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_SH)
    try:
        swept = sweep_stale_segments()
        assert (stale, 8192) in swept
        assert stale not in leftover_segments()
        assert {live, held} <= set(leftover_segments())
    finally:
        os.close(holder)
        for name in (stale, live, held):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except FileNotFoundError:
                pass


@pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="no /dev/shm on this platform")
def test_creating_blocks_sweeps_dead_runs_first():
    stale = _plant(f"wasap_{_dead_pid()}_2a2b2c_X")
    blocks = SharedBlocks.create(f"wasap_{os.getpid()}_3a3b3c_", {"a": ((16,), np.float32)})
    try:
        assert stale in [name for name, _ in blocks.swept]
        assert stale not in leftover_segments()
        assert (blocks["a"] == 0).all()  # a new block reads as zeros
        # Reserved in full: the block's pages are allocated, not a sparse hole.
        assert os.stat(os.path.join(SHM_DIR, blocks.specs["a"].segment)).st_blocks * 512 >= 64
    finally:
        blocks.close()


# -- data checks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["label", "features"])
def test_fit_parallel_refuses_what_fit_refuses(bad, tmp_path):
    # A Dataset refuses NaN and labels outside its classes when it is built; what is left for the trainers
    # to refuse is data that does not fit the model.
    if bad == "label":
        # Four classes for a three-output model: the workers' kernels would write out of bounds.
        data = _blobs(n=200, n_classes=4)
        assert data.y_train.max() == 3
    else:
        data = _blobs(n=200, n_features=21)
    config = TrainConfig(hidden=(8,), epsilon=2, epochs=1, batch_size=16, workers=2, threads=1)
    model = SparseMLP.from_config(20, 3, config)
    with pytest.raises(DataError) as expected:
        fit(model.copy(), data, config.replace(workers=1), log=None, progress=False)
    with pytest.raises(DataError) as got:
        fit_parallel(model, data, config, out_dir=str(tmp_path / "run"), log=None)
    assert str(got.value) == str(expected.value)
    assert _no_segments_of(os.getpid()) == []


# -- a run stopped in epoch 1 --------------------------------------------------------------------------------------


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("cause", ["interrupted", "diverged"])
def test_a_run_stopped_in_its_first_epoch_writes_its_outputs(cause, tmp_path, monkeypatch):
    data = _blobs(n=1500)
    config = TrainConfig(hidden=(32,), epsilon=4, epochs=3, batch_size=16, workers=2, seed=1, threads=1)
    if cause == "interrupted":  # Ctrl-C at the server's first update
        monkeypatch.setattr(ParameterServer, "count_self_applied", _interrupt)
        monkeypatch.setattr(ParameterServer, "apply", _interrupt)
    else:
        config = config.replace(lr=1e30)
    model = SparseMLP.from_config(data.n_features, data.n_classes, config)
    initial = model.copy()
    lines = []
    summary = fit_parallel(model, data, config, out_dir=str(tmp_path / "run"), log=lines.append)
    assert summary["stopped"] == cause and summary["epochs_completed"] == 0
    for name in ("summary.json", "model.npz", "profile.json"):
        assert (tmp_path / "run" / name).exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stopped"] == cause
    assert any(line.startswith("where the time went") for line in lines)  # the profile table, no TypeError
    saved = SparseMLP.load(str(tmp_path / "run" / "model.npz"))
    assert saved.nnz_per_layer() == initial.nnz_per_layer()
    if cause == "diverged":  # the last good model is the one it started from
        for got, want in zip(saved.layers, initial.layers):
            np.testing.assert_array_equal(got.data, want.data)
    assert _no_segments_of(os.getpid()) == []


# -- two runs racing for a small /dev/shm ----------------------------------------------------------------------------

_RACE = textwrap.dedent("""
    import json
    import os
    import subprocess
    import sys

    script, folder, barrier = sys.argv[1], sys.argv[2], sys.argv[3]
    runs = [subprocess.Popen([sys.executable, script, f"{folder}/run{i}", "32000", "100", "1", "600"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, RACE_BARRIER=barrier)) for i in range(2)]
    results = [(run.wait(timeout=240), run.stdout.read()) for run in runs]
    print(json.dumps(results))
""")


def _can_unshare():
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_unshare(),
                    reason="needs unshare -m and mount (root, Linux) for a private /dev/shm")
def test_two_runs_racing_for_a_small_dev_shm_never_die_of_sigbus(tmp_path):
    # Each run needs about 10.3 MiB (its 25600 x 100 float32 training rows and a little more): 16 MiB hold one.
    # Both wait at a barrier, right before fit_parallel, so that their checks of the free space meet.
    race, barrier = tmp_path / "race.py", tmp_path / "barrier"
    race.write_text(_RACE)
    barrier.mkdir()
    command = "mount -t tmpfs -o size=16m tmpfs /dev/shm && exec " + " ".join(
        shlex.quote(str(arg)) for arg in (sys.executable, race, _script(tmp_path), tmp_path, barrier))
    finished = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=300,
                              env=_env())
    assert finished.returncode == 0, finished.stdout + finished.stderr
    results = json.loads(finished.stdout.strip().splitlines()[-1])
    codes = [code for code, _ in results]
    assert all(code >= 0 for code in codes), results  # no SIGBUS, no signal at all
    refused = [output for code, output in results if code == 3]
    assert len(refused) <= 1, results
    for output in refused:
        assert "REFUSED the parallel trainer" in output and "shared memory" in output, output
    assert sum("STOPPED completed" in output for _, output in results) == 2 - len(refused), results


_RESERVE = textwrap.dedent("""
    import numpy as np
    from wasap.parallel import shm

    shm.check_free_space = lambda nbytes: None  # as if another program took the space right after the check
    try:
        shm.SharedBlocks.create(shm.run_prefix(), {"a": ((1 << 20,), np.uint8), "b": ((8 << 20,), np.uint8)})
    except shm.SharedMemoryFull as error:
        print("REFUSED", error)
    print("LEFT", shm.leftover_segments())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_unshare(),
                    reason="needs unshare -m and mount (root, Linux) for a private /dev/shm")
def test_a_block_that_cannot_be_reserved_is_refused_and_nothing_is_left():
    command = "mount -t tmpfs -o size=4m tmpfs /dev/shm && exec " + " ".join(
        shlex.quote(arg) for arg in (sys.executable, "-c", _RESERVE))
    finished = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=60,
                              env=_env())
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "REFUSED the parallel trainer could not reserve" in finished.stdout, finished.stdout
    assert "LEFT []" in finished.stdout, finished.stdout


def test_a_replica_that_diverges_in_phase_two_ends_the_run_as_a_divergence(tmp_path):
    # Every epoch is phase two and the rate is absurd: each replica diverges in its first epoch. The run must
    # end as a divergence (the workers wait for the server's STOP rather than exit, which would read as a
    # failure), keep the starting model, say why in summary.json, and leave no shared block behind.
    data = _blobs(n=600, n_classes=2)
    config = TrainConfig(hidden=(32,), epsilon=5, epochs=3, batch_size=16, workers=2, phase2_start=1, lr=1e30,
                         threads=1, seed=0)
    model = SparseMLP.from_config(data.n_features, data.n_classes, config)
    start = [layer.data.copy() for layer in model.layers]
    summary = fit_parallel(model, data, config, out_dir=str(tmp_path / "run"), progress=False, log=None)
    assert "diverged" in summary["error"] and "replica" in summary["error"], summary["error"]
    assert summary["history"] == []
    for layer, before in zip(model.layers, start):
        np.testing.assert_array_equal(layer.data, before)
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["error"] == summary["error"]
    assert _no_segments_of(os.getpid()) == []
