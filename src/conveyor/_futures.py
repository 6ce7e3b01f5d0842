"""What ``Pool.submit`` returns, and what settles it: a ``concurrent.futures.Future``, lighter
to keep, and the sink of its one-item unit (:class:`FutureTask`).

Data flow: the caller's thread makes the future and waits on it; the thread that settles it (a
backend's worker thread or dispatcher) calls the :class:`FutureTask`'s ``deliver``, which calls
``set_result`` / ``set_exception``, inherited unchanged, as every other method is.

A map needs none of this module: ``_pool`` imports it at the first submit, so that a cold
``conveyor.map`` never imports ``concurrent.futures`` (nor ``logging``, which it imports).

Why it exists: a script that submits thousands of tasks and keeps their futures spends much
of its time in the cycle collector, which walks every object that can hold references. A
stock ``Future`` brings 11 such objects: itself, its two lists, its ``threading.Condition``
and that condition's ``RLock``, deque and five bound methods stored on it. This one brings 5
(itself, its two lists, its condition and lock): the condition delegates to its lock through
methods of its class, and makes its waiter deque only when a thread first waits. Measured
on Python 3.11 with 5,000 submits of a tiny function, start and shutdown included: the
collector's share fell from 50-75 ms to 25-45 ms of ~350 ms, and the caller's CPU time per
task from ~80 to ~60 us.

It is a subclass, so ``isinstance(f, concurrent.futures.Future)`` holds and ``wait``,
``as_completed``, ``asyncio.wrap_future`` and the executor tests of CPython all see a
standard future. Should a later Python give ``Future`` or ``Condition`` state that this class
does not make, the stock classes are used instead (``LIGHT`` is False): never a future that
is half made.

Guarantees (each kept by the stock methods, which this class does not change):

* Every state change happens under the condition's lock; ``wait`` makes the waiter deque
  under that lock too (``Condition.wait`` checks ownership first), so two waiters never
  make two deques, and ``notify`` never misses one: it reads the deque under the same lock.
* Until a thread waits, the deque is the shared empty tuple: ``notify`` and ``notify_all``
  read nothing from it and write nothing to it.

Example::

    >>> import concurrent.futures
    >>> future = Future()
    >>> isinstance(future, concurrent.futures.Future), future.done()
    (True, False)
    >>> future.set_result(42)
    >>> future.result(timeout=0), future.done()
    (42, True)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future as _StdFuture
from concurrent.futures import InvalidStateError
from concurrent.futures._base import PENDING

from ._errors import PoolClosed
from ._retry import RetryPolicy
from ._work import Unit
from .backends.queue import FOLLOW_UP

TYPE_CHECKING = False  # (typing is not imported at run time: a cold script skips it)
if TYPE_CHECKING:
    from typing import Any, Protocol

    from ._pool import _SubmitTimes
    from ._work import Loader
    from .backends.base import Backend

    class Settles(Protocol):
        """What a :class:`FutureTask` settles: these methods of a ``concurrent.futures.Future``,
        with their meaning."""

        def done(self) -> bool: ...
        def cancel(self) -> bool: ...
        def set_running_or_notify_cancel(self) -> bool: ...
        def set_result(self, result: Any) -> None: ...
        def set_exception(self, exception: BaseException) -> None: ...


__all__ = ["LIGHT", "Future", "FutureTask", "OneFutureSink", "task_of"]

#: The state a stock Condition and Future have, which the light classes make themselves.
_CONDITION_STATE = {"_lock", "acquire", "release", "_release_save", "_acquire_restore",
                    "_is_owned", "_waiters"}  # fmt: skip
_FUTURE_STATE = {"_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks"}
_NO_WAITERS: tuple[()] = ()


class _Condition(threading.Condition):
    """A ``threading.Condition`` on its own ``RLock``, with nothing stored per instance but
    the lock and the waiters (``Condition.__init__`` also stores five bound methods)."""

    __slots__ = ("_lock", "_waiters")
    _waiters: deque[threading.Lock]  # (the shared empty tuple until a thread waits)

    def __init__(self) -> None:  # (no super().__init__(): it would store the bound methods)
        self._lock = threading.RLock()
        self._waiters = _NO_WAITERS  # type: ignore[assignment]

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    __enter__ = acquire

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> object:
        return self._lock._release_save()  # type: ignore[attr-defined]

    def _acquire_restore(self, state: object) -> None:
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]

    def _is_owned(self) -> bool:
        return self._lock._is_owned()  # type: ignore[attr-defined]

    def wait(self, timeout: float | None = None) -> bool:
        if self._waiters is _NO_WAITERS and self._is_owned():  # (not owned: wait() raises)
            self._waiters = deque()
        return super().wait(timeout)

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()  # type: ignore[attr-defined]
        self._waiters = _NO_WAITERS  # type: ignore[assignment]


class _LightFuture(_StdFuture):
    """A ``concurrent.futures.Future`` whose condition is a :class:`_Condition`."""

    __slots__ = (*sorted(_FUTURE_STATE), "_conveyor_task")

    def __init__(self) -> None:  # the stock __init__, with the light condition
        self._condition = _Condition()
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks: list[Any] = []
        # conveyor.Pool: a weak reference to the task that settles this future, while it
        # has not (for Pool.stop; see FutureTask)
        self._conveyor_task = None


_LightFuture.__name__ = _LightFuture.__qualname__ = "Future"  # (its repr is the stock one's)


def _stock_state() -> tuple[set[str], set[str]]:
    return set(vars(threading.Condition())), set(vars(_StdFuture()))


#: Whether this Python's Condition and Future have the state the light classes make.
LIGHT = _stock_state() == (_CONDITION_STATE, _FUTURE_STATE)

Future: type[_StdFuture[Any]] = _LightFuture if LIGHT else _StdFuture


def task_of(future: _StdFuture[Any]) -> FutureTask | None:
    """The sink of a submitted future, while the backend still has its unit (see Pool.stop)."""
    ref = getattr(future, "_conveyor_task", None)
    return None if ref is None else ref()


class OneFutureSink:
    """A sink whose unit settles one future (:class:`FutureTask`, and an executor-style map's
    task, ``_executor_map._MapTask``): the future is marked running exactly once, when the
    unit is first handed to a worker, and a future cancelled before that is never run.

    Example::

        >>> sink = OneFutureSink()
        >>> sink.future, sink.started = Future(), False
        >>> sink.starting(None), sink.starting(None), sink.future.running()
        (True, True, True)
    """

    __slots__ = ("future", "started")
    future: Settles
    started: bool

    def starting(self, unit: Unit) -> bool:
        if self.started:  # a retry, or a piece re-queued after a crash
            return not self.future.done()
        self.started = True
        return self.future.set_running_or_notify_cancel()


class FutureTask(OneFutureSink):
    """The sink of one ``submit``: settles its future, retrying first if asked to.

    The future is a ``concurrent.futures.Future``, or for an awaited call the ``_CallFuture``
    that hands its outcome to the event loop (``_aio.py``): only the methods of
    :class:`Settles` are used.
    """

    __slots__ = ("__weakref__", "attempts", "backend", "policy", "times")

    def __init__(self, backend: Backend, future: Settles, retries: int, times: _SubmitTimes):
        self.backend = backend
        self.future = future
        self.policy = RetryPolicy.of(retries)
        self.times = times
        self.attempts = 0
        self.started = False

    @property
    def owner(self) -> object:
        # A property, not `self.owner = self`: that reference cycle kept every finished task, its
        # future and its result (maybe a view of shared memory) alive until the cycle collector.
        return self

    def deliver(self, unit: Unit, start: int, loader: Loader, elapsed: float) -> None:
        values, errors = loader()
        error = errors.get(0)
        if error is None:
            try:  # (no done() first: each look at a Future takes its lock)
                self.future.set_result(values[0])
            except InvalidStateError:
                pass  # done already: see below
            else:
                self.times.observe(elapsed)
                self._settled()
                return
        if self.future.done():
            if not self.started:  # its caller cancelled it, and it was dropped unrun
                self.started = True
                self.future.set_running_or_notify_cancel()
            self._settled()
            return
        assert error is not None  # set_result refuses only a future that is done
        if isinstance(error, PoolClosed) and not self.started:
            # dropped unrun by shutdown(cancel_futures=True) or terminate(): cancelled, and
            # notified, so that wait() and as_completed() see it (starting() never will)
            self.started = True
            self.future.cancel()
            self.future.set_running_or_notify_cancel()
            self._settled()
            return
        self.attempts += 1
        delay = self.policy.delay(self.attempts, error)
        if delay is not None:
            retry = Unit(
                fn=unit.fn,
                items=unit.items,
                mode=unit.mode,
                sink=self,
                tags=unit.tags,
                timeout=unit.timeout,
                not_before=time.monotonic() + delay,
            )
            try:
                self.backend.submit([retry], FOLLOW_UP)
                return
            except Exception as exc:
                error = exc
        self.future.set_exception(error)
        self._settled()

    def _settled(self) -> None:
        """The future is settled for good: it no longer needs to find this task (Pool.stop),
        and a kept future should not keep a dead weak reference (one more object for the
        cycle collector to walk)."""
        future = self.future
        if type(future) is Future:
            future._conveyor_task = None  # type: ignore[attr-defined]
