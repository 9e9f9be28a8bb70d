"""The WASAP-SGD trainer: :func:`fit_parallel`, the server's side of a run and its two phases.

The main process is the parameter server. It puts the model and the training
data in shared memory (:class:`~.shm_transport.SharedMemoryTransport`), starts K
worker processes (:mod:`.worker`) with an explicit start method, and then talks
to them only through the :class:`~.transport.ServerTransport` interface and the
messages of :mod:`.messages`:

- phase one, epochs ``1 .. phase2_start - 1``: counts the gradients as they come and
  applies those the workers could not (:class:`~.server.ParameterServer`; asynchronous
  workers apply their own to layers whose topology is unchanged, the synchronous
  variant's average is the server's); at each epoch's worth of samples
  (``n_train``) it snapshots the model, evaluates the snapshot on a background
  thread (so the workers are not kept waiting), and evolves the topology;
- phase two, epochs ``phase2_start .. epochs``: the workers train independent
  replicas; after every local epoch the server gathers the K replicas, averages
  them over the union of their topologies and keeps the largest weights per
  layer (:func:`~.server.average_replicas`). The epoch's record (test loss and
  accuracy, nnz) is that of this **averaged** model: what the run would return
  if it stopped there. The last epoch's average is the final model.

The contract is :func:`wasap.train.fit`'s: metrics.jsonl, summary.json and
model.npz through :class:`wasap.records.RunRecorder` (plus profile.json); the
summary gains ``parallel`` (workers, sync, phase2_start, start method, threads
per worker, shared bytes, server statistics, each worker's busy fraction).

Failure policy. Ctrl-C (or SIGTERM) stops the workers and keeps the model trained so far
(phase one: the served model; phase two: the last average, else the model phase
one ended with). A loss or weight that turns NaN restores the last good epoch's
model. A worker that dies (killed, crashed, or raised) stops the run: the
model trained so far is kept and written like after Ctrl-C, summary.json says
``stopped: "worker-failed"`` and names the worker and its exit code, and
:class:`~.transport.WorkerFailed` is raised with the same words (going on with
fewer workers would change the data each epoch sees, and the synchronous
variant's step, behind the user's back). No pipe or lock wait is unbounded:
every wait has a timeout after which the workers' liveness is checked. A worker
that makes no progress for ``config.stall_timeout`` seconds (stopped by a signal,
stuck) stops the run the same way, with ``stopped: "worker-stalled"`` and
:class:`~.transport.WorkerStalled` saying what it was doing (holding layer 2's lock,
say); it is killed, since a stopped process acts on no request. A worker whose
server died stops by itself. Every shared segment is unlinked on every exit
path (a SIGKILL of the main process leaves that to Python's resource tracker,
and the next run sweeps what is left: :func:`~.shm.sweep_stale_segments`). A run
stopped before its first epoch ends writes its outputs all the same.

Reproducibility. Worker ``w`` of ``K`` owns rows ``w, w + K, ...`` of the
training data; batch ``i`` of worker ``w`` drops out with
``stream_seed(seed, i * K + w)``. The synchronous variant's sample orders come
from the server's generator, drawn in the sequential trainer's order (the first
permutation, then after each epoch the evolution and the next permutation), so
one synchronous worker (``warmup_epochs=0``) gives the sequential trainer's
model exactly. Asynchronous runs are not repeatable: the order in which
gradients arrive depends on timing.

Threads. Each worker runs its share of the cores, ``cores // K`` kernel threads,
or ``config.threads`` when that is fewer (numba, OpenMP, OpenBLAS and MKL are told
so in the environment the worker starts with); the server's own kernels
(evaluation) run on one thread.
"""

import collections
import math
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence, Union

import numpy as np
import scipy.sparse

