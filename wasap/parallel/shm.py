"""Named shared-memory blocks with one owner, and their hygiene.

A :class:`SharedBlocks` object is the only holder of the numpy views over its
``multiprocessing.shared_memory`` segments: it hands views out, and drops them
all before closing the segments (a view over a closed segment segfaults when
read). The creating process owns the segments and unlinks each exactly once;
processes that attach only close. Every segment of a run is named
``<prefix><name>`` with a per-run prefix ``wasap_<pid>_<random>_``, so a
leaked segment can be found (and a test can check there is none).

Space. A segment is reserved when it is created (``posix_fallocate`` where the
platform has it): a /dev/shm that fills up refuses the run at its start with
:class:`SharedMemoryFull`, instead of the SIGBUS that touching an unbacked page
of a sparse segment gives later. Runs create their blocks one after the other
(an exclusive ``flock`` on /dev/shm), so two runs started together cannot both
pass the free-space check and then share out space that fits only one.

Hygiene. Every process that maps a run's segments holds a shared ``flock`` on
each of them. Before creating its own, a run removes the segments left by dead
runs (:func:`sweep_stale_segments`): those whose creating pid no longer exists
and that no process holds (the flock also covers processes of another pid
namespace sharing /dev/shm).
"""

import contextlib
import errno
import os
import secrets
import time
from multiprocessing import shared_memory

import numpy as np

try:
    import fcntl
except ImportError:  # no flock: no creation lock, no sweep
    fcntl = None

#: Every segment wasap creates starts with this.
PREFIX_ROOT = "wasap_"

SHM_DIR = "/dev/shm"
#: How long a run waits for another run to finish creating its blocks before it goes on without the
#: creation lock (a run stopped while creating must not block the next one for ever).
CREATION_LOCK_TIMEOUT = 60.0


class SharedMemoryFull(MemoryError):
    """/dev/shm has less free space than the run needs."""


def run_prefix():
    """A fresh per-run prefix: ``wasap_<pid>_<random>_`` (the pid lets a test find a run's segments)."""
    return f"{PREFIX_ROOT}{os.getpid()}_{secrets.token_hex(3)}_"


def leftover_segments(prefix=PREFIX_ROOT):
    """Names in /dev/shm that start with ``prefix`` (empty where there is no /dev/shm)."""
    try:
        return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(prefix))
    except FileNotFoundError:
        return []


def free_space():
    """Bytes free in /dev/shm, or None where there is no /dev/shm."""
    if not os.path.isdir(SHM_DIR):
        return None
    stats = os.statvfs(SHM_DIR)
    return stats.f_bavail * stats.f_frsize


def check_free_space(nbytes):
    """Raise :class:`SharedMemoryFull` when /dev/shm cannot hold ``nbytes`` more.

    Parameters
    ----------
    nbytes : int
        Bytes about to be allocated.
    """
    free = free_space()
    # Keep a margin: multiprocessing's own semaphores live there too.
    if free is not None and nbytes + (1 << 20) > free:
        raise _full(f"needs {_mib(nbytes)} of shared memory but {SHM_DIR} has only {_mib(free)} free")


def _full(what):
    """A :class:`SharedMemoryFull` that says ``what`` happened and how to make room."""
    return SharedMemoryFull(
        f"the parallel trainer {what}; free some space (look for leftover '{PREFIX_ROOT}*' segments in "
        f"{SHM_DIR}), enlarge it (mount -o remount,size=... /dev/shm, or --shm-size for a container), or train "
        "a smaller model."
    )


def _mib(nbytes):
    return f"{nbytes / (1 << 20):.1f} MiB"


def _pid_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _creator_pid(name):
    """The pid in a ``wasap_<pid>_<random>_<block>`` name, or None for a name of another form."""
    parts = name[len(PREFIX_ROOT):].split("_", 1)
    return int(parts[0]) if parts[0].isdigit() and len(parts) == 2 else None


def _held(path):
    """Whether a process holds ``path`` (its shared flock); True when that cannot be told (no access)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the probe's own lock


def sweep_stale_segments():
    """Remove the segments of dead runs from /dev/shm.

    A segment is removed when the pid in its name no longer exists and no
    process holds it (every process that maps a run's segments holds a
    shared flock on them): a run whose server was killed leaves its
    segments to its workers until they have gone too.

    Returns
    -------
    list of (str, int)
        Name and size in bytes of each segment removed.
    """
    swept = []
    if fcntl is None:
        return swept
    for name in leftover_segments():
        pid = _creator_pid(name)
        path = os.path.join(SHM_DIR, name)
        if pid is None or _pid_exists(pid) or _held(path):
            continue
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except OSError:
            continue  # another run swept it first, or it is not ours to remove
        swept.append((name, size))
    return swept


@contextlib.contextmanager
def _creation_lock(timeout=CREATION_LOCK_TIMEOUT):
    """Hold /dev/shm's exclusive flock (at most ``timeout`` seconds of waiting; after that, go on without)."""
    fd = None
    if fcntl is not None and os.path.isdir(SHM_DIR):
        try:
            fd = os.open(SHM_DIR, os.O_RDONLY)
        except OSError:
            fd = None  # no access to the folder itself: go on without the lock
    if fd is not None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _hold(segment):
    """Take the shared flock that marks ``segment`` as in use (:func:`sweep_stale_segments`).

    Only a sweep's probe, which lets go at once, can make this wait."""
    fd = getattr(segment, "_fd", -1)
    if fcntl is not None and fd >= 0:
        fcntl.flock(fd, fcntl.LOCK_SH)


