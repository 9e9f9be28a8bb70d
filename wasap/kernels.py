"""numba kernels of a sparse layer: the forward pass, the fused backward pass, the loss at the output.

Every kernel is a pure function over arrays. Activations and deltas are stored
*transposed*, shape ``(neurons, batch)``, so that the batch is contiguous and each
nonzero weight multiplies (forward), or is dotted with (gradient), a whole
contiguous vector (:mod:`wasap.batches` gathers a batch into that layout).

A layer ``W`` of shape ``(n_in, n_out)`` is held once, in row order (CSR:
``indptr``, ``indices``, ``data``), plus a column view (``col_indptr``,
``col_rows``, ``col_perm``, :func:`wasap.topology.column_view`) whose
``col_perm[k]`` indexes ``data``. The forward pass walks columns (one output
neuron per parallel task, so no two tasks write the same row), the backward pass
walks rows (one input neuron per task).

Speed. The hot loops use explicit SIMD vectors (:mod:`wasap.intrinsics`): a block
of up to 128 batch entries of one neuron is accumulated *in registers*, so each
nonzero costs one broadcast and a run of fused multiply-adds whose other operand
comes straight from the input row. The backward pass keeps the input row ``x`` and
the delta accumulator of the row below in registers for the whole sweep over a
row's nonzeros, and applies the momentum update (:func:`wasap.optim.momentum_update`)
to each weight as soon as its gradient is known. Activation, derivative and
counter-based dropout are applied to the register block before its single store.
What is left is bound by the bandwidth from L2 (each nonzero reads a 512-byte row
of the batch): rows must start on 64-byte boundaries, or every load straddles two
cache lines (:func:`wasap.batches.aligned_empty`).

Activation codes (``act``) used by the kernels:

- ``ACT_PIECEWISE``: ``f(z) = z`` for ``z > 0`` and ``slope * z`` otherwise;
  identity (slope 1), ReLU (0), leaky ReLU and All-ReLU (+-alpha) are all this.
- ``ACT_SIGMOID``: ``f(z) = 1 / (1 + exp(-z))``.
- ``ACT_TANH``: ``f(z) = tanh(z)`` (:func:`wasap.intrinsics.strict_tanh`: in registers, within 4e-7).
"""

import numpy as np
from numba import njit, prange

from .intrinsics import (DROPOUT_RESOLUTION, sfma, splitmix64, strict_tanh, strict_tanh_deriv, uget, vdot,
                         vdropout, vfma, vload, vmul, vpiecewise, vpiecewise_deriv, vprefetch_row, vsplat, vstore,
                         vzeros16, vzeros32, vzeros64, vzeros128)
from .optim import momentum_update

ACT_PIECEWISE = 0
ACT_SIGMOID = 1
ACT_TANH = 2

_KERNEL_OPTIONS = dict(cache=True, nogil=True, fastmath=True, error_model="numpy")


# -- forward ---------------------------------------------------------------------------------------

