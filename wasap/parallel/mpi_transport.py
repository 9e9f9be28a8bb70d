"""The MPI transport: WASAP-SGD across machines, the served state in one-sided MPI windows.

Launched as ``mpiexec -n K+1 python -m mpi4py -m wasap.run --transport mpi ...`` (or ``srun``): rank 0
is the parameter server and runs the trainer (:mod:`.trainer`) as on one machine; ranks 1..K are the
workers (:func:`run_mpi_worker`) and run :func:`~.worker.run_worker` over a :class:`MpiWorkerTransport`.
The algorithm is the shared-memory transport's, through the same two interfaces
(:class:`~.transport.ServerTransport`, :class:`~.transport.WorkerTransport`).

What lives where:

- the **served state** (:func:`~.served.served_layout`: the model's layers, the gradient and replica
  slots, the command word, sample orders, heartbeats, time accounts) plus one lock word per layer, in
  one window whose memory is rank 0's (:class:`WindowArrays`). Rank 0 reads and writes it through numpy
  views (:class:`~.served.ServedArraysServer`, the code the shared-memory transport runs too). A worker
  on rank 0's node, where the library shares the window's memory, copies to and from it directly; a
  worker elsewhere uses ``Get`` and ``Put``. Both use atomic operations for the lock words, inside one
  passive-target epoch (``Lock_all``) that lasts the whole run: a lock epoch per access would wait for
  rank 0 whenever it is busy.
- a layer's **lock** is its lock word: compare-and-swap from 0 to the holder (a worker's rank, or -1
  for the server), and from the holder back to 0 on release; every access to the layer's arrays happens
  between.
  The server's own views are synchronised with ``Win.Sync`` when it takes and gives back a lock and
  when a message says a worker wrote a slot (the window's memory model must be *unified*, which the
  MPI libraries in use give for allocated windows; another is refused with what to do).
- **messages** (:mod:`.messages`) go to rank 0 as pickled point-to-point messages; a free gradient slot,
  a free replica slot, setup and shutdown as small messages the other way.
- the **training data**: each worker receives its own partition (rows ``w, w + K, ...``) from rank 0
  once, into its own memory; no array spans machines.

Progress. Some MPI libraries complete a one-sided operation over the network only when the target calls
MPI, so when a worker is not on its node rank 0 keeps a thread that calls MPI every
:data:`PROGRESS_INTERVAL` seconds while the run lasts (the job needs ``MPI_THREAD_MULTIPLE``, mpi4py's
default).

Failure. A rank that dies ends the whole job (the launcher's rule); the trainer writes a checkpoint each
epoch, so ``--resume`` goes on from the last one. A worker that raises reports it to rank 0, which stops
the run as on one machine. A worker that stalls cannot be killed from rank 0: once rank 0 has written
its outputs it ends the job with ``MPI_Abort`` rather than wait for it for ever. Any other end, an
error status included, finalizes MPI on every rank (:func:`end_of_job`): ``python -m mpi4py`` would
turn a non-zero exit into an abort. MPICH's node segments in /dev/shm are unlinked as soon as every
rank has mapped them (:func:`_unlink_node_segments`), so that not even a killed job leaves them behind.
"""

import atexit
import contextlib
import os
import signal
import socket
import threading
import time

import numpy as np
import scipy.sparse

from ..config import ConfigError
from ..model import SparseLayer, SparseMLP
from ..optim import momentum_step
from ..profiling import time_table_shape
from .messages import Activity, Command, GradientPushed, Ready
from .served import ServedArraysServer, serve_model, served_layout
from .transport import Stopped, WORKER_POLL, WorkerFailed, WorkerTransport, stall_error

#: Seconds between the progress thread's calls into MPI on rank 0.
PROGRESS_INTERVAL = 0.001
#: Seconds between a worker's pushes of its heartbeat and time accounts to rank 0.
BEAT_INTERVAL = 0.1
#: Seconds between a worker's reports of its own CPU use and memory (rank 0's profile samples them).
USAGE_INTERVAL = 0.25
#: Seconds rank 0 waits for the workers to say they started (loading the kernels can take minutes).
STARTUP_TIMEOUT = 600.0
#: Elements a single MPI transfer moves at most: MPI counts are C ints.
CHUNK = 1 << 28

_TAG_SETUP, _TAG_MESSAGE, _TAG_SLOT, _TAG_REPLICA_FREE, _TAG_BYE, _TAG_HELLO, _TAG_DATA, _TAG_PROGRESS = range(1, 9)
_SERVER_HOLDS = -1  # the lock word's value while rank 0 holds a layer

