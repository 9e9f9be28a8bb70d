"""Momentum SGD with weight decay over the nonzeros only (paper eq. 1).

The algorithm, for a weight ``w`` with gradient ``g`` and momentum ``v``::

    v <- mu * v - lr * (g + weight_decay * w)
    w <- w + v

Biases follow the same rule without weight decay. The sequential trainer runs
this rule fused inside the backward kernel (:func:`wasap.kernels.backward_layer`);
:func:`momentum_step` is the same rule over arrays, for whoever holds a
gradient apart from the pass that computed it (a parameter server, biases).
"""

from dataclasses import dataclass

import numpy as np


def momentum_step(param, grad, velocity, *, lr, momentum, weight_decay=0.0):
    """Apply one momentum SGD step in place.

    Parameters
    ----------
    param : (n,) float32
        Updated in place.
    grad : (n,) float32
    velocity : (n,) float32
        Updated in place.
    lr, momentum, weight_decay : float
    """
    velocity *= np.float32(momentum)
    if weight_decay:
        velocity -= np.float32(lr) * (grad + np.float32(weight_decay) * param)
    else:
        velocity -= np.float32(lr) * grad
    param += velocity


@dataclass
class MomentumSGD:
    """Hyperparameters of momentum SGD, with an optional learning-rate schedule.

    The velocity buffers live with the parameters they belong to (a layer's
    momentum must follow its topology through every evolution).

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

    def step_weights(self, data, grad, velocity, step=0):
        """Update sparse weights ``data`` with ``grad``, both ``(nnz,)``, in place."""
        momentum_step(data, grad, velocity, lr=self.lr_at(step), momentum=self.momentum,
                      weight_decay=self.weight_decay)

    def step_bias(self, bias, grad, velocity, step=0):
        """Update a bias vector ``(n_out,)`` in place (no weight decay)."""
        momentum_step(bias, grad, velocity, lr=self.lr_at(step), momentum=self.momentum)
