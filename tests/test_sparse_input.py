"""The sparse-input kernels against dense numpy: the first layer's pre-activation, weight gradient and step from
a scipy.sparse batch, and the deferred steps against the eager one.

Every expected value is computed in float64 from dense copies (scipy's ``toarray``, a weight matrix built from an
explicit mask); nothing here calls a wasap helper to compute an expected value. float32 results are compared with
a relative tolerance of 1e-5 and an absolute one of 1e-6 times the sum of the magnitudes of the terms that make
each value (so a value that is an empty sum must be exactly zero). Index arrays come in two dtypes, int32 and
int64, both ``X``'s pointers and indices, so that numba compiles each kernel twice. The deferred steps are
compared with the eager step of every weight (the gradient kernel, then the rule), itself checked against dense
numpy first.
"""

import copy
import tracemalloc

import numba
import numpy as np
import pytest
import scipy.sparse

from wasap import kernels
from wasap.batches import SparseBatch
from wasap.optim import momentum_step
from wasap.sparse_input import (DeferredDecay, batch_feature_major, decay_powers, sparse_preactivation,
                                sparse_weight_gradient, step_present_rows)
from wasap.threads import get_threads, max_threads, set_threads

N_SAMPLES = 300
N_FEATURES = 60
N_OUT = 9
#: Samples of X with no nonzero, features X never has, features whose weight row is empty.
EMPTY_SAMPLES = (5, 17, 40)
ZERO_FEATURES = (3, 11)
FEATURES_WITHOUT_WEIGHTS = (4, 8, 50)


# -- data and layers from masks --------------------------------------------------------------------------------


class _Layer:
    """A CSR layer over ``(n_in, n_out)`` from a boolean mask, and its dense float64 copy."""

    def __init__(self, mask, rng):
        n_in, n_out = mask.shape
        dense = np.where(mask, rng.uniform(-1.0, 1.0, mask.shape), 0.0).astype(np.float32)
        dense[mask & (dense == 0)] = np.float32(0.5)  # a drawn exact zero would hide a position
        self.indptr = np.zeros(n_in + 1, dtype=np.int64)
        self.indptr[1:] = np.cumsum(mask.sum(axis=1))
        self.rows, self.cols = np.nonzero(mask)  # row-major order: the CSR order
        self.indices = self.cols.astype(np.int32)
        self.data = dense[self.rows, self.cols]
        self.bias = rng.uniform(-0.5, 0.5, n_out).astype(np.float32)
        self.dense = dense.astype(np.float64)
        self.n_out = n_out


def _layer(rng, n_in=N_FEATURES, n_out=N_OUT, density=0.3, empty_rows=FEATURES_WITHOUT_WEIGHTS):
    mask = rng.random((n_in, n_out)) < density
    mask[list(empty_rows)] = False
    return _Layer(mask, rng)


def _sparse_X(rng, n_samples=N_SAMPLES, n_features=N_FEATURES, density=0.15):
    dense = np.where(rng.random((n_samples, n_features)) < density,
                     rng.uniform(-2.0, 2.0, (n_samples, n_features)), 0.0).astype(np.float32)
    dense[[r for r in EMPTY_SAMPLES if r < n_samples]] = 0.0
    dense[:, [f for f in ZERO_FEATURES if f < n_features]] = 0.0
    return scipy.sparse.csr_matrix(dense)


def _arrays(X, index_dtype):
    """X's CSR arrays with the pointers and indices in ``index_dtype``."""
    return (np.ascontiguousarray(X.indptr, dtype=index_dtype), np.ascontiguousarray(X.indices, dtype=index_dtype),
            np.ascontiguousarray(X.data, dtype=np.float32))


