"""The units waiting for a worker, and the map jobs still to send more, shared by the thread
and process backends.

Not locked itself: each backend holds its own lock around every call, with one exception:
the thread backend's worker threads take ready units with :meth:`WorkQueue.pop_ready` without
it (taking the lock for every unit made two worker threads hand it to each other at every unit,
a context switch each time: see backends/thread.py). So that a unit is never in two places,
every call made under the lock changes ``ready`` only by single deque operations, each atomic
against a concurrent ``popleft`` (the GIL, or the deque's own lock in a free-threaded build):
``append``, ``appendleft``, ``extendleft`` and ``popleft``. :meth:`WorkQueue.cancel` and
:meth:`WorkQueue.take_all` therefore take units out one ``popleft`` at a time (never copy the
deque and then clear or replace it); a unit that a worker took meanwhile is that worker's.

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
    """Units ready to run, in order (``ready``), and retries in their backoff (until each one's
    ``not_before``).

    Example::

        >>> queue = WorkQueue()
        >>> bool(queue)
        False
    """

    def __init__(self) -> None:
        self.ready: deque[Unit] = deque()
        self._backoff: list[tuple[float, int, Unit]] = []
        self._seq = itertools.count()  # ties in the heap never compare units
        self.jobs: set[JobTicket] = set()  # open tickets: more units may come

    def __bool__(self) -> bool:
        return bool(self.ready or self._backoff)

    @property
    def has_backoff(self) -> bool:
        """Whether retries are in their backoff (waiting for their ``not_before``)."""
        return bool(self._backoff)

    def add(self, units: Sequence[Unit], now: float) -> None:
        """Queue units at the back; one with ``not_before`` in the future waits in the backoff
        heap until then."""
        for unit in units:
            if unit.not_before > now:
                heapq.heappush(self._backoff, (unit.not_before, next(self._seq), unit))
            else:
                self.ready.append(unit)

    def pop_ready(self) -> Unit | None:
        """The first ready unit, taken out, or None: safe without the backend's lock (see the
        module docstring).

        Example::

            >>> WorkQueue().pop_ready() is None
            True
        """
        try:
            return self.ready.popleft()
        except IndexError:
            return None

    def release_due(self, now: float) -> None:
        """Move units whose backoff is over to the back of ``ready``."""
        while self._backoff and self._backoff[0][0] <= now:
            self.ready.append(heapq.heappop(self._backoff)[2])

    def next_due(self) -> float | None:
        """When the next unit in backoff may run, or None."""
        return self._backoff[0][0] if self._backoff else None

    def cancel(self, owner: object) -> None:
        """Drop the queued units whose sink belongs to ``owner``."""
        kept = [u for u in self._pop_all_ready() if u.sink.owner is not owner]
        self.ready.extendleft(reversed(kept))  # back in front, in their order, in one operation
        self._backoff = [h for h in self._backoff if h[2].sink.owner is not owner]
        heapq.heapify(self._backoff)

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
        """Empty the queue; returns what it had."""
        dropped = self._pop_all_ready() + [h[2] for h in self._backoff]
        self._backoff.clear()
        return dropped

    def _pop_all_ready(self) -> list[Unit]:
        """Take every ready unit out, one ``popleft`` at a time (see the module docstring)."""
        taken = []
        while (unit := self.pop_ready()) is not None:
            taken.append(unit)
        return taken
