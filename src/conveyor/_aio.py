"""The asyncio front: await conveyor's pools, and cancelling what you awaited stops the work.

Not a backend: it adapts what the engine already does (units, sinks, :class:`MapJob`) to an
event loop. Data flow::

    event loop thread                          backend threads (worker threads, dispatcher)
    -----------------                          ---------------------------------------------
    await acall(fn, *args)
      submit one unit (Pool._submit_task) -->  FutureTask settles a _CallFuture, which puts
      await a loop future      <-------------  the outcome in the loop's _Inbox: one
                                               call_soon_threadsafe per burst of outcomes
    async for r in amap(fn, items):
      _AsyncJob (a MapJob) steps in the loop:
      takes input, cuts chunks, submits  ---->  runs chunks (async def fns: see _coroutines)
      awaits a waiter future   <-------------  _Chunk.deliver -> _WakingQueue.put: the outcome
      handles outcomes, hands results out        is queued, the waiter woken by
                                                 call_soon_threadsafe (only if one waits)
      async input: a feeder task pulls it
      into a buffer of at most one chunk,
      only while the in-flight bound has room
    cancelled, or left early:
      job closed, backend.interrupt(owner) --> process: the workers running its units are
                                                 killed (the dispatcher reaps and replaces them)
                                               thread: the threads running them are asked to
                                                 stop (an asynchronous exception), fresh
                                                 threads take their places

Guarantees, and where they are kept:

* **No polling.** Results wake the loop through ``call_soon_threadsafe``; an idle ``await``
  costs no CPU. A wakeup is never lost: :meth:`_AsyncJob._wait` stores its waiter *before* it
  looks at the queue, and :meth:`_WakingQueue.put` queues *before* it looks for a waiter, so an
  outcome that arrives in between is either seen in the queue or wakes the waiter.
* **Cancellation stops the work** (the default; see ``stop_on_cancel``). A cancelled
  :func:`acall` cancels its task if it has not started, else interrupts it; a cancelled, closed
  or dropped :class:`AsyncResults` closes its job and interrupts what runs. Interrupting never
  blocks the loop: it sends signals (``interrupt(owner, wait=False)``) and returns. A
  ``TaskGroup`` failure, ``asyncio.timeout`` and ``wait_for`` all cancel the awaiting task, so
  they are covered. To let a call run on regardless, ``await asyncio.shield(pool.acall(...))``.
* **Bounded, lazy input.** A sync iterable is read in the loop thread as chunks are needed, as
  ``imap`` reads it; an async iterable is read by a feeder task only while the job has room
  (:meth:`_AsyncJob._feed`), so an endless async generator is fine. The in-flight bound and
  ordering are MapJob's: an ordered map keeps starting new chunks behind a slow first one.
* **Single-threaded job state.** The job, its buffer and its feeder are touched only in the
  loop thread; backend threads only put on the queue and schedule wakeups.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import queue
import threading
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from concurrent.futures import CancelledError, InvalidStateError
from typing import TYPE_CHECKING, Any

from ._coroutines import AsyncFunction, is_async_function
from ._errors import PoolClosed
from ._job import Event, MapJob
from ._options import JobOptions, check_backend, check_callable
from ._work import MODE_MAP, MODE_STAR, wake_soon
from .backends.base import Backend

if TYPE_CHECKING:
    from ._chunking import ItemTimes
    from ._futures import FutureTask
    from ._pool import PoolCore

__all__ = [
    "AsyncResults",
    "acall",
    "amap",
    "amap_unordered",
    "astarmap",
]

#: coroutines of an ``async def`` function one worker runs at once, unless ``concurrency=``
DEFAULT_CONCURRENCY = 16


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _wake_threadsafe(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
    """Wake ``waiter`` from any thread; a loop closed meanwhile has nobody left to wake."""
    try:
        loop.call_soon_threadsafe(_wake, waiter)
    except RuntimeError:
        pass


class _Inbox:
    """Settles the awaited calls of one loop from backend threads, one loop wakeup per burst.

    A batch of coalesced calls finishes at once; waking each through ``call_soon_threadsafe``
    would write the loop's self-pipe once per call. Here the first put of a burst schedules one
    :meth:`_drain` and later ones only queue; a backend thread inside
    :class:`~conveyor._work.deferred_wakeups` (the process dispatcher, reading a batch's
    results) schedules it only when its burst ends (:func:`~conveyor._work.wake_soon`), so the
    loop wakes once per batch and finds every outcome queued. No wakeup is lost: :meth:`_drain`
    clears ``scheduled`` *before* it empties the queue, so a put that sees it set is drained by
    the pending drain, and a put that sees it clear schedules a new one (deque appends and the
    flag are atomic under the GIL; a spurious extra drain is harmless).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        # weak: the inbox is the loop's value in _inboxes, and must not keep its key alive (it
        # did: every asyncio.run() that awaited a call left its loop behind)
        self.loop = weakref.ref(loop)
        self.entries: collections.deque[tuple[asyncio.Future[Any], Any]] = collections.deque()
        self.scheduled = False

    def put(self, waiter: asyncio.Future[Any], value: Any) -> None:
        """Set ``waiter``'s result to ``value`` in the loop's thread (called from any thread)."""
        self.entries.append((waiter, value))
        if not self.scheduled:
            self.scheduled = True
            if not wake_soon(self, self._schedule):
                self._schedule()

    def _schedule(self) -> None:
        loop = self.loop()
        try:
            if loop is not None:
                loop.call_soon_threadsafe(self._drain)
                return
        except RuntimeError:
            pass
        # The loop is closed or gone: nobody is left to wake, and nothing may keep it alive.
        self.scheduled = False
        self.entries.clear()

    def _drain(self) -> None:
        self.scheduled = False
        entries = self.entries
        while entries:
            waiter, value = entries.popleft()
            if not waiter.done():  # (a cancelled await)
                waiter.set_result(value)


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    inbox = _inboxes.get(loop)
    if inbox is None:
        inbox = _inboxes[loop] = _Inbox(loop)
    return inbox


