"""The counters a map and a pool keep as they run, in plain classes that cost nothing to import.

:mod:`conveyor._stats` presents them (``MapStats``, ``PoolStats``, ``WorkerStats``) as
dataclasses; ``dataclasses`` (and ``inspect``, which it imports) costs about 7 ms at start-up,
which a short script using threads must not pay. A map that was given no ``stats=`` therefore
counts into a :class:`Tally`, with the same fields as ``MapStats``, and nothing here imports
``dataclasses`` or ``random``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["RESTART_CAUSES", "SAMPLES", "Distribution", "Tally"]

#: why a worker was replaced: died on its own, killed past a task's hard deadline, replaced
#: after max_tasks/max_memory_per_worker, killed to stop a map (Ctrl-C, the map's deadline)
RESTART_CAUSES = ("crash", "timeout", "recycle", "stopped")

#: chunk times kept per map for the distribution
SAMPLES = 4096


class Distribution:
    """Values with weights (an item count each), summarised by median, p95 and max.

    >>> d = Distribution()
    >>> for t in (0.1, 0.2, 0.9): d.add(t, 1)
    >>> d.median, d.max
    (0.2, 0.9)
    """

    __slots__ = ("_random", "_seen", "count", "max", "values")

    def __init__(self) -> None:
        self.values: list[tuple[float, int]] = []
        self.count = 0
        self.max = 0.0
        self._seen = 0
        self._random: Any = None  # random.Random(0), made once sampling starts

    def add(self, value: float, weight: int) -> None:
        """Count ``weight`` items of ``value`` each (reservoir sampling past SAMPLES)."""
        self.count += weight
        if value > self.max:
            self.max = value
        self._seen += 1
        if len(self.values) < SAMPLES:
            self.values.append((value, weight))
            return
        if self._random is None:
            import random

            self._random = random.Random(0)
        slot = self._random.randrange(self._seen)
        if slot < SAMPLES:
            self.values[slot] = (value, weight)

    def quantile(self, q: float) -> float:
        """The weighted ``q`` quantile (0 <= q <= 1) of the kept values; 0.0 when empty."""
        values = sorted(self.values)
        total = sum(w for _, w in values)
        if not total:
            return 0.0
        rank, seen = q * total, 0
        for value, weight in values:
            seen += weight
            if seen >= rank:
                return value
        return values[-1][0]

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    @property
    def p95(self) -> float:
        return self.quantile(0.95)


class Tally:
    """The figures of a map that was given no ``stats=`` (``MapStats``'s fields, in a plain class).

    >>> t = Tally()
    >>> t.tasks += 2
    >>> t.tasks, t.chunk_sizes.count
    (2, 0)
    """

    __slots__ = ("chunk_sizes", "chunks", "failures", "retries", "task_times", "tasks")

    def __init__(self) -> None:
        self.tasks = 0
        self.failures = 0
        self.retries = 0
        self.chunks = 0
        self.chunk_sizes = Distribution()
        self.task_times = Distribution()
