"""The bounded buffer between two stages of a pipeline (see _pipeline.py).

Data flow::

    producer thread (a stage's driver,      Feed                  consumer thread (the next
    or the source reader)                   ----                  stage's MapJob, a batch stage,
    -----------------------------           deque of items,       or the caller)
    put(values)  -- blocks while full -->   at most about    -->  take_now(n, idle): never blocks
    end()  (no more input)                  ``capacity``          take_wait(n, deadline): blocks
    stop() (from any thread: tear-down)                           __next__(): one item, blocks
                                            wake(None): tells a consumer that never blocks (a
                                            MapJob) to look again (after end, and after a put
                                            that follows a take_now that found nothing);
                                            wake(Stopped()) after stop: raised in its thread

Guarantees, and what keeps them:

* **Bounded.** ``put`` waits while the buffer holds ``capacity`` items or more, so a producer
  is never more than one batch ahead of the bound; a batch larger than the capacity still goes
  in once the buffer is below it (a batch is never split, so a slow consumer cannot deadlock a
  producer whose batch is bigger than the buffer).
* **No lost wake-up.** A never-blocking consumer (MapJob) looks at the buffer (``take_now``)
  before it waits on its event queue; a look that finds nothing sets ``_asked`` under the lock,
  and the next ``put`` clears it under the same lock and then calls ``wake``, which leaves a
  wake-up in the queue. So an item put after the look is always followed by a wake-up, and the
  consumer never sleeps on a non-empty buffer. A consumer that found items is not woken: it
  looks again after its next result anyway. Spurious wake-ups are harmless.
* **Stop wins.** After ``stop()`` every blocked or later ``put``/``take_*`` raises
  :class:`Stopped` at once (``Condition.notify_all`` under the lock), so no thread of a
  pipeline stays blocked on a buffer after tear-down; a MapJob waiting for results that will
  never come (their workers were killed) gets the Stopped through its event queue.
* **Times are measured where the waiting happens**: ``full_wait`` (a producer blocked on a full
  buffer) and ``empty_wait`` (a consumer with nothing to do and nothing to take).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Feed", "Stopped"]


class Stopped(Exception):
    """The pipeline is being torn down: the thread that meets this leaves at once."""


class Feed:
    """A bounded, thread-safe buffer of items with one producer and one consumer.

    Example::

        >>> feed = Feed(capacity=4)
        >>> feed.put([1, 2, 3]); feed.end()
        >>> feed.take_now(2, idle=False), list(feed)
        ([1, 2], [3])
    """

    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        #: the largest chunk a MapJob reading this feed cuts (engine hook): its in-flight items
        #: (a few chunks per worker) stay a small multiple of the buffer
        self.max_chunk = max(1, self.capacity // 4)
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._ended = False
        self._stopped = False
        self._head: list[Any] = []  # items given back by with_head, taken first
        #: set by a consumer that never blocks (a MapJob: its event queue's ``put``); called
        #: outside the lock with None when there is something to look at, and with a
        #: :class:`Stopped` to raise in the consumer's thread when the feed stops
        self.wake: Callable[[BaseException | None], None] | None = None
        self.put_count = 0  # items put (the producer's output)
        self.taken = 0  # items taken (the consumer's input)
        self.full_wait = 0.0  # seconds the producer waited on a full buffer
        self.empty_wait = 0.0  # seconds the consumer waited with nothing to take
        self._starved_since: float | None = None
        self._asked = False  # take_now found nothing: the next put must wake the consumer

    # ----------------------------------------------------------------- producer

    def put(self, values: list[Any]) -> None:
        """Append ``values``, first waiting while the buffer is full; raises Stopped."""
        if not values:
            return
        with self._cond:
            if len(self._items) >= self.capacity and not self._stopped:
                began = time.perf_counter()
                while len(self._items) >= self.capacity and not self._stopped:
                    self._cond.wait()
                self.full_wait += time.perf_counter() - began
            if self._stopped:
                raise Stopped
            self._items.extend(values)
            self.put_count += len(values)
            self._cond.notify_all()
            wake, self._asked = self._asked, False
        if wake:
            self._wake()

    def end(self) -> None:
        """No more items will come."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        self._wake()

    def stop(self) -> None:
        """Tear down: drop the items; every waiting and later call raises Stopped."""
        with self._cond:
            self._stopped = True
            self._items.clear()
            self._head = []
            self._cond.notify_all()
        self._wake(Stopped())

    def _wake(self, event: BaseException | None = None) -> None:
        wake = self.wake
        if wake is not None:
            wake(event)

    # ----------------------------------------------------------------- consumer

    def take_now(self, count: int, idle: bool) -> list[Any] | None:
        """Up to ``count`` items held now; [] if none yet; None once ended and empty.

        ``idle``: the caller has nothing else to do, so the time until items come counts as
        waiting on an empty buffer. (The MapJob engine hook: see ``MapJob._top_up``.)
        """
        with self._cond:
            if self._stopped:
                raise Stopped
            if self._items or self._head:
                if self._starved_since is not None:
                    self.empty_wait += time.perf_counter() - self._starved_since
                    self._starved_since = None
                return self._pop(count)
            if self._ended:
                return None
            if idle and self._starved_since is None:
                self._starved_since = time.perf_counter()
            self._asked = True
            return []

    def take_wait(self, count: int, deadline: float | None = None) -> list[Any] | None:
        """Up to ``count`` items, waiting for at least one until ``deadline`` (monotonic).

        Returns [] if the deadline passed first, None once ended and empty; raises Stopped.
        """
        with self._cond:
            if not (self._items or self._head or self._ended or self._stopped):
                began = time.perf_counter()
                while not (self._items or self._head or self._ended or self._stopped):
                    if deadline is None:
                        self._cond.wait()
                    else:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                self.empty_wait += time.perf_counter() - began
            if self._stopped:
                raise Stopped
            if self._items or self._head:
                return self._pop(count)
            return None if self._ended else []

    def _pop(self, count: int) -> list[Any]:
        taken: list[Any] = []
        if self._head:
            taken, self._head = self._head[:count], self._head[count:]
        items = self._items
        want = min(count - len(taken), len(items))
        if want == len(items):
            taken.extend(items)
            items.clear()
        else:
            popleft = items.popleft
            taken.extend([popleft() for _ in range(want)])
        self.taken += len(taken)
        self._cond.notify_all()  # room for the producer
        return taken

    def with_head(self, items: list[Any]) -> Feed:
        """Give back ``items`` taken by iterating (backend="auto"'s probe); they come first."""
        with self._cond:
            self._head = list(items) + self._head
            self.taken -= len(items)
        return self

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        got = self.take_wait(1)
        if got is None:
            raise StopIteration
        return got[0]
