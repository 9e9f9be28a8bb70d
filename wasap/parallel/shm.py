"""Named shared-memory blocks with one owner, and their hygiene.

A :class:`SharedBlocks` object is the only holder of the numpy views over its
``multiprocessing.shared_memory`` segments: it hands views out, and drops them
all before closing the segments (a view over a closed segment segfaults when
read). The creating process owns the segments and unlinks each exactly once;
processes that attach only close. Every segment of a run is named
``<prefix><name>`` with a per-run prefix that starts with ``wasap_``, so a
leaked segment can be found (and a test can check there is none).
"""

import os
import secrets
from multiprocessing import shared_memory

import numpy as np

#: Every segment wasap creates starts with this.
PREFIX_ROOT = "wasap_"

SHM_DIR = "/dev/shm"


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


def check_free_space(nbytes):
    """Raise :class:`SharedMemoryFull` when /dev/shm cannot hold ``nbytes`` more.

    Parameters
    ----------
    nbytes : int
        Bytes about to be allocated.
    """
    if not os.path.isdir(SHM_DIR):
        return
    stats = os.statvfs(SHM_DIR)
    free = stats.f_bavail * stats.f_frsize
    # Keep a margin: multiprocessing's own semaphores live there too.
    if nbytes + (1 << 20) > free:
        raise SharedMemoryFull(
            f"the parallel trainer needs {_mib(nbytes)} of shared memory but {SHM_DIR} has only {_mib(free)} "
            f"free; free some space (look for leftover '{PREFIX_ROOT}*' segments in {SHM_DIR}), enlarge it "
            "(mount -o remount,size=... /dev/shm, or --shm-size for a container), or train a smaller model."
        )


def _mib(nbytes):
    return f"{nbytes / (1 << 20):.1f} MiB"


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

    @classmethod
    def create(cls, prefix, layout):
        """Allocate zero-filled blocks.

        Parameters
        ----------
        prefix : str
        layout : dict of name -> (shape, dtype)

        Raises
        ------
        SharedMemoryFull
            Before allocating anything, when /dev/shm is too small.
        """
        blocks = cls(prefix, owner=True)
        # Segments are page-rounded; a zero-size segment is not allowed.
        total = sum(max(1, BlockSpec("", s, d).nbytes) + 4096 for s, d in layout.values())
        check_free_space(total)
        try:
            for name, (shape, dtype) in layout.items():
                spec = BlockSpec(prefix + name, shape, dtype)
                segment = shared_memory.SharedMemory(name=spec.segment, create=True, size=max(1, spec.nbytes))
                blocks._add(name, spec, segment)
                blocks._views[name][...] = 0
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
