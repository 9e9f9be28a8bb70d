"""What the parameter server and the workers say to each other, behind a small interface.

The algorithm (:mod:`.server`, :mod:`.worker`, :mod:`.wasap`) talks only to
:class:`ServerTransport` and :class:`WorkerTransport`: pull weights, push a
gradient slot, wait for a free slot (the synchronous variant's barrier),
publish and gather replicas, a command word (phase, stop), and messages of a
few integers. :class:`SharedMemoryTransport` is the one implementation: every
array lives in a :class:`~.shm.SharedBlocks` of the run, guarded by one lock
per layer; one pipe per worker carries only small tuples. An MPI transport would implement
the same methods with buffer sends (the server holding the model privately).

Messages from workers to the server (tuples, first item the kind):

- ``(GRADIENT, worker, slot, versions, loss, n_correct, n_samples, applied)``: ``applied[l]`` says the
  worker already applied layer ``l``'s part to the served weights (:meth:`WorkerTransport.apply_gradient`)
- ``(APPLIED, worker, steps, loss_sum, n_correct, n_samples)``: ``steps`` gradients that the worker applied
  to every layer itself and whose slots it released, reported together (:meth:`WorkerTransport.report_applied`)
- ``(REPLICA, worker, epoch, loss, n_correct, n_samples)``
- ``(READY, worker, pid)``, ``(DONE, worker)``, ``(FAILED, worker, traceback_text)``

Shared layout (``L`` layers, ``K`` workers, ``S`` slots per worker, capacity
``cap_l`` = the layer's nnz at the start, which only shrinks):

- ``control`` (4,) int64: the command word (WAIT, RUN, PHASE_TWO, STOP);
- ``meta`` (L, 2) int64: topology version and nnz of each layer;
- ``indptr_l`` (n_in + 1,) int64, ``indices_l`` (cap_l,) int32, ``data_l`` and
  ``velocity_l`` (cap_l,) float32, ``bias_l`` and ``bias_velocity_l`` (n_out,) float32;
- ``grad_l`` (K, S, cap_l) float32, ``bias_grad_l`` (K, S, n_out) float32: the
  gradient slots, in the order of the layer's nonzeros of the version they were
  computed on;
- ``X`` (n, n_features) float32 and ``y`` (n,) or (n, n_outputs): the training data, once, laid out
  partition after partition (worker ``w``'s rows are one contiguous block);
- ``orders`` (K, max partition) int64: sample orders the server draws (synchronous variant);
- ``times`` (K, phases, categories + 1) float64: each worker's :class:`~wasap.profiling.TimeAccount`;
- ``beats`` (K, 3) int64: each worker's heartbeat: a count it raises whenever it moves on, what it is
  doing (an index into :data:`ACTIVITIES`) and that activity's detail (a layer, an epoch);
- with phase two, ``rep_indptr_l`` (K, n_in + 1), ``rep_indices_l`` (K, cap_l),
  ``rep_data_l`` (K, cap_l), ``rep_bias_l`` (K, n_out), ``rep_nnz`` (K, L): one replica per worker.

Liveness. No wait on either side is unbounded. The server waits in steps and
checks its workers between them (:meth:`SharedMemoryTransport.check_workers`):
one that ended is a :class:`WorkerFailed`, one whose heartbeat has not moved for
the stall timeout (stopped by a signal, stuck) a :class:`WorkerStalled` that
says what it was doing. A worker waits in steps too, and stops (:class:`Stopped`)
when the server says STOP or is gone: the server holds the only write end of a
"lifeline" pipe whose read end every worker polls, and that reads as
end-of-file once the server has died, however it died.
"""

import collections
import contextlib
import os
import select
import signal
import time
from abc import ABC, abstractmethod

from multiprocessing.connection import wait as wait_for_connections

import numpy as np

from ..model import SparseLayer, SparseMLP
from ..optim import momentum_step
from ..profiling import time_table_shape
from .shm import SharedBlocks, run_prefix

GRADIENT, REPLICA, READY, DONE, FAILED, APPLIED = range(6)

#: Command word values (WAIT: workers started but not all ready yet).
WAIT, RUN, PHASE_TWO, STOP = 0, 1, 2, 3

#: What a worker's heartbeat says it is doing (``{}``: the detail, a layer or a local epoch).
ACTIVITIES = ("starting", "waiting for the run to start", "waiting for a gradient slot (the server's go)",
              "waiting for layer {}'s lock", "holding layer {}'s lock", "computing a gradient",
              "training its replica (local epoch {})", "publishing its replica (local epoch {})",
              "evolving its replica's topology", "waiting for the server to stop")
