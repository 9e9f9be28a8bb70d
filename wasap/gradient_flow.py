"""Gradient flow: how much a gradient step promises to lower the training loss (the paper's Figure 5).

For a loss ``L`` and the gradient ``g = dL/dtheta`` over every trainable value
``theta`` (each layer's nonzero weights and its biases), a step
``theta - lr * g`` changes the loss by ``-lr * ||g||^2`` to first order. The
gradient flow recorded here is that first-order decrease per unit learning
rate, ``||g||^2``, of the mean training loss over a fixed sample of the
training rows, without dropout (the step's noise is not part of what the
weights promise), at the weights an epoch ended with, before SET and Importance
Pruning change the topology. The squared norm of each layer's part (weights and
biases together) is kept too: their sum is the total.

The sample is the same rows every epoch (evenly spaced over the training set),
so that the curve follows the weights, not the draw; it takes no random
numbers, so recording it changes nothing else in a run.
"""

import numpy as np

from .batches import gather_transposed

#: Training rows the gradient is taken over: enough that the batch noise is small against the curves'
#: changes over the epochs, few enough to cost a small part of an epoch on the paper's data sets.
SAMPLE_ROWS = 4096


def sample_rows(n_samples: int, size: int = SAMPLE_ROWS) -> np.ndarray:
    """``min(size, n_samples)`` row numbers spread evenly over ``[0, n_samples)``, ``(m,) int64``."""
    size = min(int(size), int(n_samples))
    return np.unique(np.linspace(0, n_samples - 1, size).astype(np.int64))


def gradient_flow(model, X: np.ndarray, y: np.ndarray, rows: np.ndarray) -> dict:
    """The squared norm of the gradient of the mean loss over ``X[rows]``, in total and per layer.

    Parameters
    ----------
    model : wasap.model.SparseMLP
        Left unchanged.
    X : (n_samples, n_features) float32, C-contiguous
    y : (n_samples,) int class indices, or (n_samples, n_outputs) float32 targets (mse)
    rows : (m,) int64
        The rows the loss is the mean over (:func:`sample_rows`).

    Returns
    -------
    dict
        ``gradient_flow``: ``||g||^2`` (float); ``gradient_flow_layers``: each layer's share, a list of
        ``n_layers`` floats.
    """
    grads = [np.zeros(layer.nnz, dtype=np.float64) for layer in model.layers]
    bias_grads = [np.zeros(layer.n_out, dtype=np.float64) for layer in model.layers]
    batch_grads = [np.empty(layer.nnz, dtype=np.float32) for layer in model.layers]
    batch_bias_grads = [np.empty(layer.n_out, dtype=np.float32) for layer in model.layers]
    batch_size = model.eval_batch_size()
    regression = model.loss != "cross-entropy"
    total = rows.shape[0]
    for start in range(0, total, batch_size):
        part = rows[start:start + batch_size]
        x_t = gather_transposed(X, part)
        target = np.ascontiguousarray(y[part].T, dtype=np.float32) if regression else y[part]
        model.gradient_batch(x_t, target, batch_grads, batch_bias_grads)
        # Each batch's gradient is of its own mean loss: weighted by its share, they add up to the sample's.
        share = part.shape[0] / total
        for grad, bias_grad, batch_grad, batch_bias_grad in zip(grads, bias_grads, batch_grads, batch_bias_grads):
            grad += share * batch_grad
            bias_grad += share * batch_bias_grad
    per_layer = [float(grad @ grad + bias_grad @ bias_grad) for grad, bias_grad in zip(grads, bias_grads)]
    return dict(gradient_flow=float(sum(per_layer)), gradient_flow_layers=per_layer)
