"""Every hyperparameter of a wasap run, its default and its validation, in one place.

Defaults follow the paper's code: learning rate 0.01, momentum 0.9, weight
decay 2e-4, dropout 0.3, batch 128, epsilon 20, zeta 0.3; Importance Pruning
every 10 epochs from epoch 200 at the 20th percentile.
"""

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from .activations import HIDDEN_ACTIVATIONS, LOSSES, OUTPUT_ACTIVATIONS
from .optim import LayerRates
from .topology import INIT_SCHEMES, erdos_renyi_nnz


#: :meth:`TrainConfig.width_aware`: with ``n`` inputs an output neuron, the hidden layers step at
#: ``WIDTH_AWARE_LR_PER_INPUT * n`` and the output layer at ``WIDTH_AWARE_OUTPUT_LR_TIMES_INPUTS / n``:
#: what made 65536-W-W-2 (W = 50000, 500000) and ten-layer 65536-W x10-2 networks learn in one epoch
#: (``tools/wide_learning.py``; two layers did best at 75 / n, ten at 25-50 / n).
WIDTH_AWARE_LR_PER_INPUT = 6e-5
WIDTH_AWARE_OUTPUT_LR_TIMES_INPUTS = 50.0
#: The values :meth:`TrainConfig.width_aware` sets (anything else keeps its default), which
#: ``--recipe width-aware`` leaves to the flags given explicitly.
WIDTH_AWARE_KEYS = ("activation", "init", "zero_output", "lr", "output_lr", "dropout", "weight_decay")
#: The paper's weight decay per step, ``lr * weight_decay = 0.01 * 2e-4``, kept whatever the rate.
_PAPER_DECAY_PER_STEP = 2e-6


class ConfigError(ValueError):
    """A hyperparameter is out of range; the message says which and what is allowed."""


