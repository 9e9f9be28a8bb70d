"""Batches in the kernels' layout: aligned ``(neurons, batch)`` buffers, and rows of ``X`` gathered into them.

The kernels (:mod:`wasap.kernels`) take a batch *transposed*, ``(n_features, batch)``
float32 and C-contiguous, and read whole rows of it as register blocks. This module
allocates such buffers with every row on a 64-byte boundary (:func:`aligned_empty`)
and copies the rows of a batch from a samples-by-features ``X`` into them
(:func:`gather_transposed`), by a numba kernel where numpy's copy would be slower.
"""

import numpy as np
from numba import njit, prange
from numpy.typing import DTypeLike

from .threads import get_threads


def aligned_empty(shape: int | tuple[int, ...], dtype: DTypeLike = np.float32, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte boundary.

    The kernels read whole 512-bit rows of ``(neurons, batch)`` buffers; numpy's
    large allocations start 16 bytes past a page, which splits every such load
    across two cache lines. With a batch whose row (``batch * 4`` bytes) is a
    multiple of 64 every row is then aligned.

    Parameters
    ----------
    shape : int or tuple of int
    dtype : numpy dtype, default float32
    align : int
        Bytes; the address of the first element is a multiple of it.

    Returns
    -------
    ndarray of ``shape`` and ``dtype``
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in np.atleast_1d(shape)) if not isinstance(shape, int) else (int(shape),)
    count = int(np.prod(shape)) if shape else 1
    raw = np.empty(count * dtype.itemsize + align, dtype=np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape)


@njit(parallel=True, cache=True, nogil=True)
def gather_rows_transposed(X, rows, out):
    """``out[f, b] = X[rows[b], f]``: a batch's rows in the kernels' ``(features, batch)`` layout.

    16 samples at a time (one thread task) are copied 16 features by 16, so that both
    the 16 rows read and the 16 output rows written stay in L1. For wide inputs (tens
    of thousands of features) numpy's take-then-transpose moves every value through a
    cache-hostile strided copy, and this is faster on one thread as on two
    (``tools/scale.py --rows wide``, its gather column). On narrow inputs it wins only
    with more than one thread (numpy's copy is serial); on one thread numpy's copy was
    as fast or faster (``tools/thread_scaling.py``, its gather column), so one thread
    keeps numpy's there (:func:`gather_transposed`).

    Parameters
    ----------
    X : (n_samples, n_features) float32, C-contiguous
    rows : (batch,) int64
    out : (n_features, batch) float32, C-contiguous
    """
    n_features = X.shape[1]
    batch = rows.shape[0]
    for chunk in prange((batch + 15) // 16):
        first = chunk * 16
        last = min(first + 16, batch)
        for f0 in range(0, n_features, 16):
            f1 = min(f0 + 16, n_features)
            for b in range(first, last):
                row = rows[b]
                for f in range(f0, f1):
                    out[f, b] = X[row, f]


#: From this many features on, batches are gathered by :func:`gather_rows_transposed` even on
#: one thread (below, numpy's take + transpose can be as fast on one thread).
WIDE_INPUT = 4096


def gather_transposed(X: np.ndarray, rows: np.ndarray | slice, out: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``X`` as a ``(n_features, len(rows))`` C-contiguous float32 block (the kernels' layout).

    With more than one kernel thread, or inputs of at least :data:`WIDE_INPUT` features,
    the copy is :func:`gather_rows_transposed`; else numpy's.

    Parameters
    ----------
    X : (n_samples, n_features) float32
    rows : (batch,) int array, or slice
        The rows, in batch order; a slice when walking the rows in order (inference: no
        copy before the transpose on numpy's path).
    out : (n_features, batch) float32, C-contiguous, optional
        Written and returned when its shape fits; a new array otherwise.

    Returns
    -------
    (n_features, batch) float32, C-contiguous
    """
    use_kernel = X.shape[1] >= WIDE_INPUT or get_threads() > 1
    if use_kernel and X.dtype == np.float32 and X.flags.c_contiguous:
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(X.shape[0]))
        if out is None or out.shape != (X.shape[1], rows.shape[0]):
            out = aligned_empty((X.shape[1], rows.shape[0]))
        gather_rows_transposed(X, np.asarray(rows, dtype=np.int64), out)
        return out
    block = X[rows] if isinstance(rows, slice) else np.take(X, rows, axis=0)
    if out is None or out.shape != (X.shape[1], block.shape[0]):
        return np.ascontiguousarray(block.T, dtype=np.float32)
    out[...] = block.T
    return out
