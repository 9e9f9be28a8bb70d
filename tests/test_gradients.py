"""The whole network's gradient against central finite differences of an independent dense float64 forward pass.

The oracle rebuilds each layer as a dense float64 matrix (from ``to_scipy().toarray()``), applies the
activations as written in the paper (All-ReLU's negative-side slope alternates -alpha, +alpha, -alpha over
the hidden layers), and computes the loss from its definition. Inputs are chosen so that no hidden
pre-activation lies within a margin of 0, so the piecewise-linear activations are smooth under the step.
"""

import numpy as np
import pytest

from wasap.model import SparseMLP

SIZES = [6, 7, 5, 4, 3]
BATCH = 4
STEP = 1e-3
MARGIN = 0.02


def _piecewise(slope):
    return lambda z: np.where(z > 0, z, slope * z)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


HIDDEN = {
    # name: (alpha passed to the model, one function per hidden layer, written out)
    "all-relu": (0.5, [_piecewise(-0.5), _piecewise(0.5), _piecewise(-0.5)]),
    "relu": (None, [_piecewise(0.0)] * 3),
    "leaky-relu": (0.1, [_piecewise(0.1)] * 3),
    "sigmoid": (None, [_sigmoid] * 3),
    "tanh": (None, [np.tanh] * 3),
    "identity": (None, [lambda z: z] * 3),
}


def _dense(model):
    weights = [layer.to_scipy().toarray().astype(np.float64) for layer in model.layers]
    biases = [layer.bias.astype(np.float64) for layer in model.layers]
    return weights, biases


def _pre_activations(weights, biases, hidden_fns, X):
    """Hidden pre-activations and the output layer's linear output; X is (batch, n_features)."""
    a = X.astype(np.float64)
    zs = []
    for l, (W, b) in enumerate(zip(weights, biases)):
        z = a @ W + b
        zs.append(z)
        if l < len(weights) - 1:
            a = hidden_fns[l](z)
    return zs


def _loss(weights, biases, hidden_fns, X, target, output, loss):
    z = _pre_activations(weights, biases, hidden_fns, X)[-1]  # (batch, n_out)
    batch = X.shape[0]
    if loss == "cross-entropy":
        shifted = z - z.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -np.mean(log_p[np.arange(batch), target])
    y_hat = _sigmoid(z) if output == "sigmoid" else z
    return 0.5 * np.sum((y_hat - target.T) ** 2) / batch


def _finite_differences(model, hidden_fns, X, target, output, loss):
    weights, biases = _dense(model)

    def f():
        return _loss(weights, biases, hidden_fns, X, target, output, loss)

    weight_grads, bias_grads = [], []
    for layer, W, b in zip(model.layers, weights, biases):
        rows = np.repeat(np.arange(layer.n_in), np.diff(layer.indptr))
        g = np.empty(layer.nnz)
        for k, (r, c) in enumerate(zip(rows, layer.indices)):
            saved = W[r, c]
            W[r, c] = saved + STEP
            up = f()
            W[r, c] = saved - STEP
            down = f()
            W[r, c] = saved
            g[k] = (up - down) / (2 * STEP)
        gb = np.empty(layer.n_out)
        for j in range(layer.n_out):
            saved = b[j]
            b[j] = saved + STEP
            up = f()
            b[j] = saved - STEP
            down = f()
            b[j] = saved
            gb[j] = (up - down) / (2 * STEP)
        weight_grads.append(g)
        bias_grads.append(gb)
    return weight_grads, bias_grads, f()


def _network(activation, output="softmax", loss="cross-entropy", seed=0):
    """A 6-7-5-4-3 network with random biases and inputs whose hidden pre-activations avoid 0."""
    alpha, hidden_fns = HIDDEN[activation]
    model = SparseMLP.random(SIZES, epsilon=2, activation=activation, alpha=alpha, output_activation=output,
                             loss=loss, seed=seed, warn=False)
    rng = np.random.default_rng(seed + 100)
    for layer in model.layers:
        layer.bias[:] = rng.uniform(-0.3, 0.3, layer.n_out).astype(np.float32)
    weights, biases = _dense(model)
    for _ in range(1000):
        X = rng.normal(0, 1, (BATCH, SIZES[0])).astype(np.float32)
        zs = _pre_activations(weights, biases, hidden_fns, X)
        if min(np.abs(z).min() for z in zs[:-1]) > MARGIN:
            break
    else:  # pragma: no cover
        raise AssertionError("no input keeps the pre-activations away from 0")
    if loss == "cross-entropy":
        target = rng.integers(0, SIZES[-1], BATCH)
    else:
        target = rng.uniform(0, 1, (SIZES[-1], BATCH)).astype(np.float32)
    return model, hidden_fns, X, target


def _kernel_gradients(model, X, target):
    grads = [np.full(layer.nnz, np.nan, dtype=np.float32) for layer in model.layers]
    bias_grads = [np.full(layer.n_out, np.nan, dtype=np.float32) for layer in model.layers]
    x_t = np.ascontiguousarray(X.T)
    loss, _ = model.gradient_batch(x_t, target, grads, bias_grads, dropout=0.0)
    return grads, bias_grads, loss


CASES = [(name, "softmax", "cross-entropy") for name in HIDDEN] + [
    ("all-relu", "identity", "mse"),
    ("all-relu", "sigmoid", "mse"),
    ("tanh", "identity", "mse"),
    ("sigmoid", "sigmoid", "mse"),
]


