"""Gradient flow (:mod:`wasap.gradient_flow`) against central finite differences of a dense float64 loss,
and its recording in metrics.jsonl, which must leave the run's training unchanged."""

import json
import os

import numpy as np

from wasap.config import TrainConfig
from wasap.data import Dataset
from wasap.gradient_flow import gradient_flow, sample_rows
from wasap.model import SparseMLP
from wasap.train import fit

STEP = 1e-4


def _dense_loss(weights, biases, X, y):
    """Mean softmax cross-entropy of a tanh MLP, in float64: the definition, written out."""
    a = X.astype(np.float64)
    for l, (W, b) in enumerate(zip(weights, biases)):
        a = a @ W + b
        if l < len(weights) - 1:
            a = np.tanh(a)
    a = a - a.max(axis=1, keepdims=True)
    log_p = a - np.log(np.exp(a).sum(axis=1, keepdims=True))
    return -np.mean(log_p[np.arange(y.shape[0]), y])


def _finite_difference_flow(model, X, y):
    """Each layer's sum over its nonzero weights and biases of (dL/dtheta)^2, by central differences."""
    weights = [layer.to_scipy().toarray().astype(np.float64) for layer in model.layers]
    biases = [layer.bias.astype(np.float64) for layer in model.layers]

    def derivative(array, index):
        saved = array[index]
        array[index] = saved + STEP
        up = _dense_loss(weights, biases, X, y)
        array[index] = saved - STEP
        down = _dense_loss(weights, biases, X, y)
        array[index] = saved
        return (up - down) / (2 * STEP)

    per_layer = []
    for W, b in zip(weights, biases):
        rows, cols = np.nonzero(W)
        total = sum(derivative(W, (i, j)) ** 2 for i, j in zip(rows, cols))
        total += sum(derivative(b, (j,)) ** 2 for j in range(b.shape[0]))
        per_layer.append(total)
    return per_layer


def test_gradient_flow_equals_finite_differences_over_several_batches():
    rng = np.random.default_rng(3)
    model = SparseMLP.random([6, 8, 5, 3], epsilon=3, activation="tanh", seed=1)
    # 300 rows: three inference batches, whose gradients must add up weighted by their sizes.
    X = rng.standard_normal((300, 6)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    rows = sample_rows(X.shape[0], 1000)
    assert rows.tolist() == list(range(300))
    flow = gradient_flow(model, X, y, rows)
    expected = _finite_difference_flow(model, X, y)
    np.testing.assert_allclose(flow["gradient_flow_layers"], expected, rtol=2e-3)
    np.testing.assert_allclose(flow["gradient_flow"], sum(expected), rtol=2e-3)


def test_sample_rows_are_spread_and_fixed():
    rows = sample_rows(10_000, 100)
    assert rows.shape == (100,) and rows[0] == 0 and rows[-1] == 9_999
    assert np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, sample_rows(10_000, 100))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((400, 12)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    return Dataset("two-blobs", X[:300], y[:300], X[300:], y[300:], classes=np.array([0, 1]))


def test_recording_the_flow_leaves_training_unchanged(tmp_path):
    data = _data()
    config = TrainConfig(hidden=(16, 8), epsilon=2.0, epochs=3, batch_size=32, seed=4, threads=1)
    models = []
    for record in (False, True):
        model = SparseMLP.from_config(12, 2, config)
        out = os.path.join(tmp_path, f"flow-{record}")
        fit(model, data, config.replace(gradient_flow=record), out_dir=out, progress=False, log=None)
        with open(os.path.join(out, "metrics.jsonl")) as stream:
            lines = [json.loads(line) for line in stream]
        models.append((model, lines))
    (plain, plain_lines), (recorded, recorded_lines) = models
    for a, b in zip(plain.layers, recorded.layers):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.bias, b.bias)
    assert all("gradient_flow" not in line for line in plain_lines)
    for line in recorded_lines:
        assert line["gradient_flow"] > 0
        assert len(line["gradient_flow_layers"]) == 3
        np.testing.assert_allclose(sum(line["gradient_flow_layers"]), line["gradient_flow"], rtol=1e-12)
