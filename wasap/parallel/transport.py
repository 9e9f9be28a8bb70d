"""The interface between the WASAP-SGD algorithm and whatever carries its data, and the run's liveness rules.

The algorithm (:mod:`.trainer` and :mod:`.server` on the server's side,
:mod:`.worker` on the workers') talks only to a :class:`ServerTransport` and a
:class:`WorkerTransport`. Their methods are exactly what it calls; a transport
implements both sides. What a transport must provide:

- the **served model**: per layer, CSR arrays, biases and their momentum, a
  topology version and nnz, behind one lock per layer, which workers read
  (pull) and update (apply their own gradients) and the server rewrites when
  it evolves the topology;
- **gradient slots**: per worker ``n_slots`` buffers a worker writes a gradient
  into and the server reads; a slot is the worker's to fill again only once it
  was released (by the server, or by the worker itself for a gradient it
  applied in full);
- **replica slots** (phase two): one per worker, published by the worker and
  gathered by the server;
- the **command word** (:class:`~.messages.Command`) every worker polls, the
  synchronous variant's **sample orders**, each worker's **heartbeat** and
  **time accounts**;
- **messages** (:mod:`.messages`) from workers to the server;
- the workers' **lifetime**: start, watch, stop.

Two transports implement both: shared memory on one machine (:mod:`.shm_transport`) and MPI
one-sided windows across machines (:mod:`.mpi_transport`); what the server does with the served
arrays is common to them (:mod:`.served`).

Liveness. No wait on either side is unbounded. The server waits in steps and
checks its workers between them (:meth:`ServerTransport.check_workers`): one
that ended is a :class:`WorkerFailed`, one whose heartbeat has not moved for
the stall timeout (stopped by a signal, stuck) a :class:`WorkerStalled` that
says what it was doing (:class:`StallWatch`). A worker waits in steps of
:data:`WORKER_POLL` seconds too, and stops (:class:`Stopped`) when the server
says STOP or is gone.
"""

import signal
from abc import ABC, abstractmethod
from typing import Callable, ContextManager, NamedTuple, Optional, Sequence

import numpy as np

from ..model import SparseMLP
from ..profiling import TimeAccount
from .messages import Activity, Command, WorkerMessage, describe_activity

#: Seconds between a waiting worker's looks at the command word and at whether the server is still there.
WORKER_POLL = 0.1


class WorkerFailed(RuntimeError):
    """A worker process ended while the run needed it (killed, crashed, or raised).

    Attributes
    ----------
    summary : dict
        Set by :func:`~.trainer.fit_parallel` before it raises: the run's summary, as in summary.json.
    """

    #: summary.json's ``stopped`` for a run this ended.
    stop_reason: str = "worker-failed"
    summary: Optional[dict] = None


class WorkerStalled(WorkerFailed):
    """A worker made no progress for the stall timeout (stopped by a signal, or stuck)."""

    stop_reason: str = "worker-stalled"


class Stopped(Exception):
    """Raised in a worker: the server said STOP, or is gone, while the worker waited or sent."""


def describe_exit(worker: int, code: Optional[int]) -> str:
    """``"worker 1 (exit code -9, killed by SIGKILL)"``."""
    text = f"worker {worker} (exit code {code}"
    if code is not None and code < 0:
        try:
            text += f", killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return text + ")"


