"""The served state laid out as named arrays, and the server's side of it over views of those arrays.

Both transports keep a run's served state in the same layout of named arrays
(:func:`served_layout`): shared-memory blocks on one machine
(:mod:`.shm_transport`), the parameter server's memory behind an MPI window
across machines (:mod:`.mpi_transport`). On the server, either way, each name is
a numpy view of memory the workers reach too, so everything the server does
with the served model (read and write layers, read gradient and replica slots,
hand out sample orders) is written once here, in :class:`ServedArraysServer`,
over those views and the transport's :meth:`~.transport.ServerTransport.lock`.

Layout (``L`` layers, ``K`` workers, ``S`` slots per worker, capacity ``cap_l`` =
the layer's nnz at the start, which only shrinks):

- ``control`` (4,) int64: the command word (:class:`~.messages.Command`);
- ``meta`` (L, 2) int64: topology version and nnz of each layer;
- ``indptr_l`` (n_in + 1,) int64, ``indices_l`` (cap_l,) int32, ``data_l`` and
  ``velocity_l`` (cap_l,) float32, ``bias_l`` and ``bias_velocity_l`` (n_out,) float32;
- ``grad_l`` (K, S, cap_l) float32, ``bias_grad_l`` (K, S, n_out) float32: the
  gradient slots, in the order of the layer's nonzeros of the version they were
  computed on;
- ``orders`` (K, max partition) int64: sample orders the server draws (synchronous variant);
- ``times`` (K, phases, columns) float64: each worker's :class:`~wasap.profiling.TimeAccount`;
- ``beats`` (K, 3) int64: each worker's heartbeat: a count it raises whenever it moves on, what it is
  doing (an :class:`~.messages.Activity`) and that activity's detail (a layer, an epoch);
- with phase two, ``rep_indptr_l`` (K, n_in + 1), ``rep_indices_l`` (K, cap_l),
  ``rep_data_l`` (K, cap_l), ``rep_bias_l`` (K, n_out), ``rep_nnz`` (K, L): one replica per worker.
"""

from abc import abstractmethod
from typing import Callable, ContextManager, Mapping

import numpy as np

from ..model import SparseLayer, SparseMLP
from ..profiling import time_table_shape
from .messages import Command
from .transport import LayerState, ServerTransport, StallWatch


def served_layout(model: SparseMLP, *, n_workers: int, n_slots: int, max_partition: int, replicas: bool) -> dict:
    """``{name: (shape, dtype)}`` of a run's served state (the module docstring's layout).

    Parameters
    ----------
    model : SparseMLP
        Its layers' sizes and nnz (the capacities).
    n_workers, n_slots : int
    max_partition : int
        Rows of the largest worker's partition (the length of a sample order).
    replicas : bool
        Include the replica slots of phase two.
    """
    n_layers = len(model.layers)
    layout = {"control": ((4,), np.int64), "meta": ((n_layers, 2), np.int64),
              "orders": ((n_workers, max_partition), np.int64),
              "times": (time_table_shape(n_workers), np.float64), "beats": ((n_workers, 3), np.int64)}
    for l, layer in enumerate(model.layers):
        cap, n_in, n_out = layer.nnz, layer.n_in, layer.n_out
        layout.update({f"indptr_{l}": ((n_in + 1,), np.int64), f"indices_{l}": ((cap,), np.int32),
                       f"data_{l}": ((cap,), np.float32), f"velocity_{l}": ((cap,), np.float32),
                       f"bias_{l}": ((n_out,), np.float32), f"bias_velocity_{l}": ((n_out,), np.float32),
                       f"grad_{l}": ((n_workers, n_slots, cap), np.float32),
                       f"bias_grad_{l}": ((n_workers, n_slots, n_out), np.float32)})
        if replicas:
            layout.update({f"rep_indptr_{l}": ((n_workers, n_in + 1), np.int64),
                           f"rep_indices_{l}": ((n_workers, cap), np.int32),
                           f"rep_data_{l}": ((n_workers, cap), np.float32),
                           f"rep_bias_{l}": ((n_workers, n_out), np.float32)})
    if replicas:
        layout["rep_nnz"] = ((n_workers, n_layers), np.int64)
    return layout


def serve_model(arrays: Mapping[str, np.ndarray], model: SparseMLP) -> None:
    """Write ``model`` into the served arrays as topology version 0, and the command word WAIT."""
    for l, layer in enumerate(model.layers):
        arrays["meta"][l] = (0, layer.nnz)
        arrays[f"indptr_{l}"][...] = layer.indptr
        arrays[f"indices_{l}"][...] = layer.indices
        arrays[f"data_{l}"][...] = layer.data
        arrays[f"velocity_{l}"][...] = layer.velocity
        arrays[f"bias_{l}"][...] = layer.bias
        arrays[f"bias_velocity_{l}"][...] = layer.bias_velocity
    arrays["control"][0] = Command.WAIT


