"""The parameter server of WASAP-SGD: apply gradients as they arrive, evolve the topology, average replicas.

Phase one (Algorithm 1, lines 11-21): each gradient is applied once, as it
arrives, with momentum SGD (paper eq. 1, :func:`wasap.optim.momentum_update`)::

    v <- mu * v - lr * (g + weight_decay * w);   w <- w + v      (biases: no decay)

In the asynchronous variant the worker that computed it applies it to every
layer whose topology has not changed since its pull
(:meth:`~.transport.WorkerTransport.apply_gradient`); :meth:`ParameterServer.apply`
does the rest. In the synchronous variant the server applies the average.

Once per epoch's worth of samples the server runs Importance Pruning (when
due) and SET evolution on a private copy (:mod:`wasap.topology` through
:class:`~wasap.model.SparseMLP`), copies the result into the served layers and
bumps their topology version. A gradient computed on an older version is
masked ("RetainValidUpdates"): :func:`wasap.topology.remap` of that version's
keys to the current ones says where each entry goes, and exactly the
connections that still exist are updated (new connections are left alone).
The keys of the last few versions are kept for this.

The synchronous variant (WASSP-SGD) averages the K gradients of one step, all
computed on the same version, with the learning rate scaled by K and a linear
warm-up (Goyal et al. 2017; :class:`wasap.optim.MomentumSGD`).

Phase two's end (Algorithm 1, line 37): :func:`average_replicas` averages the
replicas over the union of their topologies and keeps the largest weights.
"""

import collections
import time

import numpy as np
from numba import njit

from .. import topology
from ..config import TrainConfig
from ..model import TRAINER_STREAM, SparseLayer, SparseMLP, stream_seed
from ..optim import MomentumSGD, momentum_step, momentum_update
from .messages import GradientPushed
from .transport import ServerTransport

_KERNEL = dict(cache=True, nogil=True, fastmath=True, error_model="numpy")


@njit(**_KERNEL)
def _momentum_where(data, velocity, grad, where, lr, momentum, weight_decay):
    # The one update rule, through a remapping of a stale gradient.
    lr = np.float32(lr)
    momentum = np.float32(momentum)
    weight_decay = np.float32(weight_decay)
    for k in range(grad.shape[0]):
        j = where[k]
        if j < 0:
            continue  # the connection no longer exists
        data[j], velocity[j] = momentum_update(data[j], grad[k], velocity[j], lr, momentum, weight_decay)


