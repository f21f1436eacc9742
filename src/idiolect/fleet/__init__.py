"""Fleet: many per-user jobs at once (a base change recompiles every user).

Executors share one interface, ``map(fn, jobs) -> iterator of (job, result | exception)``, in the
order jobs finish; one job's exception is yielded, never raised, so it cannot stop the others.

- ``LocalExecutor``: a process pool on this machine (spawn), or inline with ``max_workers=1``;
- ``RayExecutor``: one Ray task per job on a local or remote Ray cluster (``idiolect[ray]``).

``fn`` must be a top-level (picklable) function and each job must carry everything it needs
(the home directory included): a worker opens its own database connection.
"""

from .executors import Executor, LocalExecutor, RayExecutor, make_executor

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "make_executor"]