(STARTING, WAITING_TO_START, SLOT_WAIT, LOCK_WAIT, HOLDING_LOCK, COMPUTING, TRAINING_REPLICA, PUBLISHING,
 EVOLVING_REPLICA, WAITING_FOR_STOP) = range(len(ACTIVITIES))

#: Seconds between a waiting worker's looks at the command word and the server's lifeline.
WORKER_POLL = 0.1


class WorkerFailed(RuntimeError):
    """A worker process ended while the run needed it (killed, crashed, or raised)."""

    #: summary.json's ``stopped`` for a run this ended.
    stop_reason = "worker-failed"


class WorkerStalled(WorkerFailed):
    """A worker made no progress for the stall timeout (stopped by a signal, or stuck)."""

    stop_reason = "worker-stalled"


class Stopped(Exception):
    """Raised in a worker: the server said STOP, or is gone, while the worker waited or sent."""


def describe_exit(worker, code):
    """``"worker 1 (exit code -9, killed by SIGKILL)"``."""
    text = f"worker {worker} (exit code {code}"
    if code is not None and code < 0:
        try:
            text += f", killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return text + ")"


def describe_activity(activity, detail):
    """``"holding layer 2's lock"``: the words for a heartbeat's activity and detail."""
    if 0 <= activity < len(ACTIVITIES):
        return ACTIVITIES[activity].format(detail)
    return f"activity {activity}"


class StallWatch:
    """Finds a worker whose heartbeat has not moved for ``timeout`` seconds.

    Time counts only while the server watches: each :meth:`stalled` call adds the
    seconds since the previous one, at most ``max_step``. A server that was itself
    stopped (Ctrl-Z on the whole job, then ``fg``) or busy between two calls does
    not find every worker stalled when it comes back, before they had a chance to beat.

    Parameters
    ----------
    n_workers : int
    timeout : float
        Seconds without a heartbeat after which a worker is stalled.
    max_step : float
        The most one call adds to the watched time (above the server's longest regular gap between checks).
    """

    def __init__(self, n_workers, timeout, max_step=2.0):
        self.timeout = float(timeout)
        self.max_step = float(max_step)
        self._watched = 0.0
        self._last = None
        self._counts = np.zeros(n_workers, dtype=np.int64)
        self._since = np.zeros(n_workers)  # watched time of each count's last change
        self._since_wall = np.zeros(n_workers)

    def stalled(self, counts, now):
        """The worker quiet for longest, if past the timeout.

        Parameters
        ----------
        counts : (n_workers,) int64
            Each worker's heartbeat count; 0: not started yet (the startup timeout covers it).
        now : float
            ``time.monotonic()``.

        Returns
        -------
        (int, float) or None
            The worker and the wall seconds since its heartbeat last moved.
        """
        if self._last is not None:
            self._watched += min(max(0.0, now - self._last), self.max_step)
        self._last = now
        changed = counts != self._counts
        self._counts[changed] = counts[changed]
        self._since[changed] = self._watched
        self._since_wall[changed] = now
        quiet = np.where(counts > 0, self._watched - self._since, 0.0)
        worker = int(np.argmax(quiet))
        if quiet[worker] > self.timeout:
            return worker, now - self._since_wall[worker]
        return None