def _batch_rows(rng, batch):
    """``batch`` distinct rows of X; from 7 samples on one of them is empty."""
    nonempty = np.setdiff1d(np.arange(N_SAMPLES), EMPTY_SAMPLES)
    if batch < 7:
        return rng.choice(nonempty, size=batch, replace=False).astype(np.int64)
    rows = rng.choice(nonempty, size=batch, replace=False).astype(np.int64)
    rows[batch // 2] = EMPTY_SAMPLES[0]
    return rows


# -- oracles ---------------------------------------------------------------------------------------------------


def _expected_preactivation(X, rows, layer):
    """``z (n_out, batch)`` in float64 and the sum of the magnitudes of its terms."""
    xb = X[rows].toarray().astype(np.float64)
    z = xb @ layer.dense + layer.bias.astype(np.float64)
    magnitude = np.abs(xb) @ np.abs(layer.dense) + np.abs(layer.bias.astype(np.float64))
    return z.T, magnitude.T


def _expected_gradient(X, rows, layer, delta):
    """``g (nnz,)`` in float64 at the layer's nonzeros, ``g[k] = sum_b x[b, f] delta[j, b]``, and magnitudes."""
    xb = X[rows].toarray().astype(np.float64)
    d = delta.astype(np.float64)
    full = xb.T @ d.T
    magnitude = np.abs(xb).T @ np.abs(d).T
    return full[layer.rows, layer.cols], magnitude[layer.rows, layer.cols]


def _assert_close(got, exact, magnitude):
    error = np.abs(got.astype(np.float64) - exact)
    bound = 1e-5 * np.abs(exact) + 1e-6 * magnitude
    worst = np.unravel_index(np.argmax(error - bound), error.shape) if error.size else ()
    assert np.all(error <= bound), f"at {worst}: got {got[worst]}, expected {exact[worst]} (bound {bound[worst]})"


def _case(seed, batch):
    """A random ``X``, layer, ``X``'s int64 arrays, ``batch`` rows and a ``(N_OUT, batch)`` delta."""
    rng = np.random.default_rng(seed)
    X = _sparse_X(rng)
    layer = _layer(rng)
    rows = _batch_rows(rng, batch)
    return rng, layer, _arrays(X, np.int64), rows, rng.standard_normal((N_OUT, batch)).astype(np.float32)


def _run(X_arrays, rows, layer, delta, mode=kernels.MODE_GRADIENT, grad=None):
    """Both kernels on one batch; returns ``(z, grad)``."""
    x_indptr, x_indices, x_data = X_arrays
    z = np.full((layer.n_out, rows.shape[0]), np.nan, dtype=np.float32)
    sparse_preactivation(x_indptr, x_indices, x_data, rows, layer.indptr, layer.indices, layer.data, layer.bias, z)
    if grad is None:
        grad = np.full(layer.data.shape[0], np.nan, dtype=np.float32)
    sparse_weight_gradient(x_indptr, x_indices, x_data, rows, layer.indptr, layer.indices, delta, grad, mode)
    return z, grad


# -- the kernels against dense numpy ---------------------------------------------------------------------------


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("batch", [1, 7, 128])
def test_preactivation_and_gradient_equal_dense_numpy(batch, index_dtype):
    rng = np.random.default_rng(batch)
    X = _sparse_X(rng)
    layer = _layer(rng)
    rows = _batch_rows(rng, batch)
    delta = rng.standard_normal((N_OUT, batch)).astype(np.float32)
    z, grad = _run(_arrays(X, index_dtype), rows, layer, delta)

    z_exact, z_magnitude = _expected_preactivation(X, rows, layer)
    _assert_close(z, z_exact, z_magnitude)
    g_exact, g_magnitude = _expected_gradient(X, rows, layer, delta)
    _assert_close(grad, g_exact, g_magnitude)

    present = np.unique(X[rows].indices)
    absent_rows = ~np.isin(layer.rows, present)
    assert np.all(grad[absent_rows] == 0.0)  # the rows of features absent from the batch are written, as zeros
    if batch >= 7:
        # The batch holds the cases it is meant to: an empty sample, features never present,
        # features present whose weight rows are empty, and features absent from the batch.
        assert X[rows].getnnz(axis=1).min() == 0
        assert not np.isin(ZERO_FEATURES, present).any()
        assert np.isin(FEATURES_WITHOUT_WEIGHTS, present).any()
        assert absent_rows.any()


def test_a_single_nonzero_in_the_whole_batch():
    rng = np.random.default_rng(11)
    layer = _layer(rng)
    f = 13
    assert layer.indptr[f + 1] > layer.indptr[f]
    dense = np.zeros((6, N_FEATURES), dtype=np.float32)
    dense[2, f] = np.float32(-1.75)
    X = scipy.sparse.csr_matrix(dense)
    rows = np.array([0, 1, 2, 3, 4, 5], dtype=np.int64)
    delta = rng.standard_normal((N_OUT, 6)).astype(np.float32)
    z, grad = _run(_arrays(X, np.int64), rows, layer, delta)

    z_exact, z_magnitude = _expected_preactivation(X, rows, layer)
    _assert_close(z, z_exact, z_magnitude)
    np.testing.assert_array_equal(np.delete(z, 2, axis=1), np.repeat(layer.bias[:, None], 5, axis=1))
    expected = np.zeros_like(grad)
    start, stop = layer.indptr[f], layer.indptr[f + 1]
    expected[start:stop] = np.float32(-1.75) * delta[layer.indices[start:stop], 2]  # one product, exact
    np.testing.assert_array_equal(grad, expected)


def test_a_batch_with_no_nonzero_gives_the_bias_and_a_zero_gradient():
    rng = np.random.default_rng(12)
    X = _sparse_X(rng)
    layer = _layer(rng)
    rows = np.array(EMPTY_SAMPLES, dtype=np.int64)
    delta = rng.standard_normal((N_OUT, rows.shape[0])).astype(np.float32)
    z, grad = _run(_arrays(X, np.int32), rows, layer, delta)
    np.testing.assert_array_equal(z, np.repeat(layer.bias[:, None], rows.shape[0], axis=1))
    np.testing.assert_array_equal(grad, np.zeros_like(grad))
    features, feature_indptr, positions, values = batch_feature_major(*_arrays(X, np.int32), rows, N_FEATURES)
    assert features.shape == (0,) and positions.shape == (0,) and values.shape == (0,)
    np.testing.assert_array_equal(feature_indptr, [0])


def test_a_sample_does_not_depend_on_the_batch_around_it():
    rng = np.random.default_rng(13)
    X = _sparse_X(rng)
    layer = _layer(rng)
    arrays = _arrays(X, np.int64)
    rows = _batch_rows(rng, 37)
    z_batch, _ = _run(arrays, rows, layer, np.zeros((N_OUT, 37), dtype=np.float32))
    for b in (0, 16, 18, 36):
        z_alone, _ = _run(arrays, rows[b:b + 1], layer, np.zeros((N_OUT, 1), dtype=np.float32))
        np.testing.assert_array_equal(z_alone[:, 0], z_batch[:, b])


def test_accumulate_mode_adds_the_gradient_to_grad_out():
    rng, layer, arrays, rows, delta = _case(14, 7)
    _, gradient = _run(arrays, rows, layer, delta)
    before = rng.standard_normal(layer.data.shape[0]).astype(np.float32)
    _, accumulated = _run(arrays, rows, layer, delta, mode=kernels.MODE_ACCUMULATE, grad=before.copy())
    np.testing.assert_array_equal(accumulated, before + gradient)


def test_the_gradient_mode_is_the_default():
    rng = np.random.default_rng(15)
    X = _sparse_X(rng)
    layer = _layer(rng)
    x_indptr, x_indices, x_data = _arrays(X, np.int64)
    rows = _batch_rows(rng, 7)
    delta = rng.standard_normal((N_OUT, 7)).astype(np.float32)
    _, explicit = _run((x_indptr, x_indices, x_data), rows, layer, delta)
    default = np.full_like(explicit, np.nan)
    sparse_weight_gradient(x_indptr, x_indices, x_data, rows, layer.indptr, layer.indices, delta, default)
    np.testing.assert_array_equal(default, explicit)


def test_gradient_equals_finite_differences_of_a_linear_loss():
    # L(W) = sum(c * z(W)), z the pre-activation: dL/dW[f, j] = sum_b x[b, f] c[j, b], the kernel's gradient
    # with delta = c. The reference is a central difference on each weight of L computed in float64.
    rng = np.random.default_rng(16)
    X = _sparse_X(rng, n_samples=20, n_features=12, density=0.4)
    layer = _layer(rng, n_in=12, n_out=5, density=0.5, empty_rows=(4,))
    rows = np.array([1, 5, 6, 9, 12, 17, 19], dtype=np.int64)  # sample 5 is empty
    c = rng.standard_normal((5, rows.shape[0])).astype(np.float32)
    z, grad = _run(_arrays(X, np.int64), rows, layer, c)

    xb = X[rows].toarray().astype(np.float64)
    c64 = c.astype(np.float64)
    bias64 = layer.bias.astype(np.float64)

    def loss(values):
        w = np.zeros((12, 5))
        w[layer.rows, layer.cols] = values
        return float(np.sum(c64 * (xb @ w + bias64).T))

    values = layer.data.astype(np.float64)
    h = 1e-3
    numeric = np.empty(values.shape[0])
    for k in range(values.shape[0]):
        up, down = values.copy(), values.copy()
        up[k] += h
        down[k] -= h
        numeric[k] = (loss(up) - loss(down)) / (2 * h)
    magnitude = (np.abs(xb).T @ np.abs(c64).T)[layer.rows, layer.cols]
    _assert_close(grad, numeric, magnitude)
    assert loss(values) == pytest.approx(float(np.sum(c64 * z)), rel=1e-5)


# -- the feature-major transpose ---------------------------------------------------------------------------------


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_batch_feature_major_is_the_csc_of_the_batch(index_dtype):
    rng = np.random.default_rng(17)
    X = _sparse_X(rng)
    rows = np.concatenate([_batch_rows(rng, 20), [7, 7]]).astype(np.int64)  # a row twice
    features, feature_indptr, positions, values = batch_feature_major(*_arrays(X, index_dtype), rows, N_FEATURES)
    csc = scipy.sparse.csc_matrix(X[rows])
    csc.sort_indices()
    counts = np.diff(csc.indptr)
    np.testing.assert_array_equal(features, np.flatnonzero(counts))
    np.testing.assert_array_equal(np.diff(feature_indptr), counts[counts > 0])
    assert feature_indptr[0] == 0 and feature_indptr[-1] == csc.nnz
    np.testing.assert_array_equal(positions, csc.indices)
    np.testing.assert_array_equal(values, csc.data)


def test_duplicate_entries_of_a_row_add_up_as_scipy_reads_them():
    rng = np.random.default_rng(18)
    layer = _layer(rng, n_in=6, n_out=4, density=0.6, empty_rows=())
    # Row 0 holds feature 2 twice (0.5 and 1.5) and feature 5 once: a non-canonical CSR matrix.
    x_indptr = np.array([0, 3, 4], dtype=np.int64)
    x_indices = np.array([2, 5, 2, 1], dtype=np.int64)
    x_data = np.array([0.5, -1.0, 1.5, 2.0], dtype=np.float32)
    X = scipy.sparse.csr_matrix((x_data, x_indices, x_indptr), shape=(2, 6))
    assert not X.has_canonical_format
    rows = np.array([0, 1], dtype=np.int64)
    delta = rng.standard_normal((4, 2)).astype(np.float32)
    z, grad = _run((x_indptr, x_indices, x_data), rows, layer, delta)
    _assert_close(z, *_expected_preactivation(X, rows, layer))
    _assert_close(grad, *_expected_gradient(X, rows, layer, delta))


def test_rows_and_features_outside_the_data_are_refused():
    rng = np.random.default_rng(19)
    X = _sparse_X(rng)
    x_indptr, x_indices, x_data = _arrays(X, np.int64)
    with pytest.raises(ValueError, match="row of the batch"):
        batch_feature_major(x_indptr, x_indices, x_data, np.array([0, N_SAMPLES], dtype=np.int64), N_FEATURES)
    top = int(X.indices.max())  # a layer of `top` inputs is one too narrow for the row holding it
    wide_row = int(np.searchsorted(X.indptr, np.flatnonzero(X.indices == top)[0], side="right") - 1)
    assert top in X[wide_row].indices
    with pytest.raises(ValueError, match="feature index"):
        batch_feature_major(x_indptr, x_indices, x_data, np.array([wide_row], dtype=np.int64), top)
    narrow = _layer(rng, n_in=top, empty_rows=())
    z = np.empty((N_OUT, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="feature index"):
        sparse_preactivation(x_indptr, x_indices, x_data, np.array([wide_row], dtype=np.int64), narrow.indptr,
                             narrow.indices, narrow.data, narrow.bias, z)


def test_buffer_shapes_and_the_mode_are_checked():
    rng = np.random.default_rng(20)
    X = _sparse_X(rng)
    layer = _layer(rng)
    x_indptr, x_indices, x_data = _arrays(X, np.int64)
    rows = _batch_rows(rng, 7)
    with pytest.raises(ValueError, match="z_out"):
        sparse_preactivation(x_indptr, x_indices, x_data, rows, layer.indptr, layer.indices, layer.data,
                             layer.bias, np.empty((N_OUT, 8), dtype=np.float32))
    grad = np.empty(layer.data.shape[0], dtype=np.float32)
    with pytest.raises(ValueError, match="delta"):
        sparse_weight_gradient(x_indptr, x_indices, x_data, rows, layer.indptr, layer.indices,
                               np.zeros((N_OUT, 6), dtype=np.float32), grad, kernels.MODE_GRADIENT)
    with pytest.raises(ValueError, match="grad_out"):
        sparse_weight_gradient(x_indptr, x_indices, x_data, rows, layer.indptr, layer.indices,
                               np.zeros((N_OUT, 7), dtype=np.float32), grad[1:], kernels.MODE_GRADIENT)
    with pytest.raises(ValueError, match="mode"):
        sparse_weight_gradient(x_indptr, x_indices, x_data, rows, layer.indptr, layer.indices,
                               np.zeros((N_OUT, 7), dtype=np.float32), grad, kernels.MODE_UPDATE)


# -- threads and memory ------------------------------------------------------------------------------------------


def _on_one_and_two_threads(run):
    """``{n: run()}`` with ``n`` = 1 and 2 kernel threads (skipped where two cannot run at once)."""
    if max_threads() < 2:
        pytest.skip(f"this process can run {max_threads()} kernel thread(s) at once")
    before = get_threads()
    try:
        results = {}
        for n in (1, 2):
            set_threads(n)
            results[n] = run()
    finally:
        set_threads(before)
    return results


def test_one_and_two_threads_give_identical_bits():
    _, layer, arrays, rows, delta = _case(21, 128)
    results = _on_one_and_two_threads(lambda: _run(arrays, rows, layer, delta))
    np.testing.assert_array_equal(results[1][0], results[2][0])
    np.testing.assert_array_equal(results[1][1], results[2][1])


@numba.njit
def _allocate_in_numba(n):
    values = np.ones(n, dtype=np.float32)
    values[0] = n
    return values.sum()


def test_a_million_features_take_memory_for_the_nonzeros_only():
    n_features, batch, per_sample, n_out = 1_000_000, 128, 100, 32  # 100 of 1,000,000: 0.01% nonzeros
    rng = np.random.default_rng(22)
    x_indptr = np.arange(batch + 1, dtype=np.int64) * per_sample
    x_indices = np.concatenate([np.sort(rng.choice(n_features, per_sample, replace=False))
                                for _ in range(batch)]).astype(np.int64)
    x_data = rng.uniform(-1.0, 1.0, batch * per_sample).astype(np.float32)
    rows = rng.permutation(batch).astype(np.int64)
    # One or two weights a feature: about as many weights as features.
    per_feature = rng.integers(1, 3, n_features)
    indptr = np.zeros(n_features + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(per_feature)
    indices = np.empty(indptr[-1], dtype=np.int32)
    indices[indptr[:-1]] = rng.integers(0, n_out // 2, n_features)
    second = indptr[:-1][per_feature == 2] + 1
    indices[second] = rng.integers(n_out // 2, n_out, second.shape[0])
    data = rng.uniform(-1.0, 1.0, indptr[-1]).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, n_out).astype(np.float32)
    delta = rng.standard_normal((n_out, batch)).astype(np.float32)
    z = np.empty((n_out, batch), dtype=np.float32)
    grad = np.empty(indptr[-1], dtype=np.float32)
    # Compiled before tracing (the same argument types), and the tracer seen to count numba's allocations.
    sparse_preactivation(x_indptr, x_indices, x_data, rows[:1], indptr, indices, data, bias, z[:, :1].copy())
    sparse_weight_gradient(x_indptr, x_indices, x_data, rows[:1], indptr, indices, delta[:, :1].copy(), grad,
                           kernels.MODE_GRADIENT)
    _allocate_in_numba(10)
    tracemalloc.start()
    try:
        _allocate_in_numba(1 << 22)
        assert tracemalloc.get_traced_memory()[1] >= 4 << 22, "tracemalloc does not see numba's allocations"
        tracemalloc.reset_peak()
        sparse_preactivation(x_indptr, x_indices, x_data, rows, indptr, indices, data, bias, z)
        sparse_weight_gradient(x_indptr, x_indices, x_data, rows, indptr, indices, delta, grad,
                               kernels.MODE_GRADIENT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    dense_batch = batch * n_features * np.dtype(np.float32).itemsize
    message = (f"peak traced memory of the two kernels: {peak:,} bytes; one dense ({batch}, {n_features:,}) "
               f"float32 batch: {dense_batch:,} bytes")
    print(message)
    assert peak < dense_batch / 20, message

    # And the results are right: against scipy on the batch restricted to the features it holds.
    X = scipy.sparse.csr_matrix((x_data, x_indices, x_indptr), shape=(batch, n_features))[rows]
    W = scipy.sparse.csr_matrix((data.astype(np.float64), indices, indptr), shape=(n_features, n_out))
    z_exact = (X.astype(np.float64) @ W).toarray().T + bias[:, None]
    z_magnitude = (abs(X.astype(np.float64)) @ abs(W)).toarray().T + np.abs(bias)[:, None]
    _assert_close(z, z_exact, z_magnitude)
    present = np.unique(X.indices)
    xb = X[:, present].toarray().astype(np.float64)
    weight_rows = np.repeat(np.arange(n_features), per_feature)
    slot = np.searchsorted(present, weight_rows)
    slot[slot == present.shape[0]] = 0
    held = present[slot] == weight_rows
    g_exact = np.zeros(grad.shape[0])
    g_magnitude = np.zeros(grad.shape[0])
    g_exact[held] = (xb.T @ delta.T.astype(np.float64))[slot[held], indices[held]]
    g_magnitude[held] = (np.abs(xb).T @ np.abs(delta.T.astype(np.float64)))[slot[held], indices[held]]
    _assert_close(grad, g_exact, g_magnitude)


# -- deferred steps: the eager momentum SGD step of every weight, pending where the gradient is 0 --------------


LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 1e-2


class _TrainableLayer(_Layer):
    """A :class:`_Layer` with the momentum and the sizes :class:`DeferredDecay` reads."""

    def __init__(self, mask, rng):
        super().__init__(mask, rng)
        self.n_in = mask.shape[0]
        self.velocity = rng.uniform(-0.1, 0.1, self.data.shape[0]).astype(np.float32)

    def copy(self):
        twin = copy.copy(self)
        twin.data, twin.velocity = self.data.copy(), self.velocity.copy()
        return twin


def _trainable_layer(rng):
    mask = rng.random((N_FEATURES, N_OUT)) < 0.3
    mask[list(FEATURES_WITHOUT_WEIGHTS)] = False
    return _TrainableLayer(mask, rng)


def _eager_step(X_arrays, rows, layer, delta, rule=(LR, MOMENTUM, WEIGHT_DECAY)):
    """The oracle: the batch's gradient at every weight (0 where its feature is absent), then the rule."""
    grad = np.empty(layer.data.shape[0], dtype=np.float32)
    sparse_weight_gradient(*X_arrays, rows, layer.indptr, layer.indices, delta, grad, kernels.MODE_GRADIENT)
    lr, momentum, weight_decay = rule
    momentum_step(layer.data, grad, layer.velocity, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _batches(rng, n_steps):
    """Batches of 1 to 40 rows, one of them with no nonzero at all."""
    batches = [_batch_rows(rng, int(rng.integers(1, 41))) for _ in range(n_steps)]
    batches[n_steps // 3] = np.array([EMPTY_SAMPLES[0], EMPTY_SAMPLES[1]], dtype=np.int64)
    return batches


def _deferred_run(X, layer, batches, deltas, every):
    """Steps through :class:`DeferredDecay`; returns the batches' rows as each forward pass read them."""
    deferred = DeferredDecay(layer, every=every)
    seen = []
    for step, (rows, delta) in enumerate(zip(batches, deltas)):
        batch = SparseBatch(*_arrays(X, np.int64), rows, N_FEATURES)
        deferred.begin_step(batch, LR, MOMENTUM, WEIGHT_DECAY)
        present = np.unique(X[rows].indices)
        seen.append(np.concatenate([layer.data[layer.indptr[f]:layer.indptr[f + 1]] for f in present] + [[]]))
        deferred.end_step(delta, LR, MOMENTUM, WEIGHT_DECAY)
        assert deferred.settled == ((step + 1) % every == 0)
    deferred.settle()
    assert deferred.settled
    return seen


def test_decay_powers_are_repeated_steps_at_gradient_zero():
    powers = decay_powers(LR, MOMENTUM, WEIGHT_DECAY, 30)
    assert powers.shape == (31, 2, 2)
    w, v = 0.7, -0.2
    for k in range(31):
        np.testing.assert_allclose(powers[k] @ [0.7, -0.2], [w, v], rtol=1e-12, atol=1e-15, err_msg=f"k={k}")
        v = MOMENTUM * v - LR * WEIGHT_DECAY * w
        w = w + v


@pytest.mark.parametrize("every", [1, 7, 1000])
def test_deferred_steps_equal_the_eager_step_of_every_weight(every):
    rng = np.random.default_rng(23)
    X = _sparse_X(rng)
    eager = _trainable_layer(rng)
    deferred = eager.copy()
    batches = _batches(rng, 50)
    deltas = [rng.standard_normal((N_OUT, rows.shape[0])).astype(np.float32) for rows in batches]
    arrays = _arrays(X, np.int64)
    expected_seen = []
    for rows, delta in zip(batches, deltas):
        present = np.unique(X[rows].indices)
        expected_seen.append(np.concatenate([eager.data[eager.indptr[f]:eager.indptr[f + 1]] for f in present] + [[]]))
        _eager_step(arrays, rows, eager, delta)
    seen = _deferred_run(X, deferred, batches, deltas, every)
    # Each forward pass read the weights of the eager run (its rows were brought up to date first) ...
    for step, (got, expected) in enumerate(zip(seen, expected_seen)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
    # ... and in the end every weight is where the eager run left it: the rows of features never in a
    # batch (ZERO_FEATURES) decayed 50 steps, the rows without weights stayed empty.
    np.testing.assert_allclose(deferred.data, eager.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(deferred.velocity, eager.velocity, rtol=1e-4, atol=1e-6)
    never = np.concatenate([np.arange(eager.indptr[f], eager.indptr[f + 1]) for f in ZERO_FEATURES])
    assert never.size and not np.allclose(eager.data[never], _trainable_layer(np.random.default_rng(23)).data[never])


def test_the_eager_step_is_the_rule_on_the_dense_gradient():
    """The oracle of the deferred steps against dense numpy: the rule on ``x^T delta^T`` at the nonzeros."""
    rng = np.random.default_rng(24)
    X = _sparse_X(rng)
    layer = _trainable_layer(rng)
    rows = _batch_rows(rng, 16)
    delta = rng.standard_normal((N_OUT, 16)).astype(np.float32)
    w, v = layer.data.astype(np.float64), layer.velocity.astype(np.float64)
    g, magnitude = _expected_gradient(X, rows, layer, delta)
    v_new = MOMENTUM * v - LR * (g + WEIGHT_DECAY * w)
    _eager_step(_arrays(X, np.int64), rows, layer, delta)
    _assert_close(layer.velocity, v_new, LR * magnitude + np.abs(v))
    _assert_close(layer.data, w + v_new, LR * magnitude + np.abs(v) + np.abs(w))


def test_deferred_steps_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(25)
    X = _sparse_X(rng)
    start = _trainable_layer(rng)
    batches = _batches(rng, 20)
    deltas = [rng.standard_normal((N_OUT, rows.shape[0])).astype(np.float32) for rows in batches]

    def train():
        layer = start.copy()
        _deferred_run(X, layer, batches, deltas, every=6)
        return layer

    layers = _on_one_and_two_threads(train)
    np.testing.assert_array_equal(layers[1].data, layers[2].data)
    np.testing.assert_array_equal(layers[1].velocity, layers[2].velocity)


def test_a_new_rule_settles_the_pending_steps_under_the_old_one():
    rng = np.random.default_rng(26)
    X = _sparse_X(rng)
    eager = _trainable_layer(rng)
    layer = eager.copy()
    arrays = _arrays(X, np.int64)
    deferred = DeferredDecay(layer, every=100)
    for step, rule in enumerate([(LR, MOMENTUM, WEIGHT_DECAY)] * 3 + [(LR / 2, MOMENTUM, WEIGHT_DECAY)] * 3):
        rows = _batch_rows(rng, 10)
        delta = rng.standard_normal((N_OUT, 10)).astype(np.float32)
        deferred.begin_step(SparseBatch(*arrays, rows, N_FEATURES), *rule)
        if step == 3:
            assert deferred.steps == 0  # the old rule's three steps were applied before the new one's
        deferred.end_step(delta, *rule)
        _eager_step(arrays, rows, eager, delta, rule)
    deferred.settle()
    np.testing.assert_allclose(layer.data, eager.data, rtol=1e-5, atol=1e-6)


def test_deferred_steps_refuse_what_would_lose_a_step():
    rng = np.random.default_rng(27)
    X = _sparse_X(rng)
    layer = _trainable_layer(rng)
    arrays = _arrays(X, np.int64)
    batch = SparseBatch(*arrays, _batch_rows(rng, 8), N_FEATURES)
    delta = np.zeros((N_OUT, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="every"):
        DeferredDecay(layer, every=0)
    deferred = DeferredDecay(layer)
    with pytest.raises(RuntimeError, match="begin_step"):
        deferred.end_step(delta, LR, MOMENTUM, WEIGHT_DECAY)
    deferred.begin_step(batch, LR, MOMENTUM, WEIGHT_DECAY)
    with pytest.raises(ValueError, match="rule"):
        deferred.end_step(delta, LR * 2, MOMENTUM, WEIGHT_DECAY)
    with pytest.raises(ValueError, match="delta"):
        deferred.end_step(delta[:, 1:], LR, MOMENTUM, WEIGHT_DECAY)
    deferred.end_step(delta, LR, MOMENTUM, WEIGHT_DECAY)
    # Rows of a batch stepped before they are caught up would skip their pending steps.
    features, feature_indptr, positions, values = batch_feature_major(*arrays, batch.rows, N_FEATURES)
    with pytest.raises(ValueError, match="pending"):
        step_present_rows(features, feature_indptr, positions, values, layer.indptr, layer.indices, layer.data,
                          layer.velocity, delta, LR, MOMENTUM, WEIGHT_DECAY, np.zeros(N_FEATURES, np.int64), 1)
    # A topology change with steps pending (evolution rebuilds indptr) is refused, not applied to other weights.
    layer.indptr = layer.indptr.copy()
    with pytest.raises(RuntimeError, match="structure"):
        deferred.begin_step(batch, LR, MOMENTUM, WEIGHT_DECAY)
    with pytest.raises(RuntimeError, match="structure"):
        deferred.settle()