def apply_gradient(data: np.ndarray, velocity: np.ndarray, grad: np.ndarray, *, lr: float, momentum: float,
                   weight_decay: float, where: "np.ndarray | None" = None) -> None:
    """Momentum SGD on a layer's nonzeros, in place, optionally through a remapping.

    Parameters
    ----------
    data, velocity : (nnz,) float32
        The current layer's weights and momentum, updated in place.
    grad : (m,) float32
        A gradient in the nonzero order of the version it was computed on.
    lr, momentum, weight_decay : float
    where : (m,) int64, optional
        ``where[k]``: index of gradient entry ``k`` in the current order, or -1
        for a connection that no longer exists (:func:`wasap.topology.remap`).
        None: the gradient is already in the current order (``m == nnz``).
    """
    if where is None:
        if grad.shape[0] != data.shape[0]:
            raise ValueError(f"a gradient of {grad.shape[0]} entries for a layer of {data.shape[0]}")
        momentum_step(data, grad, velocity, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        _momentum_where(data, velocity, grad, where, float(lr), float(momentum), float(weight_decay))


def warm_up_update_kernels() -> None:
    """Compile (or load from the cache) the update kernels now, not under a layer's lock (server and workers)."""
    one = np.zeros(1, dtype=np.float32)
    apply_gradient(one, one.copy(), one.copy(), lr=0.0, momentum=0.0, weight_decay=0.0)
    apply_gradient(one, one.copy(), one.copy(), lr=0.0, momentum=0.0, weight_decay=0.0,
                   where=np.zeros(1, dtype=np.int64))


class ServerStats:
    """Counters of the server's work (reported in profile.json)."""

    def __init__(self):
        self.updates = 0
        self.gradients = 0
        self.stale = 0
        self.dropped = 0
        self.worker_applied = 0  # layer parts that workers applied themselves
        self.apply_seconds = 0.0
        self.lock_hold_seconds = 0.0
        self.lock_holds = 0
        self.evolve_seconds = 0.0

    def as_dict(self, training_seconds):
        return dict(updates=self.updates, gradients=self.gradients, stale=self.stale, dropped=self.dropped,
                    worker_applied_layers=self.worker_applied,
                    apply_seconds=self.apply_seconds,
                    apply_seconds_mean=self.apply_seconds / self.updates if self.updates else None,
                    lock_hold_seconds_mean=self.lock_hold_seconds / self.lock_holds if self.lock_holds else None,
                    evolve_seconds=self.evolve_seconds,
                    updates_per_second=self.updates / training_seconds if training_seconds > 0 else None,
                    apply_share_of_training_time=self.apply_seconds / training_seconds
                    if training_seconds > 0 else None)


class ParameterServer:
    """Phase one's server over a :class:`~.transport.ServerTransport`.

    Parameters
    ----------
    transport : ServerTransport
    config : wasap.config.TrainConfig
    n_workers : int
    steps_per_epoch : int
        Updates per epoch (for the synchronous variant's warm-up).
    keep_versions : int
        How many past topologies' keys are kept for masking; a gradient older
        than that is dropped (counted in ``stats.dropped``).

    Attributes
    ----------
    rng : numpy.random.Generator
        Evolution (and, in the synchronous variant, sample orders): seeded as
        :class:`wasap.train.SequentialTrainer`'s, so one synchronous worker
        draws the very same numbers in the same order.
    """

    def __init__(self, transport: ServerTransport, config: TrainConfig, *, n_workers: int, steps_per_epoch: int,
                 keep_versions: int = 8):
        self.transport = transport
        self.config = config
        self.n_workers = n_workers
        self.rng = np.random.default_rng(stream_seed(config.seed, TRAINER_STREAM))
        scale = n_workers if config.sync else 1
        self.optimizer = MomentumSGD(lr=config.lr * scale, momentum=config.momentum,
                                     weight_decay=config.weight_decay,
                                     warmup_steps=config.warmup_epochs * steps_per_epoch if config.sync else 0)
        self.rates = config.layer_rates()
        self.keep_versions = keep_versions
        self.n_layers = transport.n_layers
        self.versions = [0] * self.n_layers
        self.history = []
        for l in range(self.n_layers):
            with transport.lock(l):
                state = transport.layer_state(l)
                keys = topology.keys_from_csr(state.indptr, state.indices, transport.sizes[l + 1])
            self.history.append(collections.OrderedDict({0: keys}))
        self._where_cache = {}
        self._states = {}
        self._slots = {}
        self.stats = ServerStats()
        warm_up_update_kernels()
        self._average = None

    # -- phase one: gradients -------------------------------------------------------------------------

    def _where(self, layer, version):
        """Remapping of ``version``'s nonzeros to the current topology, or None when forgotten."""
        key = (layer, version, self.versions[layer])
        where = self._where_cache.get(key)
        if where is None:
            old = self.history[layer].get(version)
            if old is None:
                return None
            where = topology.remap(old, self.history[layer][self.versions[layer]])
            self._where_cache[key] = where
        return where

    def _state(self, layer):
        """Views of the served layer, cached per version (the server is the only writer of versions)."""
        state = self._states.get(layer)
        if state is None or state.version != self.versions[layer]:
            with self.transport.lock(layer):
                state = self._states[layer] = self.transport.layer_state(layer)
        return state

    def _slot(self, worker, slot, layer):
        """Full-capacity views ``(grad, bias_grad)`` of a gradient slot, cached (a few dict lookups per
        update add up at thousands of updates per second)."""
        key = (worker, slot, layer)
        views = self._slots.get(key)
        if views is None:
            views = self._slots[key] = self.transport.gradient(worker, slot, layer)
        return views

    def _apply_layer(self, layer, grad, bias_grad, version, lr):
        """Apply one layer's gradient, in ``version``'s nonzero order, under the layer's lock.

        Returns False when ``version`` is too old to remap (the weights' part is dropped)."""
        cfg = self.config
        state = self._state(layer)
        old_keys = self.history[layer].get(version)
        lr = self.rates.layer_lr(lr, layer, self.transport.sizes, state.nnz)
        with self.transport.lock(layer):
            held = time.perf_counter()
            if version == self.versions[layer]:
                apply_gradient(state.data, state.velocity, grad[:state.nnz], lr=lr,
                               momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            elif old_keys is not None:
                apply_gradient(state.data, state.velocity, grad[:old_keys.shape[0]], lr=lr,
                               momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               where=self._where(layer, version))
            # Biases do not change with the topology: always applied (no weight decay).
            momentum_step(state.bias, bias_grad, state.bias_velocity, lr=lr, momentum=cfg.momentum)
            self.stats.lock_hold_seconds += time.perf_counter() - held
            self.stats.lock_holds += 1
        return old_keys is not None

    def apply(self, gradient: GradientPushed) -> None:
        """Apply the layers of a pushed gradient that its worker did not apply itself.

        Layers flagged in ``gradient.applied`` were applied by the worker already
        (:meth:`~.transport.WorkerTransport.apply_gradient`: their version had
        not changed); the rest, stale ones, are remapped here.
        """
        started = time.perf_counter()
        lr = self.optimizer.lr_at(self.stats.updates)
        stale = dropped = False
        versions = gradient.versions
        for l in range(self.n_layers):
            if gradient.applied[l]:
                self.stats.worker_applied += 1
                continue
            grad, bias_grad = self._slot(gradient.worker, gradient.slot, l)
            stale |= versions[l] != self.versions[l]
            dropped |= not self._apply_layer(l, grad, bias_grad, versions[l], lr)
        self.stats.updates += 1
        self.stats.gradients += 1
        self.stats.stale += stale
        self.stats.dropped += dropped
        self.stats.apply_seconds += time.perf_counter() - started

    def count_self_applied(self, steps: int) -> None:
        """Count ``steps`` gradients that their workers applied to every layer themselves."""
        self.stats.updates += steps
        self.stats.gradients += steps
        self.stats.worker_applied += steps * self.n_layers

    def apply_average(self, gradients: "list[GradientPushed]") -> None:
        """Synchronous step: average ``gradients`` (one per worker, all on the current versions), apply once.

        Parameters
        ----------
        gradients : list of GradientPushed
            In worker order: the sum's order, so that a run repeats exactly.
        """
        started = time.perf_counter()
        lr = self.optimizer.lr_at(self.stats.updates)
        total = sum(m.n_samples for m in gradients)
        for l in range(self.n_layers):
            if any(m.versions[l] != self.versions[l] for m in gradients):
                raise RuntimeError("a synchronous gradient was computed on an outdated topology")
            nnz = self.history[l][self.versions[l]].shape[0]
            if len(gradients) == 1:
                grad, bias_grad = self._slot(gradients[0].worker, gradients[0].slot, l)
            else:
                # The mean over all K * B samples: each worker's mean weighted by its batch size.
                grad = np.zeros(nnz, dtype=np.float32)
                bias_grad = np.zeros(self.transport.sizes[l + 1], dtype=np.float32)
                for m in gradients:
                    g, bg = self._slot(m.worker, m.slot, l)
                    weight = np.float32(m.n_samples / total)
                    grad += weight * g[:nnz]
                    bias_grad += weight * bg
            self._apply_layer(l, grad, bias_grad, self.versions[l], lr)
        self.stats.updates += 1
        self.stats.gradients += len(gradients)
        self.stats.apply_seconds += time.perf_counter() - started

    def nnz_per_layer(self) -> "list[int]":
        """nnz of each served layer (of the current version)."""
        return [int(self.history[l][self.versions[l]].shape[0]) for l in range(self.n_layers)]

    # -- phase one: topology ------------------------------------------------------------------------------

    def importance_pruning_due(self, epoch: int) -> bool:
        """Whether Importance Pruning runs after ``epoch`` (:func:`wasap.topology.importance_pruning_due`)."""
        return topology.importance_pruning_due(self.config, epoch)

    def end_of_epoch(self, epoch: int, snapshot: SparseMLP) -> None:
        """Importance Pruning when due, then SET, on a copy of ``snapshot``; serve the result as a new version.

        Parameters
        ----------
        epoch : int
            The epoch just finished (1-based).
        snapshot : SparseMLP
            A private copy of the served model (momentum included); not modified.
        """
        started = time.perf_counter()
        work = snapshot.copy()
        if self.importance_pruning_due(epoch):
            work.importance_prune(self.config.ip_percentile)
        work.evolve(self.config.zeta, self.rng, init=self.config.init)
        for l, layer in enumerate(work.layers):
            version = self.versions[l] + 1
            self.transport.write_layer(l, version, layer.indptr, layer.indices, layer.data, layer.velocity)
            self.versions[l] = version
            self.history[l][version] = layer.keys()
            while len(self.history[l]) > self.keep_versions:
                self.history[l].popitem(last=False)
        self._where_cache.clear()
        self.stats.evolve_seconds += time.perf_counter() - started


def average_replicas(replicas: "list[list[SparseLayer]]", targets: "list[int]") -> "list[SparseLayer]":
    """Average replicas over the union of their topologies, then keep the largest weights per layer.

    A connection missing from a replica counts as 0 (paper eq. 2); then each
    layer keeps its ``targets[l]`` largest-magnitude weights
    (:func:`wasap.topology.keep_largest`). Biases are averaged.

    Parameters
    ----------
    replicas : list of list of SparseLayer
        K replicas of the same layer sizes.
    targets : list of int
        nnz to keep per layer.

    Returns
    -------
    list of SparseLayer
        Momentum zero.
    """
    layers = []
    for l, target in enumerate(targets):
        members = [replica[l] for replica in replicas]
        n_in, n_out = members[0].n_in, members[0].n_out
        keys, values = topology.average_layers([m.keys() for m in members], [m.data for m in members])
        keys, values = topology.keep_largest(keys, values, int(target))
        indptr, indices = topology.csr_from_keys(keys, n_in, n_out)
        bias = np.mean([m.bias for m in members], axis=0, dtype=np.float64).astype(np.float32)
        layers.append(SparseLayer(n_in, n_out, indptr, indices, values, bias))
    return layers


def averaged_model(replicas: "list[list[SparseLayer]]", targets: "list[int]", template: SparseMLP) -> SparseMLP:
    """A :class:`SparseMLP` of :func:`average_replicas`, with ``template``'s activations and loss."""
    return SparseMLP(average_replicas(replicas, targets), activation=template.activation, alpha=template.alpha,
                     output_activation=template.output_activation, loss=template.loss)
