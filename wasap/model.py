"""Sparse layers and the sparse MLP: forward, backward, predict, evolve, save and load.

A :class:`SparseLayer` is a weight matrix ``W`` of shape ``(n_in, n_out)`` that
exists only as its nonzeros. A :class:`SparseMLP` chains them; its batch
methods take inputs transposed, ``(n_features, batch)``, and keep every buffer
in a :class:`Workspace` so that a training step allocates nothing large.

A batch may also be a :class:`wasap.batches.SparseBatch`, rows of a scipy.sparse CSR
``X``: the first layer then runs on the batch's nonzeros (:mod:`wasap.sparse_input`)
and no ``(n_features, batch)`` block exists; the layers above run as for dense input.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse
from numpy.typing import ArrayLike

from . import activations, kernels, sparse_input, topology
from .batches import SparseBatch, aligned_empty, gather_transposed
from .data import validate_features
from .files import atomic_file
from .optim import SAME_RATES, LayerRates, momentum_step
from .preprocessing import CLASSES_KEY, Preprocessing, class_labels

if TYPE_CHECKING:
    from .config import TrainConfig

MODEL_FORMAT = "wasap-model-1"

#: What reading a damaged archive can raise: zipfile's errors (a changed flag reads as an encrypted or
#: unsupported entry: RuntimeError, NotImplementedError), numpy's header parser (ValueError,
#: TypeError for an unknown dtype), an absurd shape in a header (MemoryError, OverflowError).
_ARCHIVE_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, OverflowError, MemoryError,
                   RecursionError, zipfile.BadZipFile, zlib.error, struct.error)

#: Column indices are int32 (:class:`SparseLayer`), so no layer may be wider.
_MAX_LAYER_SIZE = 2**31 - 1

#: Elements per block of the load-time checks: their temporaries stay small for layers of 10^8 weights.
_CHECK_BLOCK = 1 << 22

_DAMAGED_HINT = ("The file is damaged or was not written by SparseMLP.save: save the model again, or rerun the "
                 "training that wrote it.")


class ModelFileError(ValueError):
    """A model file that cannot be loaded.

    Parameters
    ----------
    path : str
        The file.
    problem : str
        What is wrong with it.
    layer : str, optional
        The layer concerned, e.g. ``"layer 1 (400 -> 100)"``.
    hint : str, optional
        What to do; by default, write the file again.
    """

    def __init__(self, path: str, problem: str, layer: str | None = None, hint: str = _DAMAGED_HINT) -> None:
        super().__init__(path, problem, layer, hint)
        self.path, self.problem, self.layer, self.hint = path, problem, layer, hint

    def __str__(self):
        where = f"{self.layer}: " if self.layer else ""
        return f"cannot load the wasap model {self.path!r}: {where}{self.problem}. {self.hint}"


class _Problem(Exception):
    """A check of a model file's contents failed; the text says what is wrong."""


_HASH_MULTIPLIER = 0x9E3779B97F4A7C15
_MASK63 = (1 << 63) - 1


#: Salts of the random streams a run draws from its seed, ``stream_seed(seed, salt, ...)``: each use
#: has its own stream, so that drawing more from one never shifts another. This one: the trainers'
#: sample orders and SET's draws; worker ``w`` of WASAP-SGD draws its orders from
#: ``stream_seed(seed, TRAINER_STREAM, 1 + w)``.
TRAINER_STREAM = 0x5E7
#: Phase two of WASAP-SGD: worker ``w``'s replica trains under the seed ``stream_seed(seed, REPLICA_STREAM, w)``.
REPLICA_STREAM = 0x2EA1


def stream_seed(*parts: int) -> int:
    """Mix integers into one seed in [0, 2**63), for independent random streams.

    Dropout of layer ``l`` at step ``t`` under seed ``s`` uses
    ``stream_seed(stream_seed(s, t), l)``: the same triple always gives the same
    mask. A run's other streams are salted (:data:`TRAINER_STREAM`,
    :data:`REPLICA_STREAM`).
    """
    value = 0x632BE59BD9B4E019
    for part in parts:
        value = ((value ^ (int(part) & ((1 << 64) - 1))) * _HASH_MULTIPLIER) & ((1 << 64) - 1)
        value ^= value >> 29
    return value & _MASK63


class SparseLayer:
    """A sparse weight matrix with its bias and momentum buffers.

    Parameters
    ----------
    n_in, n_out : int
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
        Column of each nonzero, ascending within a row.
    data : (nnz,) float32
    bias : (n_out,) float32, optional
        Zeros when omitted.
    velocity : (nnz,) float32, optional
        Momentum of the weights; zeros when omitted.
    bias_velocity : (n_out,) float32, optional
    """

    def __init__(self, n_in: int, n_out: int, indptr: ArrayLike, indices: ArrayLike, data: ArrayLike,
                 bias: ArrayLike | None = None, velocity: ArrayLike | None = None,
                 bias_velocity: ArrayLike | None = None) -> None:
        self.n_in = int(n_in)
        self.n_out = int(n_out)
        self.bias = _float32(bias if bias is not None else np.zeros(self.n_out), (self.n_out,), "bias")
        self.bias_velocity = _float32(
            bias_velocity if bias_velocity is not None else np.zeros(self.n_out), (self.n_out,), "bias_velocity"
        )
        self.set_structure(indptr, indices, data, velocity)

    @classmethod
    def random(cls, n_in: int, n_out: int, epsilon: float, rng: np.random.Generator, *, init: str = "he-uniform",
               warn: bool = True) -> SparseLayer:
        """An Erdős–Rényi layer, built in O(nnz) (see :func:`wasap.topology.erdos_renyi`)."""
        indptr, indices, data = topology.erdos_renyi(n_in, n_out, epsilon, rng, init=init, warn=warn)
        return cls(n_in, n_out, indptr, indices, data)

    def set_structure(self, indptr: ArrayLike, indices: ArrayLike, data: ArrayLike,
                      velocity: ArrayLike | None = None) -> None:
        """Replace the nonzeros (after an evolution or a pruning) and rebuild the column view."""
        indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        indices = np.ascontiguousarray(indices, dtype=np.int32)
        if indptr.shape != (self.n_in + 1,) or indptr[0] != 0 or indptr[-1] != indices.shape[0]:
            raise ValueError(f"indptr must have shape ({self.n_in + 1},), start at 0 and end at nnz.")
        nnz = indices.shape[0]
        self.indptr = indptr
        self.indices = indices
        self.data = _float32(data, (nnz,), "data")
        self.velocity = _float32(velocity if velocity is not None else np.zeros(nnz), (nnz,), "velocity")
        self.col_indptr, self.col_rows, self.col_perm = topology.column_view(indptr, indices, self.n_out)

    @property
    def nnz(self) -> int:
        """Number of weights."""
        return int(self.indices.shape[0])

    @property
    def density(self) -> float:
        """nnz over the dense layout's size."""
        return self.nnz / (self.n_in * self.n_out)

    def keys(self) -> np.ndarray:
        """Positions ``row * n_out + col`` of the nonzeros, ``(nnz,)`` int64 ascending."""
        return topology.keys_from_csr(self.indptr, self.indices, self.n_out)

    def to_scipy(self) -> scipy.sparse.csr_matrix:
        """The weights as a ``scipy.sparse.csr_matrix`` of shape ``(n_in, n_out)`` (a copy)."""
        return scipy.sparse.csr_matrix(
            (self.data.copy(), self.indices.copy(), self.indptr.copy()), shape=(self.n_in, self.n_out)
        )

    def copy(self) -> SparseLayer:
        """An independent copy, momentum included."""
        return SparseLayer(self.n_in, self.n_out, self.indptr.copy(), self.indices.copy(), self.data.copy(),
                           self.bias.copy(), self.velocity.copy(), self.bias_velocity.copy())

    def __repr__(self):
        return f"SparseLayer({self.n_in} -> {self.n_out}, nnz={self.nnz}, density={self.density:.4g})"