@pytest.mark.parametrize("activation,output,loss", CASES, ids=["-".join(c) for c in CASES])
def test_gradient_matches_finite_differences(activation, output, loss):
    model, hidden_fns, X, target = _network(activation, output, loss)
    assert model.nnz_per_layer() == [26, 24, 18, 12]  # epsilon 2: round(2 * (n_in + n_out)), the last capped
    data_before = [layer.data.copy() for layer in model.layers]
    grads, bias_grads, kernel_loss = _kernel_gradients(model, X, target)
    fd_grads, fd_bias_grads, oracle_loss = _finite_differences(model, hidden_fns, X, target, output, loss)
    assert kernel_loss == pytest.approx(oracle_loss, rel=1e-5, abs=1e-6)
    for l in range(len(SIZES) - 1):
        np.testing.assert_allclose(grads[l], fd_grads[l], rtol=1e-3, atol=1e-4, err_msg=f"weights of layer {l}")
        np.testing.assert_allclose(bias_grads[l], fd_bias_grads[l], rtol=1e-3, atol=1e-4,
                                   err_msg=f"biases of layer {l}")
    # Not a vacuous comparison: the first layer gets a real gradient.
    assert np.abs(fd_grads[0]).max() > 1e-3
    # gradient_batch leaves the model unchanged.
    for layer, before in zip(model.layers, data_before):
        np.testing.assert_array_equal(layer.data, before)


def test_all_relu_sign_alternates():
    """The oracle with the wrong sign pattern (+alpha first) disagrees: the test can tell the two apart."""
    model, hidden_fns, X, target = _network("all-relu")
    grads, _, _ = _kernel_gradients(model, X, target)
    flipped = [_piecewise(0.5), _piecewise(-0.5), _piecewise(0.5)]
    wrong, _, _ = _finite_differences(model, flipped, X, target, "softmax", "cross-entropy")
    assert not all(np.allclose(g, w, rtol=1e-3, atol=1e-4) for g, w in zip(grads, wrong))


@pytest.mark.parametrize("activation,output,loss", [("all-relu", "softmax", "cross-entropy"),
                                                    ("tanh", "sigmoid", "mse")])
def test_train_batch_is_momentum_sgd_on_the_gradient(activation, output, loss):
    model, _, X, target = _network(activation, output, loss, seed=4)
    rng = np.random.default_rng(5)
    for layer in model.layers:
        layer.velocity[:] = rng.normal(0, 0.05, layer.nnz).astype(np.float32)
        layer.bias_velocity[:] = rng.normal(0, 0.05, layer.n_out).astype(np.float32)
    reference = model.copy()
    grads, bias_grads, grad_loss = _kernel_gradients(reference, X, target)
    lr, mu, wd = 0.05, 0.9, 0.01
    before = [(l.data.astype(np.float64), l.velocity.astype(np.float64), l.bias.astype(np.float64),
               l.bias_velocity.astype(np.float64)) for l in model.layers]
    train_loss, _ = model.train_batch(np.ascontiguousarray(X.T), target, lr=lr, momentum=mu, weight_decay=wd,
                                      dropout=0.0, dropout_seed=0)
    assert train_loss == pytest.approx(grad_loss, rel=1e-6)
    for l, (layer, (w, v, b, bv)) in enumerate(zip(model.layers, before)):
        v_new = mu * v - lr * (grads[l] + wd * w)
        np.testing.assert_allclose(layer.velocity, v_new, rtol=1e-5, atol=1e-7, err_msg=f"velocity {l}")
        np.testing.assert_allclose(layer.data, w + v_new, rtol=1e-5, atol=1e-7, err_msg=f"weights {l}")
        bv_new = mu * bv - lr * bias_grads[l]  # no weight decay on biases
        np.testing.assert_allclose(layer.bias_velocity, bv_new, rtol=1e-5, atol=1e-7, err_msg=f"bias velocity {l}")
        np.testing.assert_allclose(layer.bias, b + bv_new, rtol=1e-5, atol=1e-7, err_msg=f"bias {l}")
        # The structure does not change in a training step.
        np.testing.assert_array_equal(layer.indices, reference.layers[l].indices)


def test_gradient_with_dropout_matches_finite_differences_under_the_same_mask():
    """With dropout the gradient is that of the network with this step's masks fixed (inverted dropout:
    kept units scaled by 1/keep). Sigmoid hidden units are never 0, so the mask is where the output is."""
    model, hidden_fns, X, target = _network("sigmoid", seed=2)
    rate, seed = 0.3, 17
    x_t = np.ascontiguousarray(X.T)
    ws = model.workspace(BATCH, training=True)
    model.forward(x_t, ws, dropout=rate, dropout_seed=seed)
    masks = [ws.activations[l + 1] != 0 for l in range(len(SIZES) - 2)]  # (n_out, batch) per hidden layer
    assert not all(m.all() for m in masks)
    grads = [np.empty(layer.nnz, dtype=np.float32) for layer in model.layers]
    bias_grads = [np.empty(layer.n_out, dtype=np.float32) for layer in model.layers]
    kernel_loss, _ = model.gradient_batch(x_t, target, grads, bias_grads, dropout=rate, dropout_seed=seed)
    masked_fns = [lambda z, m=m.T, f=f: f(z) * m / (1 - rate) for m, f in zip(masks, hidden_fns)]
    fd_grads, fd_bias_grads, oracle_loss = _finite_differences(model, masked_fns, X, target, "softmax",
                                                               "cross-entropy")
    assert kernel_loss == pytest.approx(oracle_loss, rel=1e-5, abs=1e-6)
    for l in range(len(SIZES) - 1):
        np.testing.assert_allclose(grads[l], fd_grads[l], rtol=1e-3, atol=1e-4, err_msg=f"weights of layer {l}")
        np.testing.assert_allclose(bias_grads[l], fd_bias_grads[l], rtol=1e-3, atol=1e-4)