def _is_stopped(pid):
    """Whether process ``pid`` is stopped (SIGSTOP, SIGTSTP), as psutil sees it."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return False


_THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class ServerTransport(ABC):
    """The parameter server's side (and the owner of the workers' lifetime).

    Attributes: ``n_layers`` (int), ``sizes`` (layer sizes), ``idle_seconds``
    (time spent waiting for messages).
    """

    @abstractmethod
    def start_workers(self, target, worker_args, threads_per_worker):
        """Start the K workers, each running ``target(handle, *worker_args[w])``."""

    @abstractmethod
    def check_workers(self):
        """Raise :class:`WorkerFailed` when a worker ended while it should be running, and
        :class:`WorkerStalled` when one made no progress for the stall timeout."""

    @abstractmethod
    def time_tables(self):
        """Every worker's time accounts, ``(K, phases, columns)`` float64 (see :mod:`wasap.profiling`)."""

    @abstractmethod
    def shutdown(self, timeout=10.0):
        """Stop the workers (asking first, then forcing) within about ``timeout`` seconds."""

    @abstractmethod
    def close(self):
        """Release every shared resource (after :meth:`shutdown`)."""

    @abstractmethod
    def receive(self, timeout):
        """The next worker message, or None after ``timeout`` seconds."""

    @abstractmethod
    def gradient(self, worker, slot, layer, nnz=None):
        """Views ``(grad (nnz,), bias_grad (n_out,))`` of a gradient slot; the whole slot's capacity when
        ``nnz`` is None. The values are valid from the push until the slot is released."""

    @abstractmethod
    def release_slot(self, worker):
        """Give one gradient slot back to ``worker`` (in the synchronous variant: its go for the next step)."""

    @abstractmethod
    def lock(self, layer):
        """Context manager holding ``layer``'s lock."""

    @abstractmethod
    def model_lock(self):
        """Context manager holding every layer's lock: no worker reads or updates the served model
        meanwhile, and the server's own :meth:`lock`, :meth:`read_model` and :meth:`write_layer` calls
        inside it do not lock again."""

    @abstractmethod
    def layer_state(self, layer):
        """Writable views of the served layer: dict of indptr, indices, data, velocity, bias, bias_velocity
        (``indices``/``data``/``velocity`` cut to the current nnz), version, nnz. Use under the layer's lock."""

    @abstractmethod
    def write_layer(self, layer, version, indptr, indices, data, velocity):
        """Replace the served layer's structure and values (nnz may shrink) and set its version."""

    @abstractmethod
    def read_model(self):
        """A private :class:`~wasap.model.SparseMLP` copy of the served model, momentum included."""

    @abstractmethod
    def write_order(self, worker, order):
        """Hand ``worker`` the sample order of its next local epoch (synchronous variant)."""

    @abstractmethod
    def gather_replica(self, worker):
        """A private copy of the replica ``worker`` published, as a list of SparseLayer (phase two)."""

    @abstractmethod
    def release_replica(self, worker):
        """Let ``worker`` publish its next replica."""

    @abstractmethod
    def set_command(self, command):
        """Set the command word every worker polls (RUN, PHASE_TWO, STOP)."""

    @abstractmethod
    def failed_workers(self):
        """``[(worker, exit_code)]`` of workers that ended while they should be running."""


class WorkerTransport(ABC):
    """A worker's side."""

    @abstractmethod
    def partition(self):
        """This worker's training rows ``(X, y)``."""

    @abstractmethod
    def server_gone(self):
        """Whether the server process has ended."""

    @abstractmethod
    def command(self):
        """The current command word; STOP too when the server is gone."""

    @abstractmethod
    def ready(self):
        """Tell the server this worker is ready (READY) and start its heartbeat: the stall timeout applies
        from here on (before, the startup timeout: loading the kernels can take minutes)."""

    @abstractmethod
    def beat(self, activity, detail=0):
        """Tell the server this worker moves on, and to what (one of :data:`ACTIVITIES`, with its detail);
        before :meth:`ready`, only what it does."""

    @abstractmethod
    def acquire_slot(self, timeout):
        """Wait for a free gradient slot (or the server's go); False on timeout."""

    @abstractmethod
    def pull_weights(self, model, versions):
        """Refresh ``model``'s weights and biases in place from the server; returns the versions read.

        A layer whose version differs from ``versions[l]`` gets its new structure
        (and column view); otherwise only values are copied."""

    @abstractmethod
    def gradient_slot(self, slot, nnz):
        """Lists ``(grads, bias_grads)`` of writable per-layer views into slot ``slot``."""

    @abstractmethod
    def apply_gradient(self, slot, versions, *, lr, momentum, weight_decay, rates):
        """Apply slot ``slot`` to the served layers still at ``versions``, in place, under their locks.

        The server's rule (momentum SGD, :func:`wasap.optim.momentum_step`, each
        layer at ``lr`` times its :class:`wasap.optim.LayerRates` factor), run by the
        worker where it can reach the served weights, so that the server's
        core is not the one every update goes through. Returns one flag per
        layer: False where the layer's topology changed since ``versions`` (the
        server remaps that part) or where this transport cannot reach the
        weights (an MPI transport returns all False)."""

    @abstractmethod
    def push_gradient(self, slot, versions, loss, n_correct, n_samples, applied):
        """Tell the server slot ``slot`` holds a gradient computed on ``versions``, of which the layers
        flagged in ``applied`` are already applied."""

    @abstractmethod
    def release_own_slot(self):
        """Give back the slot of a gradient this worker applied to every layer itself (no server work left)."""

    @abstractmethod
    def report_applied(self, steps, loss_sum, n_correct, n_samples):
        """Tell the server of ``steps`` self-applied gradients at once: one message, not ``steps``, which is
        most of what the server did per update once workers applied their own."""

    @abstractmethod
    def order(self, size):
        """The sample order the server drew for this worker's next local epoch (synchronous variant)."""

    @abstractmethod
    def read_model(self):
        """A private copy of the served model, momentum included (phase two's starting point)."""

    @abstractmethod
    def publish_replica(self, model, epoch, loss, n_correct, n_samples, timeout):
        """Publish this worker's replica after local epoch ``epoch``; False if the slot stayed busy."""

    @abstractmethod
    def send(self, message):
        """Send a message tuple to the server; raises :class:`Stopped` when the server is gone."""


