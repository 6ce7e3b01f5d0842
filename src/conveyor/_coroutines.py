"""``async def`` task functions in a worker: each worker thread runs them on a loop of its own.

Data flow::

    map job / submit (caller)         worker: a thread of the thread backend, or a worker
                                      process's main thread
    -------------------------         -----------------------------------------------------
    async def fn  -> AsyncFunction    run_items(AsyncFunction, chunk)
    (picklable: fn, concurrency,        -> AsyncFunction.run_items: on this thread's own loop
    task_timeout)                          (made on first use, kept for the thread's life),
                  -- unit -->              ``concurrency`` runner tasks take the chunk's items
                                           in turn, each coroutine under ``task_timeout``
                                        -> one (values, errors) for the chunk, as for any fn
                                      AsyncFunction(*args) (a submit, or a timed item): the
                                        same loop, one coroutine

Guarantees, and where they are kept:

* **Concurrency per worker.** At most ``concurrency`` coroutines of a chunk run at once on a
  worker (:meth:`AsyncFunction.run_items`); the asyncio front sizes a map's chunks to
  ``concurrency`` items so that each worker is kept that busy (aiomultiprocess's model).
* **An item's failure is its own.** A coroutine that raises (or is cancelled from inside)
  settles its item; the other items run on, as with a plain function.
* **task_timeout.** A coroutine past it is cancelled and its item gets
  :class:`~conveyor.TaskTimeout` (also when it caught the cancellation and returned late). This
  tier lives in the loop: a coroutine that blocks its loop in C is not stopped by it. (The
  chunk is sent untimed so that its items run concurrently; a ``submit`` with
  ``pool.options(timeout=...)`` keeps the engine's in-process alarm and hard deadline.)
* **One loop per thread, never shared.** A loop belongs to the thread that made it
  (``threading.local``); an alarm or an asynchronous exception that lands in the loop's own
  code leaves it usable: the interrupted coroutine is cancelled before the call returns
  (:meth:`AsyncFunction.__call__`).
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from ._executor_errors import TaskTimeout
from ._work import Abandoned, Outcomes, RunsItems, call_item

__all__ = ["AsyncFunction", "is_async_function"]

_local = threading.local()


def is_async_function(fn: Any) -> bool:
    """Whether calling ``fn`` makes a coroutine (``async def``, a partial of one, or an object
    whose ``__call__`` is ``async def``).

    Example::

        >>> async def fetch(x): return x
        >>> is_async_function(fetch), is_async_function(len)
        (True, False)
    """
    code = getattr(fn, "__code__", None)
    if code is not None:  # a plain function: one flag to read (this runs for every acall)
        return bool(code.co_flags & inspect.CO_COROUTINE)
    if isinstance(fn, AsyncFunction):
        return False  # already wrapped: it runs its coroutines itself
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 (the method itself, not callable())
    )


def _thread_loop() -> Any:
    """This thread's own event loop (made on first use)."""
    import asyncio

    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
    return loop


class AsyncFunction(RunsItems):
    """A picklable stand-in for an ``async def`` function, run by workers on their own loops.

    ``func`` is the coroutine function (named like ``functools.partial``'s, so conveyor's
    per-function timings key on it); ``concurrency`` bounds the coroutines of one chunk that
    run at once; ``task_timeout`` (seconds, or None) bounds each coroutine.

    Example::

        >>> from conveyor._work import MODE_MAP
        >>> async def double(x): return 2 * x
        >>> AsyncFunction(double, concurrency=4).run_items(MODE_MAP, [1, 2, 3])
        ([2, 4, 6], {})
    """

    __slots__ = ("concurrency", "func", "task_timeout")

    def __init__(
        self,
        func: Callable[..., Coroutine[Any, Any, Any]],
        concurrency: int = 1,
        task_timeout: float | None = None,
    ):
        self.func = func
        self.concurrency = concurrency
        self.task_timeout = task_timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (AsyncFunction, (self.func, self.concurrency, self.task_timeout))

    def __repr__(self) -> str:
        return f"AsyncFunction({getattr(self.func, '__qualname__', self.func)!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one coroutine to its end on this thread's loop."""
        return self._run(self._timed(lambda: self.func(*args, **kwargs)))

    def run_items(self, mode: int, items: list[Any]) -> Outcomes:
        """Run the items' coroutines, ``concurrency`` at a time; outcomes as run_items's."""
        outcomes: Outcomes = self._run(self._run_all(mode, items))
        return outcomes

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        loop = _thread_loop()
        task = loop.create_task(coroutine)
        try:
            return loop.run_until_complete(task)
        finally:
            # An alarm (TaskTimeout) or an asynchronous exception raised in the loop's own
            # code leaves the task pending: cancel it now, so it never runs in a later call.
            if not task.done():
                task.cancel()
                try:
                    loop.run_until_complete(task)
                except BaseException:
                    pass

    async def _run_all(self, mode: int, items: list[Any]) -> Outcomes:
        import asyncio

        values: list[Any] = [None] * len(items)
        errors: dict[int, BaseException] = {}
        todo = iter(enumerate(items))

        async def runner() -> None:
            # Runners take items in turn from one iterator: the loop is single-threaded, so no
            # item is taken twice, and at most ``concurrency`` coroutines are ever running.
            for position, item in todo:
                try:
                    values[position] = await self._timed(
                        functools.partial(call_item, self.func, mode, item)
                    )
                except Abandoned:
                    raise
                except BaseException as exc:  # as run_items: a task's error is its item's
                    errors[position] = exc

        count = max(1, min(self.concurrency, len(items)))
        await asyncio.gather(*(runner() for _ in range(count)))
        return values, errors

    async def _timed(self, start: Callable[[], Any]) -> Any:
        """Await the coroutine ``start()`` makes, cancelling it past ``task_timeout``."""
        import asyncio

        timeout = self.task_timeout
        if timeout is None:
            return await start()
        task = asyncio.ensure_future(start())
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        handle = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            result = await task
        except asyncio.CancelledError:
            if not expired:
                raise
            result = None
        finally:
            handle.cancel()
        if expired:  # cancelled at the deadline, or it caught that and returned late
            raise TaskTimeout(f"task ran past its timeout of {timeout:g} s", timeout)
        return result