def _float32(values, shape, name):
    array = np.ascontiguousarray(values, dtype=np.float32)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}.")
    return array.copy() if array is values else array


class Workspace:
    """Preallocated per-layer buffers of one batch size, all ``(neurons, batch)`` float32.

    ``x_t`` is a place to gather a dense input batch into (allocated at its first use:
    a sparse batch needs none), ``activations[l]`` is
    the output of layer ``l`` (1-based; index 0 is the caller's input),
    ``derivs[l]`` holds ``f'(z_l)`` times the dropout mask and
    is overwritten in place by the backward pass with ``delta_l`` (the two are
    never needed at once), ``delta_out`` is the loss gradient at the output.
    """

    def __init__(self, sizes: Sequence[int], batch: int, *, training: bool) -> None:
        self.batch = int(batch)
        self.training = training
        # 64-byte aligned rows: the kernels' vector loads are slower across cache lines.
        buffer = aligned_empty
        empty = np.empty((0, 0), dtype=np.float32)
        self.n_features = int(sizes[0])
        self._x_t = None
        if training:
            self.activations = [None] + [buffer((n, batch)) for n in sizes[1:]]
        else:
            # Inference needs only the layer below: two buffers of the widest layer, used in turn
            # (a 5M-wide network of ten layers keeps 2, not 10, layers' activations).
            pair = [buffer(max(sizes[1:]) * batch) for _ in range(2)]
            self.activations = [None] + [pair[l % 2][:n * batch].reshape(n, batch)
                                         for l, n in enumerate(sizes[1:])]
        self.derivs = [empty] + [buffer((n, batch)) if training else empty for n in sizes[1:]]
        self.delta_out = buffer((sizes[-1], batch)) if training else empty

    @property
    def x_t(self) -> np.ndarray:
        """``(n_features, batch)`` float32, 64-byte aligned: where a dense batch is gathered."""
        if self._x_t is None:
            self._x_t = aligned_empty((self.n_features, self.batch))
        return self._x_t