from ..checkpoint import CHECKPOINT_FILE, DEFAULT_EVERY, Checkpointer
from ..config import TrainConfig
from ..model import SparseMLP
from ..profiling import CpuSampler, build_profile, format_profile_table, write_profile
from ..records import RunRecorder, run_facts
from ..signals import StopSignals, describe_stop
from ..signals import stop_reason as stop_reason_of
from ..threads import available_cores, get_threads, set_threads
from ..train import TrainingDiverged, check_data
from .messages import Command, Failed, GradientPushed, Ready, ReplicaPublished, StepsApplied
from .server import ParameterServer, averaged_model
from .shm_transport import SharedMemoryTransport
from .transport import WorkerFailed, WorkerStalled
from .worker import WorkerStart, worker_main

#: Worker start methods allowed: never "fork" (numba's threads and locks are not fork-safe).
START_METHODS = ("spawn", "forkserver")
_RECEIVE_TIMEOUT = 0.2
_STARTUP_TIMEOUT = 300.0


def resolve_workers(workers: Union[int, str]) -> int:
    """Number of workers: an int >= 1, or ``"auto"`` for :func:`wasap.threads.available_cores`."""
    if workers == "auto":
        return available_cores()
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1 or 'auto', got {workers}.")
    return workers


def fit_parallel(model: SparseMLP, data, config: TrainConfig, *, out_dir: Optional[str] = None,
                 progress: Optional[bool] = None, log: Optional[Callable[[str], None]] = print,
                 overwrite: bool = False, init_seconds: Optional[float] = None, start_method: str = "spawn",
                 n_slots: int = 2, profile_interval: float = 0.5, resume: Optional[dict] = None,
                 checkpoint_every: float = DEFAULT_EVERY, command_line: Optional[Sequence[str]] = None) -> dict:
    """Train ``model`` with WASAP-SGD (or WASSP-SGD when ``config.sync``) and record the run.

    Parameters
    ----------
    model : SparseMLP
        Trained in place (its layers are replaced by the result).
    data : wasap.data.Dataset
        ``X_train`` (n, n_features) float32, ``y_train`` (n,) int or (n, n_outputs) float32, ``X_test``, ``y_test``.
    config : wasap.config.TrainConfig
        Uses ``workers`` (int or "auto"), ``sync``, ``phase2_start``, ``warmup_epochs`` besides the
        sequential trainer's hyperparameters.
    out_dir : str, optional
        Receives metrics.jsonl, summary.json, model.npz and profile.json.
    progress : bool, optional
        Ignored: the parallel trainer draws no progress bars (its per-epoch lines go to ``log``). Accepted so
        that :func:`wasap.train.fit` and this function take the same keyword arguments (:mod:`wasap.run`
        and the estimators call either).
    log : callable
        Receives one line per event (None: silent).
    overwrite : bool
        Allow a non-empty ``out_dir``.
    init_seconds : float, optional
    start_method : {"spawn", "forkserver"}
    n_slots : int
        Gradient slots per worker in the asynchronous variant (2: double buffering).
    profile_interval : float
        Seconds between CPU and memory samples.
    resume : dict, optional
        The state of the checkpoint in ``out_dir`` that ``model`` was loaded from
        (:func:`wasap.checkpoint.load_checkpoint`). A synchronous run goes on to the
        model an uninterrupted run would have given; an asynchronous one goes on
        from the checkpoint's model (its gradients' order was never repeatable);
        phase two starts its replicas again from the last average.
    checkpoint_every : float
        Seconds between checkpoints (:class:`wasap.checkpoint.Checkpointer`); phase
        one writes them at epoch boundaries, phase two after each average.
    command_line : list of str, optional
        The command line that started the run, for summary.json and ``--resume``.

    Returns
    -------
    dict
        The summary (as in summary.json) with ``history`` added.

    Raises
    ------
    wasap.data.DataError
        Before anything starts, for data :func:`wasap.train.fit` refuses too (:func:`wasap.train.check_data`).
    WorkerFailed
        After writing the outputs, when a worker process died, or stalled (:class:`~.transport.WorkerStalled`);
        its ``summary`` attribute holds the run's summary.
    SharedMemoryFull
        When /dev/shm cannot hold the run.
    """
    if start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS}; 'fork' is unsafe with numba's threads.")
    check_data(model, data)
    log = log or (lambda line: None)
    n_workers = resolve_workers(config.workers)
    if data.X_train.shape[0] < n_workers:
        raise ValueError(f"{n_workers} workers need at least {n_workers} training samples (one partition each); "
                         f"got {data.X_train.shape[0]}.")
    recorder = RunRecorder(out_dir, config, overwrite=overwrite, resume=resume,
                           facts=run_facts(data, command_line))
    try:
        recorder.start(model, init_seconds=init_seconds)
        checkpoints = None if out_dir is None else Checkpointer(recorder.path(CHECKPOINT_FILE), checkpoint_every)
        run = _ParallelRun(model, data, config, recorder, log=log, n_workers=n_workers, start_method=start_method,
                           n_slots=1 if config.sync else max(1, int(n_slots)), profile_interval=profile_interval,
                           checkpoints=checkpoints, resume=resume, command_line=command_line)
        with StopSignals(log) as run.stop:
            return run.execute()
    finally:
        recorder.close()


