"""The numba kernels against dense numpy written from the maths.

Every layer is built from an explicit boolean mask, so the dense oracle is the mask
times the values; nothing here calls a wasap helper to compute an expected value.
Shapes are small and argument types fixed so that numba compiles each kernel once.
"""

import numpy as np
import pytest

from wasap import kernels, topology
from wasap.model import SparseLayer, SparseMLP

FULL = kernels.DROPOUT_RESOLUTION


# -- layers from masks ---------------------------------------------------------------------------------


def _layer_from_mask(mask, rng):
    """SparseLayer whose nonzeros are exactly ``mask``'s True entries, random values and bias."""
    n_in, n_out = mask.shape
    dense = np.where(mask, rng.uniform(-1.0, 1.0, mask.shape), 0.0).astype(np.float32)
    # Values drawn as exact zeros would hide a position: never happens with uniform floats, but be sure.
    dense[mask & (dense == 0)] = np.float32(0.5)
    indptr = np.zeros(n_in + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(mask.sum(axis=1))
    rows, cols = np.nonzero(mask)  # row-major order: ascending columns within a row
    layer = SparseLayer(n_in, n_out, indptr, cols.astype(np.int32), dense[rows, cols],
                        bias=rng.uniform(-0.5, 0.5, n_out).astype(np.float32))
    return layer, dense


def _staircase_mask(rng):
    """Rows with 0..10 nonzeros and columns with 10..0 nonzeros (one empty row, one empty column), shuffled."""
    n = 11
    mask = np.arange(n)[None, :] < np.arange(n)[:, None]  # mask[i, j] = j < i
    return mask[rng.permutation(n)][:, rng.permutation(n)]


def _masks():
    rng = np.random.default_rng(123)
    staircase = _staircase_mask(rng)
    random = rng.random((13, 9)) < 0.35
    random[4] = False       # an empty row
    random[:, 6] = False    # an empty column
    dense = np.ones((7, 6), dtype=bool)
    nine_per_row = np.zeros((6, 12), dtype=bool)  # every row has 1..9 nonzeros
    for i, count in enumerate([1, 2, 5, 7, 8, 9]):
        nine_per_row[i, rng.choice(12, size=count, replace=False)] = True
    return {"staircase": staircase, "random": random, "dense": dense, "one-to-nine": nine_per_row}


MASKS = _masks()


def _acts():
    # (code, slope, f, f') written from the definitions, not from wasap.activations.
    cases = []
    for slope in (-0.5, 0.0, 0.3, 1.0):
        cases.append((f"piecewise{slope}", kernels.ACT_PIECEWISE, slope,
                      lambda z, s=slope: np.where(z > 0, z, s * z),
                      lambda z, s=slope: np.where(z > 0, 1.0, s)))
    cases.append(("sigmoid", kernels.ACT_SIGMOID, 0.0,
                  lambda z: 1.0 / (1.0 + np.exp(-z)),
                  lambda z: np.exp(-z) / (1.0 + np.exp(-z)) ** 2))
    cases.append(("tanh", kernels.ACT_TANH, 0.0,
                  np.tanh,
                  lambda z: 1.0 / np.cosh(z) ** 2))
    return cases


ACTS = _acts()


def _forward(layer, a_prev, act, slope, *, need_deriv=True, keep_threshold=FULL, keep_scale=1.0, seed=0):
    a_out = np.full((layer.n_out, a_prev.shape[1]), np.nan, dtype=np.float32)
    deriv = np.full((layer.n_out, a_prev.shape[1]), np.nan, dtype=np.float32)
    kernels.forward_layer(layer.col_indptr, layer.col_rows, layer.col_perm, layer.data, layer.bias, a_prev,
                          int(act), float(slope), a_out, deriv, bool(need_deriv), int(keep_threshold),
                          float(keep_scale), int(seed))
    return a_out, deriv


def _inputs(n, batch, rng):
    return np.ascontiguousarray(rng.normal(0.0, 1.0, (n, batch)).astype(np.float32))


# -- forward -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("batch", [1, 5, 8, 37, 128])
@pytest.mark.parametrize("name,act,slope,f,fprime", ACTS, ids=[a[0] for a in ACTS])
def test_forward_matches_dense(mask_name, batch, name, act, slope, f, fprime):
    rng = np.random.default_rng(7)
    layer, dense = _layer_from_mask(MASKS[mask_name], rng)
    a_prev = _inputs(layer.n_in, batch, rng)
    a_out, deriv = _forward(layer, a_prev, act, slope)
    z = dense.astype(np.float64).T @ a_prev.astype(np.float64) + layer.bias.astype(np.float64)[:, None]
    np.testing.assert_allclose(a_out, f(z), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(deriv, fprime(z), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,act,slope,f,fprime", ACTS, ids=[a[0] for a in ACTS])
def test_a_sample_gets_the_same_bits_in_any_batch_position(name, act, slope, f, fprime):
    # Register blocks of 128/64/32/16 entries and the scalar tail must compute the same function:
    # a sample alone (batch 1: scalar code) gives exactly what it gives inside a batch of 128 or 37.
    rng = np.random.default_rng(11)
    layer, _ = _layer_from_mask(MASKS["one-to-nine"], rng)
    a_prev = _inputs(layer.n_in, 128, rng)
    whole, whole_deriv = _forward(layer, a_prev, act, slope)
    part, part_deriv = _forward(layer, np.ascontiguousarray(a_prev[:, :37]), act, slope)
    np.testing.assert_array_equal(part, whole[:, :37])
    np.testing.assert_array_equal(part_deriv, whole_deriv[:, :37])
    for b in (0, 36, 100, 127):
        alone, alone_deriv = _forward(layer, np.ascontiguousarray(a_prev[:, b:b + 1]), act, slope)
        np.testing.assert_array_equal(alone[:, 0], whole[:, b])
        np.testing.assert_array_equal(alone_deriv[:, 0], whole_deriv[:, b])


@pytest.mark.parametrize("name,act,slope,f,fprime", ACTS, ids=[a[0] for a in ACTS])
@pytest.mark.parametrize("batch", [37, 128])
def test_dropout_scales_value_and_derivative_by_one_mask(name, act, slope, f, fprime, batch):
    # Register blocks and the scalar tail (batch 37 = 32 + 5) drop the same units from the output and
    # from the derivative, and scale the kept ones by 1 / keep.
    rng = np.random.default_rng(12)
    layer, _ = _layer_from_mask(MASKS["random"], rng)
    a_prev = _inputs(layer.n_in, batch, rng)
    plain, plain_deriv = _forward(layer, a_prev, act, slope)
    dropped, dropped_deriv = _forward(layer, a_prev, act, slope, keep_threshold=FULL // 2, keep_scale=2.0, seed=5)
    informative = plain_deriv != 0  # ReLU's derivative is 0 on its flat side, dropped or not
    kept = informative & (dropped_deriv != 0)
    assert 0.3 < kept.sum() / informative.sum() < 0.7
    np.testing.assert_array_equal(dropped[informative & ~kept], 0.0)
    np.testing.assert_array_equal(dropped_deriv[~kept], 0.0)
    np.testing.assert_allclose(dropped[kept], 2.0 * plain[kept], rtol=1e-6)
    np.testing.assert_allclose(dropped_deriv[kept], 2.0 * plain_deriv[kept], rtol=1e-6)


def test_forward_empty_column_is_activation_of_bias():
    rng = np.random.default_rng(8)
    mask = MASKS["random"]
    layer, _ = _layer_from_mask(mask, rng)
    a_prev = _inputs(layer.n_in, 5, rng)
    a_out, deriv = _forward(layer, a_prev, kernels.ACT_PIECEWISE, -0.5)
    b = np.float64(layer.bias[6])
    expected = b if b > 0 else -0.5 * b
    np.testing.assert_allclose(a_out[6], np.full(5, expected), rtol=1e-6)
    np.testing.assert_array_equal(deriv[6], np.full(5, 1.0 if b > 0 else -0.5, dtype=np.float32))


def test_forward_without_deriv_leaves_deriv_untouched():
    rng = np.random.default_rng(9)
    layer, dense = _layer_from_mask(MASKS["staircase"], rng)
    a_prev = _inputs(layer.n_in, 5, rng)
    a_out, deriv = _forward(layer, a_prev, kernels.ACT_PIECEWISE, 0.3, need_deriv=False)
    z = dense.astype(np.float64).T @ a_prev + layer.bias[:, None]
    np.testing.assert_allclose(a_out, np.where(z > 0, z, 0.3 * z), rtol=1e-5, atol=1e-6)
    assert np.isnan(deriv).all()


# -- backward ----------------------------------------------------------------------------------------------


def _backward(layer, a_prev, delta, deriv_prev, delta_prev, need_delta_prev, mode, grad_out, lr, mu, wd):
    kernels.backward_layer(layer.indptr, layer.indices, layer.data, layer.velocity, a_prev, delta, deriv_prev,
                           delta_prev, bool(need_delta_prev), int(mode), grad_out, float(lr), float(mu), float(wd))


def _dense_backward(dense, a_prev, delta, deriv_prev):
    a64, d64, w64 = (x.astype(np.float64) for x in (a_prev, delta, dense))
    grad_dense = a64 @ d64.T                      # (n_in, n_out): sum_b a[i, b] delta[j, b]
    delta_prev = (w64 @ d64) * deriv_prev         # (n_in, batch)
    return grad_dense, delta_prev


def _at_nonzeros(layer, dense_matrix):
    rows = np.repeat(np.arange(layer.n_in), np.diff(layer.indptr))
    return dense_matrix[rows, layer.indices]


@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("batch", [1, 5, 8])
def test_backward_gradient_mode(mask_name, batch):
    rng = np.random.default_rng(11)
    layer, dense = _layer_from_mask(MASKS[mask_name], rng)
    layer.velocity[:] = rng.normal(size=layer.nnz).astype(np.float32)
    data_before, velocity_before = layer.data.copy(), layer.velocity.copy()
    a_prev = _inputs(layer.n_in, batch, rng)
    delta = _inputs(layer.n_out, batch, rng)
    deriv_prev = np.ascontiguousarray(rng.uniform(-1, 1, (layer.n_in, batch)).astype(np.float32))
    delta_prev = np.full((layer.n_in, batch), np.nan, dtype=np.float32)
    grad = np.full(layer.nnz, np.nan, dtype=np.float32)
    _backward(layer, a_prev, delta, deriv_prev.copy(), delta_prev, True, kernels.MODE_GRADIENT, grad, 0.1, 0.9, 0.01)
    grad_dense, expected_delta_prev = _dense_backward(dense, a_prev, delta, deriv_prev)
    np.testing.assert_allclose(grad, _at_nonzeros(layer, grad_dense), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(delta_prev, expected_delta_prev, rtol=1e-5, atol=1e-5)
    # Gradient mode changes neither weights nor momentum.
    np.testing.assert_array_equal(layer.data, data_before)
    np.testing.assert_array_equal(layer.velocity, velocity_before)


@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("batch", [1, 5])
def test_backward_update_mode(mask_name, batch):
    rng = np.random.default_rng(12)
    layer, dense = _layer_from_mask(MASKS[mask_name], rng)
    velocity = rng.normal(0, 0.1, layer.nnz).astype(np.float32)
    layer.velocity[:] = velocity
    w = layer.data.astype(np.float64).copy()
    a_prev = _inputs(layer.n_in, batch, rng)
    delta = _inputs(layer.n_out, batch, rng)
    deriv_prev = np.ascontiguousarray(rng.uniform(-1, 1, (layer.n_in, batch)).astype(np.float32))
    delta_prev = np.full((layer.n_in, batch), np.nan, dtype=np.float32)
    lr, mu, wd = 0.05, 0.9, 0.01
    _backward(layer, a_prev, delta, deriv_prev.copy(), delta_prev, True, kernels.MODE_UPDATE,
              np.empty(0, dtype=np.float32), lr, mu, wd)
    grad_dense, expected_delta_prev = _dense_backward(dense, a_prev, delta, deriv_prev)
    g = _at_nonzeros(layer, grad_dense)
    v = mu * velocity - lr * (g + wd * w)
    np.testing.assert_allclose(layer.velocity, v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.data, w + v, rtol=1e-5, atol=1e-6)
    # delta_prev uses the weights before the update (backpropagation's order).
    np.testing.assert_allclose(delta_prev, expected_delta_prev, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_name", sorted(MASKS))
def test_backward_aliased_delta_and_deriv(mask_name):
    """The model passes one buffer as deriv_prev (read) and delta_prev (written)."""
    rng = np.random.default_rng(13)
    layer, dense = _layer_from_mask(MASKS[mask_name], rng)
    batch = 5
    a_prev = _inputs(layer.n_in, batch, rng)
    delta = _inputs(layer.n_out, batch, rng)
    deriv_prev = np.ascontiguousarray(rng.uniform(-1, 1, (layer.n_in, batch)).astype(np.float32))
    buffer = deriv_prev.copy()
    grad = np.empty(layer.nnz, dtype=np.float32)
    _backward(layer, a_prev, delta, buffer, buffer, True, kernels.MODE_GRADIENT, grad, 0.0, 0.0, 0.0)
    grad_dense, expected_delta_prev = _dense_backward(dense, a_prev, delta, deriv_prev)
    np.testing.assert_allclose(buffer, expected_delta_prev, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, _at_nonzeros(layer, grad_dense), rtol=1e-5, atol=1e-5)


def test_backward_first_layer_needs_no_delta_prev():
    rng = np.random.default_rng(14)
    layer, dense = _layer_from_mask(MASKS["staircase"], rng)
    a_prev = _inputs(layer.n_in, 5, rng)
    a_copy = a_prev.copy()
    delta = _inputs(layer.n_out, 5, rng)
    empty = np.empty((0, 0), dtype=np.float32)
    grad = np.empty(layer.nnz, dtype=np.float32)
    _backward(layer, a_prev, delta, empty, empty, False, kernels.MODE_GRADIENT, grad, 0.0, 0.0, 0.0)
    grad_dense, _ = _dense_backward(dense, a_prev, delta, np.ones_like(a_prev))
    np.testing.assert_allclose(grad, _at_nonzeros(layer, grad_dense), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a_prev, a_copy)  # the input is not written


@pytest.mark.parametrize("batch", [5, 16, 128])
def test_fused_update_is_momentum_step_on_the_gradient_bit_for_bit(batch):
    """The backward kernel's update (weights and biases) and optim.momentum_step apply one rule."""
    from wasap.optim import momentum_step

    rng = np.random.default_rng(16)
    fused, _ = _layer_from_mask(MASKS["random"], rng)
    fused.velocity[:] = rng.normal(0, 0.1, fused.nnz).astype(np.float32)
    fused.bias_velocity[:] = rng.normal(0, 0.1, fused.n_out).astype(np.float32)
    apart = fused.copy()
    a_prev = _inputs(fused.n_in, batch, rng)
    delta = _inputs(fused.n_out, batch, rng)
    empty = np.empty((0, 0), dtype=np.float32)
    lr, mu, wd = 0.05, 0.9, 0.01
    kernels.backward_layer(fused.indptr, fused.indices, fused.data, fused.velocity, a_prev, delta, empty, empty,
                           False, kernels.MODE_UPDATE, np.empty(0, dtype=np.float32), lr, mu, wd, fused.bias,
                           fused.bias_velocity, np.empty(0, dtype=np.float32))
    grad = np.empty(apart.nnz, dtype=np.float32)
    bias_grad = np.empty(apart.n_out, dtype=np.float32)
    kernels.backward_layer(apart.indptr, apart.indices, apart.data, apart.velocity, a_prev, delta, empty, empty,
                           False, kernels.MODE_GRADIENT, grad, lr, mu, wd, apart.bias, apart.bias_velocity, bias_grad)
    momentum_step(apart.data, grad, apart.velocity, lr=lr, momentum=mu, weight_decay=wd)
    momentum_step(apart.bias, bias_grad, apart.bias_velocity, lr=lr, momentum=mu)
    for name in ("data", "velocity", "bias", "bias_velocity"):
        np.testing.assert_array_equal(getattr(fused, name), getattr(apart, name), err_msg=name)


# -- dropout -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_layer():
    rng = np.random.default_rng(15)
    layer, dense = _layer_from_mask(np.ones((3, 20000), dtype=bool), rng)
    a_prev = _inputs(3, 5, rng)
    return layer, a_prev


def test_dropout_keeps_fraction_and_scales(wide_layer):
    layer, a_prev = wide_layer
    keep = 0.7
    threshold = int(round(keep * FULL))
    plain, plain_deriv = _forward(layer, a_prev, kernels.ACT_SIGMOID, 0.0)  # sigmoid: never 0
    assert (plain > 0).all() and (plain_deriv > 0).all()
    dropped, dropped_deriv = _forward(layer, a_prev, kernels.ACT_SIGMOID, 0.0, keep_threshold=threshold,
                                      keep_scale=1.0 / keep, seed=42)
    kept = dropped != 0
    assert abs(kept.mean() - keep) < 0.01
    # Every unit and every batch column is dropped independently (no whole-neuron masks).
    assert 0 < kept.all(axis=1).sum() < kept.shape[0]
    np.testing.assert_allclose(dropped[kept], plain[kept] / keep, rtol=1e-6)
    np.testing.assert_array_equal(dropped_deriv != 0, kept)
    np.testing.assert_allclose(dropped_deriv[kept], plain_deriv[kept] / keep, rtol=1e-6)


def test_dropout_is_seeded(wide_layer):
    layer, a_prev = wide_layer
    threshold = int(round(0.7 * FULL))
    first, _ = _forward(layer, a_prev, kernels.ACT_SIGMOID, 0.0, keep_threshold=threshold, keep_scale=1 / 0.7,
                        seed=42)
    again, _ = _forward(layer, a_prev, kernels.ACT_SIGMOID, 0.0, keep_threshold=threshold, keep_scale=1 / 0.7,
                        seed=42)
    other, _ = _forward(layer, a_prev, kernels.ACT_SIGMOID, 0.0, keep_threshold=threshold, keep_scale=1 / 0.7,
                        seed=43)
    np.testing.assert_array_equal(first, again)
    assert ((first != 0) != (other != 0)).mean() > 0.2  # independent masks differ in ~42% of units


def test_dropout_without_deriv_same_mask(wide_layer):
    layer, a_prev = wide_layer
    threshold = int(round(0.7 * FULL))
    with_deriv, _ = _forward(layer, a_prev, kernels.ACT_SIGMOID, 0.0, keep_threshold=threshold,
                             keep_scale=1 / 0.7, seed=5)
    without, _ = _forward(layer, a_prev, kernels.ACT_SIGMOID, 0.0, need_deriv=False, keep_threshold=threshold,
                          keep_scale=1 / 0.7, seed=5)
    np.testing.assert_array_equal(with_deriv, without)


# -- the column view's positions ---------------------------------------------------------------------


def test_column_view_of_more_than_2_31_weights_takes_int64_positions_with_the_same_values():
    # 2**31 nonzeros do not fit this machine: fill the int64 variant directly and run the
    # forward pass on it, against the int32 view of the same layer.
    rng = np.random.default_rng(3)
    layer, _ = _layer_from_mask(MASKS["random"], rng)
    col_indptr = np.zeros(layer.n_out + 1, dtype=np.int64)
    col_rows = np.empty(layer.nnz, dtype=np.int32)
    col_perm = np.empty(layer.nnz, dtype=np.int64)
    topology._fill_column_view(layer.indptr, layer.indices, col_indptr, col_rows, col_perm)
    np.testing.assert_array_equal(col_indptr, layer.col_indptr)
    np.testing.assert_array_equal(col_rows, layer.col_rows)
    np.testing.assert_array_equal(col_perm, layer.col_perm)
    a_prev = _inputs(layer.n_in, 37, rng)
    expected, _ = _forward(layer, a_prev, kernels.ACT_PIECEWISE, 0.3)
    layer.col_perm = col_perm
    got, _ = _forward(layer, a_prev, kernels.ACT_PIECEWISE, 0.3)
    np.testing.assert_array_equal(got, expected)


# -- tanh ----------------------------------------------------------------------------------------------------


def test_tanh_is_within_4e_7_of_numpy_over_the_whole_float32_range():
    # The kernels compute tanh from multiply-adds (a libm call per element would be far slower): one network
    # 1-1-1 with unit weights returns tanh(x) for every x in the batch.
    x = np.concatenate([np.linspace(-12, 12, 48001), np.geomspace(1e-30, 1e-2, 500),
                        -np.geomspace(1e-30, 1e-2, 500), [0.0, 1e6, -1e6]]).astype(np.float32)
    model = SparseMLP.random([1, 1, 1], epsilon=1, activation="tanh", output_activation="identity", loss="mse",
                             warn=False)
    for layer in model.layers:
        layer.data[:] = 1.0
        layer.bias[:] = 0.0
    got = model.predict_output(x[:, None])[:, 0]
    exact = np.tanh(x.astype(np.float64))
    np.testing.assert_allclose(got, exact, rtol=4e-7, atol=4e-7)
    assert np.all(np.abs(got) <= 1.0)
