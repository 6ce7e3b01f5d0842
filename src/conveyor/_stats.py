"""Statistics of a map call and of a pool: counts, task times, chunk sizes, worker use.

A map's :class:`MapStats` is filled by the thread that drives the map, where each outcome is
handled anyway (conveyor._job): a few additions per chunk, no lock. A pool's per-worker figures
are kept by the process backend's dispatcher thread, which sees every worker's messages and
deaths; :meth:`conveyor.Pool.stats` copies them under the backend's lock.

Task times: a chunk reports how long it ran as a whole, so each of its ``n`` items counts as
``elapsed / n`` (exact for items sent alone: timed items, submits, retries). At most
:data:`SAMPLES` chunk times are kept (a uniform sample of all of them beyond that), so the
distribution of a map of millions of items takes bounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._tally import RESTART_CAUSES, SAMPLES, Distribution

__all__ = ["RESTART_CAUSES", "SAMPLES", "Distribution", "MapStats", "PoolStats", "WorkerStats"]


@dataclass
class MapStats:
    """What one map call did, filled in as it runs (readable meanwhile and after).

    Pass one as ``stats=`` to a map call (``conveyor.map``/``imap``/``imap_unordered``/
    ``starmap`` and a Pool's ``imap``/``imap_unordered``/``starmap``):

    >>> import conveyor
    >>> stats = conveyor.MapStats()
    >>> conveyor.map(abs, [-1, 2, -3], backend="thread", stats=stats)
    [1, 2, 3]
    >>> stats.tasks, stats.failures, stats.retries, stats.chunks
    (3, 0, 0, 3)

    ``tasks``: items settled (a result, a Failure, a skip or the raised error); ``failures``:
    items that failed for good; ``retries``: attempts made again; ``chunks`` and
    ``chunk_sizes``: how the input was cut (retries not counted); ``task_times``: seconds per
    item (see the module's note on chunks).
    """

    tasks: int = 0
    failures: int = 0
    retries: int = 0
    chunks: int = 0
    chunk_sizes: Distribution = field(default_factory=Distribution, repr=False)
    task_times: Distribution = field(default_factory=Distribution, repr=False)

    def summary(self) -> dict[str, float]:
        """The figures as a flat dict (for logs and tables).

        >>> MapStats(tasks=2).summary()["tasks"]
        2
        """
        return {
            "tasks": self.tasks,
            "failures": self.failures,
            "retries": self.retries,
            "chunks": self.chunks,
            "chunk_size_median": self.chunk_sizes.median,
            "chunk_size_max": self.chunk_sizes.max,
            "task_time_median": self.task_times.median,
            "task_time_p95": self.task_times.p95,
            "task_time_max": self.task_times.max,
        }


@dataclass(frozen=True)
class WorkerStats:
    """One worker process of a pool, as :meth:`conveyor.Pool.stats` saw it.

    ``tasks``: items it ran; ``failures``: those that raised (each attempt of a retried item;
    an item that killed its worker is counted in ``PoolStats.restarts``); ``busy``: seconds
    spent running items; ``idle``: the rest of its life since it was ready.

    >>> WorkerStats(name="w", pid=1, tasks=4, failures=1, busy=1.5, idle=0.5).tasks
    4
    """

    name: str
    pid: int
    tasks: int
    failures: int
    busy: float
    idle: float


@dataclass(frozen=True)
class PoolStats:
    """A pool's figures since it started: its live workers, and every restart by cause.

    ``restarts``: workers replaced, by cause: ``"crash"`` (a process died by itself),
    ``"timeout"`` (killed past an item's hard deadline; for threads: a thread abandoned at its
    item's deadline), ``"recycle"`` (``max_tasks_per_worker`` / ``max_memory_per_worker``)
    and ``"stopped"`` (killed to stop a map: Ctrl-C or its deadline). ``tasks``: items run,
    by every worker the pool ever had. ``workers``: the live ones.

    >>> import conveyor
    >>> with conveyor.Pool(workers=1) as pool:
    ...     _ = list(pool.imap(abs, [-1, -2]))
    ...     stats = pool.stats()
    >>> stats.tasks, stats.restarts["crash"], len(stats.workers)
    (2, 0, 1)
    """

    workers: list[WorkerStats]
    tasks: int
    restarts: dict[str, int]

    @staticmethod
    def merged(parts: list[PoolStats]) -> PoolStats:
        """One pool's figures from those of its backends.

        >>> PoolStats.merged([]).restarts["crash"]
        0
        """
        restarts = dict.fromkeys(RESTART_CAUSES, 0)
        for part in parts:
            for cause, count in part.restarts.items():
                restarts[cause] = restarts.get(cause, 0) + count
        workers = [w for part in parts for w in part.workers]
        return PoolStats(workers, sum(p.tasks for p in parts), restarts)