def read_served_model(arrays: Mapping[str, np.ndarray], lock: Callable[[int], ContextManager], sizes: list,
                      model_kind: dict) -> SparseMLP:
    """A private copy of the served model; ``lock(l)``: a context manager holding layer ``l`` (each side's
    own, which waits in steps and gives up as that side must)."""
    layers = []
    for l in range(len(sizes) - 1):
        with lock(l):
            nnz = int(arrays["meta"][l, 1])
            copies = (arrays[f"indptr_{l}"].copy(), arrays[f"indices_{l}"][:nnz].copy(),
                      arrays[f"data_{l}"][:nnz].copy(), arrays[f"bias_{l}"].copy(),
                      arrays[f"velocity_{l}"][:nnz].copy(), arrays[f"bias_velocity_{l}"].copy())
        # The column view is built outside the lock.
        layers.append(SparseLayer(sizes[l], sizes[l + 1], *copies))
    return SparseMLP(layers, **model_kind)


class ServedArraysServer(ServerTransport):
    """The server's methods that work on the served arrays alone, over ``self.blocks`` (name -> view).

    A transport sets ``blocks``, ``caps`` (each layer's capacity), ``sizes`` and ``model_kind``, implements
    :meth:`~.transport.ServerTransport.lock` and :meth:`replica_gathered`, and calls :meth:`visible`
    where writes of the workers must be seen and the server's own must be made visible to them.
    """

    blocks: Mapping[str, np.ndarray]
    caps: list
    model_kind: dict

    def _describe_run(self, model: SparseMLP, n_workers: int, n_slots: int, stall_timeout) -> None:
        """The attributes every server side keeps: the run's shape, the served layers' capacities, the stall
        watch (None: never), the idle time, and whether it holds every lock or has begun to shut down."""
        self.n_workers = n_workers
        self.n_slots = n_slots
        self.n_layers = len(model.layers)
        self.sizes = model.sizes
        self.model_kind = dict(activation=model.activation, alpha=model.alpha,
                               output_activation=model.output_activation, loss=model.loss)
        self.caps = [layer.nnz for layer in model.layers]
        self.stall_timeout = stall_timeout
        self._watch = None if stall_timeout is None else StallWatch(n_workers, stall_timeout)
        self.idle_seconds = 0.0
        self._holding_all = False  # inside model_lock(): the server's thread holds every layer's lock
        self._expected_exit = False

    def visible(self) -> None:
        """Make the workers' writes visible to the server's views and the server's to the workers
        (a memory barrier where a transport needs one; shared memory does not)."""

    @abstractmethod
    def replica_gathered(self, worker: int) -> None:
        """``worker``'s replica slot has been read: it may publish the next one."""

    def layer_state(self, layer):
        b = self.blocks
        version, nnz = (int(v) for v in b["meta"][layer])
        return LayerState(version=version, nnz=nnz, indptr=b[f"indptr_{layer}"], indices=b[f"indices_{layer}"][:nnz],
                          data=b[f"data_{layer}"][:nnz], velocity=b[f"velocity_{layer}"][:nnz],
                          bias=b[f"bias_{layer}"], bias_velocity=b[f"bias_velocity_{layer}"])

    def write_layer(self, layer, version, indptr, indices, data, velocity):
        b = self.blocks
        nnz = indices.shape[0]
        if nnz > self.caps[layer]:
            raise ValueError(f"layer {layer} cannot grow beyond its {self.caps[layer]} served slots (asked {nnz}).")
        with self.lock(layer):
            b[f"indptr_{layer}"][...] = indptr
            b[f"indices_{layer}"][:nnz] = indices
            b[f"data_{layer}"][:nnz] = data
            b[f"velocity_{layer}"][:nnz] = velocity
            b["meta"][layer] = (version, nnz)

    def read_model(self):
        return read_served_model(self.blocks, self.lock, self.sizes, self.model_kind)

    def gradient(self, worker, slot, layer):
        return self.blocks[f"grad_{layer}"][worker, slot], self.blocks[f"bias_grad_{layer}"][worker, slot]

    def write_order(self, worker, order):
        self.blocks["orders"][worker, :order.shape[0]] = order
        self.visible()

    def gather_replica(self, worker):
        b = self.blocks
        layers = []
        for l in range(self.n_layers):
            nnz = int(b["rep_nnz"][worker, l])
            n_in, n_out = self.sizes[l], self.sizes[l + 1]
            layers.append(SparseLayer(n_in, n_out, b[f"rep_indptr_{l}"][worker].copy(),
                                      b[f"rep_indices_{l}"][worker, :nnz].copy(),
                                      b[f"rep_data_{l}"][worker, :nnz].copy(), b[f"rep_bias_{l}"][worker].copy()))
        self.replica_gathered(worker)
        return layers

    def time_tables(self):
        self.visible()
        return self.blocks["times"].copy()