class _ParallelRun:
    """The state of one :func:`fit_parallel` call (main process = parameter server)."""

    def __init__(self, model, data, config, recorder, *, log, n_workers, start_method, n_slots, profile_interval,
                 checkpoints=None, resume=None, command_line=None):
        self.model = model
        self.data = data
        self.config = config
        self.recorder = recorder
        self.log = log
        self.n_workers = n_workers
        self.start_method = start_method
        self.n_slots = n_slots
        self.profile_interval = profile_interval
        self.n_train = data.X_train.shape[0]
        self.partitions = [np.arange(w, self.n_train, n_workers) for w in range(n_workers)]
        start = config.phase2_start
        self.phase2 = start is not None and start <= config.epochs
        self.phase1_epochs = (max(0, start - 1) if self.phase2 else config.epochs)
        # Each worker's share of the cores, and no more threads than asked: numba's threads wait for each
        # other at every parallel loop, so threads that compete with another process for a core slow down
        # every kernel of their worker.
        # Over MPI each worker rank takes its share of its own node's cores (wasap.parallel.mpi_transport).
        share = max(1, available_cores() // n_workers)  # a worker's share of the cores, the default
        self.threads = min(share, config.threads or share) if config.transport == "shm" \
            else max(1, config.threads or 1)
        self.checkpoints = checkpoints
        self.command_line = command_line
        # A resumed run's state (wasap.checkpoint): phase one's at an epoch boundary, or phase two's average.
        self.resume = None if resume is None else resume["trainer"]
        self.first_epoch = 1 if resume is None else resume["epoch"] + 1
        self.order_states = [None] * n_workers  # the server's random state each worker's order was drawn from
        self.stop = None  # the run's StopSignals, set by fit_parallel
        self.phase = 1
        self.last_good = model.copy()
        self.current = None  # phase two's latest average
        self.transport = None
        self.server = None
        self.pending = collections.deque()
        self.training_seconds = 0.0
        self.server_busy_seconds = None
        self.server_cpu_seconds = 0.0
        self.snapshot_seconds = 0.0
        self._last_check = 0.0

    # -- the run ----------------------------------------------------------------------------------------

    def execute(self):
        cfg = self.config
        stop_reason = "completed"
        failure = None
        previous_threads = get_threads()
        # The server's own kernels (evaluation) stay on one thread: the cores belong to the workers.
        set_threads(1)
        context = multiprocessing.get_context(self.start_method)
        sampler = None
        # numba's thread count is per thread: the evaluation thread must be limited too, or each
        # evaluation runs an OpenMP team whose spinning takes CPU from the workers.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wasap-eval", initializer=set_threads,
                                      initargs=(1,))
        try:
            self.transport = self._make_transport(context)
            self.executor = executor
            self.log(f"WASAP-SGD: {self.n_workers} worker(s) ({'synchronous' if cfg.sync else 'asynchronous'} "
                     f"phase one{', phase two from epoch ' + str(cfg.phase2_start) if self.phase2 else ''}), "
                     f"{self.threads} thread(s) each, {self._carrier()} "
                     f"{self.transport.nbytes / (1 << 20):.1f} MiB")
            worker_config = cfg.replace(workers=self.n_workers)
            self.transport.start_workers(
                worker_main, [(w, self.n_workers, worker_config, self.threads, self._first_phase2_epoch(),
                               self._worker_start(w)) for w in range(self.n_workers)],
                self.threads)
            # MPI's workers, on whichever machine, report their own CPU use (usage_readers) instead of a pid.
            pids = {"server": os.getpid(), **{f"worker {w}": pid for w, pid in enumerate(self.transport.pids)
                                              if pid is not None}}
            sampler = CpuSampler(pids, interval=self.profile_interval, phase=lambda: self.phase,
                                 reported=self.transport.usage_readers()).start()
            self._wait_ready()
            self._phase_one()
            if self.phase2:
                self._phase_two()
        except KeyboardInterrupt as error:
            stop_reason = stop_reason_of(error)
            self.log(describe_stop(stop_reason))
        except TrainingDiverged as error:
            stop_reason = "diverged"
            self.current = None
            # In summary.json as the sequential trainer puts it, so that a script sees why the run ended.
            self.recorder.extra["error"] = (
                f"Training diverged ({error}); kept the model of the last good epoch. "
                "Lower the learning rate (--lr) or raise the weight decay, and check the inputs are scaled.")
            self.log(self.recorder.extra["error"])
        except WorkerFailed as error:
            stop_reason = error.stop_reason
            failure = error
            self.log(f"Stopped: {error} Keeping the model trained so far.")
        except BaseException:
            # Anything else (a bug, /dev/shm too small, ...): stop the workers and unlink the blocks,
            # then let the error through.
            self._release(executor, sampler, previous_threads)
            raise
        try:
            # Workers first: then nothing changes the served model while it is read, and a lock that a
            # dead or stalled worker held does not hold the reading up.
            if self.transport is not None:
                self.transport.shutdown()
            self._finish_pending(stop_reason)
            final = self._final_model(stop_reason)
            if sampler is not None:
                sampler.stop()
            profile = self._profile(sampler)
        finally:
            self._release(executor, sampler, previous_threads)
        self.model.layers = final.layers
        self.model.release_workspaces()
        self.recorder.extra["parallel"] = self._facts(profile)
        if failure is not None:
            self.recorder.extra["error"] = str(failure)
        if self.recorder.out_dir is not None:
            write_profile(self.recorder.path("profile.json"), profile)
        self.log(format_profile_table(profile))
        with self.stop.deferred():
            summary = self.recorder.finish(self.model, stop_reason, classes=getattr(self.data, "classes", None),
                                           preprocessing=getattr(self.data, "preprocessing", None))
        if failure is not None:
            failure.summary = summary
            raise failure
        return summary

    def _make_transport(self, context):
        """The run's transport (the only place that knows which one the run uses): the model and the
        training data in shared blocks, or in rank 0's MPI window with each worker rank's partition sent
        to it."""
        X = self.data.X_train
        X = X if scipy.sparse.issparse(X) else np.asarray(X, dtype=np.float32)
        y = np.asarray(self.data.y_train)
        options = dict(n_workers=self.n_workers, n_slots=self.n_slots, partitions=self.partitions,
                       replicas=self.phase2, stall_timeout=self.config.stall_timeout)
        if self.config.transport == "mpi":
            from .mpi_transport import MpiServerTransport

            return MpiServerTransport(self.model, X, y, **options)
        transport = SharedMemoryTransport(self.model, X, y, context=context, **options)
        swept = transport.blocks.swept
        if swept:
            self.log(f"Removed {len(swept)} shared-memory segment(s) left in /dev/shm by runs that died "
                     f"({sum(size for _, size in swept) / (1 << 20):.1f} MiB).")
        return transport

    def _carrier(self):
        if self.config.transport == "mpi":
            return "over MPI one-sided windows, served state"
        return f"start method {self.start_method}, shared memory"

    def _release(self, executor, sampler, previous_threads):
        """Stop the sampler, the evaluation thread and the workers; unlink every shared block."""
        try:
            if sampler is not None:
                sampler.stop()
            executor.shutdown(wait=True)
        finally:
            if self.transport is not None:
                self.transport.shutdown()
                self.transport.close()
            set_threads(previous_threads)

    def _wait_ready(self):
        ready = set()
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while len(ready) < self.n_workers:
            try:
                message = self._receive()
            except WorkerStalled:
                raise  # a worker that was ready, then stopped: nothing to do with how it started
            except WorkerFailed as error:
                if self.config.transport != "shm":
                    raise WorkerFailed(f"{error} It failed while starting.") from None
                raise WorkerFailed(
                    f"{error} It failed while starting: with the {self.start_method!r} start method a worker "
                    "re-imports the main script, so run it from a file whose training code sits under "
                    "`if __name__ == '__main__':` (not from stdin or an interactive -c string).") from None
            if isinstance(message, Ready):
                ready.add(message.worker)
            if time.monotonic() > deadline:
                raise WorkerFailed(f"workers {sorted(set(range(self.n_workers)) - ready)} did not start within "
                                   f"{_STARTUP_TIMEOUT:.0f}s.")
        # Workers wait for RUN, so no gradient can arrive (and be lost) before this point.

    def _receive(self):
        """The next message; None after a timeout (worker liveness checked); raises on a worker's failure."""
        self.stop.check()
        message = self.transport.receive(_RECEIVE_TIMEOUT)
        now = time.monotonic()
        if message is None or now - self._last_check > _RECEIVE_TIMEOUT:
            # Also while messages flow: the other workers keep the server busy when one has died.
            self._last_check = now
            self.transport.check_workers()
            self._collect()
        if isinstance(message, Failed):
            raise WorkerFailed(f"worker {message.worker} raised an error:\n{message.traceback}")
        return message

    # -- phase one -------------------------------------------------------------------------------------

    def _phase_one(self):
        cfg = self.config
        transport = self.transport
        K = self.n_workers
        steps_per_epoch = max(1, math.ceil(max(len(p) for p in self.partitions) / cfg.batch_size)) if cfg.sync \
            else max(1, math.ceil(self.n_train / cfg.batch_size))
        server = self.server = ParameterServer(transport, cfg, n_workers=K, steps_per_epoch=steps_per_epoch)
        consumed = [0] * K
        epoch = self.first_epoch
        total = 0
        resume = self.resume if self.resume is not None and self.resume["phase"] == 1 else None
        if resume is not None:
            server.rng.bit_generator.state = resume["server_rng"]
            server.stats.updates = resume["updates"]  # the warm-up's step count
            consumed, total = list(resume["consumed"]), resume["total"]
        if cfg.sync:
            # The server draws the orders with its own generator, in the sequential trainer's order:
            # first epoch's permutation, [epoch], evolution, next permutation...
            for w in range(K):
                if resume is None:
                    self._draw_order(w)
                else:  # the order each worker was in, drawn again from the state it came from
                    self._draw_order(w, from_state=resume["order_states"][w])
        if resume is None and self.checkpoints is not None and epoch <= self.phase1_epochs:
            self._checkpoint_phase_one(consumed, total)
        transport.set_command(Command.RUN)
        waiting = {}
        loss_sum = correct = seen = 0.0
        started = epoch_started = time.perf_counter()
        cpu_started = time.thread_time()  # this thread only: not the evaluation thread
        idle_before = transport.idle_seconds
        try:
            while epoch <= self.phase1_epochs:
                message = self._receive()
                if isinstance(message, StepsApplied):  # a group of gradients their workers applied to every layer
                    batch_loss_sum = message.loss_sum
                elif isinstance(message, GradientPushed):
                    batch_loss_sum = message.loss * message.n_samples
                else:
                    continue
                n = message.n_samples
                if not math.isfinite(batch_loss_sum):
                    raise TrainingDiverged(f"the loss became {batch_loss_sum / n} in epoch {epoch}")
                loss_sum += batch_loss_sum
                correct += message.n_correct
                seen += n
                if isinstance(message, StepsApplied):
                    server.count_self_applied(message.steps)
                    released = []
                    total += n
                elif cfg.sync:
                    waiting[message.worker] = message
                    if len(waiting) < K:
                        continue
                    # In worker order, not arrival order: the average's sum and the server's draws of the
                    # next orders (below) then do not depend on timing, and a run repeats exactly.
                    released = sorted(waiting)
                    server.apply_average([waiting[worker] for worker in released])
                    for gradient in waiting.values():
                        consumed[gradient.worker] += gradient.n_samples
                    total += sum(gradient.n_samples for gradient in waiting.values())
                    waiting.clear()
                else:
                    server.apply(message)
                    released = [message.worker]
                    total += n
                boundary = total >= epoch * self.n_train
                if boundary:
                    now = time.perf_counter()
                    evolve_seconds = self._end_of_phase_one_epoch(
                        epoch, dict(train_loss=loss_sum / seen, train_accuracy=self._accuracy(correct, seen),
                                    train_seconds=now - epoch_started))
                    loss_sum = correct = seen = 0.0
                    epoch += 1
                    epoch_started = time.perf_counter()
                    self.training_seconds += epoch_started - now - evolve_seconds
                if cfg.sync:
                    for worker in released:
                        if consumed[worker] >= len(self.partitions[worker]):
                            consumed[worker] = 0
                            if epoch <= self.phase1_epochs:
                                self._draw_order(worker)
                if boundary and epoch <= self.phase1_epochs and self.checkpoints is not None \
                        and self.checkpoints.due(mid_epoch=False):
                    # Before the slots go back: in the synchronous variant every worker is waiting now.
                    self._checkpoint_phase_one(consumed, total)
                for worker in released:
                    transport.release_slot(worker)
        finally:
            # Also when the run stops in the middle (Ctrl-C, a failed worker): the profile then
            # covers the part that ran.
            self.training_seconds += time.perf_counter() - started
            # The server's own time per update: phase one's wall time less its waits for messages and
            # the end-of-epoch work (the workers' rate is what it cannot exceed).
            self.server_busy_seconds = (time.perf_counter() - started - (transport.idle_seconds - idle_before)
                                        - server.stats.evolve_seconds - self.snapshot_seconds)
            self.server_cpu_seconds = (time.thread_time() - cpu_started - server.stats.evolve_seconds
                                       - self.snapshot_seconds)
        transport.set_command(Command.PHASE_TWO if self.phase2 else Command.STOP)

    def _draw_order(self, worker, from_state=None):
        """Write ``worker``'s next sample order, drawn by the server's generator (or again from ``from_state``)."""
        rng = self.server.rng
        if from_state is not None:
            rng = np.random.default_rng()
            rng.bit_generator.state = from_state
        self.order_states[worker] = rng.bit_generator.state
        self.transport.write_order(worker, rng.permutation(len(self.partitions[worker])))

    def _first_phase2_epoch(self):
        """The epoch the workers' phase two starts at (None: no phase two)."""
        return max(self.config.phase2_start, self.first_epoch) if self.phase2 else None

    def _worker_start(self, worker):
        """Where ``worker``'s phase one begins: the checkpoint's step and position in a resumed run."""
        resume = self.resume
        if resume is None or resume["phase"] != 1:
            return WorkerStart()
        if self.config.sync:
            # Every worker has taken one batch per synchronous step.
            return WorkerStart(step=resume["updates"], position=resume["consumed"][worker])
        return WorkerStart(step=resume["updates"] // self.n_workers, salt=(self.first_epoch,))

    def _checkpoint(self, model, trainer):
        """Write a checkpoint of ``model`` with the server's state ``trainer`` and the metrics so far."""
        self.recorder.write_checkpoint(self.checkpoints, model, trainer, command_line=self.command_line,
                                       classes=getattr(self.data, "classes", None))

    def _checkpoint_phase_one(self, consumed, total):
        """A checkpoint at an epoch boundary of phase one, with everything a synchronous run continues from."""
        # The epochs evaluated in the background belong to it.
        self._collect(wait=True)
        with self.transport.model_lock():
            model = self.transport.read_model()
        self._checkpoint(model, dict(phase=1, server_rng=self.server.rng.bit_generator.state,
                                     updates=self.server.stats.updates, consumed=list(consumed), total=total,
                                     order_states=list(self.order_states)))

    def _accuracy(self, correct, seen):
        return float("nan") if self.model.loss != "cross-entropy" else correct / seen

    def _end_of_phase_one_epoch(self, epoch, fields):
        """Snapshot, evaluate in the background, evolve (not after the run's last epoch); returns evolve seconds."""
        # Workers apply their own updates: holding every layer's lock from the snapshot to the evolved
        # layers' write-back keeps one from landing in between and being overwritten.
        with self.transport.model_lock():
            started = time.perf_counter()
            snapshot = self.transport.read_model()
            self.snapshot_seconds += time.perf_counter() - started
            future = self.executor.submit(_evaluate, snapshot, self.data.X_test, self.data.y_test)
            started = time.perf_counter()
            if epoch < self.config.epochs:
                self.server.end_of_epoch(epoch, snapshot)
            evolve_seconds = time.perf_counter() - started
        # As wasap.train.fit records it: the nnz after the epoch's topology change.
        fields.update(epoch=epoch, nnz=self.server.nnz_per_layer(), evolve_seconds=evolve_seconds)
        self.pending.append((fields, future, snapshot))
        self._collect()
        return evolve_seconds

    def _collect(self, wait=False):
        """Record the evaluated epochs, in order; raise TrainingDiverged on a non-finite one."""
        while self.pending and (wait or self.pending[0][1].done()):
            fields, future, snapshot = self.pending.popleft()
            test_loss, test_accuracy, eval_seconds, finite = future.result()
            if not finite:
                self.pending.clear()
                raise TrainingDiverged(f"the weights became non-finite in epoch {fields['epoch']}")
            self._record(fields, test_loss, test_accuracy, eval_seconds)
            self.last_good = snapshot

    def _record(self, fields, test_loss, test_accuracy, eval_seconds):
        record = self.recorder.epoch(epoch=fields["epoch"], train_loss=fields["train_loss"],
                                     train_accuracy=fields["train_accuracy"], test_loss=test_loss,
                                     test_accuracy=test_accuracy, nnz=fields["nnz"],
                                     train_seconds=fields["train_seconds"], eval_seconds=eval_seconds,
                                     evolve_seconds=fields["evolve_seconds"])
        self.log(f"[phase {self.phase}] " + self.recorder.describe(record))

    # -- phase two -------------------------------------------------------------------------------------

    def _phase_two(self):
        cfg = self.config
        self._collect(wait=True)
        self.phase = 2
        served = self.transport.read_model()
        resumed = self.resume is not None and self.resume["phase"] == 2
        targets = self.resume["targets"] if resumed else served.nnz_per_layer()
        self.current = served
        received = {}
        epoch = self._first_phase2_epoch()
        epoch_started = time.perf_counter()
        while epoch <= cfg.epochs:
            message = self._receive()
            if not isinstance(message, ReplicaPublished):
                continue  # late phase-one gradients are dropped
            layers = self.transport.gather_replica(message.worker)
            if not math.isfinite(message.loss):
                raise TrainingDiverged(f"worker {message.worker}'s replica diverged in epoch {message.epoch}")
            received.setdefault(message.epoch, {})[message.worker] = (layers, message)
            while len(received.get(epoch, ())) == self.n_workers:
                group = received.pop(epoch)
                now = time.perf_counter()
                train_seconds = now - epoch_started
                self.training_seconds += train_seconds
                replicas = [group[w][0] for w in range(self.n_workers)]
                reports = [report for _, report in group.values()]  # in arrival order, as the sums always were
                # Importance Pruning in the replicas only shrinks: keep no more than the smallest replica.
                layer_targets = [min([targets[l]] + [r[l].nnz for r in replicas]) for l in range(len(targets))]
                average = averaged_model(replicas, layer_targets, self.model)
                average_seconds = time.perf_counter() - now
                test_loss, test_accuracy, eval_seconds, finite = _evaluate(average, self.data.X_test,
                                                                           self.data.y_test)
                if not finite:
                    raise TrainingDiverged(f"the averaged weights became non-finite in epoch {epoch}")
                seen = sum(r.n_samples for r in reports)
                fields = dict(epoch=epoch, train_loss=sum(r.loss * r.n_samples for r in reports) / seen,
                              train_accuracy=self._accuracy(sum(r.n_correct for r in reports), seen),
                              nnz=average.nnz_per_layer(), train_seconds=train_seconds,
                              evolve_seconds=average_seconds)
                self._record(fields, test_loss, test_accuracy, eval_seconds)
                self.current = self.last_good = average
                if epoch < cfg.epochs and self.checkpoints is not None and self.checkpoints.due(mid_epoch=False):
                    # The replicas start again from this average when the run resumes.
                    self._checkpoint(average, dict(phase=2, targets=targets))
                epoch += 1
                epoch_started = time.perf_counter()
        self.transport.set_command(Command.STOP)

    # -- the end -----------------------------------------------------------------------------------------

    def _finish_pending(self, stop_reason):
        """Record the epochs whose evaluation is still running (they were completed)."""
        if stop_reason == "diverged":
            self.pending.clear()
            return
        try:
            self._collect(wait=True)
        except TrainingDiverged:
            pass

    def _final_model(self, stop_reason):
        if stop_reason == "diverged":
            return self.last_good
        if self.current is not None:
            return self.current
        if self.transport is not None:  # shut down, not closed yet: the served model is still there
            return self.transport.read_model()
        return self.last_good

    def _profile(self, sampler):
        transport = self.transport
        tables = transport.time_tables() if transport is not None else np.zeros((0, 2, 6))
        server = self.server.stats.as_dict(self.training_seconds) if self.server is not None else {}
        if server:
            server["training_seconds"] = self.training_seconds
            if self.server_busy_seconds is not None and server["updates"]:
                server["busy_seconds"] = self.server_busy_seconds
                server["busy_seconds_per_update"] = self.server_busy_seconds / server["updates"]
                server["cpu_seconds_per_update"] = max(0.0, self.server_cpu_seconds) / server["updates"]
        extra = dict(workers=self.n_workers, sync=self.config.sync, phase2_start=self.config.phase2_start,
                     start_method=self.start_method, threads_per_worker=self.threads, slots=self.n_slots,
                     shared_bytes=transport.nbytes if transport is not None else 0, server=server)
        return build_profile(sampler, tables, extra=extra)

    def _facts(self, profile):
        busy = {name: {key: value for key, value in entry.items()
                       if key.startswith(("busy", "wait", "cpu_share", "compute_share", "mean_cpu", "peak"))}
                for name, entry in profile.get("summary", {}).items()}
        return dict(workers=self.n_workers, sync=self.config.sync, phase2_start=self.config.phase2_start,
                    start_method=self.start_method, threads_per_worker=self.threads, slots=self.n_slots,
                    shared_bytes=profile.get("shared_bytes"), server=profile.get("server"), processes=busy)


def _evaluate(model, X, y):
    """Test loss and accuracy of ``model``, the seconds it took, and whether its weights are finite."""
    started = time.perf_counter()
    loss, accuracy = model.evaluate(X, y)
    finite = math.isfinite(loss) and model.is_finite()
    return loss, accuracy, time.perf_counter() - started, finite


__all__ = ["START_METHODS", "WorkerFailed", "WorkerStalled", "fit_parallel", "resolve_workers"]
