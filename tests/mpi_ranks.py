"""The MPI transport's parts, driven step by step on real ranks, for tests/test_mpi.py to check array by array.

Run as ``mpiexec -n RANKS python -m mpi4py tests/mpi_ranks.py SCENARIO OUT.npz``; rank 0 (the server
side) saves what the transport holds after each step, and whether the workers reached its memory directly
(ranks on its node) or through ``MPI_Get`` and ``MPI_Put``; the test computes what it should hold with dense
numpy. The inputs (models, gradients, replicas) come from the seeds below, so that the test
rebuilds them on its own side.

- ``stale`` (2 ranks): rank 0 serves a model, evolves its topology to version 1, and applies a gradient
  the worker computed on version 0 and put in its slot through the window; then the worker applies a
  gradient itself (over the window's get and put) to layer 0, which it pulled at version 1, while layer 1
  (pulled at version 0) is left for the server.
- ``average`` (3 ranks): each worker publishes a replica through the window; rank 0 gathers both and
  averages them back to the target sizes.
"""

import sys

import numpy as np

from wasap.config import TrainConfig
from wasap.model import SparseLayer, SparseMLP
from wasap.parallel import mpi_transport
from wasap.parallel.messages import GradientPushed
from wasap.parallel.server import ParameterServer, averaged_model

STALE_SIZES = [30, 25, 4]
STALE_CONFIG = TrainConfig(hidden=(25,), epsilon=3, zeta=0.4, lr=0.1, momentum=0.9, weight_decay=0.01, seed=2)
#: The worker's own step in ``stale``: a rate per layer and the versions it pulled.
WORKER_LRS = (0.1, 0.05)
WORKER_VERSIONS = (1, 0)
AVERAGE_SIZES = [12, 9, 5]
AVERAGE_EPSILON = 2.0
REPLICA_EPSILON = 1.5  # fewer weights than the served model: every replica fits its slot
TIMEOUT = 60.0


def stale_model():
    """The served model of ``stale``, with momentum, at version 0."""
    model = SparseMLP.random(STALE_SIZES, epsilon=3, seed=1, warn=False)
    rng = np.random.default_rng(3)
    for layer in model.layers:
        layer.velocity[:] = rng.standard_normal(layer.nnz).astype(np.float32) * 0.01
    return model


def gradients(nnz, sizes, seed):
    """``(grads, bias_grads)``: a gradient per layer of ``nnz[l]`` weights, as the worker fills its slot."""
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(n).astype(np.float32) for n in nnz]
    bias_grads = [rng.standard_normal(n_out).astype(np.float32) for n_out in sizes[1:]]
    return grads, bias_grads


def replica(worker):
    """Worker ``worker``'s replica in ``average``: its own topology, weights and biases."""
    rng = np.random.default_rng(10 + worker)
    layers = []
    for n_in, n_out in zip(AVERAGE_SIZES[:-1], AVERAGE_SIZES[1:]):
        layer = SparseLayer.random(n_in, n_out, REPLICA_EPSILON, rng)
        layer.bias[:] = rng.standard_normal(n_out).astype(np.float32)
        layers.append(layer)
    return SparseMLP(layers)


def average_model():
    return SparseMLP.random(AVERAGE_SIZES, epsilon=AVERAGE_EPSILON, seed=4, warn=False)


def _layer_arrays(prefix, model):
    saved = {}
    for l, layer in enumerate(model.layers):
        for name in ("indptr", "indices", "data", "bias", "velocity", "bias_velocity"):
            saved[f"{prefix}_{name}_{l}"] = np.array(getattr(layer, name))
    return saved


def _server(model, n_workers, replicas):
    X = np.zeros((4 * n_workers, model.sizes[0]), dtype=np.float32)
    y = np.zeros(4 * n_workers, dtype=np.int64)
    partitions = [np.arange(w, X.shape[0], n_workers) for w in range(n_workers)]
    transport = mpi_transport.MpiServerTransport(model, X, y, n_workers=n_workers, n_slots=2, partitions=partitions,
                                                 replicas=replicas)
    transport.start_workers(None, [None] * n_workers, 1)
    return transport


def _end(transport, comm):
    """Both sides end as a run does: the worker says goodbye, and the window is freed together."""
    if comm.Get_rank() == 0:
        transport.shutdown(timeout=TIMEOUT)
        transport.close()
    else:
        transport.close()


def stale(comm, out):
    if comm.Get_rank() == 0:
        transport = _server(stale_model(), 1, replicas=False)
        saved = _layer_arrays("old", transport.read_model())
        server = ParameterServer(transport, STALE_CONFIG, n_workers=1, steps_per_epoch=10)
        server.end_of_epoch(1, transport.read_model())
        saved.update(_layer_arrays("evolved", transport.read_model()))
        comm.barrier()  # the worker pushes its version-0 gradient
        message = transport.receive(TIMEOUT)
        server.apply(message)
        saved.update(_layer_arrays("stale", transport.read_model()))
        saved["stale_counts"] = np.array([server.stats.stale, server.stats.dropped])
        comm.barrier()  # the worker applies its own step
        applied, local = comm.recv(source=1)
        saved["worker_applied"] = np.array(applied, dtype=bool)
        saved["worker_local"] = np.array(local)
        saved.update(_layer_arrays("worker", transport.read_model()))
        np.savez(out, **saved)
    else:
        transport, _ = mpi_transport.join_run(comm)
        comm.barrier()
        _fill(transport, 0, transport.caps, seed=7)  # the capacities are version 0's sizes
        transport.send(GradientPushed(worker=0, slot=0, versions=(0, 0), loss=0.0, n_correct=0, n_samples=32,
                                      applied=(False, False)))
        comm.barrier()
        current = transport.read_model()  # version 1 of both layers
        _fill(transport, 1, current.nnz_per_layer(), seed=8)
        applied = transport.apply_gradient(1, WORKER_VERSIONS, WORKER_LRS, momentum=STALE_CONFIG.momentum,
                                           weight_decay=STALE_CONFIG.weight_decay)
        comm.send((applied, transport.arrays.local), dest=0)
    _end(transport, comm)


def _fill(transport, slot, nnz, seed):
    grads, bias_grads = transport.gradient_slot(slot, nnz)
    for target, source in zip(grads + bias_grads, sum(gradients(nnz, STALE_SIZES, seed), [])):
        target[:] = source


def average(comm, out):
    if comm.Get_rank() == 0:
        model = average_model()
        transport = _server(model, comm.Get_size() - 1, replicas=True)
        comm.barrier()  # every worker has published
        gathered = [transport.gather_replica(w) for w in range(transport.n_workers)]
        targets = [layer.nnz for layer in model.layers]
        saved = {"targets": np.array(targets)}
        for w, layers in enumerate(gathered):
            saved.update(_layer_arrays(f"gathered{w}", SparseMLP(layers)))
        saved.update(_layer_arrays("average", averaged_model(gathered, targets, model)))
        saved["worker_local"] = np.array([comm.recv(source=w + 1) for w in range(transport.n_workers)])
        np.savez(out, **saved)
    else:
        transport, _ = mpi_transport.join_run(comm)
        published = transport.publish_replica(replica(transport.worker), TIMEOUT)
        comm.barrier()
        assert published
        comm.send(transport.arrays.local, dest=0)
    _end(transport, comm)


if __name__ == "__main__":
    scenario, out = sys.argv[1], sys.argv[2]
    world = mpi_transport.world()
    {"stale": stale, "average": average}[scenario](world, out)
    sys.exit(mpi_transport.end_of_job(0))
