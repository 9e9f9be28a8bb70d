"""numba kernels of a sparse layer: forward, fused backward, topology bookkeeping.

Every kernel is a pure function over arrays. Activations and deltas are stored
*transposed*, shape ``(neurons, batch)``, so that the batch is contiguous and each
nonzero weight multiplies (forward), or is dotted with (gradient), a whole
contiguous vector that LLVM vectorises.

A layer ``W`` of shape ``(n_in, n_out)`` is held once, in row order (CSR:
``indptr``, ``indices``, ``data``), plus a column view (``col_indptr``,
``col_rows``, ``col_perm``) whose ``col_perm[k]`` indexes ``data``. The forward
pass walks columns (one output neuron per parallel task, so no two tasks write
the same row), the backward pass walks rows (one input neuron per task).

Activation codes (``act``) used by the kernels:

- ``ACT_PIECEWISE``: ``f(z) = z`` for ``z > 0`` and ``slope * z`` otherwise;
  identity (slope 1), ReLU (0), leaky ReLU and All-ReLU (+-alpha) are all this.
- ``ACT_SIGMOID``: ``f(z) = 1 / (1 + exp(-z))``.
- ``ACT_TANH``: ``f(z) = tanh(z)``.
"""

import os

import numba
import numpy as np
from numba import njit, prange

ACT_PIECEWISE = 0
ACT_SIGMOID = 1
ACT_TANH = 2

#: numba's threading layer is chosen once per process; "workqueue" needs no
#: OpenMP/TBB runtime and never oversubscribes when several worker processes
#: each run one thread.
_KERNEL_OPTIONS = dict(cache=True, nogil=True, fastmath=True, error_model="numpy")


def set_threads(n_threads):
    """Set how many threads the kernels of this process use.

    Parameters
    ----------
    n_threads : int or None
        Threads, 1 to ``numba.config.NUMBA_NUM_THREADS``. ``None`` means one
        thread per core this process may run on.

    Returns
    -------
    int
        The thread count now in force.
    """
    available = numba.config.NUMBA_NUM_THREADS
    if n_threads is None:
        n_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n_threads = int(n_threads)
    if n_threads < 1:
        raise ValueError(f"threads must be >= 1, got {n_threads}.")
    if n_threads > available:
        raise ValueError(
            f"threads={n_threads} exceeds the {available} threads numba was started with; "
            f"set the environment variable NUMBA_NUM_THREADS={n_threads} before importing wasap."
        )
    numba.set_num_threads(n_threads)
    return n_threads


def get_threads():
    """Return the number of threads the kernels of this process use."""
    return numba.get_num_threads()


#: Dropout draws have 16 bits: four draws per 64-bit hash keep the mask cheap
#: next to the layer's arithmetic; keep probabilities are exact to 1/65536.
DROPOUT_RESOLUTION = 1 << 16


@njit(inline="always")
def _hash64(seed, counter):
    """splitmix64 of ``seed + counter``: a counter-based generator, so the same
    (seed, counter) gives the same bits whatever the thread count, and no
    generator state is shared (numba's own generator is per thread and not
    numpy's, which would make dropout unrepeatable)."""
    x = np.uint64(seed) + np.uint64(counter) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(inline="always")
def _apply_dropout(row, deriv_row, need_deriv, neuron, keep_threshold, keep_scale, seed):
    """Inverted dropout of one neuron's batch vector (and its derivative)."""
    batch = row.shape[0]
    groups = (batch + 3) // 4
    for q in range(groups):
        bits = _hash64(seed, neuron * groups + q)
        for t in range(4):
            b = 4 * q + t
            if b < batch:
                draw = (bits >> np.uint64(16 * t)) & np.uint64(0xFFFF)
                factor = keep_scale if draw < np.uint64(keep_threshold) else np.float32(0.0)
                row[b] *= factor
                if need_deriv:
                    deriv_row[b] *= factor