# ============================================================================ single calls

# the states of a _CallFuture (as concurrent.futures names them)
_PENDING, _RUNNING, _CANCELLED, _CANCELLED_AND_NOTIFIED, _FINISHED = range(5)


class _CallFuture:
    """What an awaited call's sink (``_futures.FutureTask``) settles: the state machine of a
    ``concurrent.futures.Future`` (the methods the sink and :func:`_stop_call` use, with the
    same meaning), whose outcome goes straight to the awaiting loop through its :class:`_Inbox`
    as ``(True, result)`` or ``(False, exception)``.

    Not a ``Future``: it is never handed out, and it costs no Condition, no callback list and
    no second wakeup. Its transitions run in backend threads (``set_running_or_notify_cancel``,
    ``set_result``, ``set_exception``) and in the loop's (``cancel``); one lock for all of them
    makes each test-and-set atomic, so exactly one of "cancelled before it started" and
    "started" happens, and exactly one outcome is put.
    """

    __slots__ = ("_state", "inbox", "waiter")

    _lock = threading.Lock()  # shared: each critical section is a test and a store

    def __init__(self, inbox: _Inbox, waiter: asyncio.Future[Any]):
        self._state = _PENDING
        self.inbox = inbox
        self.waiter = waiter

    def done(self) -> bool:
        return self._state >= _CANCELLED

    def cancel(self) -> bool:
        with self._lock:
            state = self._state
            if state in (_RUNNING, _FINISHED):
                return False
            if state != _PENDING:
                return True  # cancelled already
            self._state = _CANCELLED
        self.inbox.put(self.waiter, (False, CancelledError()))
        return True

    def set_running_or_notify_cancel(self) -> bool:
        with self._lock:
            state = self._state
            if state == _PENDING:
                self._state = _RUNNING
                return True
            if state == _CANCELLED:
                self._state = _CANCELLED_AND_NOTIFIED
                return False
        raise RuntimeError(f"call in unexpected state {state}")

    def set_result(self, result: Any) -> None:
        self._finish((True, result))

    def set_exception(self, exception: BaseException) -> None:
        self._finish((False, exception))

    def _finish(self, outcome: tuple[bool, Any]) -> None:
        with self._lock:
            if self._state >= _CANCELLED:
                raise InvalidStateError(f"call already settled (state {self._state})")
            self._state = _FINISHED
        self.inbox.put(self.waiter, outcome)


