"""WASAP-SGD: the two-phase data-parallel trainer over shared memory.

Built on the core (:mod:`wasap.model`, :mod:`wasap.topology`, :mod:`wasap.optim`,
:mod:`wasap.train`), never the other way round:

- :mod:`.shm`: named shared-memory blocks with one owner, free-space check, cleanup;
- :mod:`.transport`: what server and workers say to each other (the shared-memory transport);
- :mod:`.server`: the parameter server's algorithm (apply, mask stale gradients, evolve, average);
- :mod:`.worker`: a worker process (gradients in phase one, a replica in phase two);
- :mod:`.wasap`: :func:`fit_parallel`, the run around them.
"""

from .transport import WorkerFailed, WorkerStalled
from .wasap import START_METHODS, available_cores, fit_parallel, resolve_workers

__all__ = ["START_METHODS", "WorkerFailed", "WorkerStalled", "available_cores", "fit_parallel", "resolve_workers"]
