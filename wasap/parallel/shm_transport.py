"""The shared-memory transport: server and workers on one machine, every array in shared blocks.

:class:`SharedMemoryTransport` (the server's side, and the owner of the blocks
and of the worker processes) and :class:`SharedMemoryWorkerTransport` (a
worker's side, built in the worker from a :class:`WorkerHandle`) implement
:class:`~.transport.ServerTransport` and :class:`~.transport.WorkerTransport`.
Every array lives in one :class:`~.shm.SharedBlocks` of the run, guarded by one
``multiprocessing`` lock per layer; one pipe per worker carries the messages
(:mod:`.messages`, pickled); a semaphore per worker counts its free gradient
slots, another its free replica slot.

Shared layout: :func:`~.served.served_layout`'s arrays, and the training data once, laid out partition
after partition (worker ``w``'s rows are one contiguous block): ``X`` (n, n_features) float32, or for a
scipy.sparse ``X`` its CSR arrays ``X_indptr`` (n + 1,), ``X_indices`` and ``X_data`` (nnz,) (a
worker's rows are then a CSR matrix over slices of them, nothing copied but its row pointers); and
``y`` (n,) or (n, n_outputs).

A dead server. The server holds the only write end of a "lifeline" pipe whose
read end every worker polls; it reads as end-of-file once the server has died,
however it died, and the worker stops.
"""

import collections
import contextlib
import os
import select
import time
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for_connections
from typing import Any

import numpy as np
import scipy.sparse

from ..optim import momentum_step
from .messages import Activity, Command, Ready
from .served import ServedArraysServer, read_served_model, serve_model, served_layout
from .shm import SharedBlocks, run_prefix
from .transport import (Stopped, WORKER_POLL, WorkerFailed, WorkerTransport,
                        describe_exit, stall_error)

_THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _is_stopped(pid):
    """Whether process ``pid`` is stopped (SIGSTOP, SIGTSTP), as psutil sees it."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return False


@dataclass
class WorkerHandle:
    """What a worker process needs to reach the run's shared state (picklable, passed when it starts)."""

    worker: int
    prefix: str
    specs: dict
    locks: list
    bounds: tuple
    slot: Any  # the worker's gradient-slot semaphore
    replica_free: Any
    pipe: Any  # the write end of the worker's message pipe
    lifeline: Any
    n_layers: int
    n_slots: int
    sizes: list
    model_kind: dict

    def connect(self) -> "SharedMemoryWorkerTransport":
        """The worker's side of the transport (call in the worker's process)."""
        return SharedMemoryWorkerTransport(self)


def _data_layout(X, y):
    """The blocks of the training data: ``X`` itself, or a sparse ``X``'s CSR arrays, and ``y``."""
    if scipy.sparse.issparse(X):
        # The row pointers in the indices' dtype: a worker's rows are then a CSR matrix the kernels take as it is.
        index = X.indices.dtype
        return {"X_indptr": ((X.shape[0] + 1,), index), "X_indices": ((X.nnz,), index),
                "X_data": ((X.nnz,), np.float32), "y": (y.shape, y.dtype)}
    return {"X": (X.shape, np.float32), "y": (y.shape, y.dtype)}


def _share_partitions(X, y, partitions, blocks):
    """Copy the rows of each partition, in order, into the data blocks; returns each one's ``(start, stop)``."""
    bounds = []
    start = nonzeros = 0
    sparse = scipy.sparse.issparse(X)
    if sparse:
        blocks["X_indptr"][0] = 0
    for rows in partitions:
        stop = start + len(rows)
        if sparse:
            part = X[rows]  # the partition's nonzeros, once: the blocks hold them after it
            blocks["X_data"][nonzeros:nonzeros + part.nnz] = part.data
            blocks["X_indices"][nonzeros:nonzeros + part.nnz] = part.indices
            blocks["X_indptr"][start + 1:stop + 1] = part.indptr[1:] + nonzeros
            nonzeros += part.nnz
        else:
            # Straight into the block: no temporary copy of the partition.
            np.take(X, rows, axis=0, out=blocks["X"][start:stop])
        np.take(y, rows, axis=0, out=blocks["y"][start:stop])
        bounds.append((start, stop))
        start = stop
    if start != X.shape[0]:
        raise ValueError(f"the partitions hold {start} rows of {X.shape[0]}; each row must be in one.")
    return bounds