async def call_on(
    pool: PoolCore,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    task_timeout: float | None = None,
    retries: int = 0,
) -> Any:
    """``fn(*args, **kwargs)`` on ``pool``, awaited; cancelling the await stops the task."""
    if is_async_function(fn):
        fn = AsyncFunction(fn)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[tuple[bool, Any]] = loop.create_future()
    future = _CallFuture(_inbox(loop), waiter)
    # (task_timeout and retries were checked by the caller, fn is by _submit_task)
    task = pool._submit_task(fn, args, kwargs, task_timeout, retries, future)
    try:
        ok, value = await waiter
    except asyncio.CancelledError:
        _stop_call(pool._backend, task)
        raise
    if ok:
        return value
    raise value


def _stop_call(backend: Backend, task: FutureTask) -> None:
    """Stop a call whose await was cancelled: drop it if it has not started, else interrupt it
    (its result, should it come first, is dropped with the future)."""
    if task.future.cancel() or task.future.done():
        return
    backend.interrupt(task, wait=False)


async def acall(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Await ``fn(*args, **kwargs)`` run in a worker process of the default pool.

    Every keyword goes to ``fn``; for a pool, a thread backend or a ``task_timeout``, use
    ``conveyor.Pool.acall`` (and ``pool.options(...)``). Cancelling the await (a timeout,
    a ``TaskGroup`` failure) kills the worker running the call; the pool replaces it.

    Example::

        >>> import asyncio, conveyor
        >>> asyncio.run(conveyor.acall(pow, 2, 10))
        1024
    """
    from ._api import _default_pool

    return await call_on(_default_pool("process", None, None), fn, args, kwargs)


# ============================================================================ maps


class _WakingQueue(queue.SimpleQueue[Event]):
    """A job's outcome queue that also wakes the job's loop when the job waits on it."""

    job: _AsyncJob | None = None

    def put(self, item: Event, block: bool = True, timeout: float | None = None) -> None:
        super().put(item)
        job = self.job
        if job is None:
            return
        waiter = job._waiter
        if waiter is not None:  # read after queueing: see the module's guarantees
            _wake_threadsafe(job._loop, waiter)


class _AsyncJob(MapJob):
    """A MapJob driven from an event loop: it awaits where MapJob blocks."""

    _loop: asyncio.AbstractEventLoop
    _waiter: asyncio.Future[None] | None = None

    def __init__(
        self,
        backend: Backend,
        fn: Callable[..., Any],
        source: Iterable[Any] | AsyncIterable[Any],
        loop: asyncio.AbstractEventLoop,
        options: JobOptions,
        item_times: ItemTimes | None = None,
    ):
        self._loop = loop
        self._async_source: AsyncIterator[Any] | None = None
        if isinstance(source, AsyncIterable):
            self._async_source = source.__aiter__()
            source = _NoSyncInput()
        self._buffer: collections.deque[Any] = collections.deque()
        self._source_done = False
        self._source_error: BaseException | None = None
        self._want_input = asyncio.Event()
        self._feeder: asyncio.Task[None] | None = None
        super().__init__(backend, fn, source, options, item_times=item_times)
        if self._async_source is not None:
            self._feeder = loop.create_task(self._feed())

    def _new_events(self) -> Any:
        events = _WakingQueue()
        events.job = self
        return events

    # ------------------------------------------------------------ async input

    def _take(self, size: int) -> tuple[list[Any], bool]:
        if self._async_source is None:
            return super()._take(size)
        buffer = self._buffer
        items = [buffer.popleft() for _ in range(min(size, len(buffer)))]
        self._want_input.set()
        if self._source_error is not None and not buffer:
            error, self._source_error = self._source_error, None
            raise error
        return items, self._source_done and not buffer

    async def _feed(self) -> None:
        """Pull the async input while the job has room for it: at most one chunk more."""
        assert self._async_source is not None
        source = self._async_source
        try:
            while not self.closed:
                size = self._chunker.next_size()
                if len(self._buffer) >= size or not self._has_room(size):
                    self._want_input.clear()
                    await self._want_input.wait()
                    continue
                try:
                    item = await source.__anext__()
                except StopAsyncIteration:
                    break
                self._buffer.append(item)
                if self._waiter is not None:
                    _wake(self._waiter)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the input's own error: raised to the consumer
            self._source_error = exc
        finally:
            self._source_done = True
            if self._waiter is not None:
                _wake(self._waiter)

    # ------------------------------------------------------------ waiting

    async def _wait_async(self) -> None:
        """Wait until an outcome or input arrives, then handle the outcomes."""
        waiter = self._loop.create_future()
        self._waiter = waiter  # before looking: see the module's guarantees
        try:
            if self.events.empty() and not self._input_ready():
                await waiter
        finally:
            self._waiter = None
        self._drain()
        self._want_input.set()

    def _input_ready(self) -> bool:
        """Whether the next step would take async input (so waiting would be wrong)."""
        if self._async_source is None or self._input is None:
            return False
        if self._source_done and not self._buffer:
            return True  # its end (or its error) is to be taken
        return bool(self._buffer) and self._has_room(self._chunker.next_size())

    def stop(self, interrupt: bool) -> None:
        """Close the job (any thread); ``interrupt`` also stops its running units."""
        self._close(interrupt=interrupt, wait=False)
        feeder = self._feeder
        if feeder is not None and not feeder.done():
            try:
                self._loop.call_soon_threadsafe(feeder.cancel)
            except RuntimeError:
                pass  # the loop is closed: the feeder went with it


class _NoSyncInput:
    """MapJob's input when the input is async (read by :meth:`_AsyncJob._take` instead)."""

    def __iter__(self) -> Any:
        return iter(())


class AsyncResults:
    """The results of :func:`amap` and its kind: an async iterator, and an async context
    manager that stops the work when its block is left.

    Leaving an ``async for`` early stops the work as soon as the results object is dropped
    (at once in CPython when nothing else refers to it); ``async with`` or :meth:`aclose`
    stop it at a point of your choosing.

    Example::

        >>> import asyncio, conveyor
        >>> async def first_squares():
        ...     async with conveyor.amap(abs, range(-3, 3)) as results:
        ...         return [r async for r in results]
        >>> asyncio.run(first_squares())
        [3, 2, 1, 0, 1, 2]
    """

    def __init__(self, start: Callable[[asyncio.AbstractEventLoop], _AsyncJob], stop: bool):
        self._start: Callable[[asyncio.AbstractEventLoop], _AsyncJob] | None = start
        self._stop_on_cancel = stop
        self._job: _AsyncJob | None = None
        self._values: collections.deque[Any] = collections.deque()
        self._done = False
        self._finalizer: weakref.finalize | None = None

    def __aiter__(self) -> AsyncResults:
        return self

    async def __anext__(self) -> Any:
        values = self._values
        while True:
            if values:
                return values.popleft()
            if self._done:
                raise StopAsyncIteration
            job = self._job if self._job is not None else self._begin()
            try:
                ready = job._step()
                if ready is None:
                    self._end(interrupt=False)
                    raise StopAsyncIteration
                if not ready:
                    await job._wait_async()
                for batch in ready:
                    values.extend(batch)
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                self._end(interrupt=self._stop_on_cancel)
                raise
            except BaseException:  # the map's error: queued work dropped, running work ends
                self._end(interrupt=False)
                raise

    def _begin(self) -> _AsyncJob:
        assert self._start is not None
        self._job = self._start(asyncio.get_running_loop())
        self._start = None
        # Dropped without being closed (a `break` out of `async for`): stop the work then.
        self._finalizer = weakref.finalize(self, self._job.stop, self._stop_on_cancel)
        return self._job

    def _end(self, interrupt: bool) -> None:
        self._done = True
        self._start = None
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._job is not None:
            self._job.stop(interrupt)

    async def aclose(self) -> None:
        """Stop: queued work is dropped, running work stopped (unless ``stop_on_cancel=False``).

        Example::

            >>> import asyncio, conveyor
            >>> async def one():
            ...     results = conveyor.amap(abs, [-1, -2])
            ...     first = await results.__anext__()
            ...     await results.aclose()
            ...     return first
            >>> asyncio.run(one())
            1
        """
        if not self._done:
            self._end(interrupt=self._stop_on_cancel)

    async def __aenter__(self) -> AsyncResults:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


def _engine_options(
    fn: Callable[..., Any], concurrency: int | None, checked: JobOptions
) -> tuple[Callable[..., Any], JobOptions]:
    """The function to send and the map job's options, for an async function too."""
    check_callable(fn)
    if is_async_function(fn):
        if concurrency is None:
            concurrency = DEFAULT_CONCURRENCY
        _check_concurrency(concurrency)
        # The coroutines' limit is kept in the worker's loop; the chunk goes untimed so that
        # its items run concurrently (see conveyor._coroutines).
        fn = AsyncFunction(fn, concurrency, checked.task_timeout)
        chunksize = concurrency if checked.chunksize == "auto" else checked.chunksize
        checked = checked.replace(task_timeout=None, chunksize=chunksize)
    elif concurrency is not None:
        raise ValueError(
            f"concurrency= applies to async def functions; {fn!r} is not one "
            f"(workers= sets how many plain calls run at once)"
        )
    return fn, checked


def _check_concurrency(concurrency: Any) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(
            f"concurrency must be a whole number of at least 1 or None, got {concurrency!r}"
        )


def _check_source(iterable: Any) -> None:
    if isinstance(iterable, AsyncIterable):
        return
    try:
        iter(iterable)
    except TypeError:
        raise TypeError(
            f"iterable must be an iterable or an async iterable, got {iterable!r} "
            f"(of type {type(iterable).__name__})"
        ) from None


def map_on(
    pool: PoolCore,
    fn: Callable[..., Any],
    iterable: Iterable[Any] | AsyncIterable[Any],
    *,
    mode: int = MODE_MAP,
    ordered: bool = True,
    chunksize: int | str = "auto",
    task_timeout: float | None = None,
    retries: int = 0,
    on_error: str = "raise",
    progress: bool | dict[str, Any] = False,
    concurrency: int | None = None,
    stop_on_cancel: bool = True,
    on_end: Callable[[], None] | None = None,
) -> AsyncResults:
    """The async map of ``fn`` over ``iterable`` on ``pool`` (see :func:`amap`)."""
    fn, options = _engine_options(fn, concurrency, JobOptions.from_call(locals()))
    if not isinstance(stop_on_cancel, bool):
        raise TypeError(f"stop_on_cancel must be True or False, got {stop_on_cancel!r}")
    _check_source(iterable)
    # Never "auto"'s measuring or inline runs: they would block the loop.
    backend = pool._backend_for(fn)
    if not backend.alive:
        raise PoolClosed("cannot submit to a pool that was shut down")

    def start(loop: asyncio.AbstractEventLoop) -> _AsyncJob:
        job = _AsyncJob(
            backend,
            fn,
            iterable,
            loop,
            options,
            item_times=pool._item_times,
        )
        if on_end is not None:
            weakref.finalize(job, on_end)
        return job

    return AsyncResults(start, stop_on_cancel)


# ============================================================================ one-shot maps


def _one_shot(
    fn: Callable[..., Any],
    iterable: Iterable[Any] | AsyncIterable[Any],
    mode: int,
    *,
    workers: int | None = None,
    backend: str = "process",
    start_method: str | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    **options: Any,
) -> AsyncResults:
    """A map on a default pool, or on a pool of its own when it has an ``initializer``."""
    from ._api import _default_pool
    from ._pool import PoolCore

    if check_backend(backend) not in ("process", "thread"):
        raise ValueError(
            f'backend must be "process" or "thread" for the async calls, got {backend!r} '
            f"(auto's measuring would block the event loop)"
        )
    if initializer is None:
        pool = _default_pool(backend, workers, start_method)
        return map_on(pool, fn, iterable, mode=mode, **options)
    own = PoolCore(
        workers=workers,
        backend=backend,
        start_method=start_method,
        initializer=initializer,
        initargs=initargs,
    )
    try:
        return map_on(
            own,
            fn,
            iterable,
            mode=mode,
            on_end=functools.partial(own.shutdown, wait=False),
            **options,
        )
    except BaseException:
        own.shutdown(wait=False)
        raise


def amap(
    fn: Callable[..., Any],
    iterable: Iterable[Any] | AsyncIterable[Any],
    *,
    workers: int | None = None,
    backend: str = "process",
    ordered: bool = True,
    chunksize: int | str = "auto",
    task_timeout: float | None = None,
    retries: int = 0,
    on_error: str = "raise",
    progress: bool | dict[str, Any] = False,
    concurrency: int | None = None,
    stop_on_cancel: bool = True,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    start_method: str | None = None,
) -> AsyncResults:
    """``async for r in conveyor.amap(fn, items)``: ``fn(x)`` for each ``x``, in input order.

    ``iterable`` may be a plain or an async iterable; it is read lazily, with a bounded number
    of items in flight (an endless async generator is fine), and a slow first item does not
    stop later ones from starting. ``backend`` is ``"process"`` (default) or ``"thread"``.

    * ``task_timeout``, ``retries``, ``on_error``, ``progress``, ``chunksize``: as in
      :func:`conveyor.map`. A failed item raises its own exception type with the worker's
      traceback chained; a worker that crashes fails only the item it ran.
    * ``fn`` may be an ``async def`` function: each worker (thread or process) runs it on an
      event loop of its own, up to ``concurrency`` (default 16) coroutines at once; chunks
      then hold ``concurrency`` items.
    * ``stop_on_cancel=True`` (default): cancelling the task that iterates (``asyncio.timeout``,
      ``wait_for``, a failing ``TaskGroup``), leaving the loop early or ``aclose()`` drops the
      queued work and stops the running work: a process worker running it is killed and
      replaced, a thread is asked to stop as ``Pool.terminate`` does. ``False``: running
      items finish and their results are dropped.

    Example::

        >>> import asyncio, conveyor
        >>> async def main():
        ...     return [r async for r in conveyor.amap(abs, [-1, -2, -3])]
        >>> asyncio.run(main())
        [1, 2, 3]
    """
    return _one_shot(
        fn,
        iterable,
        MODE_MAP,
        workers=workers,
        backend=backend,
        ordered=ordered,
        chunksize=chunksize,
        task_timeout=task_timeout,
        retries=retries,
        on_error=on_error,
        progress=progress,
        concurrency=concurrency,
        stop_on_cancel=stop_on_cancel,
        initializer=initializer,
        initargs=initargs,
        start_method=start_method,
    )


def amap_unordered(
    fn: Callable[..., Any], iterable: Iterable[Any] | AsyncIterable[Any], **options: Any
) -> AsyncResults:
    """Like :func:`amap`, yielding results as they finish.

    Example::

        >>> import asyncio, conveyor
        >>> async def main():
        ...     return sorted([r async for r in conveyor.amap_unordered(abs, [-2, -1])])
        >>> asyncio.run(main())
        [1, 2]
    """
    options["ordered"] = False
    return amap(fn, iterable, **options)


def astarmap(
    fn: Callable[..., Any],
    iterable: Iterable[Iterable[Any]] | AsyncIterable[Iterable[Any]],
    **options: Any,
) -> AsyncResults:
    """Like :func:`amap`, calling ``fn(*args)`` for each ``args`` of ``iterable``.

    Example::

        >>> import asyncio, conveyor
        >>> async def main():
        ...     return [r async for r in conveyor.astarmap(pow, [(2, 5), (3, 2)])]
        >>> asyncio.run(main())
        [32, 9]
    """
    return _one_shot(fn, iterable, MODE_STAR, **options)
