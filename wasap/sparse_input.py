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
  momentum SGD rule to every weight, without a gradient buffer (gradients are handed
  out for micro-batches and parallel workers).
- Deferred step (:class:`DeferredDecay`, what the trainer uses): most weight rows belong
  to features absent from the batch, whose step (gradient 0) is the same linear map of
  ``(w, v)`` every time. Those steps are left pending and applied at once, as a power of
  that map, when the row's feature next occurs (:func:`catch_up_rows`) or every
  :data:`SETTLE_EVERY` steps (:func:`settle_rows`); the batch's own rows take the usual
  rule (:func:`step_present_rows`). A step then costs the batch's rows, not the layer.

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

#: Weight rows stepped by one thread task of :func:`sparse_weight_update` and :func:`settle_rows`:
#: enough work per task to hide the task's start, and many tasks for a layer of thousands of inputs.
_ROW_BLOCK = 256

#: Steps after which :class:`DeferredDecay` brings every row up to date: the pass over the whole
#: layer then costs a small share of the steps it stands for, and a pending row is at most this
#: many steps behind.
SETTLE_EVERY = 64


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


def decay_powers(lr, momentum, weight_decay, count):
    """The matrices of ``k`` momentum SGD steps at gradient 0, ``k = 0..count``.

    With ``g = 0`` the rule of :func:`wasap.optim.momentum_update` is linear in ``(w, v)``::

        v' = mu v - lr wd w
        w' = w + v' = (1 - lr wd) w + mu v

    so ``k`` such steps are the ``k``-th power of that 2 x 2 matrix, kept in float64.

    Parameters
    ----------
    lr, momentum, weight_decay : float
    count : int

    Returns
    -------
    (count + 1, 2, 2) float64
        ``powers[k] @ (w, v)`` is ``(w, v)`` after ``k`` steps at gradient 0.
    """
    decay = float(lr) * float(weight_decay)
    one_step = np.array([[1.0 - decay, float(momentum)], [-decay, float(momentum)]])
    powers = np.empty((count + 1, 2, 2))
    powers[0] = np.eye(2)
    for k in range(1, count + 1):
        powers[k] = one_step @ powers[k - 1]
    return powers


@njit(inline="always")
def _catch_up_row(f, indptr, data, velocity, pending_since, steps, powers):
    """Apply row ``f``'s ``steps - pending_since[f]`` pending steps at gradient 0, at once."""
    k = steps - pending_since[f]
    if k == 0:
        return
    p00, p01, p10, p11 = powers[k, 0, 0], powers[k, 0, 1], powers[k, 1, 0], powers[k, 1, 1]
    for i in range(indptr[f], indptr[f + 1]):
        w = np.float64(data[i])
        v = np.float64(velocity[i])
        data[i] = np.float32(p00 * w + p01 * v)
        velocity[i] = np.float32(p10 * w + p11 * v)
    pending_since[f] = steps


@njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
def catch_up_rows(features, indptr, data, velocity, pending_since, steps, powers):
    """Bring the weight rows of ``features`` up to step ``steps``: their pending steps at gradient 0.

    Parameters
    ----------
    features : (n_present,) int64
        Distinct input features (:func:`batch_feature_major`'s first result).
    indptr : (n_in + 1,) int64
    data, velocity : (nnz,) float32
        The layer's weights and momentum, updated in place.
    pending_since : (n_in,) int64
        The step each row is up to date with; set to ``steps`` for ``features``.
    steps : int
        Steps taken since the layer was last settled (``pending_since`` counts from there too).
    powers : (count + 1, 2, 2) float64
        :func:`decay_powers` for ``count >= steps``.
    """
    for t in prange(features.shape[0]):
        _catch_up_row(features[t], indptr, data, velocity, pending_since, steps, powers)


@njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
def settle_rows(indptr, data, velocity, pending_since, steps, powers):
    """:func:`catch_up_rows` for every row of the layer, by blocks of :data:`_ROW_BLOCK` rows."""
    n_in = indptr.shape[0] - 1
    for block in prange((n_in + _ROW_BLOCK - 1) // _ROW_BLOCK):
        for f in range(block * _ROW_BLOCK, min(block * _ROW_BLOCK + _ROW_BLOCK, n_in)):
            _catch_up_row(f, indptr, data, velocity, pending_since, steps, powers)


@njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
def step_present_rows(features, feature_indptr, positions, values, indptr, indices, data, velocity, delta, lr,
                      momentum, weight_decay, pending_since, steps):
    """Momentum SGD step ``steps`` of the weight rows of the batch's features, caught up before it.

    The rule and the gradient are :func:`sparse_weight_update`'s; the other rows are left
    as they are (their step is pending). Each thread task takes one feature's row.

    Parameters
    ----------
    features, feature_indptr, positions, values :
        The batch in feature-major order (:func:`batch_feature_major`).
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
    data, velocity : (nnz,) float32
        Updated in place in the rows of ``features``.
    delta : (n_out, batch) float32
        dLoss/dz of the layer's output, transposed.
    lr, momentum, weight_decay : float
    pending_since : (n_in,) int64
        Must be ``steps`` for ``features`` (:func:`catch_up_rows`); set to ``steps + 1`` for them.
    steps : int

    Raises
    ------
    ValueError
        When ``velocity`` is not of ``data``'s shape, or a row of ``features`` is not up to date.
    """
    if velocity.shape[0] != data.shape[0] or data.shape[0] != indices.shape[0]:
        raise ValueError("data and velocity must have shape (nnz,).")
    lr = np.float32(lr)
    momentum = np.float32(momentum)
    weight_decay = np.float32(weight_decay)
    for t in range(features.shape[0]):
        if pending_since[features[t]] != steps:
            raise ValueError("a row of the batch has pending steps: catch_up_rows must run first.")
    for t in prange(features.shape[0]):
        f = features[t]
        start, stop = feature_indptr[t], feature_indptr[t + 1]
        for k in range(indptr[f], indptr[f + 1]):
            g = _entry_gradient(delta[indices[k]], positions, values, start, stop)
            data[k], velocity[k] = momentum_update(data[k], g, velocity[k], lr, momentum, weight_decay)
        pending_since[f] = steps + 1


class DeferredDecay:
    """The first layer's steps at gradient 0, left pending in the rows of features a batch lacks.

    A training step with a sparse batch moves every weight of the first layer, but
    those of the features absent from the batch only by momentum and weight decay:
    the same linear map each time (:func:`decay_powers`). This keeps, per weight row,
    the step it is up to date with, and brings a row up to date when its feature
    occurs in a batch (before the forward pass reads it), and every row every
    ``every`` steps and whenever :meth:`settle` is called. Between those points the
    layer's arrays hold pending rows: whoever reads the weights must :meth:`settle`
    first (the trainer does at the end of an epoch, and checkpoints only where
    :attr:`settled`).

    The result equals the eager step (:func:`sparse_weight_update`) up to float32
    rounding: the pending steps are one float64 product instead of ``k`` float32 steps.
    It depends on where the layer was settled, never on the thread count.

    Parameters
    ----------
    layer : wasap.model.SparseLayer
        The first layer; its structure must not change until :meth:`settle`.
    every : int
        Steps between two settlements.
    """

    def __init__(self, layer, every: int = SETTLE_EVERY) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}.")
        self.layer = layer
        self.every = int(every)
        self.pending_since = np.zeros(layer.n_in, dtype=np.int64)
        self.steps = 0  # since the last settlement
        self._rule = None
        self._powers = None
        self._structure = None
        self._batch = None

    @property
    def settled(self) -> bool:
        """Whether every row is up to date (the layer's arrays are the trained weights)."""
        return self.steps == 0

    def begin_step(self, batch, lr: float, momentum: float, weight_decay: float) -> None:
        """Bring the rows of ``batch``'s features up to date, before the forward pass reads them.

        Parameters
        ----------
        batch : wasap.batches.SparseBatch
        lr, momentum, weight_decay : float
            The layer's rule for this step; another rule than the pending steps' settles first.
        """
        rule = (np.float32(lr), np.float32(momentum), np.float32(weight_decay))
        if rule != self._rule:
            self.settle()
            self._rule = rule
            self._powers = decay_powers(*rule, self.every)
        layer = self.layer
        if self.settled:
            self._structure = layer.indptr
        elif layer.indptr is not self._structure:
            raise RuntimeError("the first layer's structure changed with steps pending: settle() first.")
        feature_major = batch_feature_major(batch.indptr, batch.indices, batch.data, batch.rows, layer.n_in)
        self._batch = batch.rows.shape[0], feature_major
        catch_up_rows(feature_major[0], layer.indptr, layer.data, layer.velocity, self.pending_since, self.steps,
                      self._powers)

    def end_step(self, delta: np.ndarray, lr: float, momentum: float, weight_decay: float) -> None:
        """Step the batch's rows with its gradient (``delta``: ``(n_out, batch)`` float32); settle when due."""
        if self._batch is None:
            raise RuntimeError("end_step() without begin_step().")
        if (np.float32(lr), np.float32(momentum), np.float32(weight_decay)) != self._rule:
            raise ValueError("end_step() must take the rule begin_step() was given.")
        layer = self.layer
        batch_size, (features, feature_indptr, positions, values) = self._batch
        if delta.shape != (layer.n_out, batch_size):
            raise ValueError(f"delta must have shape (n_out, batch) = {(layer.n_out, batch_size)}, got {delta.shape}.")
        self._batch = None
        step_present_rows(features, feature_indptr, positions, values, layer.indptr, layer.indices, layer.data,
                          layer.velocity, delta, *self._rule, self.pending_since, self.steps)
        self.steps += 1
        if self.steps == self.every:
            self.settle()

    def settle(self) -> None:
        """Bring every row up to date."""
        if self.settled:
            return
        layer = self.layer
        if layer.indptr is not self._structure:
            raise RuntimeError("the first layer's structure changed with steps pending.")
        settle_rows(layer.indptr, layer.data, layer.velocity, self.pending_since, self.steps, self._powers)
        self.pending_since.fill(0)
        self.steps = 0