class SharedMemoryTransport(ServerTransport):
    """Shared-memory transport: the server's side, and the owner of the blocks and the worker processes.

    Parameters
    ----------
    model : SparseMLP
        Copied into the shared blocks (its arrays are not aliased).
    X, y : arrays
        The training data, copied into shared blocks once.
    n_workers, n_slots : int
    partitions : list of (n_k,) int64
        Rows of ``X`` in each worker's partition. The shared copy of the data is laid out partition
        after partition, so that each worker's part is one contiguous block (a strided view would be
        copied whole by ``np.take``).
    replicas : bool
        Allocate replica blocks (phase two).
    context : multiprocessing context
        From ``multiprocessing.get_context(start_method)``.
    stall_timeout : float or None
        Seconds without a worker's heartbeat after which :meth:`check_workers` raises
        :class:`WorkerStalled`; None: never.
    """

    def __init__(self, model, X, y, *, n_workers, n_slots, partitions, replicas, context, stall_timeout=None):
        self._holding_all = False  # inside model_lock(): this (server) thread holds every layer's lock
        self.n_workers = n_workers
        self.n_slots = n_slots
        self.n_layers = len(model.layers)
        self.sizes = model.sizes
        self.model_kind = dict(activation=model.activation, alpha=model.alpha,
                               output_activation=model.output_activation, loss=model.loss)
        self.caps = [layer.nnz for layer in model.layers]
        self.prefix = run_prefix()
        self.context = context
        self.processes = []
        self._expected_exit = False
        self.stall_timeout = stall_timeout
        self._watch = None if stall_timeout is None else StallWatch(n_workers, stall_timeout)
        self._stalled = set()
        #: Seconds the server spent waiting for a message (its idle time).
        self.idle_seconds = 0.0
        layout = {"control": ((4,), np.int64), "meta": ((self.n_layers, 2), np.int64),
                  "X": (X.shape, np.float32), "y": (y.shape, y.dtype),
                  "orders": ((n_workers, max(len(p) for p in partitions)), np.int64),
                  "times": (time_table_shape(n_workers), np.float64), "beats": ((n_workers, 3), np.int64)}
        for l, layer in enumerate(model.layers):
            cap, n_in, n_out = self.caps[l], layer.n_in, layer.n_out
            layout.update({f"indptr_{l}": ((n_in + 1,), np.int64), f"indices_{l}": ((cap,), np.int32),
                           f"data_{l}": ((cap,), np.float32), f"velocity_{l}": ((cap,), np.float32),
                           f"bias_{l}": ((n_out,), np.float32), f"bias_velocity_{l}": ((n_out,), np.float32),
                           f"grad_{l}": ((n_workers, n_slots, cap), np.float32),
                           f"bias_grad_{l}": ((n_workers, n_slots, n_out), np.float32)})
            if replicas:
                layout.update({f"rep_indptr_{l}": ((n_workers, n_in + 1), np.int64),
                               f"rep_indices_{l}": ((n_workers, cap), np.int32),
                               f"rep_data_{l}": ((n_workers, cap), np.float32),
                               f"rep_bias_{l}": ((n_workers, n_out), np.float32)})
        if replicas:
            layout["rep_nnz"] = ((n_workers, self.n_layers), np.int64)
        self.blocks = SharedBlocks.create(self.prefix, layout)
        try:
            b = self.blocks
            self.bounds = []
            start = 0
            for rows in partitions:
                stop = start + len(rows)
                # Straight into the block: no temporary copy of the partition.
                np.take(X, rows, axis=0, out=b["X"][start:stop])
                np.take(y, rows, axis=0, out=b["y"][start:stop])
                self.bounds.append((start, stop))
                start = stop
            if start != X.shape[0]:
                raise ValueError(f"the partitions hold {start} rows of {X.shape[0]}; each row must be in one.")
            for l, layer in enumerate(model.layers):
                b["meta"][l] = (0, layer.nnz)
                b[f"indptr_{l}"][...] = layer.indptr
                b[f"indices_{l}"][...] = layer.indices
                b[f"data_{l}"][...] = layer.data
                b[f"velocity_{l}"][...] = layer.velocity
                b[f"bias_{l}"][...] = layer.bias
                b[f"bias_velocity_{l}"][...] = layer.bias_velocity
            b["control"][0] = WAIT
            self.locks = [context.Lock() for _ in range(self.n_layers)]
            self.slots = [context.Semaphore(n_slots) for _ in range(n_workers)]
            self.replica_free = [context.Semaphore(1) for _ in range(n_workers)]
            # One pipe per worker rather than a shared Queue: a send is a pickle and a write in the
            # worker's own thread (no feeder thread competing for its core), and a dead worker's pipe
            # reads as end-of-file at once.
            pipes = [context.Pipe(duplex=False) for _ in range(n_workers)]
            self.readers = [reader for reader, _ in pipes]
            self.writers = [writer for _, writer in pipes]
            # Never written: its end-of-file tells the workers the server is gone, whatever killed it.
            self._lifeline_reader, self._lifeline = context.Pipe(duplex=False)
            self._open_readers = list(self.readers)
            self._poller = self._reader_of = None
            self._inbox = collections.deque()
        except BaseException:
            self.blocks.close()
            raise

    # -- processes ------------------------------------------------------------------------------------

    def start_workers(self, target, worker_args, threads_per_worker):
        """Start one process per worker running ``target(handle, *worker_args[w])``.

        The math libraries' thread counts are set in the environment the child
        starts with (numba reads NUMBA_NUM_THREADS when it is imported).
        """
        saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
        try:
            for name in _THREAD_VARIABLES:
                os.environ[name] = str(threads_per_worker)
            for w in range(self.n_workers):
                process = self.context.Process(target=target, args=(self.worker_handle(w), *worker_args[w]),
                                               name=f"wasap-worker-{w}", daemon=True)
                process.start()
                self.processes.append(process)
                # The worker holds its own copy now; closing ours lets its death read as end-of-file.
                self.writers[w].close()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def worker_handle(self, worker):
        """What a worker process needs to build its :class:`SharedMemoryWorkerTransport` (picklable)."""
        return dict(worker=worker, prefix=self.prefix, specs=self.blocks.specs, locks=self.locks,
                    bounds=self.bounds[worker],
                    slot=self.slots[worker], replica_free=self.replica_free[worker], pipe=self.writers[worker],
                    lifeline=self._lifeline_reader,
                    n_layers=self.n_layers, n_slots=self.n_slots, sizes=self.sizes, model_kind=self.model_kind)

    @property
    def pids(self):
        return [process.pid for process in self.processes]

    def failed_workers(self):
        if self._expected_exit:
            return []
        return [(w, p.exitcode) for w, p in enumerate(self.processes) if p.exitcode is not None]

    def shutdown(self, timeout=10.0):
        """Ask every worker to stop, wait up to ``timeout`` seconds, then terminate and kill stragglers.

        A stalled or stopped worker is killed at once: a stopped process acts on neither STOP nor SIGTERM."""
        if self._expected_exit:
            return
        self._expected_exit = True
        for worker, process in enumerate(self.processes):
            if worker in self._stalled or (process.is_alive() and _is_stopped(process.pid)):
                process.kill()
        if not self.blocks._closed:
            self.blocks["control"][0] = STOP
        for semaphore in self.slots + self.replica_free:
            # Wake workers blocked on a slot; they see STOP.
            semaphore.release()
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)
        for reader in self.readers:
            reader.close()
        self._open_readers = []
        self._poller = self._reader_of = None

    def close(self):
        """Unlink every shared block (call after :meth:`shutdown`)."""
        self.blocks.close()
        self._lifeline.close()
        self._lifeline_reader.close()

    # -- ServerTransport ---------------------------------------------------------------------------------

    def receive(self, timeout):
        if not self._inbox and self._open_readers:
            idle = time.perf_counter()
            if self._poller is None:
                self._poller, self._reader_of = _poller_of(self._open_readers)
            if self._poller is not None:
                self._receive_polled(timeout)
            else:
                self._receive_waited(timeout)
            self.idle_seconds += time.perf_counter() - idle
        elif not self._inbox:
            time.sleep(timeout)
        return self._inbox.popleft() if self._inbox else None

    def _receive_polled(self, timeout):
        # One poll object for the whole run: multiprocessing.connection.wait (and Connection.poll,
        # which calls it) builds a selector per call, about 90 us, three times a message; at a
        # thousand gradients a second that alone took a tenth of the server's core.
        events = self._poller.poll(timeout * 1000.0)
        while events:
            for fd, _ in events:
                reader = self._reader_of.get(fd)
                if reader is None:
                    continue
                try:
                    self._inbox.append(reader.recv())
                except (EOFError, OSError):
                    self._forget_reader(reader, fd)
            events = self._poller.poll(0)  # whatever else is already waiting

    def _receive_waited(self, timeout):
        # Where select.poll is missing: the portable, slower way.
        for reader in wait_for_connections(self._open_readers, timeout):
            try:
                while reader.poll():
                    self._inbox.append(reader.recv())
            except (EOFError, OSError):
                self._forget_reader(reader, None)

    def _forget_reader(self, reader, fd):
        # The worker ended; check_workers() reports it with its exit code.
        self._open_readers.remove(reader)
        if fd is not None:
            self._poller.unregister(fd)
            del self._reader_of[fd]

    def gradient(self, worker, slot, layer, nnz=None):
        grad = self.blocks[f"grad_{layer}"][worker, slot]
        return (grad if nnz is None else grad[:nnz]), self.blocks[f"bias_grad_{layer}"][worker, slot]

    def release_slot(self, worker):
        self.slots[worker].release()

    @contextlib.contextmanager
    def model_lock(self):
        held = []
        try:
            # In layer order; workers hold one layer's lock at a time, so this cannot deadlock.
            for l in range(self.n_layers):
                while not self.locks[l].acquire(timeout=1.0):
                    self.check_workers()
                held.append(l)
            self._holding_all = True
            yield
        finally:
            self._holding_all = False
            for l in reversed(held):
                self.locks[l].release()

    @contextlib.contextmanager
    def lock(self, layer):
        # After shutdown no worker runs, and a lock that a killed worker held stays taken for ever.
        if self._holding_all or self._expected_exit:
            yield
            return
        # A worker killed while holding the lock would block the server for ever: wait in steps
        # and look for dead workers between them.
        while not self.locks[layer].acquire(timeout=1.0):
            self.check_workers()
        try:
            yield
        finally:
            self.locks[layer].release()

    def check_workers(self):
        """Raise :class:`WorkerFailed` naming the first worker that ended unexpectedly, or
        :class:`WorkerStalled` naming one whose heartbeat stood still for the stall timeout."""
        failed = self.failed_workers()
        if failed:
            raise WorkerFailed(f"{describe_exit(*failed[0])} ended during training.")
        if self._watch is None or self._expected_exit:
            return
        stalled = self._watch.stalled(self.blocks["beats"][:, 0], time.monotonic())
        if stalled is not None:
            self._stalled.add(stalled[0])
            raise self._stall_error(*stalled)

    def _stall_error(self, worker, seconds):
        _, activity, detail = (int(v) for v in self.blocks["beats"][worker])
        pid = self.processes[worker].pid
        return WorkerStalled(
            f"worker {worker} (pid {pid}) made no progress for {seconds:.1f}s while "
            f"{describe_activity(activity, detail)}"
            f"{' (the process is stopped, as by SIGSTOP or Ctrl-Z)' if _is_stopped(pid) else ''}; the stall timeout is "
            f"{self.stall_timeout:g}s. A worker stopped by a signal or a debugger, or stuck, stalls the run; "
            "if it was only slow (a very large network, an overloaded machine), raise the timeout "
            "(--stall-timeout, or TrainConfig(stall_timeout=...)).")

    def layer_state(self, layer):
        b = self.blocks
        version, nnz = (int(v) for v in b["meta"][layer])
        return dict(version=version, nnz=nnz, indptr=b[f"indptr_{layer}"], indices=b[f"indices_{layer}"][:nnz],
                    data=b[f"data_{layer}"][:nnz], velocity=b[f"velocity_{layer}"][:nnz], bias=b[f"bias_{layer}"],
                    bias_velocity=b[f"bias_velocity_{layer}"])

    def write_layer(self, layer, version, indptr, indices, data, velocity):
        b = self.blocks
        nnz = indices.shape[0]
        if nnz > self.caps[layer]:
            raise ValueError(f"layer {layer} cannot grow beyond its {self.caps[layer]} shared slots (asked {nnz}).")
        with self.lock(layer):
            b[f"indptr_{layer}"][...] = indptr
            b[f"indices_{layer}"][:nnz] = indices
            b[f"data_{layer}"][:nnz] = data
            b[f"velocity_{layer}"][:nnz] = velocity
            b["meta"][layer] = (version, nnz)

    def read_model(self):
        return _read_model(self.blocks, self.lock, self.sizes, self.model_kind)

    def write_order(self, worker, order):
        self.blocks["orders"][worker, :order.shape[0]] = order

    def gather_replica(self, worker):
        b = self.blocks
        layers = []
        for l in range(self.n_layers):
            nnz = int(b["rep_nnz"][worker, l])
            n_in, n_out = self.sizes[l], self.sizes[l + 1]
            layers.append(SparseLayer(n_in, n_out, b[f"rep_indptr_{l}"][worker].copy(),
                                      b[f"rep_indices_{l}"][worker, :nnz].copy(),
                                      b[f"rep_data_{l}"][worker, :nnz].copy(), b[f"rep_bias_{l}"][worker].copy()))
        return layers

    def release_replica(self, worker):
        self.replica_free[worker].release()

    def set_command(self, command):
        self.blocks["control"][0] = command

    def time_tables(self):
        """A copy of every worker's time accounts ``(K, phases, categories + 1)``."""
        return self.blocks["times"].copy()