class SharedMemoryTransport(ServedArraysServer):
    """The server's side of the shared-memory transport, and the owner of the blocks and the worker processes.

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
        :class:`~.transport.WorkerStalled`; None: never.

    Attributes
    ----------
    blocks : SharedBlocks
        The run's blocks; ``blocks.swept`` lists the dead runs' segments removed when they were created.
    """

    def __init__(self, model, X, y, *, n_workers, n_slots, partitions, replicas, context, stall_timeout=None):
        self._describe_run(model, n_workers, n_slots, stall_timeout)
        self.prefix = run_prefix()
        self.context = context
        self.processes = []
        self._stalled = set()
        layout = served_layout(model, n_workers=n_workers, n_slots=n_slots,
                               max_partition=max(len(p) for p in partitions), replicas=replicas)
        layout.update(_data_layout(X, y))
        self.blocks = SharedBlocks.create(self.prefix, layout)
        try:
            b = self.blocks
            self.bounds = _share_partitions(X, y, partitions, b)
            serve_model(b, model)
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

    # -- the workers' lifetime -------------------------------------------------------------------------

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

    def worker_handle(self, worker: int) -> WorkerHandle:
        """What worker ``worker``'s process needs to build its :class:`SharedMemoryWorkerTransport`."""
        return WorkerHandle(worker=worker, prefix=self.prefix, specs=self.blocks.specs, locks=self.locks,
                            bounds=self.bounds[worker], slot=self.slots[worker],
                            replica_free=self.replica_free[worker], pipe=self.writers[worker],
                            lifeline=self._lifeline_reader, n_layers=self.n_layers, n_slots=self.n_slots,
                            sizes=self.sizes, model_kind=self.model_kind)

    @property
    def pids(self):
        return [process.pid for process in self.processes]

    def _failed_workers(self):
        """``[(worker, exit_code)]`` of workers that ended while they should be running."""
        if self._expected_exit:
            return []
        return [(w, p.exitcode) for w, p in enumerate(self.processes) if p.exitcode is not None]

    def check_workers(self):
        failed = self._failed_workers()
        if failed:
            raise WorkerFailed(f"{describe_exit(*failed[0])} ended during training.")
        if self._watch is None or self._expected_exit:
            return
        stalled = self._watch.stalled(self.blocks["beats"][:, 0], time.monotonic())
        if stalled is not None:
            worker, seconds = stalled
            self._stalled.add(worker)
            _, activity, detail = (int(v) for v in self.blocks["beats"][worker])
            pid = self.processes[worker].pid
            raise stall_error(worker, pid, seconds, activity, detail, self.stall_timeout, _is_stopped(pid))

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
            self.blocks["control"][0] = Command.STOP
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

    # -- messages and commands -------------------------------------------------------------------------

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
        # which calls it) builds a selector per call, three times a message, which at thousands of
        # messages a second takes a good part of the server's core.
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

    def set_command(self, command):
        self.blocks["control"][0] = command

    # -- phase one -------------------------------------------------------------------------------------

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

    def release_slot(self, worker):
        self.slots[worker].release()

    def replica_gathered(self, worker):
        self.replica_free[worker].release()

    @property
    def nbytes(self):
        return self.blocks.nbytes


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


