"""WASAP-SGD: the two-phase data-parallel trainer over shared memory.

Built on the core (:mod:`wasap.model`, :mod:`wasap.topology`, :mod:`wasap.optim`,
:mod:`wasap.train`), never the other way round:

- :mod:`.trainer`: :func:`fit_parallel`, the run: the server's side of both phases;
- :mod:`.server`: the parameter server's algorithm (apply, mask stale gradients, evolve, average);
- :mod:`.worker`: a worker's side (gradients in phase one, a replica in phase two);
- :mod:`.messages`: what they say to each other (command words, heartbeats, typed messages);
- :mod:`.transport`: the interface the algorithm talks to, one class per side, and the liveness rules;
- :mod:`.shm_transport`: the shared-memory implementation of that interface;
- :mod:`.shm`: named shared-memory blocks with one owner, free-space check, cleanup.
"""

from .trainer import START_METHODS, fit_parallel, resolve_workers
from .transport import WorkerFailed, WorkerStalled

__all__ = ["START_METHODS", "WorkerFailed", "WorkerStalled", "fit_parallel", "resolve_workers"]