def _reserve(segment, nbytes):
    """Back every page of a new segment now, so that a lack of space shows here, not as a SIGBUS later.

    Returns
    -------
    bool
        False when /dev/shm could not hold the ``nbytes``; True when reserved, or where the platform
        cannot reserve.
    """
    fd = getattr(segment, "_fd", -1)
    if not hasattr(os, "posix_fallocate") or fd < 0:
        return True
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            return False
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    return True


class BlockSpec:
    """Where to find one block: segment name, shape and dtype (picklable, sent to workers)."""

    __slots__ = ("segment", "shape", "dtype")

    def __init__(self, segment, shape, dtype):
        self.segment = segment
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype).str

    def __getstate__(self):
        return (self.segment, self.shape, self.dtype)

    def __setstate__(self, state):
        self.segment, self.shape, self.dtype = state

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class SharedBlocks:
    """Owner of a run's shared segments and of every numpy view over them.

    Parameters
    ----------
    prefix : str
        Segment name prefix, from :func:`run_prefix` (must start with ``wasap_``).

    Examples
    --------
    >>> blocks = SharedBlocks.create(run_prefix(), {"w": ((4,), np.float32)})  # doctest: +SKIP
    >>> blocks["w"][:] = 1.0                                                    # doctest: +SKIP
    >>> blocks.close()                                                          # doctest: +SKIP
    """

    def __init__(self, prefix, owner):
        if not prefix.startswith(PREFIX_ROOT):
            raise ValueError(f"segment prefix must start with {PREFIX_ROOT!r}, got {prefix!r}.")
        self.prefix = prefix
        self.owner = owner
        self.specs = {}
        self._segments = {}
        self._views = {}
        self._closed = False
        self.swept = []

    @classmethod
    def create(cls, prefix, layout):
        """Allocate zero-filled blocks, each reserved in full; first sweep the segments of dead runs.

        Parameters
        ----------
        prefix : str
        layout : dict of name -> (shape, dtype)

        Returns
        -------
        SharedBlocks
            Its ``swept`` attribute lists the dead runs' segments removed (:func:`sweep_stale_segments`).

        Raises
        ------
        SharedMemoryFull
            When /dev/shm is too small: before allocating anything, or when reserving a block (nothing
            of the run is left behind then).
        """
        blocks = cls(prefix, owner=True)
        # Segments are page-rounded; a zero-size segment is not allowed.
        total = sum(max(1, BlockSpec("", s, d).nbytes) + 4096 for s, d in layout.values())
        try:
            with _creation_lock():
                blocks.swept = sweep_stale_segments()
                check_free_space(total)
                for name, (shape, dtype) in layout.items():
                    spec = BlockSpec(prefix + name, shape, dtype)
                    segment = shared_memory.SharedMemory(name=spec.segment, create=True, size=max(1, spec.nbytes))
                    blocks._add(name, spec, segment)
                    # A new segment reads as zeros: reserving it is all it needs.
                    if not _reserve(segment, max(1, spec.nbytes)):
                        raise _full(f"could not reserve the {_mib(total)} of shared memory it needs in {SHM_DIR} "
                                    "(something else took space after the run checked)")
        except BaseException:
            blocks.close()
            raise
        return blocks

    @classmethod
    def attach(cls, prefix, specs):
        """Open blocks another process created (closing them later never unlinks)."""
        blocks = cls(prefix, owner=False)
        try:
            for name, spec in specs.items():
                blocks._add(name, spec, shared_memory.SharedMemory(name=spec.segment))
        except BaseException:
            blocks.close()
            raise
        return blocks

    def _add(self, name, spec, segment):
        self.specs[name] = spec
        self._segments[name] = segment
        _hold(segment)
        self._views[name] = np.ndarray(spec.shape, dtype=np.dtype(spec.dtype), buffer=segment.buf)

    def __getitem__(self, name):
        if self._closed:
            raise RuntimeError("shared blocks are closed")
        return self._views[name]

    def __contains__(self, name):
        return name in self._views

    @property
    def nbytes(self):
        """Bytes of all blocks."""
        return sum(spec.nbytes for spec in self.specs.values())

    def close(self):
        """Drop the views, close every segment and (owner only) unlink it; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        # Views first: SharedMemory.close() refuses (BufferError) while a view exports its buffer,
        # and a view that outlived its segment would segfault when read.
        self._views.clear()
        for segment in self._segments.values():
            try:
                segment.close()
            except BufferError:
                # Someone kept a view of their own; the mapping goes when it is collected.
                pass
            if self.owner:
                try:
                    segment.unlink()
                except FileNotFoundError:
                    pass
        self._segments.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # Last resort only; the trainer closes explicitly on every exit path.
        try:
            self.close()
        except Exception:
            pass