def stall_error(worker: int, pid: int, seconds: float, activity: int, detail: int, stall_timeout: float,
                stopped: bool = False) -> WorkerStalled:
    """The :class:`WorkerStalled` for ``worker`` (process ``pid``), quiet for ``seconds`` while ``activity``.

    Parameters
    ----------
    worker, pid : int
    seconds : float
        Wall seconds since its heartbeat last moved.
    activity, detail : int
        Its heartbeat's last :class:`~.messages.Activity` and detail.
    stall_timeout : float
    stopped : bool
        The process is stopped (SIGSTOP, Ctrl-Z).
    """
    return WorkerStalled(
        f"worker {worker} (pid {pid}) made no progress for {seconds:.1f}s while "
        f"{describe_activity(activity, detail)}"
        f"{' (the process is stopped, as by SIGSTOP or Ctrl-Z)' if stopped else ''}; the stall timeout is "
        f"{stall_timeout:g}s. A worker stopped by a signal or a debugger, or stuck, stalls the run; "
        "if it was only slow (a very large network, an overloaded machine), raise the timeout "
        "(--stall-timeout, or TrainConfig(stall_timeout=...)).")


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

    def __init__(self, n_workers: int, timeout: float, max_step: float = 2.0):
        self.timeout = float(timeout)
        self.max_step = float(max_step)
        self._watched = 0.0
        self._last = None
        self._counts = np.zeros(n_workers, dtype=np.int64)
        self._since = np.zeros(n_workers)  # watched time of each count's last change
        self._since_wall = np.zeros(n_workers)

    def stalled(self, counts: np.ndarray, now: float) -> Optional[tuple]:
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


class LayerState(NamedTuple):
    """Writable views of one served layer; ``indices``, ``data`` and ``velocity`` cut to its nnz."""

    version: int
    nnz: int
    indptr: np.ndarray  # (n_in + 1,) int64
    indices: np.ndarray  # (nnz,) int32
    data: np.ndarray  # (nnz,) float32
    velocity: np.ndarray  # (nnz,) float32
    bias: np.ndarray  # (n_out,) float32
    bias_velocity: np.ndarray  # (n_out,) float32


class ServerTransport(ABC):
    """The parameter server's side of a transport, and the owner of the workers' lifetime.

    Attributes
    ----------
    n_layers : int
    sizes : list of int
        Layer sizes ``[n_features, hidden..., n_outputs]``.
    idle_seconds : float
        Seconds spent in :meth:`receive` waiting for a message (the server's idle time, for the profile).
    """

    n_layers: int
    sizes: list
    idle_seconds: float

    # -- the workers' lifetime -------------------------------------------------------------------------

    @abstractmethod
    def start_workers(self, target: Callable, worker_args: Sequence[tuple], threads_per_worker: int) -> None:
        """Start the K workers, worker ``w`` running ``target(handle, *worker_args[w])``.

        Parameters
        ----------
        target : callable
            :func:`~.worker.worker_main`; ``handle`` has a ``connect()`` that returns the worker's
            :class:`WorkerTransport`, in the worker's process.
        worker_args : sequence of tuple
            One per worker.
        threads_per_worker : int
            Kernel threads of each worker: the math libraries must start with this many.
        """

    @property
    @abstractmethod
    def pids(self) -> list:
        """Process ids of the workers in worker order, None for one the server cannot sample itself (the
        profile samples the CPU of the others)."""

    def usage_readers(self) -> dict:
        """``{"worker w": callable}`` for the workers that report their own CPU use: each callable returns
        ``(cpu_percent, rss_bytes)`` as last reported, or None before the first report."""
        return {}

    @abstractmethod
    def check_workers(self) -> None:
        """Raise when a worker can no longer do its part; called between the server's waits.

        Raises
        ------
        WorkerFailed
            A worker ended while it should be running (its message says which, and its exit code).
        WorkerStalled
            A worker's heartbeat has not moved for the stall timeout (:class:`StallWatch`).
        """

    @abstractmethod
    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every worker (ask with STOP, then force) within about ``timeout`` seconds; safe to call twice.

        Afterwards the served model can still be read (:meth:`read_model`), with no lock to wait for: no
        worker runs, and a lock that a killed worker held may never come free.
        """

    @abstractmethod
    def close(self) -> None:
        """Release every resource of the run (after :meth:`shutdown`)."""

    # -- messages and commands -------------------------------------------------------------------------

    @abstractmethod
    def receive(self, timeout: float) -> Optional[WorkerMessage]:
        """The next message from any worker (:mod:`.messages`), or None after ``timeout`` seconds."""

    @abstractmethod
    def set_command(self, command: Command) -> None:
        """Set the command word every worker polls (``RUN``, ``PHASE_TWO``, ``STOP``)."""

    # -- phase one -------------------------------------------------------------------------------------

    @abstractmethod
    def lock(self, layer: int) -> ContextManager[None]:
        """Context manager holding ``layer``'s lock (no worker reads or updates the served layer meanwhile).

        Waits in steps, calling :meth:`check_workers` between them: a worker that died holding the lock
        ends the wait with :class:`WorkerFailed`.
        """

    @abstractmethod
    def model_lock(self) -> ContextManager[None]:
        """Context manager holding every layer's lock, in layer order.

        No worker reads or updates the served model meanwhile; the server's own :meth:`lock`,
        :meth:`read_model` and :meth:`write_layer` calls inside it do not lock again.
        """

    @abstractmethod
    def layer_state(self, layer: int) -> LayerState:
        """Writable views of the served layer, valid until its next :meth:`write_layer`; use under its lock."""

    @abstractmethod
    def write_layer(self, layer: int, version: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                    velocity: np.ndarray) -> None:
        """Serve a new topology of ``layer`` (nnz may shrink, never grow), its values, and its ``version``.

        Parameters
        ----------
        layer, version : int
        indptr : (n_in + 1,) int64
        indices : (nnz,) int32
        data, velocity : (nnz,) float32
        """

    @abstractmethod
    def read_model(self) -> SparseMLP:
        """A private copy of the served model, momentum included (each layer read under its lock)."""

    @abstractmethod
    def gradient(self, worker: int, slot: int, layer: int) -> tuple:
        """Views ``(grad (capacity,), bias_grad (n_out,))`` of layer ``layer``'s part of a gradient slot.

        ``grad`` spans the slot's whole capacity; its first nnz entries (of the version the gradient was
        computed on) hold the gradient, from the worker's :class:`~.messages.GradientPushed` until the slot
        is released.
        """

    @abstractmethod
    def release_slot(self, worker: int) -> None:
        """Give one gradient slot back to ``worker`` (in the synchronous variant: its go for the next step)."""

    @abstractmethod
    def write_order(self, worker: int, order: np.ndarray) -> None:
        """Hand ``worker`` the sample order ``(n_w,) int64`` of its next local epoch (synchronous variant)."""

    # -- phase two and the profile ---------------------------------------------------------------------

    @abstractmethod
    def gather_replica(self, worker: int) -> list:
        """A private copy (list of :class:`~wasap.model.SparseLayer`) of the replica ``worker`` published;
        its replica slot is free again afterwards."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of the run's served state (model, slots, data) the transport holds."""

    @abstractmethod
    def time_tables(self) -> np.ndarray:
        """A copy of every worker's time accounts, ``(K, phases, columns)`` float64 (:mod:`wasap.profiling`)."""


