"""Momentum SGD with weight decay over the nonzeros only (paper eq. 1).

The algorithm, for a weight ``w`` with gradient ``g`` and momentum ``v``::

    v <- mu * v - lr * (g + weight_decay * w)
    w <- w + v

Biases follow the same rule without weight decay. :func:`momentum_update` states
it once, for one parameter; the sequential trainer runs it fused inside the
backward kernel (:func:`wasap.kernels.backward_layer`), and :func:`momentum_step`
runs it over arrays, for whoever holds a gradient apart from the pass that
computed it (a parameter server, micro-batches). :class:`LayerRates` gives each
layer its learning rate.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit


@njit(inline="always")
def momentum_update(w, g, v, lr, momentum, weight_decay):
    """The update rule on one parameter: ``(w + v', v')`` with ``v' = mu v - lr (g + wd w)``.

    The one statement of paper eq. 1 in the package: the fused backward kernel, the
    bias step, :func:`momentum_step` and the parameter server's remapped step all
    inline it, so that every pass applies the same float32 arithmetic.

    Parameters
    ----------
    w, g, v : float32
        The parameter, its gradient and its momentum.
    lr, momentum, weight_decay : float32

    Returns
    -------
    w_new, v_new : float32
    """
    v = momentum * v - lr * (g + weight_decay * w)
    return w + v, v


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _momentum_kernel(param, grad, velocity, lr, momentum, weight_decay):
    lr = np.float32(lr)
    momentum = np.float32(momentum)
    weight_decay = np.float32(weight_decay)
    for k in range(param.shape[0]):
        param[k], velocity[k] = momentum_update(param[k], grad[k], velocity[k], lr, momentum, weight_decay)


def momentum_step(param, grad, velocity, *, lr, momentum, weight_decay=0.0):
    """Apply one momentum SGD step in place, in one pass and no temporaries.

    Parameters
    ----------
    param : (n,) float32
        Updated in place.
    grad : (n,) float32
    velocity : (n,) float32
        Updated in place.
    lr, momentum, weight_decay : float
    """
    if not (param.shape == grad.shape == velocity.shape):
        raise ValueError(f"param {param.shape}, grad {grad.shape} and velocity {velocity.shape} must match.")
    _momentum_kernel(param, grad, velocity, float(lr), float(momentum), float(weight_decay))


@dataclass(frozen=True)
class LayerRates:
    """How each layer's learning rate derives from the base rate ``lr``.

    One SGD step changes a neuron's input by about ``lr * fan_in * E[a**2] * delta``:
    with the same ``lr`` a dense output layer of 5M inputs moves 10**5 times as far
    as a hidden layer with 50 connections a neuron and diverges. Two remedies, for
    networks hundreds of thousands of neurons wide:

    - ``lr_fan_in``: layers whose mean fan-in ``nnz / n_out`` exceeds it take
      proportionally smaller steps, ``lr * lr_fan_in / fan_in``;
    - ``output_ratio``: the output layer steps at ``lr * output_ratio`` whatever
      its fan-in (``TrainConfig.output_lr / lr``). With a zeroed output layer,
      hidden rates growing with the width and an output rate shrinking with it
      (and tanh, whose zero-mean outputs keep the output layer stable), networks
      0.5M-5M wide learn in one epoch (a maximal-update parametrisation in the
      manner of Yang & Hu 2021; see the docs' "Big networks", docs/big-networks.md).

    A ratio rather than an absolute output rate, so that whatever scales ``lr``
    (warm-up, the synchronous variant's linear scaling) scales every layer alike.

    Parameters
    ----------
    lr_fan_in : float or None
    output_ratio : float or None
    """

    lr_fan_in: float | None = None
    output_ratio: float | None = None

    def factor(self, nnz: int, n_out: int, is_output: bool) -> float:
        """Factor on the base rate of a layer with ``nnz`` weights into ``n_out`` neurons.

        Parameters
        ----------
        nnz, n_out : int
        is_output : bool
            The network's last layer.

        Returns
        -------
        float > 0
        """
        if is_output and self.output_ratio is not None:
            return self.output_ratio
        if self.lr_fan_in is None or nnz == 0:
            return 1.0
        return min(1.0, self.lr_fan_in * n_out / nnz)

    def layer_lr(self, lr: float, layer: int, sizes: Sequence[int], nnz: int) -> float:
        """Learning rate of layer ``layer`` of a network of ``sizes``: ``lr`` times its :meth:`factor`.

        The one place that tells a layer its rate, for every trainer (the fused backward
        pass, micro-batches, the parameter server).

        Parameters
        ----------
        lr : float
            The base rate of this step (after any warm-up or scaling).
        layer : int
            0-based; the last one is the output layer.
        sizes : sequence of int
            ``[n_features, hidden..., n_outputs]``.
        nnz : int
            Weights the layer holds now.

        Returns
        -------
        float
        """
        return lr * self.factor(nnz, sizes[layer + 1], layer == len(sizes) - 2)


SAME_RATES = LayerRates()  # every layer at the base rate


@dataclass
class MomentumSGD:
    """Hyperparameters of momentum SGD, with an optional learning-rate schedule.

    The velocity buffers live with the parameters they belong to (a layer's
    momentum must follow its topology through every evolution); the steps are
    :func:`momentum_step` or the fused backward kernel, at ``lr_at(step)``.

    Parameters
    ----------
    lr : float
        Base learning rate.
    momentum : float
    weight_decay : float
        Applied to weights, not biases.
    warmup_steps : int
        Linear warm-up from ``lr / warmup_steps`` to ``lr`` over this many
        steps (Goyal et al. 2017); 0 disables it.
    """

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    warmup_steps: int = 0

    def lr_at(self, step):
        """Learning rate of step ``step`` (0-based)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self.lr
