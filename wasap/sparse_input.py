"""The first layer when ``X`` is a scipy.sparse CSR matrix: its forward pass and its weight gradient.

A batch of a sparse ``X`` never becomes a dense ``(batch, n_features)`` (or
``(n_features, batch)``) block: the kernels read the batch's rows straight from
``X``'s CSR arrays (``x_indptr``, ``x_indices``, ``x_data``) and the batch's row
numbers ``rows``, so that time and memory follow the batch's nonzeros, not its
width.

The layer is wasap's usual CSR over ``(n_in, n_out)`` (``indptr``, ``indices``,
``data`` in row order, :class:`wasap.model.SparseLayer`), and its output keeps the
kernels' transposed layout ``(n_out, batch)`` (:mod:`wasap.kernels`), so the layers
above run unchanged.

- Forward (:func:`sparse_preactivation`): each nonzero ``x[b, f]`` adds
  ``x[b, f] * W[f, :]``, the weight row of feature ``f``, into sample ``b``'s
  pre-activation. One thread task takes whole samples, so no two tasks write the
  same value.
- Gradient (:func:`sparse_weight_gradient`): ``dL/dW[f, j] = sum_b x[b, f] delta[j, b]``
  needs, for each feature, the samples it is nonzero in: the batch is first
  transposed to feature-major order (:func:`batch_feature_major`, a small CSC of
  the batch), then each thread task takes whole features and writes only its own
  weight row's gradients.
- Step (:func:`sparse_weight_update`): the same gradient applied at once by the
  momentum SGD rule to every weight, without a gradient buffer (training steps the
  weights this way; gradients are handed out for micro-batches and parallel workers).

The activation, its derivative and dropout of the first layer's output are
:func:`wasap.kernels.activate_layer`, the same arithmetic and draws as the dense
:func:`wasap.kernels.forward_layer`, and the bias step :func:`wasap.kernels.bias_step`.

Every value is computed by one task in an order fixed by the data, so the results
are the same, bit for bit, whatever the thread count. Duplicate entries of a row
of ``X`` (a non-canonical CSR matrix) add up, as scipy reads them.

Requirements the kernels check (raising ``ValueError``): the rows of the batch lie
in ``X``, ``X``'s feature indices lie in ``[0, n_in)``, and the output buffers have
the shapes below. ``X``'s CSR arrays are otherwise trusted: a valid CSR
structure is checked once, where the data set is made.
"""

import numpy as np
from numba import njit, prange

from .kernels import MODE_ACCUMULATE, MODE_GRADIENT
from .optim import momentum_update

#: Samples accumulated together by one thread task of :func:`sparse_preactivation`: its output
#: is then stored as runs of this many consecutive batch entries of each neuron (a 64-byte cache
#: line of float32) instead of one value per neuron and sample.
_SAMPLE_BLOCK = 16