class SparseMLP:
    """A multilayer perceptron whose weight matrices exist only as their nonzeros.

    Parameters
    ----------
    layers : list of SparseLayer
        Consecutive layers: ``layers[i].n_out == layers[i + 1].n_in``.
    activation : str
        Hidden activation (see :data:`wasap.activations.HIDDEN_ACTIVATIONS`).
    alpha : float or None
        All-ReLU / leaky ReLU slope.
    output_activation : {"softmax", "sigmoid", "identity"}
    loss : {"cross-entropy", "mse"}

    Examples
    --------
    >>> model = SparseMLP.random([500, 400, 100, 400, 2], epsilon=10, alpha=0.5, seed=1)
    >>> model.nnz_per_layer()  # doctest: +SKIP
    [8995, 4998, 5000, 800]
    """

    def __init__(self, layers: Sequence[SparseLayer], *, activation: str = "all-relu", alpha: float | None = 0.5,
                 output_activation: str = "softmax", loss: str = "cross-entropy") -> None:
        for below, above in zip(layers, layers[1:]):
            if below.n_out != above.n_in:
                raise ValueError(f"layers do not chain: {below!r} then {above!r}.")
        self.layers = list(layers)
        self.activation = activation
        self.alpha = alpha
        self.output_activation = output_activation
        self.loss = loss
        hidden = activations.hidden_activation_codes(activation, alpha, len(layers) - 1)
        self._codes = hidden + [activations.output_activation_code(output_activation)]
        self._workspaces = {}
        self._accumulators = None
        #: Set by :meth:`load` (or by hand): the run's extras, the labels behind the class indices, and
        #: what raw rows go through before the network (:meth:`predict`).
        self.metadata = {}
        self.classes = None
        self.preprocessing = None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def random(cls, sizes: Sequence[int], *, epsilon: float = 20.0, activation: str = "all-relu",
               alpha: float | None = 0.5, init: str = "he-uniform", output_activation: str = "softmax",
               loss: str = "cross-entropy", seed: int | np.random.Generator = 0, warn: bool = True,
               zero_output: bool = False) -> SparseMLP:
        """A network of Erdős–Rényi sparse layers.

        Parameters
        ----------
        sizes : sequence of int
            ``[n_features, hidden..., n_outputs]``.
        epsilon : float
        activation, alpha, output_activation, loss
            See the class.
        init : {"he-uniform", "xavier", "normal"}
        seed : int or numpy.random.Generator
        warn : bool
            Warn when epsilon makes a layer dense.
        zero_output : bool
            Start the output layer's weights at 0 (its topology is drawn as usual):
            the logits start equal, and the first steps teach the output layer
            before they move the hidden ones, which keeps a layer of millions of
            inputs from starting with logits of a huge spread.
        """
        sizes = [int(n) for n in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must list at least 2 positive layer sizes, got {sizes}.")
        rng = np.random.default_rng(seed)
        # A dense output layer is the norm (epsilon * (n + classes) exceeds n * classes
        # for a handful of classes), so only hidden layers warn when capped.
        last = len(sizes) - 2
        layers = [SparseLayer.random(n_in, n_out, epsilon, rng, init=init, warn=warn and l < last)
                  for l, (n_in, n_out) in enumerate(zip(sizes, sizes[1:]))]
        if zero_output:
            layers[-1].data[:] = 0.0
        return cls(layers, activation=activation, alpha=alpha, output_activation=output_activation, loss=loss)

    @classmethod
    def from_config(cls, n_features: int, n_outputs: int, config: TrainConfig, *, warn: bool = True) -> SparseMLP:
        """The network a :class:`wasap.config.TrainConfig` describes, seeded with ``config.seed``."""
        return cls.random([n_features, *config.hidden, n_outputs], epsilon=config.epsilon,
                          activation=config.activation, alpha=config.alpha, init=config.init,
                          output_activation=config.output_activation, loss=config.loss,
                          seed=config.seed, warn=warn, zero_output=config.zero_output)

    # -- shape ---------------------------------------------------------------------------------

    @property
    def sizes(self) -> list[int]:
        """Layer sizes ``[n_features, hidden..., n_outputs]``."""
        return [self.layers[0].n_in] + [layer.n_out for layer in self.layers]

    @property
    def n_features(self) -> int:
        """Inputs of the first layer."""
        return self.layers[0].n_in

    @property
    def n_outputs(self) -> int:
        """Outputs of the last layer."""
        return self.layers[-1].n_out

    @property
    def nnz(self) -> int:
        """Total number of weights."""
        return sum(layer.nnz for layer in self.layers)

    def nnz_per_layer(self) -> list[int]:
        """Weights of each layer, as a list of int."""
        return [layer.nnz for layer in self.layers]

    def __repr__(self):
        sizes = "-".join(str(n) for n in self.sizes)
        return (f"SparseMLP({sizes}, nnz={self.nnz}, activation={self.activation!r}, alpha={self.alpha}, "
                f"output={self.output_activation!r}, loss={self.loss!r})")

    def workspace(self, batch: int, *, training: bool) -> Workspace:
        """The cached :class:`Workspace` of this batch size and mode."""
        key = (int(batch), bool(training))
        ws = self._workspaces.get(key)
        if ws is None:
            if len(self._workspaces) > 8:
                self._workspaces.clear()
            ws = self._workspaces[key] = Workspace(self.sizes, batch, training=training)
        return ws

    def release_workspaces(self) -> None:
        """Free the cached batch buffers and gradient accumulators (they are rebuilt on demand)."""
        self._workspaces.clear()
        self._accumulators = None

    # -- passes ----------------------------------------------------------------------------------

    def forward(self, x_t: np.ndarray, ws: Workspace, *, dropout: float = 0.0, dropout_seed: int = 0) -> np.ndarray:
        """Forward pass of one batch.

        Parameters
        ----------
        x_t : (n_features, batch) float32, C-contiguous, or wasap.batches.SparseBatch
            The batch, transposed, or rows of a sparse ``X``.
        ws : Workspace
            Of this batch size; a training workspace also records derivatives.
        dropout : float
            Inverted dropout rate on the hidden layers (training only).
        dropout_seed : int
            Seed of this step's masks (see :func:`stream_seed`).

        Returns
        -------
        (n_outputs, batch) float32
            The last layer's output: logits for softmax, else its activation.
        """
        full = kernels.DROPOUT_RESOLUTION
        keep_threshold = int(round((1.0 - dropout) * full)) if ws.training else full
        keep_scale = 1.0 / (1.0 - dropout) if keep_threshold < full else 1.0
        a_prev = x_t
        last = len(self.layers) - 1
        for l, layer in enumerate(self.layers):
            act, slope = self._codes[l]
            a_out = ws.activations[l + 1]
            if l == 0 and isinstance(x_t, SparseBatch):
                # The pre-activation is written where the activation goes, and activated in place.
                sparse_input.sparse_preactivation(x_t.indptr, x_t.indices, x_t.data, x_t.rows, layer.indptr,
                                                  layer.indices, layer.data, layer.bias, a_out)
                kernels.activate_layer(a_out, act, slope, ws.derivs[1], ws.training,
                                       full if l == last else keep_threshold, 1.0 if l == last else keep_scale,
                                       stream_seed(dropout_seed, l))
                a_prev = a_out
                continue
            kernels.forward_layer(
                layer.col_indptr, layer.col_rows, layer.col_perm, layer.data, layer.bias, a_prev, act, slope,
                a_out, ws.derivs[l + 1], ws.training,
                full if l == last else keep_threshold, 1.0 if l == last else keep_scale,
                stream_seed(dropout_seed, l),
            )
            a_prev = a_out
        return a_prev

    def loss_and_delta(self, output: np.ndarray, target: np.ndarray, ws: Workspace) -> tuple[float, int]:
        """Loss of a batch and ``delta_L`` written into ``ws.delta_out``.

        Parameters
        ----------
        output : (n_outputs, batch) float32
        target : (batch,) int class indices (cross-entropy) or (n_outputs, batch) float32 (mse)
        ws : Workspace

        Returns
        -------
        loss : float
        n_correct : int
            Correctly classified samples (0 for mse).
        """
        if self.loss == "cross-entropy":
            loss, n_correct = kernels.softmax_cross_entropy_delta(output, target, ws.delta_out)
            return float(loss), int(n_correct)
        loss, delta = activations.mean_squared_error(output, ws.derivs[-1], target)
        ws.delta_out[...] = delta
        return loss, 0

    def backward(self, x_t: np.ndarray, ws: Workspace, *, lr: float = 0.0, momentum: float = 0.0,
                 weight_decay: float = 0.0, grads: Sequence[np.ndarray] | None = None,
                 bias_grads: Sequence[np.ndarray] | None = None, accumulate: bool = False,
                 rates: LayerRates = SAME_RATES, deferred: sparse_input.DeferredDecay | None = None) -> None:
        """Backward pass after :meth:`forward` and :meth:`loss_and_delta`.

        With ``grads`` None the weights are updated in place (momentum SGD, fused
        in the kernel, each layer at its :meth:`wasap.optim.LayerRates.layer_lr`) and so are
        the biases; otherwise the gradients are written to ``grads[l]``
        ``(nnz_l,)`` and ``bias_grads[l]`` ``(n_out_l,)`` (added to them with
        ``accumulate``) and the model is left unchanged. ``x_t`` is the batch given to
        :meth:`forward` (dense, or a :class:`~wasap.batches.SparseBatch`). With ``deferred``
        (a sparse batch, updating), the first layer's weights step through it
        (:meth:`wasap.sparse_input.DeferredDecay.end_step`).
        """
        update = grads is None
        if update:
            mode = kernels.MODE_UPDATE
        else:
            mode = kernels.MODE_ACCUMULATE if accumulate else kernels.MODE_GRADIENT
        empty = np.empty(0, dtype=np.float32)
        delta = ws.delta_out
        sizes = self.sizes
        for l in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[l]
            if l == 0 and isinstance(x_t, SparseBatch):
                self._sparse_input_backward(x_t, delta, mode, empty if update else grads[0],
                                            empty if update else bias_grads[0], rates.layer_lr(lr, 0, sizes, layer.nnz),
                                            momentum, weight_decay, deferred)
                break
            a_prev = ws.activations[l] if l > 0 else x_t
            below = ws.derivs[l]
            kernels.backward_layer(
                layer.indptr, layer.indices, layer.data, layer.velocity, a_prev, delta, below, below,
                l > 0, mode, empty if update else grads[l], rates.layer_lr(lr, l, sizes, layer.nnz), momentum,
                weight_decay, layer.bias, layer.bias_velocity, empty if update else bias_grads[l],
            )
            delta = below

    def _sparse_input_backward(self, batch, delta, mode, grad, bias_grad, lr, momentum, weight_decay, deferred):
        """The first layer's part of :meth:`backward` for a sparse batch: no delta below the input is needed."""
        layer = self.layers[0]
        kernels.bias_step(delta, layer.bias, layer.bias_velocity, bias_grad, mode, lr, momentum)
        if deferred is not None:
            if mode != kernels.MODE_UPDATE:
                raise ValueError("deferred steps update the weights: no gradient buffers with them.")
            deferred.end_step(delta, lr, momentum, weight_decay)
        elif mode == kernels.MODE_UPDATE:
            sparse_input.sparse_weight_update(batch.indptr, batch.indices, batch.data, batch.rows, layer.indptr,
                                              layer.indices, layer.data, layer.velocity, delta, lr, momentum,
                                              weight_decay)
        else:
            sparse_input.sparse_weight_gradient(batch.indptr, batch.indices, batch.data, batch.rows, layer.indptr,
                                                layer.indices, delta, grad, mode)

    def train_batch(self, x_t: np.ndarray, target: np.ndarray, *, lr: float, momentum: float, weight_decay: float,
                    dropout: float = 0.0, dropout_seed: int = 0, micro_batch: int | None = None,
                    rates: LayerRates = SAME_RATES,
                    deferred: sparse_input.DeferredDecay | None = None) -> tuple[float, int]:
        """One momentum SGD step on a batch; returns ``(loss, n_correct)``.

        Parameters
        ----------
        x_t : (n_features, batch) float32, or wasap.batches.SparseBatch
        target : (batch,) int or (n_outputs, batch) float32
        lr, momentum, weight_decay, dropout : float
        dropout_seed : int
        micro_batch : int, optional
            Split the batch into parts of at most this many samples whose
            gradients add up to the batch's, then take one step: the same
            update (dropout masks aside: each part draws its own) with
            activation buffers for ``micro_batch`` samples instead of the batch.
        rates : wasap.optim.LayerRates, optional
            Each layer's rate relative to ``lr`` (:meth:`wasap.optim.LayerRates.layer_lr`); default: ``lr``
            everywhere.
        deferred : wasap.sparse_input.DeferredDecay, optional
            For a sparse batch: the first layer's steps at gradient 0 are left pending in the rows of
            the features the batch lacks (the layer's arrays are then current only where it is
            :attr:`~wasap.sparse_input.DeferredDecay.settled`). Not with ``micro_batch``.
        """
        if deferred is not None:
            if not isinstance(x_t, SparseBatch) or deferred.layer is not self.layers[0]:
                raise ValueError("deferred steps are for a sparse batch and this model's first layer.")
            if micro_batch is not None and x_t.shape[1] > micro_batch:
                raise ValueError("deferred steps take whole batches: no micro_batch with them.")
            deferred.begin_step(x_t, rates.layer_lr(lr, 0, self.sizes, self.layers[0].nnz), momentum, weight_decay)
        if micro_batch is not None and x_t.shape[1] > micro_batch:
            return self._train_batch_in_parts(x_t, target, micro_batch, lr=lr, momentum=momentum,
                                              weight_decay=weight_decay, dropout=dropout,
                                              dropout_seed=dropout_seed, rates=rates)
        ws = self.workspace(x_t.shape[1], training=True)
        output = self.forward(x_t, ws, dropout=dropout, dropout_seed=dropout_seed)
        loss, n_correct = self.loss_and_delta(output, target, ws)
        self.backward(x_t, ws, lr=lr, momentum=momentum, weight_decay=weight_decay, rates=rates, deferred=deferred)
        return loss, n_correct

    def _train_batch_in_parts(self, x_t, target, micro_batch, *, lr, momentum, weight_decay, dropout, dropout_seed,
                              rates):
        """:meth:`train_batch` through gradient accumulation over micro-batches."""
        batch = x_t.shape[1]
        grads, bias_grads = self._gradient_buffers()
        total_loss = 0.0
        total_correct = 0
        for part, start in enumerate(range(0, batch, micro_batch)):
            stop = min(start + micro_batch, batch)
            ws = self.workspace(stop - start, training=True)
            if isinstance(x_t, SparseBatch):
                x_part = x_t.part(start, stop)
            else:
                x_part = ws.x_t
                x_part[...] = x_t[:, start:stop]
            output = self.forward(x_part, ws, dropout=dropout, dropout_seed=stream_seed(dropout_seed, part))
            part_target = target[start:stop] if target.ndim == 1 else target[:, start:stop]
            loss, n_correct = self.loss_and_delta(output, part_target, ws)
            # The part's delta is a mean over its samples; the batch's gradient is a mean over the batch.
            ws.delta_out *= np.float32((stop - start) / batch)
            self.backward(x_part, ws, grads=grads, bias_grads=bias_grads, accumulate=True)
            total_loss += loss * (stop - start)
            total_correct += n_correct
        sizes = self.sizes
        for l, (layer, grad, bias_grad) in enumerate(zip(self.layers, grads, bias_grads)):
            layer_lr = rates.layer_lr(lr, l, sizes, layer.nnz)
            momentum_step(layer.data, grad, layer.velocity, lr=layer_lr, momentum=momentum, weight_decay=weight_decay)
            momentum_step(layer.bias, bias_grad, layer.bias_velocity, lr=layer_lr, momentum=momentum)
        return total_loss / batch, total_correct

    def _gradient_buffers(self):
        """Zeroed gradient accumulators, ``(nnz_l,)`` and ``(n_out_l,)`` per layer, kept between batches."""
        buffers = self._accumulators
        if buffers is None or [g.shape[0] for g in buffers[0]] != self.nnz_per_layer():
            buffers = self._accumulators = ([np.zeros(layer.nnz, dtype=np.float32) for layer in self.layers],
                                            [np.zeros(layer.n_out, dtype=np.float32) for layer in self.layers])
        else:
            for grad in (*buffers[0], *buffers[1]):
                grad.fill(0.0)
        return buffers

    def gradient_batch(self, x_t: np.ndarray, target: np.ndarray, grads: Sequence[np.ndarray],
                       bias_grads: Sequence[np.ndarray], *, dropout: float = 0.0,
                       dropout_seed: int = 0) -> tuple[float, int]:
        """Gradients of a batch's mean loss, written into ``grads``/``bias_grads``; returns ``(loss, n_correct)``.

        ``x_t`` as in :meth:`train_batch`: dense ``(n_features, batch)`` float32 or a
        :class:`~wasap.batches.SparseBatch`.
        """
        ws = self.workspace(x_t.shape[1], training=True)
        output = self.forward(x_t, ws, dropout=dropout, dropout_seed=dropout_seed)
        loss, n_correct = self.loss_and_delta(output, target, ws)
        self.backward(x_t, ws, grads=grads, bias_grads=bias_grads)
        return loss, n_correct

    # -- inference ---------------------------------------------------------------------------------

    def eval_batch_size(self) -> int:
        """Rows per inference batch: 128, fewer for layers wider than 512k neurons.

        A multiple of 16 and at least 16: the kernels keep 16, 32, 64 or 128
        samples in registers and run fewer than 16 through scalar code, many
        times slower per row, so layers wider than 4M take 16 rows
        (``2 * 16 * 4`` bytes a neuron of the widest layer). Not more than 128:
        larger batches' activations leave the caches, and evaluation slows down
        per row (one run of ``evaluate(X, y, batch_size=...)`` per size shows it).
        """
        widest = max(self.sizes)
        rows = int(min(128, (64 << 20) // widest))
        return max(16, rows - rows % 16)

    def predict_output(self, X: ArrayLike, batch_size: int | None = None) -> np.ndarray:
        """Network outputs for rows of ``X``.

        Parameters
        ----------
        X : (n_samples, n_features) float32, or scipy.sparse
            A sparse ``X`` stays sparse (as :func:`wasap.data.validate_features` makes it CSR):
            its batches are :class:`~wasap.batches.SparseBatch` rows, never dense blocks.
        batch_size : int, optional

        Returns
        -------
        (n_samples, n_outputs) float32
            Class probabilities for softmax, else the output activations.
        """
        X = validate_features(X, name="X") if scipy.sparse.issparse(X) else np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"X has shape {X.shape} but this model takes {self.n_features} features per sample: "
                f"give an array of shape (n_samples, {self.n_features}), preprocessed like the training data."
            )
        batch_size = batch_size or self.eval_batch_size()
        out = np.empty((X.shape[0], self.n_outputs), dtype=np.float32)
        for start in range(0, X.shape[0], batch_size):
            stop = min(start + batch_size, X.shape[0])
            ws = self.workspace(stop - start, training=False)
            x_t = gather_transposed(X, slice(start, stop), None if scipy.sparse.issparse(X) else ws.x_t)
            output = self.forward(x_t, ws)
            if self.output_activation == "softmax":
                output = activations.softmax(output.copy())
            out[start:stop] = output.T
        return out

    def evaluate(self, X: ArrayLike, y: ArrayLike, batch_size: int | None = None) -> tuple[float, float]:
        """Mean loss and accuracy on ``X``, ``y``.

        Parameters
        ----------
        X : (n_samples, n_features) float32, or scipy.sparse (kept sparse, see :meth:`predict_output`)
        y : (n_samples,) int class indices, or (n_samples, n_outputs) float targets for mse

        Returns
        -------
        loss : float
        accuracy : float
            Fraction correct (NaN for mse).
        """
        output = self.predict_output(X, batch_size)
        if self.loss == "cross-entropy":
            y = np.asarray(y)
            picked = output[np.arange(y.shape[0]), y]
            loss = float(-np.mean(np.log(np.maximum(picked, 1e-30))))
            return loss, float(np.mean(output.argmax(axis=1) == y))
        target = np.asarray(y, dtype=np.float32).reshape(output.shape)
        return float(0.5 * np.mean(np.sum((output - target) ** 2, axis=1))), float("nan")

    def predict_proba(self, X: ArrayLike, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities of raw rows.

        Parameters
        ----------
        X : array-like or scipy.sparse matrix of shape (n_samples, n_features)
            Raw features: :attr:`preprocessing` (when set) is applied first. Sparse rows
            stay sparse (:meth:`predict_output`).
        batch_size : int, optional

        Returns
        -------
        ndarray of shape (n_samples, n_classes), float32
            Columns in the order of the class indices (of :attr:`classes`).

        Raises
        ------
        ValueError
            For a model trained with the mse loss, which outputs values (see :meth:`predict`).
        wasap.data.DataError
            For rows the preprocessing refuses (wrong number of features, NaN, text).
        """
        if self.loss != "cross-entropy":
            raise ValueError(f"this model was trained with loss={self.loss!r}: its outputs are values, not class "
                             "probabilities; use predict().")
        return self.predict_output(self._model_inputs(X), batch_size)

    def predict(self, X: ArrayLike, batch_size: int | None = None) -> np.ndarray:
        """Predictions for raw rows.

        Parameters
        ----------
        X : array-like or scipy.sparse matrix of shape (n_samples, n_features)
            Raw features: :attr:`preprocessing` (when set) is applied first. Sparse rows
            stay sparse (:meth:`predict_output`).
        batch_size : int, optional

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
            The most probable class of each row, as its label (:attr:`classes`) or, without
            labels, its index; for a model trained with the mse loss, its outputs, float32.

        Raises
        ------
        wasap.data.DataError
            For rows the preprocessing refuses (wrong number of features, NaN, text).
        """
        output = self.predict_output(self._model_inputs(X), batch_size)
        if self.loss != "cross-entropy":
            return output
        best = output.argmax(axis=1)
        labels = self._labels()
        return best if labels is None else labels[best]

    def _model_inputs(self, X):
        """Raw rows ``(n_samples, n_features)`` as the network's float32 inputs."""
        if self.preprocessing is not None:
            return self.preprocessing.transform(X)
        return validate_features(X, name="X")

    def _labels(self):
        """The label of each class index, or None."""
        if self.preprocessing is not None and self.preprocessing.classes is not None:
            return self.preprocessing.classes
        return self.classes

    # -- topology ----------------------------------------------------------------------------------

    def evolve(self, zeta: float, rng: np.random.Generator, *, init: str = "he-uniform") -> None:
        """One SET step on every layer (see :func:`wasap.topology.set_evolution`)."""
        # The batch buffers are rebuilt on the next batch; freeing them first keeps the
        # peak of a wide network at its weights plus activations *or* evolution temporaries.
        self.release_workspaces()
        for layer in self.layers:
            layer.set_structure(*topology.set_evolution(layer.indptr, layer.indices, layer.data, layer.velocity,
                                                        layer.n_out, zeta, rng, init=init))

    def importance_prune(self, percentile: float) -> list[np.ndarray]:
        """Importance Pruning of every hidden layer's neurons; returns the pruned neurons per hidden layer."""
        self.release_workspaces()
        pruned = []
        for layer in self.layers[:-1]:
            *arrays, neurons = topology.importance_pruning(layer.indptr, layer.indices, layer.data,
                                                           layer.velocity, layer.n_out, percentile)
            layer.set_structure(*arrays)
            pruned.append(neurons)
        return pruned

    def layer_matrix(self, index: int) -> scipy.sparse.csr_matrix:
        """Layer ``index``'s weights as a ``scipy.sparse.csr_matrix`` ``(n_in, n_out)``."""
        return self.layers[index].to_scipy()

    def copy(self) -> SparseMLP:
        """An independent copy of the model (its metadata, classes and preprocessing shared, being read-only)."""
        copied = SparseMLP([layer.copy() for layer in self.layers], activation=self.activation, alpha=self.alpha,
                           output_activation=self.output_activation, loss=self.loss)
        copied.metadata, copied.classes, copied.preprocessing = self.metadata, self.classes, self.preprocessing
        return copied

    def is_finite(self) -> bool:
        """True when every weight and bias is finite."""
        return all(np.isfinite(layer.data).all() and np.isfinite(layer.bias).all() for layer in self.layers)

    # -- persistence ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, *, metadata: dict | None = None, classes: ArrayLike | None = None,
             preprocessing: Preprocessing | None = None, include_momentum: bool = False) -> None:
        """Write the model to ``path`` (.npz), atomically: a crash never leaves half a file.

        Parameters
        ----------
        path : str or os.PathLike
        metadata : dict, optional
            JSON-serialisable extras (a run's config, say), returned by :meth:`load`'s ``metadata``.
        classes : array-like of shape (n_outputs,), optional
            The labels behind the class indices; by default those of ``preprocessing``.
        preprocessing : wasap.preprocessing.Preprocessing, optional
            What raw rows go through before the network (``Dataset.preprocessing``), for :meth:`predict`.
        include_momentum : bool
            Also store momentum buffers, to resume training exactly.

        Raises
        ------
        ValueError
            When ``classes`` or ``preprocessing`` do not fit the network, or disagree.
        """
        arrays = {}
        if preprocessing is not None:
            if preprocessing.n_features != self.n_features:
                raise ValueError(f"the preprocessing is of {preprocessing.n_features} features but the model takes "
                                 f"{self.n_features}; give the preprocessing of the data the model was trained on.")
            arrays.update(preprocessing.to_arrays())
        if classes is not None:
            classes = class_labels(classes)
            if CLASSES_KEY in arrays and not np.array_equal(arrays[CLASSES_KEY], classes):
                raise ValueError("classes and preprocessing.classes differ; give one of them, or the same labels.")
            arrays[CLASSES_KEY] = classes
        if self.loss == "cross-entropy" and CLASSES_KEY in arrays and len(arrays[CLASSES_KEY]) != self.n_outputs:
            raise ValueError(f"{len(arrays[CLASSES_KEY])} classes given for a model of {self.n_outputs} "
                             "outputs; give one label per output.")
        header = dict(format=MODEL_FORMAT, sizes=self.sizes, activation=self.activation, alpha=self.alpha,
                      output_activation=self.output_activation, loss=self.loss, metadata=metadata or {})
        arrays["header"] = np.array(json.dumps(header))
        for l, layer in enumerate(self.layers):
            arrays[f"indptr_{l}"] = layer.indptr
            arrays[f"indices_{l}"] = layer.indices
            arrays[f"data_{l}"] = layer.data
            arrays[f"bias_{l}"] = layer.bias
            if include_momentum:
                arrays[f"velocity_{l}"] = layer.velocity
                arrays[f"bias_velocity_{l}"] = layer.bias_velocity
        with atomic_file(path, "wb") as stream:
            np.savez(stream, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SparseMLP:
        """Read a model written by :meth:`save`, after checking everything in the file.

        Every layer's arrays are checked before any is used: present, 1-D, of integer (indptr,
        indices) or floating-point (data, bias, momentum) type and of the layer's shapes; indptr
        starts at 0, never decreases and ends at the number of weights; column indices lie in
        ``[0, n_out)`` and increase strictly within each row; every value is finite.

        Returns
        -------
        model : SparseMLP
            Also carries ``model.metadata`` (dict), ``model.classes`` (array or None) and
            ``model.preprocessing`` (:class:`wasap.preprocessing.Preprocessing`, or None for files
            saved without it).

        Raises
        ------
        ModelFileError
            For a missing, unreadable, truncated or damaged file, or one that is not a wasap model;
            the message names the file, the layer and the problem.
        """
        path = os.fspath(path)
        arrays = _read_archive(path)
        try:
            header = _checked_header(arrays)
        except _Problem as problem:
            raise ModelFileError(path, str(problem)) from None
        sizes = header["sizes"]
        checked = []
        for l, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            try:
                checked.append(_checked_layer_arrays(arrays, l, n_in, n_out))
            except _Problem as problem:
                raise ModelFileError(path, str(problem), layer=f"layer {l} ({n_in} -> {n_out})") from None
        try:
            classes = _checked_classes(arrays, header)
            preprocessing = Preprocessing.from_arrays(arrays)
        except (_Problem, ValueError) as problem:
            raise ModelFileError(path, str(problem).rstrip(".")) from None
        if preprocessing is not None and preprocessing.n_features != sizes[0]:
            raise ModelFileError(path, f"its preprocessing is of {preprocessing.n_features} features but its input "
                                       f"layer takes {sizes[0]}")
        layers = [SparseLayer(n_in, n_out, **arrays_of_layer)
                  for (n_in, n_out), arrays_of_layer in zip(zip(sizes, sizes[1:]), checked)]
        model = cls(layers, activation=header["activation"], alpha=header["alpha"],
                    output_activation=header["output_activation"], loss=header["loss"])
        model.metadata = header.get("metadata", {})
        model.classes = classes
        model.preprocessing = preprocessing
        return model

#: How a zip archive (a local file header, or the end record of an empty archive) and a .npy file start.
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"

#: Each layer's arrays: name, numpy kinds accepted, whether required.
_LAYER_ARRAYS = (("indptr", "iu", True), ("indices", "iu", True), ("data", "f", True), ("bias", "f", True),
                 ("velocity", "f", False), ("bias_velocity", "f", False))


def _read_archive(path):
    """Every array of the .npz at ``path``, by name; ModelFileError for anything that stops the reading."""
    try:
        with open(path, "rb") as stream:
            start = stream.read(len(_NPY_MAGIC))
        if not start.startswith(_ZIP_MAGICS) and start != _NPY_MAGIC:
            # np.load would try pickle next, and its message advises loading the file unsafely.
            raise ModelFileError(path, "it is empty" if not start else
                                 "it is not an .npz archive (a model file is a zip archive of arrays)",
                                 hint="Give a model.npz written by SparseMLP.save or by a training run.")
        loaded = np.load(path, allow_pickle=False)
    except ModelFileError:
        raise
    except FileNotFoundError:
        raise ModelFileError(path, "there is no such file",
                             hint="Check the path: a training run writes model.npz into its output folder.") from None
    except IsADirectoryError:
        raise ModelFileError(path, "it is a folder",
                             hint="Give the model file itself, e.g. the model.npz of a run's output folder.") from None
    except _ARCHIVE_ERRORS as error:
        raise ModelFileError(path, f"it is not a readable .npz archive ({type(error).__name__}: {error})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ModelFileError(path, "it is a single .npy array, not an .npz archive, so not a wasap model",
                             hint="Give a model.npz written by SparseMLP.save or by a training run.")
    try:
        with loaded as archive:
            # Entries are read lazily: a damaged one fails here, on first access.
            return {name: archive[name] for name in archive.files}
    except _ARCHIVE_ERRORS as error:
        raise ModelFileError(path, f"the archive is truncated or damaged ({type(error).__name__}: {error})") from None


def _checked_header(arrays):
    """The header as a dict whose format, sizes, activations, loss and metadata have been checked."""
    if "header" not in arrays:
        raise _Problem("it is an .npz file but not a wasap model (no 'header' entry)")
    raw = arrays["header"]
    if raw.shape != () or raw.dtype.kind != "U":
        raise _Problem(f"its header is an array of shape {raw.shape} and dtype {raw.dtype}, not one JSON text")
    try:
        header = json.loads(str(raw))
    except (ValueError, RecursionError) as error:
        raise _Problem(f"its header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise _Problem(f"its header is a JSON {type(header).__name__}, not an object")
    if header.get("format") != MODEL_FORMAT:
        raise _Problem(f"it has model format {header.get('format')!r}; this wasap reads {MODEL_FORMAT!r}")
    sizes = header.get("sizes")
    if (not isinstance(sizes, list) or len(sizes) < 2
            or not all(type(n) is int and 1 <= n <= _MAX_LAYER_SIZE for n in sizes)):
        raise _Problem(f"its header's sizes are {sizes!r}; they must list at least 2 layer sizes, each a positive "
                       f"integer up to {_MAX_LAYER_SIZE}")
    for key, known in (("activation", activations.HIDDEN_ACTIVATIONS),
                       ("output_activation", activations.OUTPUT_ACTIVATIONS), ("loss", activations.LOSSES)):
        if header.get(key) not in known:
            raise _Problem(f"its header's {key} is {header.get(key)!r}; it must be one of {', '.join(known)}")
    alpha = header.get("alpha")
    if alpha is not None and not (type(alpha) in (int, float) and math.isfinite(alpha)):
        raise _Problem(f"its header's alpha is {alpha!r}; it must be a finite number or null")
    if alpha is None and header["activation"] == "all-relu" and len(sizes) > 2:
        raise _Problem("its header gives the all-relu activation no alpha (the slope it needs)")
    if not isinstance(header.get("metadata", {}), dict):
        raise _Problem(f"its header's metadata is a {type(header['metadata']).__name__}, not a JSON object")
    return header


def _checked_layer_arrays(arrays, l, n_in, n_out):
    """Layer ``l``'s arrays, checked and cast to the dtypes of :class:`SparseLayer`, as its keyword arguments."""
    found = {}
    for name, kinds, required in _LAYER_ARRAYS:
        key = f"{name}_{l}"
        if key not in arrays:
            if required:
                raise _Problem(f"the array {key} is missing")
            continue
        array = arrays[key]
        if array.ndim != 1:
            raise _Problem(f"{key} has shape {array.shape}; it must be 1-D")
        if array.dtype.kind not in kinds:
            kind = "integers" if kinds == "iu" else "floating-point numbers"
            raise _Problem(f"{key} has dtype {array.dtype}; it must hold {kind}")
        found[name] = array
    nnz = found["indices"].shape[0]
    per_weight = (nnz, f"one per weight, as indices_{l}")
    lengths = dict(indptr=(n_in + 1, "n_in + 1"), indices=per_weight, data=per_weight, velocity=per_weight,
                   bias=(n_out, "n_out"), bias_velocity=(n_out, "n_out"))
    for name, array in found.items():
        length, meaning = lengths[name]
        if array.shape[0] != length:
            raise _Problem(f"{name}_{l} has {array.shape[0]} entries; it must have {length} ({meaning})")
    indptr = _checked_indptr(found["indptr"], nnz, f"indptr_{l}")
    layer = dict(indptr=indptr, indices=_checked_indices(found["indices"], indptr, n_out, f"indices_{l}"))
    for name in ("data", "bias", "velocity", "bias_velocity"):
        if name in found:
            layer[name] = _finite_float32(found[name], f"{name}_{l}")
    return layer


def _blocks(n):
    """``(start, stop)`` of consecutive blocks of at most :data:`_CHECK_BLOCK` of ``n`` elements."""
    for start in range(0, n, _CHECK_BLOCK):
        yield start, min(start + _CHECK_BLOCK, n)


def _checked_indptr(indptr, nnz, key):
    """``indptr`` as int64 once it starts at 0, never decreases and ends at ``nnz``."""
    if indptr[0] != 0:
        raise _Problem(f"{key} starts at {indptr[0]}; it must start at 0")
    if indptr[-1] != nnz:
        raise _Problem(f"{key} ends at {indptr[-1]}, but the layer has {nnz} weights; it must end at that number")
    for start, stop in _blocks(indptr.shape[0] - 1):
        falls = indptr[start + 1:stop + 1] < indptr[start:stop]
        if falls.any():
            row = start + int(np.argmax(falls))
            raise _Problem(f"{key} decreases after row {row} ({indptr[row]}, then {indptr[row + 1]}); "
                           "it must never decrease")
    # Every entry now lies in [0, nnz]: the cast is exact whatever the stored integer type.
    return indptr.astype(np.int64, copy=False)


def _checked_indices(indices, indptr, n_out, key):
    """``indices`` as int32 once each lies in [0, n_out) and each row's increase strictly."""
    nnz = indices.shape[0]
    if nnz == 0:
        return indices.astype(np.int32)
    low, high = indices.min(), indices.max()
    if low < 0 or high >= n_out:
        bad = low if low < 0 else high
        position = int(np.flatnonzero(indices == bad)[0])
        raise _Problem(f"{key} holds the column {bad} at position {position} (row {_row_of(indptr, position)}), "
                       f"outside the layer's columns 0..{n_out - 1}")
    for start, stop in _blocks(nnz):
        first = max(start, 1)
        if first >= stop:
            continue
        rises = indices[first:stop] > indices[first - 1:stop - 1]
        # A row's first weight may lie left of the previous row's last one.
        lo, hi = np.searchsorted(indptr, [first, stop])
        rises[indptr[lo:hi] - first] = True
        if not rises.all():
            position = first + int(np.argmin(rises))
            raise _Problem(f"row {_row_of(indptr, position)} of {key} is not sorted and unique: the column "
                           f"{indices[position]} follows the column {indices[position - 1]} at position {position}; "
                           "the columns of each row must increase strictly")
    return indices.astype(np.int32, copy=False)


def _row_of(indptr, position):
    """The row that holds the nonzero at ``position``."""
    return int(np.searchsorted(indptr, position, side="right")) - 1


def _finite_float32(values, key):
    """``values`` as float32 once every one is finite in float32."""
    with np.errstate(over="ignore"):  # values beyond float32's range become inf, reported below
        converted = np.asarray(values, dtype=np.float32)
    for start, stop in _blocks(converted.shape[0]):
        finite = np.isfinite(converted[start:stop])
        if not finite.all():
            position = start + int(np.argmin(finite))
            raise _Problem(f"{key} holds {values[position]} at position {position}; every value must be a finite "
                           "float32 number")
    return converted


def _checked_classes(arrays, header):
    """The file's class labels (None when it has none), checked against the output layer."""
    if CLASSES_KEY not in arrays:
        return None
    try:
        classes = class_labels(arrays[CLASSES_KEY])
    except ValueError as error:
        raise _Problem(f"its classes are unusable: {str(error).rstrip('.')}") from None
    n_outputs = header["sizes"][-1]
    if header["loss"] == "cross-entropy" and len(classes) != n_outputs:
        raise _Problem(f"it lists {len(classes)} classes for {n_outputs} outputs; it needs one label per output")
    return classes