@njit(parallel=True, **_KERNEL_OPTIONS)
def forward_layer(col_indptr, col_rows, col_perm, data, bias, a_prev, act, slope,
                  a_out, deriv_out, need_deriv, keep_threshold, keep_scale, dropout_seed):
    """Sparse forward pass of one layer with its activation and dropout.

    Computes ``z = W^T a_prev + bias`` column by column, then
    ``a_out = f(z) * mask * keep_scale`` and, when asked,
    ``deriv_out = f'(z) * mask * keep_scale`` (what the backward pass needs;
    storing it instead of ``z`` keeps the sign of ``z`` that All-ReLU's
    derivative depends on).

    Parameters
    ----------
    col_indptr : (n_out + 1,) int64
    col_rows : (nnz,) int32
        Input neuron of each nonzero, in column order.
    col_perm : (nnz,) int64
        Position in ``data`` of each nonzero, in column order.
    data : (nnz,) float32
        Weights in row order.
    bias : (n_out,) float32
    a_prev : (n_in, batch) float32
        Activations of the layer below, transposed.
    act : int
        Activation code (``ACT_*``).
    slope : float
        Negative-side slope for ``ACT_PIECEWISE``.
    a_out : (n_out, batch) float32
        Output, written.
    deriv_out : (n_out, batch) float32
        Written when ``need_deriv``.
    need_deriv : bool
    keep_threshold : int
        Dropout keeps a unit when a 16-bit draw is below this;
        ``DROPOUT_RESOLUTION`` keeps all (no dropout).
    keep_scale : float
        ``1 / keep_probability`` (inverted dropout), 1 without dropout.
    dropout_seed : int
        Seed of this layer and step.
    """
    n_out = bias.shape[0]
    batch = a_prev.shape[1]
    use_dropout = keep_threshold < DROPOUT_RESOLUTION
    for j in prange(n_out):
        out = a_out[j]
        b0 = bias[j]
        for b in range(batch):
            out[b] = b0
        start = col_indptr[j]
        stop = col_indptr[j + 1]
        k = start
        # Four nonzeros per sweep: four independent multiply-adds per element
        # hide the FMA latency and read ``out`` once for four inputs.
        while k + 3 < stop:
            w0 = data[col_perm[k]]
            w1 = data[col_perm[k + 1]]
            w2 = data[col_perm[k + 2]]
            w3 = data[col_perm[k + 3]]
            r0 = a_prev[col_rows[k]]
            r1 = a_prev[col_rows[k + 1]]
            r2 = a_prev[col_rows[k + 2]]
            r3 = a_prev[col_rows[k + 3]]
            for b in range(batch):
                out[b] += (w0 * r0[b] + w1 * r1[b]) + (w2 * r2[b] + w3 * r3[b])
            k += 4
        while k < stop:
            w0 = data[col_perm[k]]
            r0 = a_prev[col_rows[k]]
            for b in range(batch):
                out[b] += w0 * r0[b]
            k += 1
        if act == ACT_PIECEWISE:
            if need_deriv:
                d = deriv_out[j]
                for b in range(batch):
                    zb = out[b]
                    if zb > 0:
                        d[b] = 1.0
                    else:
                        d[b] = slope
                        out[b] = slope * zb
            else:
                for b in range(batch):
                    zb = out[b]
                    if zb <= 0:
                        out[b] = slope * zb
        elif act == ACT_SIGMOID:
            for b in range(batch):
                out[b] = 1.0 / (1.0 + np.exp(-out[b]))
            if need_deriv:
                d = deriv_out[j]
                for b in range(batch):
                    d[b] = out[b] * (1.0 - out[b])
        else:
            for b in range(batch):
                out[b] = np.tanh(out[b])
            if need_deriv:
                d = deriv_out[j]
                for b in range(batch):
                    d[b] = 1.0 - out[b] * out[b]
        if use_dropout:
            _apply_dropout(out, deriv_out[j] if need_deriv else out, need_deriv, j, keep_threshold,
                           np.float32(keep_scale), dropout_seed)


