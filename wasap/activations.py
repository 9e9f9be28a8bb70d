"""Activations and losses: what the kernels compute, named for users.

Hidden activations are described by a kernel code and a negative-side slope
(see :mod:`wasap.kernels`). Losses act on the output layer, stored transposed
as ``(n_classes, batch)``, and return the loss with ``delta_L = dLoss/dz_L``;
softmax + cross-entropy, the hot one, is a kernel
(:func:`wasap.kernels.softmax_cross_entropy_delta`).
"""

import numpy as np

from . import kernels

HIDDEN_ACTIVATIONS = ("all-relu", "relu", "leaky-relu", "sigmoid", "tanh", "identity")
OUTPUT_ACTIVATIONS = ("softmax", "sigmoid", "identity")
LOSSES = ("cross-entropy", "mse")

#: The negative-side slope of ``leaky-relu`` when ``alpha`` is not given.
LEAKY_RELU_DEFAULT_SLOPE = 0.01


def hidden_activation_codes(name, alpha, n_hidden):
    """Kernel codes and slopes of each hidden layer.

    All-ReLU (paper eq. 3) alternates the sign of its negative-side slope:
    ``-alpha`` on the first hidden layer, ``+alpha`` on the second, and so on
    (the paper numbers the input layer 1, so the first hidden layer is even).

    Parameters
    ----------
    name : str
        One of :data:`HIDDEN_ACTIVATIONS`.
    alpha : float or None
        All-ReLU's slope; leaky ReLU's slope (default 0.01).
    n_hidden : int
        Number of hidden layers.

    Returns
    -------
    list of (int, float)
        ``(activation code, slope)`` per hidden layer.
    """
    if name == "all-relu":
        return [(kernels.ACT_PIECEWISE, -alpha if l % 2 == 0 else alpha) for l in range(n_hidden)]
    if name == "relu":
        return [(kernels.ACT_PIECEWISE, 0.0)] * n_hidden
    if name == "leaky-relu":
        slope = LEAKY_RELU_DEFAULT_SLOPE if alpha is None else alpha
        return [(kernels.ACT_PIECEWISE, slope)] * n_hidden
    if name == "identity":
        return [(kernels.ACT_PIECEWISE, 1.0)] * n_hidden
    if name == "sigmoid":
        return [(kernels.ACT_SIGMOID, 0.0)] * n_hidden
    if name == "tanh":
        return [(kernels.ACT_TANH, 0.0)] * n_hidden
    raise ValueError(f"Unknown activation {name!r}; choose one of {', '.join(HIDDEN_ACTIVATIONS)}.")


def output_activation_code(name):
    """Kernel code and slope of the output layer's pre-loss transform.

    Softmax is applied by the loss (it needs the whole column), so the kernel
    leaves the output linear for it.
    """
    if name in ("softmax", "identity"):
        return kernels.ACT_PIECEWISE, 1.0
    if name == "sigmoid":
        return kernels.ACT_SIGMOID, 0.0
    raise ValueError(f"Unknown output activation {name!r}; choose one of {', '.join(OUTPUT_ACTIVATIONS)}.")


def softmax(z):
    """Column-wise softmax.

    Parameters
    ----------
    z : (n_classes, batch) array

    Returns
    -------
    (n_classes, batch) array
    """
    # A diverged network gives inf/NaN logits: the trainer reports that
    # itself, so numpy's warnings would only repeat it less clearly.
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = z - z.max(axis=0, keepdims=True)
        np.exp(shifted, out=shifted)
        shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted


def mean_squared_error(output, deriv, target):
    """Half the mean over the batch of the squared error summed over outputs.

    Parameters
    ----------
    output : (n_outputs, batch) float32
        The output layer's activations.
    deriv : (n_outputs, batch) float32
        Its activation's derivative at the pre-activation.
    target : (n_outputs, batch) float32

    Returns
    -------
    loss : float
    delta : (n_outputs, batch) float32
        ``(output - target) * deriv / batch``.
    """
    batch = output.shape[1]
    error = output - target
    loss = float(0.5 * np.sum(error * error) / batch)
    return loss, error * deriv / batch
