"""Micro-batches: the same update as the whole batch, with activations for fewer samples."""

import numpy as np
import pytest

from wasap import Dataset, SparseMLP, TrainConfig, fit
from wasap.model import stream_seed
from wasap.optim import SAME_RATES, LayerRates


def network(seed=0, loss="cross-entropy"):
    output = "softmax" if loss == "cross-entropy" else "identity"
    return SparseMLP.random([9, 12, 7, 3], epsilon=3, alpha=0.4, output_activation=output, loss=loss, seed=seed,
                            warn=False)


@pytest.mark.parametrize("rates", [SAME_RATES, LayerRates(lr_fan_in=6.0, output_ratio=3.0)])
@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
@pytest.mark.parametrize("micro_batch", [1, 5, 8])
def test_micro_batches_give_the_whole_batch_update(loss, micro_batch, rates):
    rng = np.random.default_rng(1)
    x_t = np.ascontiguousarray(rng.standard_normal((9, 16)).astype(np.float32))
    target = (rng.integers(0, 3, 16) if loss == "cross-entropy"
              else np.ascontiguousarray(rng.standard_normal((3, 16)).astype(np.float32)))
    whole, parts = network(loss=loss), network(loss=loss)
    for step in range(3):  # momentum carries over: check more than one step
        loss_whole, correct_whole = whole.train_batch(x_t, target, lr=0.05, momentum=0.9, weight_decay=1e-3,
                                                      rates=rates)
        loss_parts, correct_parts = parts.train_batch(x_t, target, lr=0.05, momentum=0.9, weight_decay=1e-3,
                                                      micro_batch=micro_batch, rates=rates)
        assert loss_parts == pytest.approx(loss_whole, rel=1e-5)
        assert correct_parts == correct_whole
    for a, b in zip(whole.layers, parts.layers):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.velocity, a.velocity, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(b.bias, a.bias, rtol=1e-5, atol=1e-6)


def test_micro_batches_keep_only_small_workspaces():
    model = network()
    rng = np.random.default_rng(2)
    x_t = np.ascontiguousarray(rng.standard_normal((9, 64)).astype(np.float32))
    model.train_batch(x_t, rng.integers(0, 3, 64), lr=0.01, momentum=0.9, weight_decay=0.0, dropout=0.3,
                      dropout_seed=stream_seed(0, 1), micro_batch=16)
    assert {batch for batch, _ in model._workspaces} == {16}


def test_fit_with_micro_batches_learns():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 9)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    data = Dataset("micro-batch", X[:300], y[:300], X[300:], y[300:], np.array([0, 1]))
    config = TrainConfig(hidden=(16,), epsilon=4, epochs=25, batch_size=32, micro_batch=8, threads=1)
    model = SparseMLP.from_config(9, 2, config, warn=False)
    summary = fit(model, data, config, log=None)
    assert summary["best_test_accuracy"] > 0.85


@pytest.mark.parametrize("lr_fan_in,output_lr", [(6.0, None), (None, 0.2), (6.0, 0.2)])
def test_layer_rates_scale_each_layers_step(lr_fan_in, output_lr):
    # Oracle: the batch's gradients, then momentum SGD written out in numpy with each layer's own rate:
    # the output layer's own when given, else lr * min(1, lr_fan_in / (nnz / n_out)).
    rng = np.random.default_rng(4)
    x_t = np.ascontiguousarray(rng.standard_normal((9, 16)).astype(np.float32))
    target = rng.integers(0, 3, 16)
    lr, momentum, decay = 0.05, 0.9, 1e-3
    rates = TrainConfig(lr=lr, lr_fan_in=lr_fan_in, output_lr=output_lr).layer_rates()
    model, reference = network(), network()
    fan_ins = [layer.nnz / layer.n_out for layer in model.layers]
    assert min(fan_ins[:-1]) < 6.0 < max(fan_ins[:-1]), "some hidden layers must be scaled and some not"
    expected_rates = [lr * min(1.0, lr_fan_in / fan_in) if lr_fan_in else lr for fan_in in fan_ins]
    if output_lr is not None:
        expected_rates[-1] = output_lr
    for _ in range(2):
        grads = [np.zeros(layer.nnz, np.float32) for layer in reference.layers]
        bias_grads = [np.zeros(layer.n_out, np.float32) for layer in reference.layers]
        reference.gradient_batch(x_t, target, grads, bias_grads)
        for layer, grad, bias_grad, rate in zip(reference.layers, grads, bias_grads, expected_rates):
            layer.velocity[:] = momentum * layer.velocity - rate * (grad + decay * layer.data)
            layer.data += layer.velocity
            layer.bias_velocity[:] = momentum * layer.bias_velocity - rate * bias_grad
            layer.bias += layer.bias_velocity
        model.train_batch(x_t, target, lr=lr, momentum=momentum, weight_decay=decay, rates=rates)
    for a, b in zip(model.layers, reference.layers):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.bias, b.bias, rtol=1e-5, atol=1e-6)