MODE_UPDATE = 0
MODE_GRADIENT = 1


@njit(parallel=True, **_KERNEL_OPTIONS)
def backward_layer(indptr, indices, data, velocity, a_prev, delta, deriv_prev, delta_prev,
                   need_delta_prev, mode, grad_out, lr, momentum, weight_decay):
    """Fused backward pass of one layer, one input neuron per parallel task.

    For each input neuron ``i`` one sweep over its nonzeros ``k`` (to ``j``):

    - sampled gradient ``g_k = sum_b a_prev[i, b] * delta[j, b]``;
    - ``delta_prev[i] = (sum_k w_k delta[j]) * deriv_prev[i]`` with the weights
      *before* this step's update, as backpropagation requires;
    - ``MODE_UPDATE``: momentum SGD in place, ``v = mu v - lr (g + wd w)``,
      ``w += v``; ``MODE_GRADIENT``: ``grad_out[k] = g`` (a parallel worker
      pushes gradients instead of updating).

    Parameters
    ----------
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
    data : (nnz,) float32
        Weights in row order, updated in place in ``MODE_UPDATE``.
    velocity : (nnz,) float32
        Momentum buffer aligned with ``data``; untouched in ``MODE_GRADIENT``.
    a_prev : (n_in, batch) float32
        Input activations of the layer (after dropout), transposed.
    delta : (n_out, batch) float32
        dLoss/dz of this layer's output.
    deriv_prev : (n_in, batch) float32
        ``f'(z_prev)`` times the dropout mask of the layer below.
    delta_prev : (n_in, batch) float32
        Written when ``need_delta_prev``: dLoss/dz of the layer below.
    need_delta_prev : bool
        False for the first layer (nothing below the input).
    mode : int
        ``MODE_UPDATE`` or ``MODE_GRADIENT``.
    grad_out : (nnz,) float32
        Written in ``MODE_GRADIENT``.
    lr, momentum, weight_decay : float
    """
    n_in = indptr.shape[0] - 1
    batch = a_prev.shape[1]
    update = mode == MODE_UPDATE
    for i in prange(n_in):
        x = a_prev[i]
        start = indptr[i]
        stop = indptr[i + 1]
        # The delta of the row below accumulates in place: its buffer may be
        # the one holding deriv_prev, which is applied once the sum is done.
        acc = delta_prev[i] if need_delta_prev else x
        dv = deriv_prev[i] if need_delta_prev else x
        scale = np.empty(batch, dtype=np.float32) if need_delta_prev else x
        if need_delta_prev:
            for b in range(batch):
                scale[b] = dv[b]
                acc[b] = 0.0
        k = start
        # Four nonzeros per sweep: x and acc are read once for four dot
        # products and four multiply-adds, and four independent sums hide
        # the FMA latency.
        while k + 3 < stop:
            d0 = delta[indices[k]]
            d1 = delta[indices[k + 1]]
            d2 = delta[indices[k + 2]]
            d3 = delta[indices[k + 3]]
            w0 = data[k]
            w1 = data[k + 1]
            w2 = data[k + 2]
            w3 = data[k + 3]
            s0 = np.float32(0.0)
            s1 = np.float32(0.0)
            s2 = np.float32(0.0)
            s3 = np.float32(0.0)
            if need_delta_prev:
                for b in range(batch):
                    xb = x[b]
                    s0 += xb * d0[b]
                    s1 += xb * d1[b]
                    s2 += xb * d2[b]
                    s3 += xb * d3[b]
                    acc[b] += (w0 * d0[b] + w1 * d1[b]) + (w2 * d2[b] + w3 * d3[b])
            else:
                for b in range(batch):
                    xb = x[b]
                    s0 += xb * d0[b]
                    s1 += xb * d1[b]
                    s2 += xb * d2[b]
                    s3 += xb * d3[b]
            _finish(k, s0, w0, data, velocity, grad_out, update, lr, momentum, weight_decay)
            _finish(k + 1, s1, w1, data, velocity, grad_out, update, lr, momentum, weight_decay)
            _finish(k + 2, s2, w2, data, velocity, grad_out, update, lr, momentum, weight_decay)
            _finish(k + 3, s3, w3, data, velocity, grad_out, update, lr, momentum, weight_decay)
            k += 4
        while k < stop:
            d0 = delta[indices[k]]
            w0 = data[k]
            s0 = np.float32(0.0)
            for b in range(batch):
                s0 += x[b] * d0[b]
            if need_delta_prev:
                for b in range(batch):
                    acc[b] += w0 * d0[b]
            _finish(k, s0, w0, data, velocity, grad_out, update, lr, momentum, weight_decay)
            k += 1
        if need_delta_prev:
            for b in range(batch):
                acc[b] *= scale[b]


