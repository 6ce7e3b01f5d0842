"""The units waiting for a worker, shared by the thread and process backends.

Not locked itself: each backend holds its own lock around every call.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Sequence

from .._work import Unit

__all__ = ["WorkQueue"]


class WorkQueue:
    """Units ready to run, in order (``ready``), and retries held back until their time.

    Example::

        >>> queue = WorkQueue()
        >>> bool(queue)
        False
    """

    def __init__(self) -> None:
        self.ready: deque[Unit] = deque()
        self._held: list[tuple[float, int, Unit]] = []
        self._seq = itertools.count()  # ties in the heap never compare units

    def __bool__(self) -> bool:
        return bool(self.ready or self._held)

    @property
    def has_held(self) -> bool:
        """Whether retries are waiting for their time."""
        return bool(self._held)

    def add(self, units: Sequence[Unit], now: float) -> None:
        """Queue units at the back; one with ``not_before`` in the future is held until then."""
        for unit in units:
            if unit.not_before > now:
                heapq.heappush(self._held, (unit.not_before, next(self._seq), unit))
            else:
                self.ready.append(unit)

    def release_due(self, now: float) -> None:
        """Move held units whose time has come to the back of ``ready``."""
        while self._held and self._held[0][0] <= now:
            self.ready.append(heapq.heappop(self._held)[2])

    def next_due(self) -> float | None:
        """When the next held unit may run, or None."""
        return self._held[0][0] if self._held else None

    def cancel(self, owner: object) -> None:
        """Drop the queued units whose sink belongs to ``owner``."""
        self.ready = deque(u for u in self.ready if u.sink.owner is not owner)
        self._held = [h for h in self._held if h[2].sink.owner is not owner]
        heapq.heapify(self._held)

    def take_all(self) -> list[Unit]:
        """Empty the queue; returns what it held."""
        dropped = list(self.ready) + [h[2] for h in self._held]
        self.ready.clear()
        self._held.clear()
        return dropped