class SharedMemoryWorkerTransport(WorkerTransport):
    """A worker's side of the shared-memory transport (built in the worker process).

    Parameters
    ----------
    handle : WorkerHandle
        From :meth:`SharedMemoryTransport.worker_handle`.
    account : wasap.profiling.TimeAccount or None
        Charged with lock waits and data movement.
    """

    def __init__(self, handle: WorkerHandle, account=None):
        self.worker = handle.worker
        self.bounds = handle.bounds
        self.blocks = SharedBlocks.attach(handle.prefix, handle.specs)
        self.locks = handle.locks
        self.slot = handle.slot
        self.replica_free = handle.replica_free
        self.pipe = handle.pipe
        self.lifeline = handle.lifeline
        self.n_layers = handle.n_layers
        self.n_slots = handle.n_slots
        self.sizes = handle.sizes
        self.model_kind = handle.model_kind
        self.account = account
        self._beats = self.blocks["beats"][self.worker]
        self._activity = (Activity.STARTING, 0)
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

    # -- data and accounts -----------------------------------------------------------------------------

    def partition(self):
        """Views of this worker's rows of the shared training data (contiguous, never copied).

        A sparse ``X`` comes as a CSR matrix over slices of the shared arrays, with row pointers of its own.
        """
        start, stop = self.bounds
        y = self.blocks["y"][start:stop]
        if "X" in self.blocks.specs:
            return self.blocks["X"][start:stop], y
        indptr = self.blocks["X_indptr"][start:stop + 1]
        first, last = int(indptr[0]), int(indptr[-1])
        X = scipy.sparse.csr_matrix((self.blocks["X_data"][first:last], self.blocks["X_indices"][first:last],
                                     indptr - indptr.dtype.type(first)), shape=(stop - start, self.sizes[0]),
                                    copy=False)
        return X, y

    def time_table(self):
        return self.blocks["times"][self.worker]

    # -- liveness and commands -------------------------------------------------------------------------

    def ready(self):
        self._beating = True
        self.beat(Activity.WAITING_TO_START)
        self.send(Ready(self.worker, os.getpid()))

    def beat(self, activity, detail=0):
        beats = self._beats
        beats[1] = activity
        beats[2] = detail
        if self._beating:
            beats[0] += 1
        self._activity = (activity, detail)

    def command(self):
        # A server that died without saying STOP (SIGKILL) must not leave its workers running for ever.
        if self.server_gone():
            return Command.STOP
        return Command(int(self.blocks["control"][0]))

    def server_gone(self):
        # The lifeline reads as end-of-file once the server has died: nothing is ever written to it.
        if not self._gone:
            if self._lifeline_poll is not None:
                self._gone = bool(self._lifeline_poll.poll(0))
            else:
                self._gone = self.lifeline.poll()
        return self._gone

    def send(self, message):
        try:
            self.pipe.send(message)
        except (BrokenPipeError, ConnectionResetError):
            raise Stopped from None  # the server's end closed: it is gone

    # -- phase one -------------------------------------------------------------------------------------

    def acquire_slot(self, timeout):
        self.beat(Activity.SLOT_WAIT)
        return self.slot.acquire(timeout=timeout)

    def release_own_slot(self):
        self.slot.release()

    def order(self, size):
        return self.blocks["orders"][self.worker, :size].copy()

    def _wait_for(self, lock, activity, detail):
        """Acquire ``lock``, beating while it waits (the holder, not this worker, is the one stalled);
        raises :class:`~.transport.Stopped` when the server says STOP or is gone meanwhile."""
        self.beat(activity, detail)
        while not lock.acquire(timeout=WORKER_POLL):
            if self.command() == Command.STOP:
                raise Stopped
            self.beat(activity, detail)

    @contextlib.contextmanager
    def _locked_layer(self, layer):
        """Hold ``layer``'s lock (the wait charged as lock_wait); yields its ``(version, nnz)``."""
        self._charge("other")
        before = self._activity
        self._wait_for(self.locks[layer], Activity.LOCK_WAIT, layer)
        acquired = self._charge("lock_wait")
        self.beat(Activity.HOLDING_LOCK, layer)
        try:
            yield tuple(int(v) for v in self.blocks["meta"][layer])
        finally:
            self.locks[layer].release()
            self.beat(*before)
            if self.account is not None:
                # How long the others may have had to wait: with K workers, what limits K.
                self.account.held_lock(time.perf_counter() - acquired)

    def _read_structure(self, l, layer, nnz):
        b = self.blocks
        layer.bias[...] = b[f"bias_{l}"]
        return b[f"indptr_{l}"].copy(), b[f"indices_{l}"][:nnz].copy(), b[f"data_{l}"][:nnz].copy()

    def _read_values(self, l, layer, nnz):
        layer.data[...] = self.blocks[f"data_{l}"][:nnz]
        layer.bias[...] = self.blocks[f"bias_{l}"]

    def gradient_slot(self, slot, nnz):
        b = self.blocks
        grads = [b[f"grad_{l}"][self.worker, slot, :nnz[l]] for l in range(self.n_layers)]
        bias_grads = [b[f"bias_grad_{l}"][self.worker, slot] for l in range(self.n_layers)]
        return grads, bias_grads

    def apply_gradient(self, slot, versions, lrs, *, momentum, weight_decay):
        b = self.blocks
        applied = []
        for l in range(self.n_layers):
            with self._locked_layer(l) as (version, nnz):
                current = version == versions[l]
                if current:
                    momentum_step(b[f"data_{l}"][:nnz], b[f"grad_{l}"][self.worker, slot, :nnz],
                                  b[f"velocity_{l}"][:nnz], lr=lrs[l], momentum=momentum, weight_decay=weight_decay)
                    momentum_step(b[f"bias_{l}"], b[f"bias_grad_{l}"][self.worker, slot], b[f"bias_velocity_{l}"],
                                  lr=lrs[l], momentum=momentum)
            applied.append(current)
            self._charge("compute")
        return tuple(applied)

    # -- phase two -------------------------------------------------------------------------------------

    def read_model(self):
        return read_served_model(self.blocks, self._locked_layer, self.sizes, self.model_kind)

    def publish_replica(self, model, timeout):
        self._charge("other")
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
        self._charge("data")
        return True

    def close(self):
        self._beats = None  # a view kept past this would keep its segment from closing
        self.blocks.close()
        self.pipe.close()
        self.lifeline.close()