@njit(inline="always")
def _finish(k, g, w, data, velocity, grad_out, update, lr, momentum, weight_decay):
    """Momentum SGD on one weight, or hand its gradient out (see backward_layer)."""
    if update:
        v = momentum * velocity[k] - lr * (g + weight_decay * w)
        velocity[k] = v
        data[k] = w + v
    else:
        grad_out[k] = g


@njit(**_KERNEL_OPTIONS)
def column_view(indptr, indices, n_out):
    """Counting-sort the row-ordered nonzeros by column, O(nnz + n).

    Parameters
    ----------
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
    n_out : int

    Returns
    -------
    col_indptr : (n_out + 1,) int64
    col_rows : (nnz,) int32
        Row of each nonzero in column order (rows ascending within a column).
    col_perm : (nnz,) int64
        Index into the row-ordered arrays of each nonzero in column order.
    """
    nnz = indices.shape[0]
    n_in = indptr.shape[0] - 1
    col_indptr = np.zeros(n_out + 1, dtype=np.int64)
    for k in range(nnz):
        col_indptr[indices[k] + 1] += 1
    for j in range(n_out):
        col_indptr[j + 1] += col_indptr[j]
    fill = col_indptr[:-1].copy()
    col_rows = np.empty(nnz, dtype=np.int32)
    col_perm = np.empty(nnz, dtype=np.int64)
    for i in range(n_in):
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            p = fill[j]
            col_rows[p] = i
            col_perm[p] = k
            fill[j] = p + 1
    return col_indptr, col_rows, col_perm


@njit(**_KERNEL_OPTIONS)
def merge_sorted_keys(old_keys, new_keys):
    """Merge two sorted, disjoint int64 key arrays in O(n).

    Parameters
    ----------
    old_keys : (n_old,) int64, sorted
    new_keys : (n_new,) int64, sorted

    Returns
    -------
    keys : (n_old + n_new,) int64, sorted
    source : (n_old + n_new,) int64
        ``source[p] = i`` when ``keys[p]`` is ``old_keys[i]``, and
        ``-(i + 1)`` when it is ``new_keys[i]``.
    """
    n_old = old_keys.shape[0]
    n_new = new_keys.shape[0]
    keys = np.empty(n_old + n_new, dtype=np.int64)
    source = np.empty(n_old + n_new, dtype=np.int64)
    i = 0
    j = 0
    p = 0
    while i < n_old and j < n_new:
        if old_keys[i] < new_keys[j]:
            keys[p] = old_keys[i]
            source[p] = i
            i += 1
        else:
            keys[p] = new_keys[j]
            source[p] = -(j + 1)
            j += 1
        p += 1
    while i < n_old:
        keys[p] = old_keys[i]
        source[p] = i
        i += 1
        p += 1
    while j < n_new:
        keys[p] = new_keys[j]
        source[p] = -(j + 1)
        j += 1
        p += 1
    return keys, source