@njit(inline="always")
def _fwd_store(proto, j, c, z, act, slope, a_out, deriv_out, need_deriv, use_dropout, keep_threshold, keep_scale,
               seed, groups):
    """Activation, derivative and dropout of a register block of ``z``, then one store each."""
    if act == ACT_SIGMOID:
        vstore(a_out, j, c, z)  # finished by scalar code over the whole row
        return
    if act == ACT_PIECEWISE:
        out = vpiecewise(z, slope)
        d = vpiecewise_deriv(z, slope) if need_deriv else out
    else:
        out = strict_tanh(z)
        d = strict_tanh_deriv(out) if need_deriv else out
    if use_dropout:
        f = vdropout(proto, seed, j * groups + c // 4, keep_threshold, keep_scale)
        out = vmul(out, f)
        d = vmul(d, f)
    if need_deriv:
        vstore(deriv_out, j, c, d)
    vstore(a_out, j, c, out)


@njit(inline="always")
def _fwd_block1(proto, j, c, start, stop, col_rows, col_perm, data, b0, a_prev, act, slope, a_out, deriv_out,
                need_deriv, use_dropout, keep_threshold, keep_scale, seed, groups):
    """Batch entries ``c:c+n`` of output ``j`` in one register accumulator.

    Every batch entry gets the same sequence of fused multiply-adds (bias, then
    the nonzeros in column order) whatever its block, and the scalar tail does
    the same with :func:`sfma`: a sample's output does not depend on the batch
    size or its position (scikit-learn's invariance checks need this bitwise)."""
    acc = vsplat(proto, b0)
    for k in range(start, stop):
        acc = vfma(vsplat(proto, uget(data, uget(col_perm, k))), vload(a_prev, uget(col_rows, k), c, proto), acc)
    _fwd_store(proto, j, c, acc, act, slope, a_out, deriv_out, need_deriv, use_dropout, keep_threshold,
               keep_scale, seed, groups)



@njit(inline="always")
def _dropout_range(row, deriv_row, need_deriv, neuron, b_from, batch, groups, keep_threshold, keep_scale, seed):
    """Scalar inverted dropout of ``row[b_from:batch]`` (same draws as :func:`vdropout`)."""
    for b in range(b_from, batch):
        bits = splitmix64(seed, neuron * groups + b // 4)
        draw = (bits >> np.uint64(16 * (b % 4))) & np.uint64(0xFFFF)
        factor = keep_scale if draw < np.uint64(keep_threshold) else np.float32(0.0)
        row[b] *= factor
        if need_deriv:
            deriv_row[b] *= factor


@njit(inline="always")
def _activate_range(out, d, need_deriv, act, slope, neuron, b_from, batch, groups, use_dropout, keep_threshold,
                    keep_scale, seed):
    """Activation, derivative and dropout of one neuron's ``out[b_from:batch]``, pre-activations in place.

    ``d`` receives the derivative when ``need_deriv``. The scalar counterpart of
    :func:`_fwd_store`'s register blocks, with the same draws."""
    if act == ACT_PIECEWISE:
        for b in range(b_from, batch):
            zb = out[b]
            if zb > 0:
                if need_deriv:
                    d[b] = 1.0
            else:
                out[b] = slope * zb
                if need_deriv:
                    d[b] = slope
    elif act == ACT_TANH:
        for b in range(b_from, batch):
            t = strict_tanh(out[b])
            out[b] = t
            if need_deriv:
                d[b] = strict_tanh_deriv(t)
    else:
        for b in range(b_from, batch):
            out[b] = 1.0 / (1.0 + np.exp(-out[b]))
        if need_deriv:
            for b in range(b_from, batch):
                d[b] = out[b] * (1.0 - out[b])
    if use_dropout:
        _dropout_range(out, d, need_deriv, neuron, b_from, batch, groups, keep_threshold, keep_scale, seed)


@njit(parallel=True, **_KERNEL_OPTIONS)
def forward_layer(col_indptr, col_rows, col_perm, data, bias, a_prev, act, slope,
                  a_out, deriv_out, need_deriv, keep_threshold, keep_scale, dropout_seed):
    """Sparse forward pass of one layer with its activation and dropout.

    Computes ``z = W^T a_prev + bias`` column by column, then
    ``a_out = f(z) * mask * keep_scale`` and, when asked,
    ``deriv_out = f'(z) * mask * keep_scale`` (what the backward pass needs;
    storing it instead of ``z`` keeps the sign of ``z`` that All-ReLU's
    derivative depends on).

    The batch is cut into register blocks of 128, then 64, 32 and 16 entries;
    fewer than 16 left over go through scalar code. Any batch size works; the
    arrays must be C-contiguous (rows 64-byte aligned for full speed).

    Parameters
    ----------
    col_indptr : (n_out + 1,) int64
    col_rows : (nnz,) int32
        Input neuron of each nonzero, in column order.
    col_perm : (nnz,) int32 or int64
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
    groups = (batch + 3) // 4
    scale32 = np.float32(keep_scale)
    slope32 = np.float32(slope)
    p128 = vzeros128()
    p64 = vzeros64()
    p32 = vzeros32()
    p16 = vzeros16()
    if batch == 128 and act != ACT_SIGMOID:
        # The training batch: one register block per neuron and nothing else in
        # the loop (faster than the general blocking below, by tools/bench.py).
        for j in prange(n_out):
            _fwd_block1(p128, j, 0, col_indptr[j], col_indptr[j + 1], col_rows, col_perm, data, bias[j], a_prev,
                        act, slope32, a_out, deriv_out, need_deriv, use_dropout, keep_threshold, scale32,
                        dropout_seed, groups)
        return
    for j in prange(n_out):
        start = col_indptr[j]
        stop = col_indptr[j + 1]
        b0 = bias[j]
        c = 0
        while c + 128 <= batch:
            _fwd_block1(p128, j, c, start, stop, col_rows, col_perm, data, b0, a_prev, act, slope32, a_out,
                        deriv_out, need_deriv, use_dropout, keep_threshold, scale32, dropout_seed, groups)
            c += 128
        if c + 64 <= batch:
            _fwd_block1(p64, j, c, start, stop, col_rows, col_perm, data, b0, a_prev, act, slope32, a_out,
                        deriv_out, need_deriv, use_dropout, keep_threshold, scale32, dropout_seed, groups)
            c += 64
        if c + 32 <= batch:
            _fwd_block1(p32, j, c, start, stop, col_rows, col_perm, data, b0, a_prev, act, slope32, a_out,
                        deriv_out, need_deriv, use_dropout, keep_threshold, scale32, dropout_seed, groups)
            c += 32
        if c + 16 <= batch:
            _fwd_block1(p16, j, c, start, stop, col_rows, col_perm, data, b0, a_prev, act, slope32, a_out,
                        deriv_out, need_deriv, use_dropout, keep_threshold, scale32, dropout_seed, groups)
            c += 16
        out = a_out[j]
        d = deriv_out[j] if need_deriv else out
        if c < batch:
            # Scalar tail of the batch (fewer than 16 entries).
            for b in range(c, batch):
                out[b] = b0
            for k in range(start, stop):
                w = data[col_perm[k]]
                r = a_prev[col_rows[k]]
                for b in range(c, batch):
                    out[b] = sfma(w, r[b], out[b])
            if act != ACT_SIGMOID:
                _activate_range(out, d, need_deriv, act, slope32, j, c, batch, groups, use_dropout, keep_threshold,
                                scale32, dropout_seed)
        if act == ACT_SIGMOID:
            # The register blocks stored z: sigmoid is finished over the whole row here.
            _activate_range(out, d, need_deriv, act, slope32, j, 0, batch, groups, use_dropout, keep_threshold,
                            scale32, dropout_seed)


@njit(parallel=True, **_KERNEL_OPTIONS)
def activate_layer(a_out, act, slope, deriv_out, need_deriv, keep_threshold, keep_scale, dropout_seed):
    """The activation, derivative and dropout of :func:`forward_layer`, on pre-activations already computed.

    For a layer whose ``z = W^T x + bias`` came from elsewhere (the first layer of a
    sparse batch, :func:`wasap.sparse_input.sparse_preactivation`): ``a_out`` holds
    ``z`` and becomes ``f(z) * mask * keep_scale``, and ``deriv_out`` receives
    ``f'(z) * mask * keep_scale``, with the dropout draws :func:`forward_layer` would
    make for the same neuron, batch position, batch size and seed.

    Parameters
    ----------
    a_out : (n_out, batch) float32
        Pre-activations in, activations out (in place).
    act : int
        Activation code (``ACT_*``).
    slope : float
        Negative-side slope for ``ACT_PIECEWISE``.
    deriv_out : (n_out, batch) float32
        Written when ``need_deriv``.
    need_deriv : bool
    keep_threshold : int
        As in :func:`forward_layer`; ``DROPOUT_RESOLUTION`` keeps all.
    keep_scale : float
    dropout_seed : int
    """
    n_out = a_out.shape[0]
    batch = a_out.shape[1]
    if need_deriv and (deriv_out.shape[0] != n_out or deriv_out.shape[1] != batch):
        raise ValueError("deriv_out must have the shape of a_out, (n_out, batch).")
    use_dropout = keep_threshold < DROPOUT_RESOLUTION
    groups = (batch + 3) // 4
    scale32 = np.float32(keep_scale)
    slope32 = np.float32(slope)
    for j in prange(n_out):
        out = a_out[j]
        _activate_range(out, deriv_out[j] if need_deriv else out, need_deriv, act, slope32, j, 0, batch, groups,
                        use_dropout, keep_threshold, scale32, dropout_seed)


# -- backward --------------------------------------------------------------------------------------

MODE_UPDATE = 0
MODE_GRADIENT = 1
#: Add the gradient to ``grad_out`` (micro-batches of one batch accumulate).
MODE_ACCUMULATE = 2

#: The backward pass prefetches the delta row this many nonzeros ahead.
_PREFETCH_AHEAD = 2


@njit(inline="always")
def _finish(k, g, w, data, velocity, grad_out, mode, lr, momentum, weight_decay):
    """Momentum SGD on one weight, or hand its gradient out (see backward_layer)."""
    if mode == MODE_UPDATE:
        w_new, v_new = momentum_update(w, g, velocity[k], lr, momentum, weight_decay)
        # Momentum first, then the weight: the order of stores the loop was tuned with.
        velocity[k] = v_new
        data[k] = w_new
    elif mode == MODE_ACCUMULATE:
        grad_out[k] += g
    else:
        grad_out[k] = g


@njit(inline="always")
def _bwd_row(proto, nbytes, i, start, stop, indices, data, velocity, a_prev, delta, deriv_prev, delta_prev,
             need_delta_prev, mode, grad_out, lr, momentum, weight_decay):
    """Row ``i`` with the whole batch in registers: ``x``, the accumulator of the
    delta below, and one delta row at a time (the row :data:`_PREFETCH_AHEAD` nonzeros
    ahead is prefetched: faster by tools/bench.py)."""
    x = vload(a_prev, i, 0, proto)
    if need_delta_prev:
        acc = vsplat(proto, 0.0)
        for k in range(start, stop):
            if k + _PREFETCH_AHEAD < stop:
                vprefetch_row(delta, uget(indices, k + _PREFETCH_AHEAD), nbytes)
            d = vload(delta, uget(indices, k), 0, proto)
            w = uget(data, k)
            acc = vfma(vsplat(proto, w), d, acc)
            _finish(k, vdot(x, d), w, data, velocity, grad_out, mode, lr, momentum, weight_decay)
        # deriv_prev may be the very buffer delta_prev: read before the store.
        vstore(delta_prev, i, 0, vmul(acc, vload(deriv_prev, i, 0, proto)))
    else:
        for k in range(start, stop):
            if k + _PREFETCH_AHEAD < stop:
                vprefetch_row(delta, uget(indices, k + _PREFETCH_AHEAD), nbytes)
            d = vload(delta, uget(indices, k), 0, proto)
            _finish(k, vdot(x, d), uget(data, k), data, velocity, grad_out, mode, lr, momentum, weight_decay)


@njit(parallel=True, **_KERNEL_OPTIONS)
def backward_layer(indptr, indices, data, velocity, a_prev, delta, deriv_prev, delta_prev,
                   need_delta_prev, mode, grad_out, lr, momentum, weight_decay,
                   bias=None, bias_velocity=None, bias_grad_out=None):
    """Fused backward pass of one layer, one input neuron per parallel task.

    For each input neuron ``i`` one sweep over its nonzeros ``k`` (to ``j``):

    - sampled gradient ``g_k = sum_b a_prev[i, b] * delta[j, b]``;
    - ``delta_prev[i] = (sum_k w_k delta[j]) * deriv_prev[i]`` with the weights
      *before* this step's update, as backpropagation requires;
    - ``MODE_UPDATE``: momentum SGD in place, ``v = mu v - lr (g + wd w)``,
      ``w += v`` (:func:`wasap.optim.momentum_update`); ``MODE_GRADIENT``:
      ``grad_out[k] = g`` (a parallel worker pushes gradients instead of
      updating); ``MODE_ACCUMULATE``: ``grad_out[k] += g`` (the micro-batches
      of one batch).

    Batches of 16, 32, 64 and 128 keep a whole row in registers; other sizes
    take a generic path.

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
        Written when ``need_delta_prev``: dLoss/dz of the layer below. May be
        the same buffer as ``deriv_prev``.
    need_delta_prev : bool
        False for the first layer (nothing below the input).
    mode : int
        ``MODE_UPDATE``, ``MODE_GRADIENT`` or ``MODE_ACCUMULATE``.
    grad_out : (nnz,) float32
        Written in ``MODE_GRADIENT``, added to in ``MODE_ACCUMULATE``.
    lr, momentum, weight_decay : float
    bias, bias_velocity : (n_out,) float32, optional
        When given, the bias step is fused too: its gradient is
        ``delta.sum(axis=1)``; ``MODE_UPDATE`` applies the same rule without
        weight decay, ``bv = mu bv - lr g; bias += bv``, ``MODE_GRADIENT`` writes
        the gradient to ``bias_grad_out`` and ``MODE_ACCUMULATE`` adds it there.
    bias_grad_out : (n_out,) float32, optional
        Required with ``bias`` in ``MODE_GRADIENT``.
    """
    n_in = indptr.shape[0] - 1
    batch = a_prev.shape[1]
    # float32 update arithmetic: float64 scalars would cost conversions on every nonzero
    lr = np.float32(lr)
    momentum = np.float32(momentum)
    weight_decay = np.float32(weight_decay)
    if bias is not None:
        _bias_step(delta, bias, bias_velocity, bias_grad_out, mode, lr, momentum)
    if batch == 128:
        p128 = vzeros128()
        for i in prange(n_in):
            _bwd_row(p128, 512, i, indptr[i], indptr[i + 1], indices, data, velocity, a_prev, delta, deriv_prev,
                     delta_prev, need_delta_prev, mode, grad_out, lr, momentum, weight_decay)
    elif batch == 64:
        p64 = vzeros64()
        for i in prange(n_in):
            _bwd_row(p64, 256, i, indptr[i], indptr[i + 1], indices, data, velocity, a_prev, delta, deriv_prev,
                     delta_prev, need_delta_prev, mode, grad_out, lr, momentum, weight_decay)
    elif batch == 32:
        p32 = vzeros32()
        for i in prange(n_in):
            _bwd_row(p32, 128, i, indptr[i], indptr[i + 1], indices, data, velocity, a_prev, delta, deriv_prev,
                     delta_prev, need_delta_prev, mode, grad_out, lr, momentum, weight_decay)
    elif batch == 16:
        p16 = vzeros16()
        for i in prange(n_in):
            _bwd_row(p16, 64, i, indptr[i], indptr[i + 1], indices, data, velocity, a_prev, delta, deriv_prev,
                     delta_prev, need_delta_prev, mode, grad_out, lr, momentum, weight_decay)
    else:
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
            for k in range(start, stop):
                d0 = delta[indices[k]]
                w0 = data[k]
                s0 = np.float32(0.0)
                for b in range(batch):
                    s0 += x[b] * d0[b]
                if need_delta_prev:
                    for b in range(batch):
                        acc[b] += w0 * d0[b]
                _finish(k, s0, w0, data, velocity, grad_out, mode, lr, momentum, weight_decay)
            if need_delta_prev:
                for b in range(batch):
                    acc[b] *= scale[b]


@njit(inline="always")
def _bias_step(delta, bias, bias_velocity, bias_grad_out, mode, lr, momentum):
    """The bias part of :func:`backward_layer`: gradient ``delta.sum(axis=1)``, then as ``mode`` says."""
    n_out = delta.shape[0]
    batch = delta.shape[1]
    for j in prange(n_out):
        row = delta[j]
        g = np.float32(0.0)
        for b in range(batch):
            g += row[b]
        if mode == MODE_UPDATE:
            # Biases take no weight decay.
            bias[j], bias_velocity[j] = momentum_update(bias[j], g, bias_velocity[j], lr, momentum, np.float32(0.0))
        elif mode == MODE_ACCUMULATE:
            bias_grad_out[j] += g
        else:
            bias_grad_out[j] = g


@njit(parallel=True, **_KERNEL_OPTIONS)
def bias_step(delta, bias, bias_velocity, bias_grad_out, mode, lr, momentum):
    """The bias step of :func:`backward_layer` on its own, for a layer whose weights are stepped elsewhere.

    Parameters
    ----------
    delta : (n_out, batch) float32
        dLoss/dz of the layer's output; the bias gradient is ``delta.sum(axis=1)``.
    bias, bias_velocity : (n_out,) float32
        Updated in place in ``MODE_UPDATE`` (no weight decay).
    bias_grad_out : (n_out,) float32
        Written in ``MODE_GRADIENT``, added to in ``MODE_ACCUMULATE``.
    mode : int
    lr, momentum : float
    """
    if bias.shape[0] != delta.shape[0] or (mode != MODE_UPDATE and bias_grad_out.shape[0] != delta.shape[0]):
        raise ValueError("bias (and bias_grad_out outside MODE_UPDATE) must have shape (n_out,), as delta's rows.")
    _bias_step(delta, bias, bias_velocity, bias_grad_out, mode, np.float32(lr), np.float32(momentum))


# -- the loss at the output ------------------------------------------------------------------------------


@njit(**_KERNEL_OPTIONS)
def softmax_cross_entropy_delta(z, target_index, delta_out):
    """Softmax cross-entropy of a batch, its delta and its correct count, in one pass.

    Parameters
    ----------
    z : (n_classes, batch) float32
        Logits.
    target_index : (batch,) int
    delta_out : (n_classes, batch) float32
        Written: ``(softmax(z) - onehot) / batch``.

    Returns
    -------
    loss : float
        Mean over the batch of ``-log(max(p_target, 1e-30))``.
    n_correct : int
        Samples whose first largest logit is the target.
    """
    n_classes = z.shape[0]
    batch = z.shape[1]
    inv_batch = np.float32(1.0 / batch)
    total = 0.0
    n_correct = 0
    for b in range(batch):
        best = z[0, b]
        arg = 0
        for c in range(1, n_classes):
            if z[c, b] > best:
                best = z[c, b]
                arg = c
        t = target_index[b]
        if arg == t:
            n_correct += 1
        s = np.float32(0.0)
        for c in range(n_classes):
            e = np.exp(z[c, b] - best)
            delta_out[c, b] = e
            s += e
        inv = np.float32(1.0) / s
        for c in range(n_classes):
            delta_out[c, b] *= inv
        total += np.log(max(np.float64(delta_out[t, b]), 1e-30))
        delta_out[t, b] -= np.float32(1.0)
        for c in range(n_classes):
            delta_out[c, b] *= inv_batch
    return -total / batch, n_correct