class WorkerTransport(ABC):
    """A worker's side of a transport.

    Attributes
    ----------
    worker : int
        This worker's index.
    n_slots : int
        Its gradient slots (the synchronous variant: 1).
    account : wasap.profiling.TimeAccount or None
        Charged with the transport's own waits (lock_wait, slot_wait) and copies (data); set by the worker.
    """

    worker: int
    n_slots: int
    account: Optional[TimeAccount] = None

    # -- data and accounts -----------------------------------------------------------------------------

    @abstractmethod
    def partition(self) -> tuple:
        """This worker's training rows ``(X (n_w, n_features) float32, y (n_w,) or (n_w, n_outputs))``."""

    @abstractmethod
    def time_table(self) -> np.ndarray:
        """The writable ``(phases, columns)`` float64 table this worker's :class:`~wasap.profiling.TimeAccount`
        keeps (the server reads every worker's with :meth:`ServerTransport.time_tables`, also after a
        worker died)."""

    # -- liveness and commands -------------------------------------------------------------------------

    @abstractmethod
    def ready(self) -> None:
        """Send :class:`~.messages.Ready` and start the heartbeat: the stall timeout applies from here on
        (before, the startup timeout: loading the kernels can take minutes)."""

    @abstractmethod
    def beat(self, activity: Activity, detail: int = 0) -> None:
        """Tell the server this worker moves on, and to what (``detail``: a layer, a local epoch); before
        :meth:`ready`, only what it does."""

    @abstractmethod
    def command(self) -> Command:
        """The current command word; ``STOP`` too once the server is gone."""

    @abstractmethod
    def server_gone(self) -> bool:
        """Whether the server has ended (however it ended)."""

    @abstractmethod
    def send(self, message: WorkerMessage) -> None:
        """Send ``message`` to the server.

        Raises
        ------
        Stopped
            The server is gone.
        """

    # -- phase one -------------------------------------------------------------------------------------

    @abstractmethod
    def acquire_slot(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a free gradient slot (the synchronous variant: the server's
        go); False on timeout."""

    @abstractmethod
    def release_own_slot(self) -> None:
        """Give back the slot of a gradient this worker applied to every layer itself (no server work left)."""

    @abstractmethod
    def order(self, size: int) -> np.ndarray:
        """A copy of the sample order ``(size,) int64`` the server drew for this worker's next local epoch
        (synchronous variant)."""

    def pull_weights(self, model: SparseMLP, versions: Sequence[int]) -> list:
        """Refresh ``model``'s weights and biases in place from the served model; returns the versions read.

        Each layer is read under its lock (:meth:`_locked_layer`). A layer whose version differs from
        ``versions[l]`` gets the served structure (:meth:`_read_structure`; its column view is rebuilt
        outside the lock); otherwise only values are copied (:meth:`_read_values`).
        """
        new_versions = list(versions)
        for l, layer in enumerate(model.layers):
            with self._locked_layer(l) as (version, nnz):
                structure = self._read_structure(l, layer, nnz) if version != versions[l] else None
                if structure is None:
                    self._read_values(l, layer, nnz)
            if structure is not None:
                layer.set_structure(*structure)
                new_versions[l] = version
            self._charge("data")
        return new_versions

    @abstractmethod
    def _locked_layer(self, layer: int):
        """A context manager: hold ``layer``'s lock, yielding its served ``(version, nnz)``."""

    @abstractmethod
    def _read_structure(self, l: int, layer, nnz: int) -> tuple:
        """Copies ``(indptr, indices, data)`` of served layer ``l`` (``nnz`` weights), and its biases into
        ``layer.bias``; called under the layer's lock."""

    @abstractmethod
    def _read_values(self, l: int, layer, nnz: int) -> None:
        """Served layer ``l``'s weights into ``layer.data`` and biases into ``layer.bias`` (same structure);
        called under the layer's lock."""

    @abstractmethod
    def _charge(self, category: str) -> float:
        """Charge the time since the last charge to ``category`` of this worker's account; returns now."""

    @abstractmethod
    def gradient_slot(self, slot: int, nnz: Sequence[int]) -> tuple:
        """Lists ``(grads, bias_grads)`` of writable per-layer views ``(nnz[l],)`` and ``(n_out_l,)`` float32
        into gradient slot ``slot``: the kernels write the gradient there."""

    @abstractmethod
    def apply_gradient(self, slot: int, versions: Sequence[int], lrs: Sequence[float], *, momentum: float,
                       weight_decay: float) -> tuple:
        """Apply gradient slot ``slot`` to the served layers still at ``versions``, under each layer's lock.

        The server's rule (momentum SGD, :func:`wasap.optim.momentum_step`; biases without decay), run by
        the worker where it reaches the served weights, so that not every update goes through the server.

        Parameters
        ----------
        slot : int
        versions : sequence of int
            The topology versions the gradient was computed on.
        lrs : sequence of float
            Each layer's learning rate.
        momentum, weight_decay : float

        Returns
        -------
        tuple of bool
            One per layer: False where the layer's topology changed since ``versions`` (the server remaps
            that part) or where this transport cannot reach the served weights.
        """

    # -- phase two -------------------------------------------------------------------------------------

    @abstractmethod
    def read_model(self) -> SparseMLP:
        """A private copy of the served model, momentum included (each layer read under its lock)."""

    @abstractmethod
    def publish_replica(self, model: SparseMLP, timeout: float) -> bool:
        """Copy ``model`` into this worker's replica slot once the server has gathered the last one.

        Returns False when the slot was still busy after ``timeout`` seconds. The worker then sends
        :class:`~.messages.ReplicaPublished`.
        """

    @abstractmethod
    def close(self) -> None:
        """Release this side's resources."""