@dataclass
class TrainConfig:
    """Hyperparameters of a sparse MLP and its training.

    Parameters
    ----------
    hidden : tuple of int
        Hidden layer sizes.
    activation : str
        Hidden activation: all-relu, relu, leaky-relu, sigmoid, tanh, identity.
    alpha : float or None
        All-ReLU slope (paper eq. 3), or leaky ReLU's slope.
    epsilon : float
        Erdős–Rényi sparsity: a layer has about ``epsilon * (n_in + n_out)`` weights.
    init : str
        Initial weights: he-uniform (the paper's), he-uniform-sparse (scaled to
        the fan-in a neuron really has: for networks millions wide), xavier or normal.
    output_activation, loss : str
        softmax + cross-entropy (classification), or identity/sigmoid + mse.
    zeta : float
        Fraction of each sign's weights that SET removes and regrows per epoch.
    epochs, batch_size : int
    micro_batch : int or None
        Split each batch into parts of at most this many samples whose
        gradients accumulate into one update: activation memory for
        ``micro_batch`` samples instead of ``batch_size`` (wide layers).
    lr, momentum, weight_decay, dropout : float
    lr_fan_in : float or None
        Layers whose mean fan-in (nnz / neurons) exceeds this take steps of
        ``lr * lr_fan_in / fan_in`` (:class:`wasap.optim.LayerRates`): for very wide
        layers, whose steps would otherwise grow with their width. None: ``lr`` everywhere.
    output_lr : float or None
        The output layer's own learning rate; None: ``lr`` (times the
        ``lr_fan_in`` factor). Scaled with ``lr`` by warm-up and the synchronous
        variant (:class:`wasap.optim.LayerRates`).
    zero_output : bool
        Start the output layer's weights at 0. Part of the recipe under which
        networks 0.5M to 5M neurons wide learn: :meth:`width_aware`.
    importance_pruning : bool
    ip_start, ip_every : int
        Importance Pruning runs after epochs ``e >= ip_start`` with ``e % ip_every == 0``.
    ip_percentile : float
    seed : int
        Seeds every random stream: topology, values, shuffling, dropout.
    threads : int or None
        Kernel threads per process; None: one per available core.
    workers : int
        1: the sequential trainer; K > 1: WASAP-SGD with K workers.
    sync : bool
        Synchronous phase one (WASSP-SGD) instead of asynchronous.
    phase2_start : int or None
        Epoch at which phase two (independent replicas) starts; None: never.
    warmup_epochs : int
        Gradual learning-rate warm-up of the synchronous variant.
    stall_timeout : float
        Seconds a parallel worker may go without progress (no batch done, no lock or slot
        reached) before the run stops with :class:`wasap.parallel.WorkerStalled`: far above a
        batch of the widest networks, which takes seconds.
    """

    hidden: tuple = (400, 100, 400)
    activation: str = "all-relu"
    alpha: float = 0.5
    epsilon: float = 20.0
    init: str = "he-uniform"
    output_activation: str = "softmax"
    loss: str = "cross-entropy"
    zeta: float = 0.3
    epochs: int = 100
    batch_size: int = 128
    micro_batch: int = None
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    dropout: float = 0.3
    lr_fan_in: float = None
    output_lr: float = None
    zero_output: bool = False
    importance_pruning: bool = False
    ip_start: int = 200
    ip_every: int = 10
    ip_percentile: float = 20.0
    seed: int = 0
    threads: int = None
    workers: int = 1
    sync: bool = False
    phase2_start: int = None
    warmup_epochs: int = 5
    stall_timeout: float = 600.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.hidden = tuple(int(n) if isinstance(n, numbers.Integral) and not isinstance(n, bool) else n
                            for n in self.hidden)
        self.validate()

    def validate(self):
        """Raise :class:`ConfigError` naming the first value out of range."""
        for size in self.hidden:
            if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1:
                raise ConfigError(
                    f"hidden layer sizes must be positive integers, got {list(self.hidden)}; "
                    "a hidden layer of 0 neurons would disconnect the network."
                )
        _choice("activation", self.activation, HIDDEN_ACTIVATIONS)
        _choice("output_activation", self.output_activation, OUTPUT_ACTIVATIONS)
        _choice("loss", self.loss, LOSSES)
        _choice("init", self.init, INIT_SCHEMES)
        if self.activation == "all-relu" and (self.alpha is None or not 0 <= self.alpha <= 1):
            raise ConfigError(f"alpha must be in [0, 1] for all-relu, got {self.alpha}.")
        if self.output_activation == "softmax" and self.loss != "cross-entropy":
            raise ConfigError("softmax output goes with loss='cross-entropy'; use identity or sigmoid with mse.")
        if self.loss == "cross-entropy" and self.output_activation != "softmax":
            raise ConfigError("loss='cross-entropy' needs output_activation='softmax'.")
        _positive("epsilon", self.epsilon)
        _in_range("zeta", self.zeta, 0.0, 1.0)
        _integer("epochs", self.epochs, 0)
        _integer("batch_size", self.batch_size, 1)
        if self.lr_fan_in is not None:
            _positive("lr_fan_in", self.lr_fan_in)
        if self.output_lr is not None:
            _positive("output_lr", self.output_lr)
        _flag("zero_output", self.zero_output)
        if self.micro_batch is not None:
            _integer("micro_batch", self.micro_batch, 1)
        _positive("lr", self.lr)
        _in_range("momentum", self.momentum, 0.0, 1.0, upper_open=True)
        _at_least("weight_decay", self.weight_decay, 0.0)
        _in_range("dropout", self.dropout, 0.0, 1.0, upper_open=True)
        _flag("importance_pruning", self.importance_pruning)
        _flag("sync", self.sync)
        _integer("ip_start", self.ip_start, 0)
        _integer("ip_every", self.ip_every, 1)
        _in_range("ip_percentile", self.ip_percentile, 0.0, 100.0)
        if self.threads is not None:
            _integer("threads", self.threads, 1)
        _integer("workers", self.workers, 1)
        if self.phase2_start is not None:
            _integer("phase2_start", self.phase2_start, 0)
        _integer("warmup_epochs", self.warmup_epochs, 0)
        _positive("stall_timeout", self.stall_timeout)
        _integer("seed", self.seed, 0)
        if self.activation == "leaky-relu" and self.alpha is not None and not 0 <= self.alpha < 1:
            raise ConfigError(f"alpha (the leaky ReLU slope) must be in [0, 1), got {self.alpha}.")

    @classmethod
    def width_aware(cls, hidden, n_outputs, *, epsilon, **overrides):
        """The training recipe under which networks 0.5M to 5M neurons wide learn in their first epoch.

        With the paper's recipe such networks keep the loss at ln 2: weights sized for the dense
        fan-in shrink the signal a hundred-fold per layer, and an output neuron's millions of
        inputs turn any usable output rate unstable. Here (README, "Big networks"):

        - ``init="he-uniform-sparse"``: weights sized for the connections a neuron has;
        - ``activation="tanh"``: zero-mean activations, no common mode through the output layer;
        - ``zero_output=True``: the logits start equal;
        - ``output_lr = 50 / n`` and ``lr = 6e-5 * n``, where ``n`` is an output neuron's mean
          fan-in (``nnz / n_outputs`` of the output layer): the hidden gradients pass through
          output weights of order ``1 / n`` (maximal-update scaling, Yang & Hu 2021);
        - ``dropout=0``: with the two inputs a neuron of an epsilon-1 layer has, ten layers of
          dropout cut every path from the input;
        - ``weight_decay = 2e-6 / lr`` (the ``lr`` in force, an override's included): the paper's
          shrink per step.

        Parameters
        ----------
        hidden : tuple of int
            Hidden layer sizes.
        n_outputs : int
            Classes (or regression outputs).
        epsilon : float
        **overrides
            Any other :class:`TrainConfig` value (``epochs``, ``seed``, ``micro_batch``...), or one of
            the recipe's to change it.

        Returns
        -------
        TrainConfig

        Examples
        --------
        >>> config = TrainConfig.width_aware((500_000, 500_000), 2, epsilon=10, epochs=1)
        >>> round(config.lr, 6), round(config.output_lr, 8), config.activation
        (30.0, 0.0001, 'tanh')
        """
        hidden = tuple(hidden)
        if not hidden:
            raise ConfigError("the width-aware recipe needs at least one hidden layer.")
        inputs = erdos_renyi_nnz(int(hidden[-1]), int(n_outputs), epsilon, warn=False) / n_outputs
        lr = overrides.get("lr", WIDTH_AWARE_LR_PER_INPUT * inputs)
        values = dict(hidden=hidden, epsilon=epsilon, activation="tanh", init="he-uniform-sparse",
                      zero_output=True, lr=lr, output_lr=WIDTH_AWARE_OUTPUT_LR_TIMES_INPUTS / inputs,
                      dropout=0.0, weight_decay=_PAPER_DECAY_PER_STEP / lr)
        values.update(overrides)
        return cls(**values)

    def layer_rates(self):
        """Each layer's learning rate relative to ``lr`` (:class:`wasap.optim.LayerRates`)."""
        output_ratio = None if self.output_lr is None else self.output_lr / self.lr
        return LayerRates(lr_fan_in=self.lr_fan_in, output_ratio=output_ratio)

    def replace(self, **changes):
        """A validated copy with some values changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """Plain JSON-ready dict of every hyperparameter."""
        values = dataclasses.asdict(self)
        values["hidden"] = list(self.hidden)
        return values

    @classmethod
    def from_dict(cls, values):
        """Inverse of :meth:`to_dict`; unknown keys are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown hyperparameters {unknown}; known ones: {sorted(known)}.")
        return cls(**values)


def _choice(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


def _integer(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be a whole number, got {value!r}.")
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}.")


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {value!r}.")


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}.")


def _positive(name, value):
    _number(name, value)
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"{name} must be a finite number > 0, got {value}.")


def _at_least(name, value, low):
    _number(name, value)
    if value < low or math.isinf(value):
        raise ConfigError(f"{name} must be a finite number >= {low}, got {value}.")


def _in_range(name, value, low, high, upper_open=False):
    _number(name, value)
    if value < low or value > high or (upper_open and value == high):
        bracket = ")" if upper_open else "]"
        raise ConfigError(f"{name} must be in [{low}, {high}{bracket}, got {value}.")
