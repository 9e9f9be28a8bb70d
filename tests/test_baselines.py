"""The benchmark's reference trainers (tools/baselines.py) compute the training step they claim to.

The two baselines must agree with each other (same loss, same updated weights) and the dense one's
gradient must agree with central finite differences of an independent float64 forward pass.
"""

import copy
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

from baselines import DenseMaskMLP, ScipySparseMLP, make_fashion_shape_data  # noqa: E402

SIZES = [20, 16, 12, 3]
ALPHA = 0.6
# All-ReLU's negative-side slopes per hidden layer, written out rather than taken from the code under test.
SLOPES = [-ALPHA, ALPHA]


def _data(n=8, seed=1):
    X, y = make_fashion_shape_data(n, SIZES[0], SIZES[-1], seed=seed)
    return X, y, np.eye(SIZES[-1], dtype=np.float32)[y]


def _pair(dropout=0.0):
    kwargs = dict(epsilon=3, alpha=ALPHA, dropout=dropout, seed=0)
    return DenseMaskMLP(SIZES, **kwargs), ScipySparseMLP(SIZES, **kwargs)


def _assert_same_network(dense, sparse):
    assert dense.nnz == sparse.nnz
    for w_dense, mask, w_sparse in zip(dense.weights, dense.masks, sparse.weights):
        np.testing.assert_array_equal(mask != 0, w_sparse.toarray() != 0)
        np.testing.assert_allclose(w_dense, w_sparse.toarray(), rtol=1e-4, atol=1e-7)
    for b_dense, b_sparse in zip(dense.biases, sparse.biases):
        np.testing.assert_allclose(b_dense, b_sparse, rtol=1e-4, atol=1e-7)


def test_same_seed_gives_same_topology_and_init():
    dense, sparse = _pair()
    for w_dense, w_sparse in zip(dense.weights, sparse.weights):
        np.testing.assert_array_equal(w_dense, w_sparse.toarray())
    # epsilon 3 caps the last layer (12 x 3) at density 1; the others are sparse.
    assert [int(m.sum()) for m in dense.masks][-1] == 12 * 3
    assert dense.nnz < sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:]))


def test_one_batch_same_loss_and_update():
    dense, sparse = _pair()
    X, _, Y = _data()
    loss_dense = dense.train_batch(X, Y)
    loss_sparse = sparse.train_batch(X, Y)
    assert loss_dense == pytest.approx(loss_sparse, rel=1e-5)
    _assert_same_network(dense, sparse)
    # The step moved every weight (else equality above would be vacuous).
    dense_init, _ = _pair()
    for w, w0, mask in zip(dense.weights, dense_init.weights, dense.masks):
        assert np.all((w != w0) == (mask != 0))


def test_epochs_with_dropout_and_shuffling_agree():
    # Both draw dropout masks and permutations from the same generator in the same order.
    dense, sparse = _pair(dropout=0.3)
    X, y, _ = _data(n=40)
    for _ in range(2):
        assert dense.train_epoch(X, y, batch_size=16) == pytest.approx(
            sparse.train_epoch(X, y, batch_size=16), rel=1e-5)
    _assert_same_network(dense, sparse)


@pytest.mark.parametrize("cls", [DenseMaskMLP, ScipySparseMLP])
def test_momentum_update_rule(cls):
    # v = mu * v - lr * (g + wd * w); w += v (biases: no decay), checked over two steps from v = 0.
    # A large weight decay makes its term visible above float32 rounding.
    lr, mu, wd = 0.05, 0.9, 0.1
    model = cls(SIZES, epsilon=3, alpha=ALPHA, dropout=0.0, lr=lr, momentum=mu, weight_decay=wd, seed=0)
    X, _, Y = _data()

    def params():
        weights = [w.toarray() if hasattr(w, "toarray") else w.copy() for w in model.weights]
        return weights, [b.copy() for b in model.biases]

    def dense_grads():
        _, weight_grads, bias_grads = model.loss_and_gradients(X, Y)
        if cls is ScipySparseMLP:
            weight_grads = [type(w)((g, w.indices, w.indptr), shape=w.shape).toarray()
                            for g, w in zip(weight_grads, model.weights)]
        return weight_grads, bias_grads

    velocities = [np.zeros(w.shape) for w in model.weights]
    bias_velocities = [np.zeros(b.shape) for b in model.biases]
    for _ in range(2):
        weights, biases = params()
        weight_grads, bias_grads = dense_grads()
        model.train_batch(X, Y)
        new_weights, new_biases = params()
        for w, g, v, w_new in zip(weights, weight_grads, velocities, new_weights):
            v[...] = mu * v - lr * (g + wd * w)
            np.testing.assert_allclose(w_new, w + v, rtol=1e-5, atol=1e-7)
        for b, g, v, b_new in zip(biases, bias_grads, bias_velocities, new_biases):
            v[...] = mu * v - lr * g
            np.testing.assert_allclose(b_new, b + v, rtol=1e-5, atol=1e-7)


def _loss64(weights, biases, X, Y, dropout_masks):
    """Independent float64 forward pass: All-ReLU hidden layers times the given (already scaled)
    dropout masks, softmax + mean cross-entropy."""
    a = X.astype(np.float64)
    for w, b, slope, mask in zip(weights[:-1], biases[:-1], SLOPES, dropout_masks):
        z = a @ w + b
        a = np.where(z > 0, z, slope * z) * mask
    z = a @ weights[-1] + biases[-1]
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(Y * log_p).sum() / X.shape[0]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dense_gradient_matches_finite_differences(dropout):
    dense, _ = _pair(dropout)
    X, _, Y = _data()
    # Nonzero biases, so their gradient check is not at a special point.
    dense.biases = [np.random.default_rng(2).uniform(-0.1, 0.1, b.shape).astype(np.float32)
                    for b in dense.biases]
    # Inverted dropout: the masks the model will draw, from a copy of its generator, one
    # (B, n_hidden) uniform draw per hidden layer in order; kept units are scaled by 1 / (1 - rate).
    rng = copy.deepcopy(dense.rng)
    keep = np.float32(1 - dropout)
    masks = [(rng.random((X.shape[0], n), dtype=np.float32) < keep) / float(keep) if dropout else 1.0
             for n in SIZES[1:-1]]
    loss, weight_grads, bias_grads = dense.loss_and_gradients(X, Y)
    weights = [w.astype(np.float64) for w in dense.weights]
    biases = [b.astype(np.float64) for b in dense.biases]
    assert loss == pytest.approx(_loss64(weights, biases, X, Y, masks), rel=1e-5)

    h = 1e-6

    def central_difference(param, index):
        saved = param[index]
        param[index] = saved + h
        up = _loss64(weights, biases, X, Y, masks)
        param[index] = saved - h
        down = _loss64(weights, biases, X, Y, masks)
        param[index] = saved
        return (up - down) / (2 * h)

    for w, mask, g in zip(weights, dense.masks, weight_grads):
        assert np.all(g[mask == 0] == 0)
        inside = list(zip(*np.nonzero(mask)))
        numeric = np.array([central_difference(w, index) for index in inside])
        np.testing.assert_allclose(g[mask != 0], numeric, rtol=1e-4, atol=1e-6)
    for b, gb in zip(biases, bias_grads):
        numeric = np.array([central_difference(b, (j,)) for j in range(b.size)])
        np.testing.assert_allclose(gb, numeric, rtol=1e-4, atol=1e-6)
