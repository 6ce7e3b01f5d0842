"""``Pool.map``: ``concurrent.futures.Executor.map``'s contract, on conveyor's backends.

Data flow::

    caller thread (Pool.map)                    backend (worker threads, or the dispatcher)
    ------------------------                    -------------------------------------------
    cut the input into tasks of ``chunksize``
    items, one Future + _MapTask sink each;
    submit them all now (or ``buffersize``  -->  run each task's items; _MapTask.deliver()
    of them, more as results are taken)          stores each item's value or error; when
                                                 the last is in: future.set_result(values)
    return an iterator at once
    iterator (caller thread, when iterated): wait for the oldest task's future (until the
    deadline), yield its values one by one, raise an item's error when it is reached

The contract kept, as in the standard library (Python 3.14's, on every Python):

* the call returns an iterator at once; every task is submitted by then, unless ``buffersize``
  is set: then at most ``buffersize`` tasks are submitted and not yet handed out, and the input
  is read as results are taken;
* ``timeout`` is a deadline for the whole iteration, counted from the call: past it, iterating
  raises :class:`TimeoutError` (``concurrent.futures.TimeoutError``);
* an item's exception is raised when iteration reaches that item (the items of its task before
  it are yielded first: conveyor runs every item on its own, so one failure loses nothing else);
* leaving early (the deadline, an exception, ``close()``, the iterator dropped) cancels every
  task that has not started;
* nothing is kept: a value is dropped from the iterator's state as it is yielded (the standard
  library's test_free_reference), and a finished task holds no function or arguments.

Guarantee and race: a task's sink may be delivered to from a backend thread while the caller
iterates. The future is the only hand-over point: its result (the list of values) is set once,
after the last item is stored, and the caller touches the list only after ``future.result()``.
With ``retries`` a retried item may be delivered from another thread than the rest of its task,
so a task with retries counts its items under a lock.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout

from ._errors import PoolClosed
from ._executor_errors import missed_deadline
from ._futures import Future as PoolFuture
from ._futures import OneFutureSink
from ._retry import RetryPolicy
from ._work import MODE_MAP, MODE_STAR, Loader, Unit
from .backends.queue import FOLLOW_UP

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:
    from .backends.base import Backend

__all__ = ["check_buffersize", "executor_map"]


def check_buffersize(buffersize: Any) -> int | None:
    """``buffersize`` must be None or a whole number of at least 1 (Python 3.14's checks)."""
    if buffersize is None:
        return None
    if isinstance(buffersize, bool) or not isinstance(buffersize, int):
        raise TypeError(f"buffersize must be an integer or None, got {buffersize!r}")
    if buffersize < 1:
        raise ValueError(f"buffersize must be None or > 0, got {buffersize!r}")
    return buffersize


class _Failed:
    """Stands in a task's list of values for an item that raised."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class _MapTask(OneFutureSink):
    """The sink of one task (``chunksize`` consecutive items) of an executor-style map."""

    __slots__ = (
        "attempts",
        "backend",
        "fn",
        "lock",
        "owner",
        "policy",
        "remaining",
        "values",
    )

    def __init__(
        self, owner: object, backend: Backend, future: Future[Any], size: int, policy: RetryPolicy
    ):
        self.owner = owner  # shared by the map's tasks: cancelled together
        self.backend = backend
        self.future = future
        self.values: list[Any] = [None] * size
        self.remaining = size
        self.policy = policy  # shared by the map's tasks
        self.attempts: dict[int, int] = {}
        self.lock = threading.Lock() if policy.retries else None
        self.started = False

    def deliver(self, unit: Unit, start: int, loader: Loader, elapsed: float) -> None:
        values, errors = loader()
        if self.future.done():
            return
        if errors and isinstance(next(iter(errors.values())), PoolClosed) and not self.started:
            self.future.cancel()  # shut down with cancel_futures before it started
            return
        if self.lock is None:
            self._store(unit, start, values, errors)
        else:
            with self.lock:
                self._store(unit, start, values, errors)

    def _store(
        self, unit: Unit, start: int, values: list[Any], errors: dict[int, BaseException]
    ) -> None:
        tags = unit.tags
        for position, value in enumerate(values):
            offset = tags[start + position]
            error = errors.get(position) if errors else None
            if error is not None:
                if self._retry(unit, start + position, offset, error):
                    continue
                value = _Failed(error)
            self.values[offset] = value
            self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(self.values)

    def _retry(self, unit: Unit, index: int, offset: int, error: BaseException) -> bool:
        attempts = self.attempts.get(offset, 0) + 1
        self.attempts[offset] = attempts
        delay = self.policy.delay(attempts, error)
        if delay is None:
            return False
        retry = Unit(
            fn=unit.fn,
            items=unit.items[index : index + 1],
            mode=unit.mode,
            sink=self,
            tags=[offset],
            timeout=unit.timeout,
            not_before=time.monotonic() + delay,
            eager=False,
        )
        try:
            self.backend.submit([retry], FOLLOW_UP)  # a retry is taken after a shutdown too
        except Exception:
            return False
        return True


def executor_map(
    backend: Backend,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    *,
    timeout: float | None,
    chunksize: int,
    buffersize: int | None,
    task_timeout: float | None,
    retries: int,
    estimate: float,
) -> Iterator[Any]:
    """Submit ``fn`` over the zipped ``iterables`` to ``backend``; an iterator of the results.

    See the module docstring for the contract. ``estimate`` is the expected run time of one
    item (the process backend lets short tasks share a message).
    """
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be a whole number of at least 1, got {chunksize!r}")
    buffersize = check_buffersize(buffersize)
    end_time = None if timeout is None else time.monotonic() + timeout
    if len(iterables) == 1:
        mode, source = MODE_MAP, iter(iterables[0])
    else:
        mode, source = MODE_STAR, zip(*iterables)
    owner = object()  # what the map's queued tasks are cancelled by
    policy = RetryPolicy.of(retries)
    backend_ref = weakref.ref(backend)

    def task_units(count: int | None) -> tuple[list[Future[Any]], list[Unit]]:
        """Futures and units for the next ``count`` tasks (None: all that is left)."""
        futures: list[Future[Any]] = []
        units: list[Unit] = []
        tasks = itertools.count() if count is None else range(count)
        for _ in tasks:
            items = list(itertools.islice(source, chunksize))
            if not items:
                break
            future = PoolFuture()
            sink = _MapTask(owner, backend, future, len(items), policy)
            futures.append(future)
            units.append(
                Unit(
                    fn=fn,
                    items=items,
                    mode=mode,
                    sink=sink,
                    tags=range(len(items)),
                    timeout=task_timeout,
                    estimate=estimate * len(items),
                    coalesce=True,
                    eager=False,
                )
            )
        return futures, units

    futures, units = task_units(buffersize)
    if units:
        backend.submit(units)
    del units
    pending = deque(futures)
    del futures
    more = task_units if buffersize is not None else None
    return _results(pending, more, backend_ref, owner, end_time, timeout)


def _top_up(
    more: Callable[[int], tuple[list[Future[Any]], list[Unit]]],
    backend_ref: weakref.ref[Backend],
    pending: deque[Future[Any]],
) -> Callable[[int], tuple[list[Future[Any]], list[Unit]]] | None:
    """buffersize: submit the next task before waiting (Python 3.14's order); None once the
    input is exhausted or the pool was collected (the standard library keeps a weak reference
    too). A pool shut down meanwhile raises PoolClosed here, as 3.14's map raises RuntimeError:
    the results must not end short without a word."""
    backend = backend_ref()
    if backend is None:
        return None
    futures, units = more(1)
    if not units:
        return None
    backend.submit(units)
    pending.extend(futures)
    return more


def _results(
    pending: deque[Future[Any]],
    more: Callable[[int], tuple[list[Future[Any]], list[Unit]]] | None,
    backend_ref: weakref.ref[Backend],
    owner: object,
    end_time: float | None,
    timeout: float | None,
) -> Iterator[Any]:
    """The iterator ``executor_map`` returns (a generator: its ``finally`` cancels the rest)."""
    try:
        while pending:
            if more is not None:
                more = _top_up(more, backend_ref, pending)
            future = pending.popleft()
            try:
                values = future.result(None if end_time is None else end_time - time.monotonic())
            except FuturesTimeout:
                assert timeout is not None
                raise missed_deadline("Pool.map", timeout) from None
            finally:
                future.cancel()
                del future
            # Hand the values out without keeping any: each leaves the list as it is yielded.
            values.reverse()
            while values:
                if type(values[-1]) is _Failed:
                    raise values.pop().error
                yield values.pop()
            del values
    finally:
        for future in pending:
            future.cancel()
        pending.clear()
        backend = backend_ref()
        if backend is not None:
            backend.cancel(owner)