def _poller_of(readers):
    """A ``select.poll`` object watching ``readers`` and a map from file descriptor to reader, or
    ``(None, None)`` where the platform has no poll."""
    if not hasattr(select, "poll"):
        return None, None
    poller = select.poll()
    reader_of = {}
    for reader in readers:
        fd = reader.fileno()
        poller.register(fd, select.POLLIN)
        reader_of[fd] = reader
    return poller, reader_of


def _read_model(blocks, lock, sizes, model_kind):
    """A private copy of the served model; ``lock(l)``: a context manager holding layer ``l`` (each side's
    own, which waits in steps and gives up as that side must)."""
    layers = []
    for l in range(len(sizes) - 1):
        with lock(l):
            nnz = int(blocks["meta"][l, 1])
            arrays = (blocks[f"indptr_{l}"].copy(), blocks[f"indices_{l}"][:nnz].copy(),
                      blocks[f"data_{l}"][:nnz].copy(), blocks[f"bias_{l}"].copy(),
                      blocks[f"velocity_{l}"][:nnz].copy(), blocks[f"bias_velocity_{l}"].copy())
        # The column view is built outside the lock.
        layers.append(SparseLayer(sizes[l], sizes[l + 1], *arrays))
    return SparseMLP(layers, **model_kind)


class SharedMemoryWorkerTransport(WorkerTransport):
    """A worker's side of the shared-memory transport (built in the worker process from a handle).

    Parameters
    ----------
    handle : dict
        From :meth:`SharedMemoryTransport.worker_handle`.
    account : wasap.profiling.TimeAccount or None
        Charged with lock waits and data movement.
    """

    def __init__(self, handle, account=None):
        self.worker = handle["worker"]
        self.bounds = handle["bounds"]
        self.blocks = SharedBlocks.attach(handle["prefix"], handle["specs"])
        self.locks = handle["locks"]
        self.slot = handle["slot"]
        self.replica_free = handle["replica_free"]
        self.pipe = handle["pipe"]
        self.lifeline = handle["lifeline"]
        self.n_layers = handle["n_layers"]
        self.slot_count = handle["n_slots"]
        self.sizes = handle["sizes"]
        self.model_kind = handle["model_kind"]
        self.account = account
        self._beats = self.blocks["beats"][self.worker]
        self._activity = (STARTING, 0)
        self._beating = False
        self._gone = False
        # One poll object for the worker's life: Connection.poll builds a selector per call.
        self._lifeline_poll = None
        if hasattr(select, "poll"):
            self._lifeline_poll = select.poll()
            self._lifeline_poll.register(self.lifeline.fileno(), select.POLLIN)

    def _charge(self, category):
        if self.account is not None:
            return self.account.charge(category)
        return time.perf_counter()

    def partition(self):
        """Views ``(X (n_w, n_features), y (n_w,) or (n_w, n_outputs))`` of this worker's rows of the shared
        training data (contiguous, never copied)."""
        start, stop = self.bounds
        return self.blocks["X"][start:stop], self.blocks["y"][start:stop]

    def time_table(self):
        """This worker's row of the shared time accounts."""
        return self.blocks["times"][self.worker]

    def server_gone(self):
        # The lifeline reads as end-of-file once the server has died: nothing is ever written to it.
        if not self._gone:
            if self._lifeline_poll is not None:
                self._gone = bool(self._lifeline_poll.poll(0))
            else:
                self._gone = self.lifeline.poll()
        return self._gone

    def command(self):
        # A server that died without saying STOP (SIGKILL) must not leave its workers running for ever.
        if self.server_gone():
            return STOP
        return int(self.blocks["control"][0])

    def ready(self):
        self._beating = True
        self.beat(WAITING_TO_START)
        self.send((READY, self.worker, os.getpid()))

    def beat(self, activity, detail=0):
        beats = self._beats
        beats[1] = activity
        beats[2] = detail
        if self._beating:
            beats[0] += 1
        self._activity = (activity, detail)

    def acquire_slot(self, timeout):
        self.beat(SLOT_WAIT)
        return self.slot.acquire(timeout=timeout)

    def _wait_for(self, lock, activity, detail):
        """Acquire ``lock``, beating while it waits (the holder, not this worker, is the one stalled);
        raises :class:`Stopped` when the server says STOP or is gone meanwhile."""
        self.beat(activity, detail)
        while not lock.acquire(timeout=WORKER_POLL):
            if self.command() == STOP:
                raise Stopped
            self.beat(activity, detail)

    @contextlib.contextmanager
    def _locked_layer(self, layer):
        """Hold ``layer``'s lock (the wait charged as lock_wait); yields its ``(version, nnz)``."""
        self._charge("other")
        before = self._activity
        self._wait_for(self.locks[layer], LOCK_WAIT, layer)
        acquired = self._charge("lock_wait")
        self.beat(HOLDING_LOCK, layer)
        try:
            yield tuple(int(v) for v in self.blocks["meta"][layer])
        finally:
            self.locks[layer].release()
            self.beat(*before)
            if self.account is not None:
                # How long the others may have had to wait: with K workers, what limits K.
                self.account.held_lock(time.perf_counter() - acquired)

    def pull_weights(self, model, versions):
        b = self.blocks
        new_versions = list(versions)
        for l, layer in enumerate(model.layers):
            with self._locked_layer(l) as (version, nnz):
                if version != versions[l]:
                    indptr = b[f"indptr_{l}"].copy()
                    indices = b[f"indices_{l}"][:nnz].copy()
                    data = b[f"data_{l}"][:nnz].copy()
                else:
                    layer.data[...] = b[f"data_{l}"][:nnz]
                    indptr = None
                layer.bias[...] = b[f"bias_{l}"]
            if indptr is not None:
                # The column view is rebuilt outside the lock: only on a new topology.
                layer.set_structure(indptr, indices, data)
                new_versions[l] = version
            self._charge("data")
        return new_versions

    def gradient_slot(self, slot, nnz):
        b = self.blocks
        grads = [b[f"grad_{l}"][self.worker, slot, :nnz[l]] for l in range(self.n_layers)]
        bias_grads = [b[f"bias_grad_{l}"][self.worker, slot] for l in range(self.n_layers)]
        return grads, bias_grads

    def apply_gradient(self, slot, versions, *, lr, momentum, weight_decay, rates):
        b = self.blocks
        applied = []
        for l in range(self.n_layers):
            with self._locked_layer(l) as (version, nnz):
                current = version == versions[l]
                if current:
                    layer_lr = lr * rates.factor(nnz, self.sizes[l + 1], l == self.n_layers - 1)
                    momentum_step(b[f"data_{l}"][:nnz], b[f"grad_{l}"][self.worker, slot, :nnz],
                                  b[f"velocity_{l}"][:nnz], lr=layer_lr, momentum=momentum,
                                  weight_decay=weight_decay)
                    momentum_step(b[f"bias_{l}"], b[f"bias_grad_{l}"][self.worker, slot], b[f"bias_velocity_{l}"],
                                  lr=layer_lr, momentum=momentum)
            applied.append(current)
            self._charge("compute")
        return tuple(applied)

    def push_gradient(self, slot, versions, loss, n_correct, n_samples, applied):
        self.send((GRADIENT, self.worker, slot, tuple(versions), float(loss), int(n_correct), int(n_samples),
                   tuple(bool(a) for a in applied)))

    def release_own_slot(self):
        self.slot.release()

    def report_applied(self, steps, loss_sum, n_correct, n_samples):
        self.send((APPLIED, self.worker, int(steps), float(loss_sum), int(n_correct), int(n_samples)))

    def order(self, size):
        return self.blocks["orders"][self.worker, :size].copy()

    def read_model(self):
        return _read_model(self.blocks, self._locked_layer, self.sizes, self.model_kind)

    def publish_replica(self, model, epoch, loss, n_correct, n_samples, timeout):
        self._charge("other")
        self.beat(PUBLISHING, epoch)
        if not self.replica_free.acquire(timeout=timeout):
            self._charge("slot_wait")
            return False
        self._charge("slot_wait")
        b = self.blocks
        for l, layer in enumerate(model.layers):
            nnz = layer.nnz
            b[f"rep_indptr_{l}"][self.worker] = layer.indptr
            b[f"rep_indices_{l}"][self.worker, :nnz] = layer.indices
            b[f"rep_data_{l}"][self.worker, :nnz] = layer.data
            b[f"rep_bias_{l}"][self.worker] = layer.bias
            b["rep_nnz"][self.worker, l] = nnz
        self.send((REPLICA, self.worker, int(epoch), float(loss), int(n_correct), int(n_samples)))
        self._charge("data")
        return True

    def send(self, message):
        try:
            self.pipe.send(message)
        except (BrokenPipeError, ConnectionResetError):
            raise Stopped from None  # the server's end closed: it is gone

    def close(self):
        self._beats = None  # a view kept past this would keep its segment from closing
        self.blocks.close()
        self.pipe.close()
        self.lifeline.close()
