"""Executors: run one picklable function over many jobs, isolating each job's failure."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Iterator

from ..errors import IdiolectError, InputError

DEFAULT_THREADS_PER_JOB = 4  # torch threads per CPU training job; more scales poorly on CPUs


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Executor:
    """``map(fn, jobs)`` yields ``(job, result)`` or ``(job, exception)`` as jobs finish.

    ``threads_per_job`` is how many torch threads a job should use (0: all cores): the caller
    passes it into its jobs, so that jobs running side by side do not oversubscribe the CPU.
    """

    name = "executor"
    threads_per_job = 0

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"executor": self.name, "threads_per_job": self.threads_per_job}


class LocalExecutor(Executor):
    """A process pool on this machine (spawn context); ``max_workers=1`` runs the jobs inline.

    Defaults are sized for the machine: ``max_workers`` = cores // min(4, cores) (at least 1)
    and ``threads_per_job`` = cores // max_workers (0: torch's default, all cores). Each worker
    process runs one job and exits (``max_tasks_per_child=1``), so a job's model memory is
    returned before the next one starts.
    """

    name = "local"

    def __init__(self, max_workers: int | None = None, threads_per_job: int | None = None) -> None:
        cores = cpu_count()
        if max_workers is not None and max_workers < 1:
            raise InputError(f"--workers must be at least 1, got {max_workers}")
        if threads_per_job is not None and threads_per_job < 0:
            raise InputError(f"threads per job must be >= 0, got {threads_per_job}")
        if max_workers is None:
            wanted = threads_per_job or min(DEFAULT_THREADS_PER_JOB, cores)
            max_workers = max(1, cores // wanted)
        if threads_per_job is None:  # the cores split between the jobs running side by side
            threads_per_job = max(1, cores // max_workers)
        self.max_workers = max_workers
        self.threads_per_job = threads_per_job
        self.cores = cores

    def describe(self) -> dict:
        return {"executor": self.name, "workers": self.max_workers,
                "threads_per_job": self.threads_per_job, "cores": self.cores,
                "inline": self.max_workers == 1}

    def map(self, fn, jobs):
        jobs = list(jobs)
        if self.max_workers == 1 or len(jobs) <= 1:
            yield from self._inline(fn, jobs)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        pool = ProcessPoolExecutor(max_workers=min(self.max_workers, len(jobs)),
                                   mp_context=multiprocessing.get_context("spawn"),
                                   max_tasks_per_child=1)
        try:
            futures = {pool.submit(fn, job): job for job in jobs}
            for fut in as_completed(futures):
                try:
                    yield futures[fut], fut.result()
                except Exception as e:  # the job's own exception, or BrokenProcessPool
                    yield futures[fut], e
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _inline(fn, jobs):
        for job in jobs:
            try:
                result = fn(job)
            except Exception as e:
                yield job, e
            else:
                yield job, result


class RayExecutor(Executor):
    """One Ray task per job (``pip install 'idiolect[ray]'``).

    ``address=None`` starts a local Ray instance with ``num_cpus`` CPUs (default: all) and shuts
    it down afterwards; ``address="auto"`` or ``"ray://host:10001"`` joins a running cluster.
    Each task reserves ``threads_per_job`` CPUs (clamped to the largest node), and runs with no
    retries: a failed user is reported, not silently redone.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 threads_per_job: int | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise IdiolectError("the ray executor needs Ray: pip install 'idiolect[ray]'"
                                " (or ray==2.60.0)") from None
        if num_cpus is not None and num_cpus < 1:
            raise InputError(f"num_cpus must be at least 1, got {num_cpus}")
        if address and num_cpus is not None:
            raise InputError("num_cpus applies to a local Ray instance only, not with an address")
        self.address = address
        self.num_cpus = num_cpus
        wanted = threads_per_job if threads_per_job is not None else DEFAULT_THREADS_PER_JOB
        if address is None:  # a local instance: no task may ask for more CPUs than it has
            wanted = min(wanted, num_cpus or cpu_count())
        self.threads_per_job = max(1, wanted)

    def describe(self) -> dict:
        return {"executor": self.name, "address": self.address or "local",
                "num_cpus": self.num_cpus, "threads_per_job": self.threads_per_job}

    def _init(self):
        import ray

        if ray.is_initialized():
            return ray, False
        # "local", not None: None would join whatever cluster RAY_ADDRESS or a leftover
        # /tmp/ray/ray_current_cluster names, and shutting down afterwards would stop it
        kwargs: dict[str, Any] = {"address": self.address or "local", "include_dashboard": False,
                                  "log_to_driver": False, "logging_level": logging.WARNING}
        if self.address is None:
            kwargs["num_cpus"] = self.num_cpus or cpu_count()
        try:
            ray.init(**kwargs)
        except Exception as e:  # ConnectionError, RuntimeError...: one line, not a traceback
            raise IdiolectError(f"cannot start Ray at {self.address or 'local'}:"
                                f" {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                ) from None
        return ray, True

    def _node_cpus(self, ray) -> int:
        cpus = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
        return int(max(cpus, default=1)) or 1

    def map(self, fn, jobs):
        jobs = list(jobs)
        if not jobs:
            return
        ray, started = self._init()
        pending: list = []
        try:
            self.threads_per_job = min(self.threads_per_job, self._node_cpus(ray))
            remote = ray.remote(num_cpus=self.threads_per_job, max_retries=0)(fn)
            refs = {remote.remote(job): job for job in jobs}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        yield refs[ref], ray.get(ref)
                    except Exception as e:
                        yield refs[ref], _unwrap(e)
        finally:
            if started:
                ray.shutdown()  # ends the local instance and whatever still runs on it
            else:
                for ref in pending:  # a shared cluster: do not leave our tasks behind
                    ray.cancel(ref, force=True)


def executor_label(info: dict) -> str:
    """One line from ``Executor.describe()``: where and how wide the jobs run."""
    threads = info.get("threads_per_job") or "all"
    if info.get("executor") == "local":
        n = info.get("workers", 1)
        where = "inline" if info.get("inline") else f"{n} worker processes"
        return f"local, {where}, {threads} threads per user"
    if info.get("executor") == "ray":
        return f"ray at {info.get('address')}, {threads} CPUs per user"
    return f"{info.get('executor')}, {threads} threads per user"


def _unwrap(exc: Exception) -> Exception:
    """The job's own exception out of Ray's RayTaskError wrapper (which carries a traceback)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else exc


def make_executor(kind: str = "local", workers: int | None = None, address: str | None = None,
                  threads_per_job: int | None = None) -> Executor:
    """The executor the CLI names: ``local`` or ``ray`` (a local instance, or the cluster at
    ``address``). ``workers`` is how many jobs run side by side on this machine: the cores are
    split between them (``threads_per_job`` = cores // workers unless given)."""
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if kind == "local":
        if address:
            raise InputError("--address applies to --executor ray only")
        return LocalExecutor(max_workers=workers, threads_per_job=threads_per_job)
    if kind == "ray":
        if threads_per_job is None and workers is not None:
            threads_per_job = max(1, cpu_count() // workers)
        return RayExecutor(address=address, threads_per_job=threads_per_job)
    raise InputError(f"unknown executor {kind!r} (local or ray)")