#: Weight rows stepped by one thread task of :func:`sparse_weight_update`: enough work per task
#: to hide the task's start, and many tasks for a layer of thousands of inputs.
_ROW_BLOCK = 256


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _check_batch(x_indptr, x_indices, x_data, rows, n_features):
    """Raise ``ValueError`` unless the batch's rows lie in ``X`` and their feature indices in ``[0, n_features)``.

    Returns the number of nonzeros in the batch (duplicated rows counted each time).
    """
    n_samples = x_indptr.shape[0] - 1
    if x_indptr[n_samples] > x_indices.shape[0] or x_indptr[n_samples] > x_data.shape[0]:
        raise ValueError("X's indptr points past its indices or data.")
    total = 0
    for b in range(rows.shape[0]):
        r = rows[b]
        if r < 0 or r >= n_samples:
            raise ValueError("a row of the batch is outside X.")
        for p in range(x_indptr[r], x_indptr[r + 1]):
            f = x_indices[p]
            if f < 0 or f >= n_features:
                raise ValueError("a feature index of X is outside the layer's inputs [0, n_in).")
        total += x_indptr[r + 1] - x_indptr[r]
    return total


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def batch_feature_major(x_indptr, x_indices, x_data, rows, n_features):
    """The batch's nonzeros grouped by feature: a CSC of the batch, without its empty columns.

    Sorting the batch's ``(feature, position)`` pairs costs ``O(m log m)`` for ``m``
    nonzeros in the batch and memory ``O(m)``; nothing of size ``n_features`` is made.

    Parameters
    ----------
    x_indptr : (n_samples + 1,) int32 or int64
        ``X``'s CSR row pointers.
    x_indices : (nnz_X,) int32 or int64
        ``X``'s feature index of each nonzero.
    x_data : (nnz_X,) float32
        ``X``'s values.
    rows : (batch,) int64
        The rows of ``X`` in the batch, in batch order (a row may repeat).
    n_features : int
        Width of ``X`` (the layer's ``n_in``); feature indices must lie in ``[0, n_features)``.

    Returns
    -------
    features : (n_present,) int64
        The distinct features nonzero somewhere in the batch, ascending.
    feature_indptr : (n_present + 1,) int64
        Entries ``feature_indptr[t]:feature_indptr[t + 1]`` of ``positions`` and ``values``
        belong to ``features[t]``.
    positions : (m,) int64
        Position ``b`` in the batch (``0 <= b < batch``) of each entry, ascending within a feature.
    values : (m,) float32
        ``X[rows[b], feature]`` of each entry.

    Raises
    ------
    ValueError
        When a row lies outside ``X`` or a feature index outside ``[0, n_features)``.
    """
    batch = rows.shape[0]
    total = _check_batch(x_indptr, x_indices, x_data, rows, n_features)
    # One key per entry, feature-major: sorting the keys sorts by feature, then by batch position.
    keys = np.empty(total, dtype=np.int64)
    unsorted_values = np.empty(total, dtype=np.float32)
    e = 0
    for b in range(batch):
        r = rows[b]
        for p in range(x_indptr[r], x_indptr[r + 1]):
            keys[e] = np.int64(x_indices[p]) * batch + b
            unsorted_values[e] = x_data[p]
            e += 1
    # Stable, so that duplicate entries of one row keep X's order.
    order = np.argsort(keys, kind="mergesort")
    positions = np.empty(total, dtype=np.int64)
    values = np.empty(total, dtype=np.float32)
    n_present = 0
    previous = np.int64(-1)
    for e in range(total):
        key = keys[order[e]]
        f = key // batch
        positions[e] = key - f * batch
        values[e] = unsorted_values[order[e]]
        if f != previous:
            n_present += 1
            previous = f
    features = np.empty(n_present, dtype=np.int64)
    feature_indptr = np.empty(n_present + 1, dtype=np.int64)
    t = 0
    previous = np.int64(-1)
    for e in range(total):
        f = keys[order[e]] // batch
        if f != previous:
            features[t] = f
            feature_indptr[t] = e
            t += 1
            previous = f
    feature_indptr[n_present] = total
    return features, feature_indptr, positions, values


@njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
def sparse_preactivation(x_indptr, x_indices, x_data, rows, indptr, indices, data, bias, z_out):
    """Pre-activation of the first layer for a sparse batch: ``z_out[:, b] = W^T x_b + bias``.

    Each sample's column is accumulated in a scratch row of ``n_out`` values (the
    bias, then ``x[b, f] * W[f, :]`` for the nonzeros ``f`` of its row of ``X``, in
    ``X``'s order); a thread task fills the rows of ``_SAMPLE_BLOCK`` consecutive
    samples, then stores them into ``z_out`` neuron by neuron. A sample's result does
    not depend on the batch around it or on the thread count. Beyond the output,
    memory is a scratch block of ``_SAMPLE_BLOCK * n_out`` float32 per running task.

    Parameters
    ----------
    x_indptr : (n_samples + 1,) int32 or int64
    x_indices : (nnz_X,) int32 or int64
    x_data : (nnz_X,) float32
        ``X``, CSR, of shape ``(n_samples, n_in)``.
    rows : (batch,) int64
        The rows of ``X`` in the batch, in batch order.
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
        Output neuron of each weight.
    data : (nnz,) float32
        The layer's weights in row order.
    bias : (n_out,) float32
    z_out : (n_out, batch) float32
        Written: the pre-activation, transposed (the kernels' layout).

    Raises
    ------
    ValueError
        When ``z_out`` is not ``(n_out, batch)``, a row lies outside ``X`` or a feature
        index outside ``[0, n_in)``.
    """
    n_out = bias.shape[0]
    batch = rows.shape[0]
    if z_out.shape[0] != n_out or z_out.shape[1] != batch:
        raise ValueError("z_out must have shape (n_out, batch).")
    _check_batch(x_indptr, x_indices, x_data, rows, indptr.shape[0] - 1)
    n_blocks = (batch + _SAMPLE_BLOCK - 1) // _SAMPLE_BLOCK
    for block in prange(n_blocks):
        first = block * _SAMPLE_BLOCK
        count = min(_SAMPLE_BLOCK, batch - first)
        acc = np.empty((count, n_out), dtype=np.float32)
        for s in range(count):
            z = acc[s]
            for j in range(n_out):
                z[j] = bias[j]
            r = rows[first + s]
            for p in range(x_indptr[r], x_indptr[r + 1]):
                x = x_data[p]
                f = x_indices[p]
                for k in range(indptr[f], indptr[f + 1]):
                    z[indices[k]] += x * data[k]
        for j in range(n_out):
            for s in range(count):
                z_out[j, first + s] = acc[s, j]


@njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
def sparse_weight_gradient(x_indptr, x_indices, x_data, rows, indptr, indices, delta, grad_out, mode=MODE_GRADIENT):
    """Gradient of the first layer's weights from a sparse batch: ``g[k] = sum_b x[b, f] delta[j, b]``.

    For weight ``k`` at ``(f, j)``. The batch is transposed to feature-major order
    (:func:`batch_feature_major`), then each thread task takes the weight row of one
    feature present in the batch; rows of features absent from the batch have a zero
    gradient. Deterministic whatever the thread count.

    Parameters
    ----------
    x_indptr : (n_samples + 1,) int32 or int64
    x_indices : (nnz_X,) int32 or int64
    x_data : (nnz_X,) float32
        ``X``, CSR, of shape ``(n_samples, n_in)``.
    rows : (batch,) int64
        The rows of ``X`` in the batch, in batch order.
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
        Output neuron of each weight.
    delta : (n_out, batch) float32
        dLoss/dz of the layer's output, transposed.
    grad_out : (nnz,) float32
        ``MODE_GRADIENT``: written in full (zeros in the rows of absent features);
        ``MODE_ACCUMULATE``: the gradient is added to it (only the rows of features
        present in the batch change).
    mode : int
        :data:`wasap.kernels.MODE_GRADIENT` (default) or :data:`wasap.kernels.MODE_ACCUMULATE`.

    Raises
    ------
    ValueError
        On another ``mode``, when ``delta`` is not ``(n_out, batch)`` for some ``n_out``,
        ``grad_out`` not ``(nnz,)``, a row lies outside ``X`` or a feature index outside
        ``[0, n_in)``.
    """
    if mode != MODE_GRADIENT and mode != MODE_ACCUMULATE:
        raise ValueError("mode must be MODE_GRADIENT or MODE_ACCUMULATE.")
    if delta.shape[1] != rows.shape[0]:
        raise ValueError("delta must have shape (n_out, batch).")
    if grad_out.shape[0] != indices.shape[0]:
        raise ValueError("grad_out must have shape (nnz,).")
    features, feature_indptr, positions, values = batch_feature_major(
        x_indptr, x_indices, x_data, rows, indptr.shape[0] - 1)
    if mode == MODE_GRADIENT:
        for k in prange(grad_out.shape[0]):
            grad_out[k] = 0.0
    for t in prange(features.shape[0]):
        f = features[t]
        start = feature_indptr[t]
        stop = feature_indptr[t + 1]
        for k in range(indptr[f], indptr[f + 1]):
            g = _entry_gradient(delta[indices[k]], positions, values, start, stop)
            if mode == MODE_ACCUMULATE:
                grad_out[k] += g
            else:
                grad_out[k] = g


@njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
def sparse_weight_update(x_indptr, x_indices, x_data, rows, indptr, indices, data, velocity, delta, lr, momentum,
                         weight_decay):
    """One momentum SGD step of the first layer's weights from a sparse batch, in place.

    Every weight takes :func:`wasap.optim.momentum_update` with the gradient of
    :func:`sparse_weight_gradient` (0 in the rows of features absent from the batch,
    where momentum and weight decay still move the weights), in one pass and without
    a gradient buffer. Each thread task takes a block of :data:`_ROW_BLOCK` weight rows.

    Parameters
    ----------
    x_indptr : (n_samples + 1,) int32 or int64
    x_indices : (nnz_X,) int32 or int64
    x_data : (nnz_X,) float32
        ``X``, CSR, of shape ``(n_samples, n_in)``.
    rows : (batch,) int64
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
    data, velocity : (nnz,) float32
        The weights and their momentum, updated in place.
    delta : (n_out, batch) float32
        dLoss/dz of the layer's output, transposed.
    lr, momentum, weight_decay : float

    Raises
    ------
    ValueError
        When ``delta`` is not ``(n_out, batch)``, ``velocity`` not of ``data``'s shape, a row
        lies outside ``X`` or a feature index outside ``[0, n_in)``.
    """
    if delta.shape[1] != rows.shape[0]:
        raise ValueError("delta must have shape (n_out, batch).")
    if velocity.shape[0] != data.shape[0] or data.shape[0] != indices.shape[0]:
        raise ValueError("data and velocity must have shape (nnz,).")
    features, feature_indptr, positions, values = batch_feature_major(
        x_indptr, x_indices, x_data, rows, indptr.shape[0] - 1)
    # float32 update arithmetic, as the dense kernels': float64 scalars would round differently.
    lr = np.float32(lr)
    momentum = np.float32(momentum)
    weight_decay = np.float32(weight_decay)
    n_in = indptr.shape[0] - 1
    zero = np.float32(0.0)
    for block in prange((n_in + _ROW_BLOCK - 1) // _ROW_BLOCK):
        first = block * _ROW_BLOCK
        last = min(first + _ROW_BLOCK, n_in)
        # Most rows belong to features absent from the batch: the weights between two present features are
        # one contiguous run of gradient 0, stepped by a loop the compiler vectorises.
        stepped = indptr[first]  # the weights before this one are done
        for t in range(np.searchsorted(features, first), np.searchsorted(features, last)):
            f = features[t]
            for k in range(stepped, indptr[f]):
                data[k], velocity[k] = momentum_update(data[k], zero, velocity[k], lr, momentum, weight_decay)
            start, stop = feature_indptr[t], feature_indptr[t + 1]
            for k in range(indptr[f], indptr[f + 1]):
                g = _entry_gradient(delta[indices[k]], positions, values, start, stop)
                data[k], velocity[k] = momentum_update(data[k], g, velocity[k], lr, momentum, weight_decay)
            stepped = indptr[f + 1]
        for k in range(stepped, indptr[last]):
            data[k], velocity[k] = momentum_update(data[k], zero, velocity[k], lr, momentum, weight_decay)


@njit(inline="always")
def _entry_gradient(delta_row, positions, values, start, stop):
    """``sum_e values[e] * delta_row[positions[e]]`` over one feature's entries ``start:stop`` of the batch."""
    g = np.float32(0.0)
    for e in range(start, stop):
        g += values[e] * delta_row[positions[e]]
    return g