#: Whether rank 0 has sent the workers a run to join (else :func:`release_waiting_workers` sends them home).
_setup_sent = False
#: Whether this rank ends the job with ``MPI_Abort`` at exit (a worker did not stop): MPI is not finalized.
_abort_at_exit = False
#: Whether the segments MPICH made as the job started are unlinked (:func:`world`'s first call).
_started_segments_unlinked = False
#: The names MPICH gives the shared-memory segments of a node's ranks (mapped from /dev/shm).
MPICH_SEGMENT_PREFIX = "/dev/shm/mpich_shm_"
#: The environment that makes MPICH's ranks on one machine take the path of ranks on different machines (no
#: shared memory; libfabric's TCP provider over loopback): for tests and benchmarks of that path.
MPICH_NETWORK_PATH = {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp"}

LAUNCH_HINT = ("launch one process per worker plus one for the server, e.g. "
               "`mpiexec -n 3 python -m mpi4py -m wasap.run --transport mpi ...` for 2 workers "
               "(under Slurm: `srun -n 3 python -m mpi4py -m wasap.run --transport mpi ...`)")


def world():
    """``MPI.COMM_WORLD`` of a job of two ranks or more (the first call on each rank is collective).

    Raises
    ------
    ConfigError
        mpi4py is not installed, or the program was not started by an MPI launcher with two or more ranks.
    """
    try:
        from mpi4py import MPI
    except ImportError:
        raise ConfigError("--transport mpi needs mpi4py and an MPI library: `pip install 'wasap[mpi]'` with the "
                          "cluster's MPI, or `pip install mpi4py mpich` on one machine; then " + LAUNCH_HINT + ".") \
            from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() < 2:
        raise ConfigError("--transport mpi runs the server and the workers as MPI ranks, but this is a job of "
                          "one rank; " + LAUNCH_HINT + ".")
    global _started_segments_unlinked
    if not _started_segments_unlinked:
        _unlink_node_segments(comm)  # every rank's first call: they all make it as the job starts
        _started_segments_unlinked = True
    return comm


def _unlink_node_segments(comm):
    """Unlink the MPICH segments this rank has mapped, once every rank has (collective).

    MPICH creates a node's segments while the ranks start (and for windows, inside the collective call)
    and unlinks them at ``MPI_Finalize``; a rank killed before that leaves them in /dev/shm for good. The
    memory stays for as long as a rank maps it, and nothing opens a segment by its name afterwards.
    """
    comm.Barrier()
    try:
        with open("/proc/self/maps") as maps:
            names = {line.split(None, 5)[5].rstrip("\n").removesuffix(" (deleted)")
                     for line in maps if MPICH_SEGMENT_PREFIX in line}
    except (OSError, IndexError):
        return  # not Linux: nothing is known to leak there
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(name)


def end_of_job(status: int) -> int:
    """End this rank's part of the job in order (``MPI_Finalize``) and return ``status`` to exit with.

    Under ``python -m mpi4py`` a non-zero exit status becomes ``MPI_Abort``, which kills the other ranks
    and prints an abort message; after an orderly end every rank finalizes, so the job exits with the
    status and nothing else. When a worker did not stop, the abort registered at exit ends the job.
    """
    MPI = _mpi()
    if not _abort_at_exit and MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()
    return status


def launched_workers(comm, requested: int, explicit: bool) -> int:
    """The number of workers of this job (ranks - 1); ``requested`` must match it when given ``explicit``ly."""
    workers = comm.Get_size() - 1
    if explicit and requested != workers:
        raise ConfigError(f"--workers {requested} does not match the MPI job: {comm.Get_size()} ranks are the "
                          f"server and {workers} worker(s). Leave --workers out, or launch with -n {requested + 1}.")
    return workers


def release_waiting_workers(comm, code: int) -> None:
    """On rank 0, when it ends before any run: tell the workers waiting for one to end with ``code``."""
    global _setup_sent
    if _setup_sent:
        return
    for rank in range(1, comm.Get_size()):
        comm.send(("end", int(code)), dest=rank, tag=_TAG_SETUP)
    _setup_sent = True


def _mpi():
    from mpi4py import MPI
    return MPI


def _wait_for_message(comm, source, tag, timeout=None, poll=0.01):
    """The next message from ``source`` with ``tag``, polled (a blocking receive spins a core); None after
    ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not comm.iprobe(source=source, tag=tag):
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(poll)
    return comm.recv(source=source, tag=tag)


def _send_array(comm, array, dest):
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    MPI = _mpi()
    for start in range(0, max(flat.shape[0], 1), CHUNK):
        comm.Send([flat[start:start + CHUNK], MPI.BYTE], dest=dest, tag=_TAG_DATA)


def _receive_array(comm, shape, dtype, source):
    array = np.empty(shape, dtype=dtype)
    flat = array.reshape(-1).view(np.uint8)
    MPI = _mpi()
    for start in range(0, max(flat.shape[0], 1), CHUNK):
        comm.Recv([flat[start:start + CHUNK], MPI.BYTE], source=source, tag=_TAG_DATA)
    return array


def _partition_spec(X, rows):
    """What a worker allocates for its rows ``rows`` of ``X``: their shape, and a sparse ``X``'s nonzeros."""
    shape = (len(rows), X.shape[1])
    if scipy.sparse.issparse(X):
        return dict(shape=shape, nnz=int(np.diff(X.indptr)[rows].sum()), index_dtype=X.indices.dtype.str)
    return dict(shape=shape)


def _send_partition(comm, X, rows, dest):
    """The rows ``rows`` of ``X`` to rank ``dest``: dense, or a sparse ``X``'s CSR arrays of them."""
    if not scipy.sparse.issparse(X):
        _send_array(comm, np.asarray(X[rows], dtype=np.float32), dest)
        return
    part = X[rows]
    index = X.indices.dtype
    for array in (part.indptr.astype(index, copy=False), part.indices.astype(index, copy=False), part.data):
        _send_array(comm, array, dest)


def _receive_partition(comm, spec, source):
    """A worker's rows as :func:`_send_partition` sent them: an array, or a CSR matrix of float32 values."""
    n_rows, n_features = spec["shape"]
    if "nnz" not in spec:
        return _receive_array(comm, spec["shape"], np.float32, source)
    index = np.dtype(spec["index_dtype"])
    indptr = _receive_array(comm, (n_rows + 1,), index, source)
    indices = _receive_array(comm, (spec["nnz"],), index, source)
    data = _receive_array(comm, (spec["nnz"],), np.float32, source)
    return scipy.sparse.csr_matrix((data, indices, indptr), shape=(n_rows, n_features), copy=False)


def _mpi_type(dtype):
    """The predefined MPI datatype of a numpy dtype (atomic operations take only predefined ones)."""
    MPI = _mpi()
    known = {np.dtype(np.int64): MPI.INT64_T, np.dtype(np.int32): MPI.INT32_T, np.dtype(np.float32): MPI.FLOAT,
             np.dtype(np.float64): MPI.DOUBLE}
    if dtype in known:
        return known[dtype]
    from mpi4py.util.dtlib import from_numpy_dtype

    return from_numpy_dtype(dtype)


class WindowArrays:
    """Named arrays in one MPI window whose memory is rank ``owner``'s (collective: every rank makes it).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
    layout : dict
        ``{name: (shape, dtype)}``.
    owner : int

    Attributes
    ----------
    views : dict
        ``{name: ndarray}`` over the window's memory, on the owner and on every rank that shares its memory
        (the owner's node, where the MPI library shares it); empty elsewhere.
    all_local : bool
        Whether every rank of the job does (then the owner need not drive MPI's progress for the others).
    local : bool
        Whether this rank reaches the window's memory directly: then :meth:`get` and :meth:`put` are copies
        between its own memory and the owner's (a node's ranks need no MPI call to move data), and only the
        atomic operations go through MPI. The other ranks move data with ``MPI_Get`` and ``MPI_Put``.
    nbytes : int
    seconds : float
        Wall time this rank has spent inside the window's MPI calls (its profile's ``in_mpi``).
    """

    def __init__(self, comm, layout, owner=0):
        MPI = _mpi()
        self.comm = comm
        self.owner = owner
        self.specs = {}
        offset = 0
        for name, (shape, dtype) in layout.items():
            dtype = np.dtype(dtype)
            shape = tuple(int(n) for n in shape)
            self.specs[name] = (offset, shape, dtype, _mpi_type(dtype))
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            offset += -(-size // 64) * 64  # 64-byte aligned: no array shares a cache line with another
        self.nbytes = offset
        mine = comm.Get_rank() == owner
        self.win = MPI.Win.Allocate(offset if mine else 0, 1, comm=comm)
        _unlink_node_segments(comm)
        self._int64 = MPI.INT64_T
        # An atomic operation reads its operands until the flush that completes it: they must outlive the call.
        self._operands = np.zeros(2, dtype=np.int64)
        self._result = np.zeros(1, dtype=np.int64)
        self.seconds = 0.0
        self.views = {}
        memory = self.win.tomemory() if mine else self._shared_memory(offset)
        self.local = memory is not None
        self.all_local = bool(comm.allreduce(int(self.local), op=MPI.MIN))
        if self.local:
            for name, (start, shape, dtype, _) in self.specs.items():
                self.views[name] = np.ndarray(shape, dtype=dtype, buffer=memory, offset=start)
        self._flat = {name: view.reshape(-1) for name, view in self.views.items()}
        try:
            unified = self.win.Get_attr(MPI.WIN_MODEL) == MPI.WIN_UNIFIED
        except Exception:
            unified = False
        self.win.Lock_all(MPI.MODE_NOCHECK)
        self._open = True
        if not unified:
            raise RuntimeError("this MPI library's windows use the separate memory model, which the MPI transport "
                               "does not support; use MPICH or Open MPI (their allocated windows are unified), or "
                               "--transport shm on one machine.")

    def _shared_memory(self, nbytes):
        """The owner's window memory where this rank shares it (MPI-4's query on an allocated window), else None."""
        try:
            memory, _ = self.win.Shared_query(self.owner)
        except _mpi().Exception:
            return None  # a library that shares only windows allocated as shared
        return memory if len(memory) == nbytes > 0 else None

    def _target(self, name, start, count):
        offset, _, dtype, mpi_type = self.specs[name]
        return offset + int(start) * dtype.itemsize, mpi_type

    def get(self, name, out, start=0):
        """Read elements ``start .. start + out.size`` of ``name`` (flat) into ``out`` (contiguous); complete
        after :meth:`flush`."""
        if self.local:
            flat = out.reshape(-1)
            flat[...] = self._flat[name][start:start + flat.shape[0]]
        else:
            self._transfer(self.win.Get, name, out, start)

    def put(self, name, values, start=0):
        """Write ``values`` (contiguous; not to be changed before :meth:`flush`) at element ``start`` of ``name``."""
        if self.local:
            flat = values.reshape(-1)
            self._flat[name][start:start + flat.shape[0]] = flat
        else:
            self._transfer(self.win.Put, name, values, start)

    def _transfer(self, operation, name, buffer, start):
        started = time.perf_counter()
        flat = buffer.reshape(-1)
        disp, mpi_type = self._target(name, start, flat.shape[0])
        itemsize = flat.dtype.itemsize
        for first in range(0, flat.shape[0], CHUNK):
            part = flat[first:first + CHUNK]
            operation([part, mpi_type], self.owner, target=(disp + first * itemsize, part.shape[0], mpi_type))
        self.seconds += time.perf_counter() - started

    def flush(self):
        """Complete every operation of this rank on the window (where it is local, its copies are complete:
        what is left is the memory barrier that orders them before its next atomic operation)."""
        if not self.local:
            self._complete()
            return
        started = time.perf_counter()
        self.win.Sync()
        self.seconds += time.perf_counter() - started

    def _complete(self):
        """Complete this rank's MPI operations on the window (an atomic one's result is valid after it)."""
        started = time.perf_counter()
        self.win.Flush(self.owner)
        self.seconds += time.perf_counter() - started

    def compare_and_swap(self, name, index, expected, new):
        """Atomically set int64 element ``index`` of ``name`` to ``new`` where it is ``expected``; the old value."""
        started = time.perf_counter()
        disp, _ = self._target(name, index, 1)
        self._operands[...] = (new, expected)
        self.win.Compare_and_swap([self._operands[0:1], self._int64], [self._operands[1:2], self._int64],
                                  [self._result, self._int64], self.owner, disp)
        self.seconds += time.perf_counter() - started
        self._complete()
        return int(self._result[0])

    def sync(self):
        """Make the owner's loads and stores and the others' completed operations visible to each other."""
        self.win.Sync()

    def free(self):
        """End the access epoch and free the window (collective); safe to call twice."""
        if self._open:
            self._open = False
            self.views, self._flat = {}, {}
            self.win.Unlock_all()
            self.win.Free()


def _wait_for_lock(tries):
    """Pause before the ``tries``-th try for a lock word: a waiter that keeps spinning takes the core from
    the holder where ranks share cores, so it yields twice, then sleeps."""
    time.sleep(0 if tries < 2 else 0.00002)


def _release_lock(arrays, layer, holder):
    """Give back ``layer``'s lock word, held by ``holder``.

    A compare-and-swap, like the taking: MPI promises that concurrent atomic operations on one location
    are atomic with respect to each other only when they are the same operation (the default
    ``accumulate_ops`` hint, ``same_op_no_op``); and it checks that the word still names its holder.
    """
    found = arrays.compare_and_swap("locks", layer, holder, 0)
    if found != holder:
        raise RuntimeError(f"layer {layer}'s lock word was {found}, not its holder {holder}, at its release")


class MpiServerTransport(ServedArraysServer):
    """Rank 0's side of the MPI transport: the served state in its window, the workers as ranks 1..K.

    Parameters
    ----------
    model : SparseMLP
        Copied into the window.
    X, y : arrays
        The training data; worker ``w`` receives the rows ``partitions[w]``.
    n_workers, n_slots : int
        ``n_workers`` must be the job's ranks - 1.
    partitions : list of (n_k,) int64
    replicas : bool
        Replica slots (phase two).
    stall_timeout : float or None
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.
    """

    def __init__(self, model, X, y, *, n_workers, n_slots, partitions, replicas, stall_timeout=None, comm=None):
        global _setup_sent
        self.comm = comm if comm is not None else world()
        if self.comm.Get_size() != n_workers + 1:
            raise ConfigError(f"{n_workers} worker(s) over MPI need {n_workers + 1} ranks, but the job has "
                              f"{self.comm.Get_size()}; " + LAUNCH_HINT + ".")
        self._describe_run(model, n_workers, n_slots, stall_timeout)
        self._started = False
        self._said_bye = set()
        self._hosts = {}
        self._status = _mpi().Status()
        layout = served_layout(model, n_workers=n_workers, n_slots=n_slots,
                               max_partition=max(len(p) for p in partitions), replicas=replicas)
        layout["locks"] = ((self.n_layers,), np.int64)
        # Each worker's own CPU percent and RSS (psutil on its host), for the profile: a number of reports first.
        layout["usage"] = ((n_workers, 3), np.float64)
        for w, rows in enumerate(partitions):
            setup = dict(layout=layout, worker=w, n_slots=n_slots, sizes=self.sizes, model_kind=self.model_kind,
                         X=_partition_spec(X, rows), y=((len(rows),) + y.shape[1:], y.dtype))
            self.comm.send(("run", setup), dest=w + 1, tag=_TAG_SETUP)
        _setup_sent = True
        self.arrays = WindowArrays(self.comm, layout)
        self.blocks = self.arrays.views
        serve_model(self.blocks, model)
        self.blocks["locks"][...] = 0
        self.visible()
        for w, rows in enumerate(partitions):
            _send_partition(self.comm, X, rows, w + 1)
            _send_array(self.comm, np.asarray(y[rows]), w + 1)
        self._progress_stop = threading.Event()
        self._progress = None
        # Ranks that reach the window through the network wait on rank 0's progress; the node's ranks do not.
        if not self.arrays.all_local and _mpi().Query_thread() == _mpi().THREAD_MULTIPLE:
            self._progress = threading.Thread(target=self._keep_progressing, name="wasap-mpi-progress", daemon=True)
            self._progress.start()

    def _keep_progressing(self):
        # Nothing is ever sent with this tag: the probe is only a call into the library's progress engine.
        while not self._progress_stop.wait(PROGRESS_INTERVAL):
            self.comm.Iprobe(source=_mpi().ANY_SOURCE, tag=_TAG_PROGRESS)

    def visible(self):
        self.arrays.sync()

    # -- the workers' lifetime -------------------------------------------------------------------------

    def start_workers(self, target, worker_args, threads_per_worker):
        """Learn on which host each worker rank runs, then hand it its arguments and how many ranks share
        its host (``target`` is :func:`~.worker.worker_main`'s work, which :func:`run_mpi_worker` runs)."""
        for w in range(self.n_workers):
            hello = _wait_for_message(self.comm, w + 1, _TAG_HELLO, timeout=STARTUP_TIMEOUT)
            if hello is None:
                raise WorkerFailed(f"worker {w} (rank {w + 1}) did not answer within {STARTUP_TIMEOUT:.0f}s.")
            self._hosts[w] = hello
        hosts = [socket.gethostname()] + [self._hosts[w][0] for w in range(self.n_workers)]
        for w, args in enumerate(worker_args):
            self.comm.send(("start", (args, hosts.count(self._hosts[w][0]))), dest=w + 1, tag=_TAG_SETUP)
        self._started = True

    @property
    def pids(self):
        return [None] * self.n_workers  # every worker rank samples itself, on its own host (usage_readers)

    def usage_readers(self):
        usage = self.blocks["usage"]
        # The profile's sampler thread may call MPI only where threads may; else it reads as it is.
        may_sync = _mpi().Query_thread() == _mpi().THREAD_MULTIPLE

        def reader(w):
            def read():
                if may_sync:
                    self.visible()
                reports, cpu, rss = (float(v) for v in usage[w])
                return (cpu, int(rss)) if reports > 0 else None
            return read

        return {f"worker {w}": reader(w) for w in range(self.n_workers)}

    def check_workers(self):
        # A rank that dies ends the whole job (the launcher's rule): what is left to find is a stalled one.
        if self._watch is None or self._expected_exit:
            return
        self.visible()
        stalled = self._watch.stalled(self.blocks["beats"][:, 0].copy(), time.monotonic())
        if stalled is not None:
            worker, seconds = stalled
            _, activity, detail = (int(v) for v in self.blocks["beats"][worker])
            host, pid = self._hosts.get(worker, ("?", 0))
            error = stall_error(worker, pid, seconds, activity, detail, self.stall_timeout)
            raise type(error)(f"{error} (rank {worker + 1} on {host})")

    def shutdown(self, timeout=10.0):
        """Say STOP and wait up to ``timeout`` seconds for every worker to say goodbye."""
        if self._expected_exit:
            return
        self._expected_exit = True
        self.set_command(Command.STOP)
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        while len(self._said_bye) < self.n_workers and time.monotonic() < deadline:
            status = self._status
            if self.comm.iprobe(source=_mpi().ANY_SOURCE, tag=_mpi().ANY_TAG, status=status):
                source, tag = status.Get_source(), status.Get_tag()
                self.comm.recv(source=source, tag=tag)  # late messages are dropped: the run is over
                if tag == _TAG_BYE:
                    self._said_bye.add(source - 1)
            else:
                time.sleep(0.001)

    def close(self):
        """Free the window with the workers, or, when one did not end, end the job once rank 0 exits."""
        global _abort_at_exit
        self._progress_stop.set()
        if self._progress is not None:
            self._progress.join()
        if not self._started:
            for rank in range(1, self.comm.Get_size()):
                self.comm.send(("end", 1), dest=rank, tag=_TAG_SETUP)
            self.arrays.free()
        elif len(self._said_bye) == self.n_workers:
            self.arrays.free()
        else:
            # Freeing the window waits for every rank: a stalled one would hold rank 0 for ever.
            missing = sorted(set(range(self.n_workers)) - self._said_bye)
            atexit.register(_abort_job, self.comm, missing)
            _abort_at_exit = True

    # -- messages and commands -------------------------------------------------------------------------

    def receive(self, timeout):
        started = time.perf_counter()
        deadline = started + timeout
        status = self._status
        spins = 0
        try:
            while not self.comm.iprobe(source=_mpi().ANY_SOURCE, tag=_TAG_MESSAGE, status=status):
                if time.perf_counter() > deadline:
                    return None
                spins += 1
                # A short spin for the next message of a busy run, then sleeps: an idle server frees its core.
                time.sleep(0 if spins < 200 else 0.0005)
            message = self.comm.recv(source=status.Get_source(), tag=_TAG_MESSAGE)
            self.visible()  # what the worker put in its slots before it sent
            return message
        finally:
            self.idle_seconds += time.perf_counter() - started

    def set_command(self, command):
        self.blocks["control"][0] = command
        self.visible()

    # -- phase one -------------------------------------------------------------------------------------

    def _acquire(self, layer):
        tries = 0
        checked = time.monotonic()
        while self.arrays.compare_and_swap("locks", layer, 0, _SERVER_HOLDS) != 0:
            tries += 1
            _wait_for_lock(tries)
            if time.monotonic() - checked > 1.0:
                self.check_workers()
                checked = time.monotonic()
        self.visible()

    def _release(self, layer):
        self.visible()
        _release_lock(self.arrays, layer, _SERVER_HOLDS)

    @contextlib.contextmanager
    def lock(self, layer):
        if self._holding_all or self._expected_exit:
            yield
            return
        self._acquire(layer)
        try:
            yield
        finally:
            self._release(layer)

    @contextlib.contextmanager
    def model_lock(self):
        held = []
        try:
            for l in range(self.n_layers):
                self._acquire(l)
                held.append(l)
            self._holding_all = True
            yield
        finally:
            self._holding_all = False
            for l in reversed(held):
                self._release(l)

    def release_slot(self, worker):
        self.comm.send(None, dest=worker + 1, tag=_TAG_SLOT)

    def replica_gathered(self, worker):
        self.comm.send(None, dest=worker + 1, tag=_TAG_REPLICA_FREE)

    @property
    def nbytes(self):
        return self.arrays.nbytes


def _abort_job(comm, missing):
    import sys

    sys.stderr.write(f"wasap: worker(s) {missing} did not stop; ending the MPI job.\n")
    sys.stderr.flush()
    comm.Abort(1)


class MpiWorkerTransport(WorkerTransport):
    """A worker rank's side of the MPI transport.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
    arrays : WindowArrays
        The run's window (rank 0's memory).
    setup : dict
        What rank 0 sent (layout, worker, n_slots, sizes, model_kind).
    X, y : arrays
        This worker's partition, in its own memory.
    """

    def __init__(self, comm, arrays, setup, X, y, account=None):
        self.comm = comm
        self.arrays = arrays
        self.worker = setup["worker"]
        self.n_slots = setup["n_slots"]
        self.sizes = setup["sizes"]
        self.model_kind = setup["model_kind"]
        self.n_layers = len(self.sizes) - 1
        self.account = account
        self._X, self._y = X, y
        layout = setup["layout"]
        self.caps = [layout[f"data_{l}"][0][0] for l in range(self.n_layers)]
        self.n_workers = layout["beats"][0][0]
        self._max_partition = layout["orders"][0][1]
        self._grads = [[np.zeros(cap, dtype=np.float32) for cap in self.caps] for _ in range(self.n_slots)]
        self._bias_grads = [[np.zeros(n_out, dtype=np.float32) for n_out in self.sizes[1:]]
                            for _ in range(self.n_slots)]
        self._slot_nnz = [list(self.caps) for _ in range(self.n_slots)]
        # The served values a gradient step reads, updates and writes back.
        self._values = [np.zeros(cap, dtype=np.float32) for cap in self.caps]
        self._velocities = [np.zeros(cap, dtype=np.float32) for cap in self.caps]
        self._biases = [np.zeros((2, n_out), dtype=np.float32) for n_out in self.sizes[1:]]
        self._meta = np.zeros(2, dtype=np.int64)
        self._control = np.zeros(1, dtype=np.int64)
        self._times = np.zeros(time_table_shape(1)[1:], dtype=np.float64)
        self._beats = np.zeros(3, dtype=np.int64)
        self._sent_beats = np.zeros(3, dtype=np.int64)
        self._sent_times = np.zeros_like(self._times)
        self._pushed = 0.0
        self._mpi_charged = 0.0
        self._usage = np.zeros(3, dtype=np.float64)
        self._usage_reported = 0.0
        self._process = None
        self._activity = (Activity.STARTING, 0)
        self._beating = False
        self._stopped = False
        self._free_slots = self.n_slots
        self._replica_free = True

    def _charge(self, category):
        if self.account is not None:
            return self.account.charge(category)
        return time.perf_counter()

    # -- data and accounts -----------------------------------------------------------------------------

    def partition(self):
        return self._X, self._y

    def time_table(self):
        return self._times

    def _push_accounts(self):
        """Put the heartbeat and the time accounts in rank 0's window (the stall watch and the profile read them)."""
        if self.account is not None:
            self.account.in_mpi(self.arrays.seconds - self._mpi_charged)
            self._mpi_charged = self.arrays.seconds
        self._sent_beats[...] = self._beats
        self._sent_times[...] = self._times
        self.arrays.put("beats", self._sent_beats, self.worker * 3)
        self.arrays.put("times", self._sent_times, self.worker * self._times.size)
        now = time.monotonic()
        if now - self._usage_reported > USAGE_INTERVAL:
            self._report_usage()
            self._usage_reported = now
        self.arrays.flush()
        self._pushed = now

    def _report_usage(self):
        """This process's CPU percent since the last report and its RSS, into its row of ``usage``."""
        import psutil

        try:
            if self._process is None:
                # The first report: the mean since the process started (psutil's own counter only primes).
                self._process = psutil.Process()
                self._process.cpu_percent(None)
                times = self._process.cpu_times()
                alive = max(time.time() - self._process.create_time(), 1e-3)
                self._usage[1] = 100.0 * (times.user + times.system) / alive
            else:
                self._usage[1] = self._process.cpu_percent(None)
            self._usage[2] = self._process.memory_info().rss
        except psutil.Error:
            return
        self._usage[0] += 1
        self.arrays.put("usage", self._usage, self.worker * 3)

    # -- liveness and commands -------------------------------------------------------------------------

    def ready(self):
        self._beating = True
        self.beat(Activity.WAITING_TO_START)
        self._push_accounts()
        self.send(Ready(self.worker, os.getpid()))

    def beat(self, activity, detail=0):
        self._beats[1] = activity
        self._beats[2] = detail
        if self._beating:
            self._beats[0] += 1
            if time.monotonic() - self._pushed > BEAT_INTERVAL:
                self._push_accounts()
        self._activity = (activity, detail)

    def command(self):
        if self._stopped:
            return Command.STOP
        self.arrays.get("control", self._control)
        self.arrays.flush()
        command = Command(int(self._control[0]))
        self._stopped = command == Command.STOP
        return command

    def server_gone(self):
        # Rank 0's end ends the job (the launcher's rule): a worker never outlives it.
        return False

    def send(self, message):
        if isinstance(message, GradientPushed):
            # The layers the worker did not apply go to its slot in rank 0's window, before the message says so.
            base = self.worker * self.n_slots + message.slot
            for l, applied in enumerate(message.applied):
                if not applied:
                    nnz = self._slot_nnz[message.slot][l]
                    self.arrays.put(f"grad_{l}", self._grads[message.slot][l][:nnz], base * self.caps[l])
                    self.arrays.put(f"bias_grad_{l}", self._bias_grads[message.slot][l], base * self.sizes[l + 1])
            self.arrays.flush()
        started = time.perf_counter()
        self.comm.send(message, dest=0, tag=_TAG_MESSAGE)
        self.arrays.seconds += time.perf_counter() - started

    # -- phase one -------------------------------------------------------------------------------------

    def _tokens(self, tag):
        count = 0
        while self.comm.iprobe(source=0, tag=tag):
            self.comm.recv(source=0, tag=tag)
            count += 1
        return count

    def _wait_token(self, tag, timeout):
        """Whether a token with ``tag`` came from rank 0 within ``timeout`` seconds (the first is used up)."""
        deadline = time.monotonic() + timeout
        spins = 0
        while not self.comm.iprobe(source=0, tag=tag):
            if time.monotonic() > deadline:
                return False
            spins += 1
            time.sleep(0 if spins < 200 else 0.0002)
        self.comm.recv(source=0, tag=tag)
        return True

    def acquire_slot(self, timeout):
        self.beat(Activity.SLOT_WAIT)
        self._free_slots += self._tokens(_TAG_SLOT)
        if self._free_slots == 0 and self._wait_token(_TAG_SLOT, timeout):
            self._free_slots += 1
        if self._free_slots == 0:
            return False
        self._free_slots -= 1
        return True

    def release_own_slot(self):
        self._free_slots += 1

    def order(self, size):
        order = np.empty(size, dtype=np.int64)
        self.arrays.get("orders", order, self.worker * self._max_partition)
        self.arrays.flush()
        return order

    @contextlib.contextmanager
    def _locked_layer(self, layer):
        """Hold ``layer``'s lock word (the wait charged as lock_wait); yields its ``(version, nnz)``."""
        self._charge("other")
        before = self._activity
        self.beat(Activity.LOCK_WAIT, layer)
        holder = self.worker + 1
        polled = time.monotonic()
        tries = 0
        while self.arrays.compare_and_swap("locks", layer, 0, holder) != 0:
            tries += 1
            _wait_for_lock(tries)
            if time.monotonic() - polled > WORKER_POLL:
                if self.command() == Command.STOP:
                    raise Stopped
                self.beat(Activity.LOCK_WAIT, layer)
                polled = time.monotonic()
        acquired = self._charge("lock_wait")
        self.beat(Activity.HOLDING_LOCK, layer)
        try:
            self.arrays.get("meta", self._meta, 2 * layer)
            self.arrays.flush()
            yield int(self._meta[0]), int(self._meta[1])
        finally:
            self.arrays.flush()
            _release_lock(self.arrays, layer, holder)
            self.beat(*before)
            if self.account is not None:
                self.account.held_lock(time.perf_counter() - acquired)

    def _read_structure(self, l, layer, nnz):
        indptr = np.empty(layer.n_in + 1, dtype=np.int64)
        indices = np.empty(nnz, dtype=np.int32)
        data = np.empty(nnz, dtype=np.float32)
        for name, out in (("indptr", indptr), ("indices", indices), ("data", data), ("bias", layer.bias)):
            self.arrays.get(f"{name}_{l}", out)
        self.arrays.flush()
        return indptr, indices, data

    def _read_values(self, l, layer, nnz):
        self.arrays.get(f"data_{l}", layer.data)
        self.arrays.get(f"bias_{l}", layer.bias)
        self.arrays.flush()

    def gradient_slot(self, slot, nnz):
        self._slot_nnz[slot] = [int(n) for n in nnz]
        grads = [self._grads[slot][l][:nnz[l]] for l in range(self.n_layers)]
        return grads, list(self._bias_grads[slot])

    def apply_gradient(self, slot, versions, lrs, *, momentum, weight_decay):
        applied = []
        for l in range(self.n_layers):
            with self._locked_layer(l) as (version, nnz):
                current = version == versions[l]
                if current:
                    data, velocity = self._values[l][:nnz], self._velocities[l][:nnz]
                    bias, bias_velocity = self._biases[l]
                    self.arrays.get(f"data_{l}", data)
                    self.arrays.get(f"velocity_{l}", velocity)
                    self.arrays.get(f"bias_{l}", bias)
                    self.arrays.get(f"bias_velocity_{l}", bias_velocity)
                    self.arrays.flush()
                    momentum_step(data, self._grads[slot][l][:nnz], velocity, lr=lrs[l], momentum=momentum,
                                  weight_decay=weight_decay)
                    momentum_step(bias, self._bias_grads[slot][l], bias_velocity, lr=lrs[l], momentum=momentum)
                    self.arrays.put(f"data_{l}", data)
                    self.arrays.put(f"velocity_{l}", velocity)
                    self.arrays.put(f"bias_{l}", bias)
                    self.arrays.put(f"bias_velocity_{l}", bias_velocity)
            applied.append(current)
            self._charge("compute")
        return tuple(applied)

    # -- phase two -------------------------------------------------------------------------------------

    def read_model(self):
        layers = []
        for l in range(self.n_layers):
            n_in, n_out = self.sizes[l], self.sizes[l + 1]
            with self._locked_layer(l) as (_, nnz):
                arrays = (np.empty(n_in + 1, np.int64), np.empty(nnz, np.int32), np.empty(nnz, np.float32),
                          np.empty(n_out, np.float32), np.empty(nnz, np.float32), np.empty(n_out, np.float32))
                for name, array in zip(("indptr", "indices", "data", "bias", "velocity", "bias_velocity"), arrays):
                    self.arrays.get(f"{name}_{l}", array)
                self.arrays.flush()
            layers.append(SparseLayer(n_in, n_out, *arrays))
        return SparseMLP(layers, **self.model_kind)

    def publish_replica(self, model, timeout):
        self._charge("other")
        if not self._replica_free:
            self._replica_free = self._wait_token(_TAG_REPLICA_FREE, timeout)
        self._charge("slot_wait")
        if not self._replica_free:
            return False
        w = self.worker
        nnz = np.array([layer.nnz for layer in model.layers], dtype=np.int64)
        for l, layer in enumerate(model.layers):
            self.arrays.put(f"rep_indptr_{l}", layer.indptr, w * (layer.n_in + 1))
            self.arrays.put(f"rep_indices_{l}", layer.indices, w * self.caps[l])
            self.arrays.put(f"rep_data_{l}", layer.data, w * self.caps[l])
            self.arrays.put(f"rep_bias_{l}", layer.bias, w * layer.n_out)
        self.arrays.put("rep_nnz", nnz, w * self.n_layers)
        self.arrays.flush()
        self._replica_free = False
        self._charge("data")
        return True

    def close(self):
        """Push the last accounts, say goodbye, and free the window with the others (collective)."""
        try:
            self._push_accounts()
        finally:
            self.comm.send(None, dest=0, tag=_TAG_BYE)
            self.arrays.free()
            # Tokens rank 0 sent before its STOP: a message left unreceived can hold up MPI_Finalize.
            for tag in (_TAG_SLOT, _TAG_REPLICA_FREE):
                self._tokens(tag)


def _node_threads(requested, ranks_on_node):
    """``requested`` kernel threads, at most this node's cores shared among the job's ranks on it."""
    from ..threads import available_cores

    return max(1, min(available_cores() // ranks_on_node, int(requested or 1)))


def join_run(comm):
    """A worker rank's side of the run's start: the window, its partition, then rank 0's start message.

    Returns
    -------
    (MpiWorkerTransport, object) or int
        The worker's transport and what rank 0 passed to :meth:`MpiServerTransport.start_workers` (its
        ``worker_args`` entry for this worker, and how many of the job's ranks share its node); or, when
        rank 0 ended before the run, the status it ended with.
    """
    kind, setup = _wait_for_message(comm, 0, _TAG_SETUP)
    if kind == "end":
        return int(setup)
    arrays = WindowArrays(comm, setup["layout"])
    X = _receive_partition(comm, setup["X"], source=0)
    y = _receive_array(comm, *setup["y"], source=0)
    comm.send((socket.gethostname(), os.getpid()), dest=0, tag=_TAG_HELLO)
    kind, start_message = _wait_for_message(comm, 0, _TAG_SETUP)
    if kind == "end":
        arrays.free()
        return int(start_message)
    return MpiWorkerTransport(comm, arrays, setup, X, y), start_message


def run_mpi_worker(comm=None) -> int:
    """A worker rank's whole life: wait for rank 0's run, join it, train, and return an exit status.

    Call it on every rank but 0 of a job whose rank 0 calls :func:`wasap.parallel.fit_parallel` with
    ``TrainConfig(transport="mpi")`` (``python -m wasap.run --transport mpi`` does both).

    Returns
    -------
    int
        0 after a run, also one in which this worker raised (its traceback went to rank 0, which reports it
        and ends with an error status: a worker's own non-zero exit would end the job before rank 0 wrote
        its outputs), or the status rank 0 ended with when it ended before a run.
    """
    from .worker import run_worker

    comm = comm if comm is not None else world()
    # Ctrl-C and the launcher's SIGTERM reach every rank: rank 0 decides (stop, keep the model) and says STOP.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    joined = join_run(comm)
    if isinstance(joined, int):
        return joined
    transport, ((worker, n_workers, config, threads, first_phase2_epoch, start), ranks_on_node) = joined
    try:
        run_worker(transport, worker, n_workers, config, _node_threads(threads, ranks_on_node), first_phase2_epoch,
                   start)
    except Exception:
        pass  # reported to rank 0 (run_worker sends its traceback)
    return 0
