"""Batches in the kernels' layout: aligned ``(neurons, batch)`` buffers, and rows of ``X`` gathered into them.

The kernels (:mod:`wasap.kernels`) take a batch *transposed*, ``(n_features, batch)``
float32 and C-contiguous, and read whole rows of it as register blocks. This module
allocates such buffers with every row on a 64-byte boundary (:func:`aligned_empty`)
and copies the rows of a batch from a samples-by-features ``X`` into them
(:func:`gather_transposed`), by a numba kernel where numpy's copy would be slower.

A batch of a scipy.sparse CSR ``X`` is not copied at all: it is a :class:`SparseBatch`,
the batch's row numbers beside ``X``'s CSR arrays, which the first layer's sparse
kernels (:mod:`wasap.sparse_input`) read in place.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
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


class SparseBatch:
    """Rows of a scipy.sparse CSR ``X`` as a batch, without copying them: ``X``'s CSR arrays and the row numbers.

    Stands where a dense batch ``x_t`` of shape ``(n_features, batch)`` would: its
    :attr:`shape` is that block's, and :class:`wasap.model.SparseMLP`'s batch methods
    take either. Memory is the row numbers; the kernels read the rows' nonzeros from
    ``X``'s arrays (:mod:`wasap.sparse_input`).

    Parameters
    ----------
    indptr : (n_samples + 1,) int32 or int64
    indices : (nnz_X,) int32 or int64
        Of the same dtype as ``indptr``.
    data : (nnz_X,) float32
        ``X``'s CSR arrays, as :func:`wasap.data.validate_features` makes them.
    rows : (batch,) int64
        The rows of ``X`` in the batch, in batch order.
    n_features : int
        Width of ``X``.
    """

    __slots__ = ("indptr", "indices", "data", "rows", "n_features")

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, rows: np.ndarray,
                 n_features: int) -> None:
        self.indptr, self.indices, self.data = indptr, indices, data
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.n_features = int(n_features)

    @classmethod
    def of(cls, X, rows: np.ndarray | slice) -> SparseBatch:
        """The batch of rows ``rows`` (an int array, or a slice) of a CSR ``X``.

        Raises
        ------
        TypeError
            When ``X`` is not CSR with float32 values and int32 or int64 indices (what a
            :class:`~wasap.data.Dataset` or :func:`wasap.data.validate_features` makes of any scipy.sparse ``X``).
        """
        if X.format != "csr" or X.dtype != np.float32 or X.indices.dtype not in (np.int32, np.int64) \
                or X.indptr.dtype != X.indices.dtype:
            raise TypeError(f"a sparse batch reads a CSR matrix of float32 values with int32 or int64 indices, got "
                            f"{X.format} of {X.dtype} with {X.indices.dtype} indices; convert X with "
                            "wasap.data.validate_features(X) (a Dataset does it).")
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(X.shape[0]))
        return cls(X.indptr, X.indices, X.data, rows, X.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_features, batch)``: the shape of the dense batch it stands for."""
        return self.n_features, self.rows.shape[0]

    def part(self, start: int, stop: int) -> SparseBatch:
        """Batch positions ``start:stop`` as a batch of their own (a micro-batch)."""
        return SparseBatch(self.indptr, self.indices, self.data, self.rows[start:stop], self.n_features)

    def __repr__(self):
        return f"SparseBatch({self.rows.shape[0]} rows of {self.n_features} features)"


def gather_transposed(X, rows: np.ndarray | slice, out: np.ndarray | None = None) -> np.ndarray | SparseBatch:
    """Rows of ``X`` as a ``(n_features, len(rows))`` C-contiguous float32 block (the kernels' layout).

    With more than one kernel thread, or inputs of at least :data:`WIDE_INPUT` features,
    the copy is :func:`gather_rows_transposed`; else numpy's. A scipy.sparse CSR ``X``
    is not copied: its batch is a :class:`SparseBatch` (``out`` unused).

    Parameters
    ----------
    X : (n_samples, n_features) float32, or scipy.sparse CSR of float32
    rows : (batch,) int array, or slice
        The rows, in batch order; a slice when walking the rows in order (inference: no
        copy before the transpose on numpy's path).
    out : (n_features, batch) float32, C-contiguous, optional
        Written and returned when its shape fits; a new array otherwise.

    Returns
    -------
    (n_features, batch) float32, C-contiguous, or SparseBatch
    """
    if scipy.sparse.issparse(X):
        return SparseBatch.of(X, rows)
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
