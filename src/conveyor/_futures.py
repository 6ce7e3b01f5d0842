"""The ``Future`` that ``Pool.submit`` returns: a ``concurrent.futures.Future``, lighter to keep.

Data flow: none of its own. The caller's thread makes the future and waits on it; the thread
that settles it (a backend's worker thread or dispatcher, see ``_pool._FutureTask``) calls
``set_result`` / ``set_exception``, inherited unchanged, as every other method is.

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
from collections import deque
from concurrent.futures import Future as _StdFuture
from concurrent.futures._base import PENDING

TYPE_CHECKING = False  # (typing is not imported at run time: a cold script skips it)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["LIGHT", "Future"]

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
        # has not (for Pool.stop; see _pool._FutureTask)
        self._conveyor_task = None


_LightFuture.__name__ = _LightFuture.__qualname__ = "Future"  # (its repr is the stock one's)


def _stock_state() -> tuple[set[str], set[str]]:
    return set(vars(threading.Condition())), set(vars(_StdFuture()))


#: Whether this Python's Condition and Future have the state the light classes make.
LIGHT = _stock_state() == (_CONDITION_STATE, _FUTURE_STATE)

Future: type[_StdFuture[Any]] = _LightFuture if LIGHT else _StdFuture
