"""WASAP-SGD: the two-phase data-parallel trainer, over shared memory on one machine or MPI across machines.

Built on the core (:mod:`wasap.model`, :mod:`wasap.topology`, :mod:`wasap.optim`,
:mod:`wasap.train`), never the other way round:

- :mod:`.trainer`: :func:`fit_parallel`, the run: the server's side of both phases;
- :mod:`.server`: the parameter server's algorithm (apply, mask stale gradients, evolve, average);
- :mod:`.worker`: a worker's side (gradients in phase one, a replica in phase two);
- :mod:`.messages`: what they say to each other (command words, heartbeats, typed messages);
- :mod:`.transport`: the interface the algorithm talks to, one class per side, and the liveness rules;
- :mod:`.served`: the served state's layout, and the server's work on it (both transports);
- :mod:`.shm_transport`: the shared-memory implementation of that interface;
- :mod:`.mpi_transport`: the implementation over MPI one-sided windows (mpi4py, imported only when used);
- :mod:`.shm`: named shared-memory blocks with one owner, free-space check, cleanup.
"""

from .trainer import START_METHODS, fit_parallel, resolve_workers
from .transport import WorkerFailed, WorkerStalled


def run_mpi_worker(comm=None) -> int:
    """A worker rank of an MPI job: joins rank 0's :func:`fit_parallel` run; returns an exit status
    (:func:`wasap.parallel.mpi_transport.run_mpi_worker`)."""
    from .mpi_transport import run_mpi_worker as run

    return run(comm)


__all__ = ["START_METHODS", "WorkerFailed", "WorkerStalled", "fit_parallel", "resolve_workers", "run_mpi_worker"]
