"""The units waiting for a worker, and the map jobs still to send more, shared by the thread
and process backends.

Not locked itself: each backend holds its own lock around every call.

A map job sends its chunks as its caller consumes results, so a backend that is shutting
down cannot tell from its queue alone whether more work is coming. Each running job therefore
holds a :class:`JobTicket`: while any ticket is open the backend keeps its workers, and accepts
the job's units after ``shutdown`` (a map that has started is work that was submitted, as
``Executor.map``'s futures are). A ticket closes when its job ends, or when the pool stops
waiting for it: ``shutdown(cancel_futures=True)``, ``terminate()``, or ``shutdown(wait=True)``
called by the very thread that drives the job (that thread cannot drive it while it waits).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from collections.abc import Sequence

from .._work import Unit

__all__ = ["FOLLOW_UP", "JobTicket", "WorkQueue"]


class JobTicket:
    """A running map job's claim on a backend; ``thread`` is the thread that drives it.

    Example::

        >>> ticket = JobTicket()
        >>> ticket.open
        True
    """

    __slots__ = ("open", "thread")

    def __init__(self) -> None:
        self.open = True
        self.thread = threading.current_thread()


#: The ticket of a retry: it continues a task that has started, so a shutting-down backend takes
#: it (it is submitted by a backend thread while the task is still owed, so the backend has
#: not finished).
FOLLOW_UP = JobTicket()


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
        self.jobs: set[JobTicket] = set()  # open tickets: more units may come

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

    def open_job(self) -> JobTicket:
        """A ticket for a job that starts now."""
        ticket = JobTicket()
        self.jobs.add(ticket)
        return ticket

    def close_jobs(self, tickets: Sequence[JobTicket] | None = None) -> None:
        """Close ``tickets`` (all open ones when None): their jobs may send nothing more."""
        for ticket in list(self.jobs) if tickets is None else tickets:
            ticket.open = False
            self.jobs.discard(ticket)

    def jobs_driven_by(self, thread: threading.Thread) -> list[JobTicket]:
        """The open tickets of jobs that ``thread`` drives."""
        return [t for t in self.jobs if t.thread is thread]

    def take_all(self) -> list[Unit]:
        """Empty the queue; returns what it held."""
        dropped = list(self.ready) + [h[2] for h in self._held]
        self.ready.clear()
        self._held.clear()
        return dropped
