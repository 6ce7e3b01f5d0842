"""The exceptions of conveyor's that are ``concurrent.futures``' own kinds.

:class:`TaskTimeout` (a ``TimeoutError``), :class:`TaskStopped` (a ``CancelledError``),
:class:`WorkerCrashed` and :class:`WorkerInitError` (``BrokenExecutor`` s). They are apart
from ``_errors`` because subclassing them imports ``concurrent.futures``, which imports
``logging`` and ``traceback``: ~4 ms of a cold start, which a map that does not fail never
needs. So this module is imported where one of them is raised or caught, not before:
conveyor's own code imports it inside the function that needs it (never at the top of a module
a map imports), and ``conveyor.TaskTimeout`` and the others load it on first use.

Guarantee kept here: **a worker never imports it in a signal handler**. The worker's per-item
alarm raises :class:`TaskTimeout` from its SIGALRM handler; the alarm imports this module when
it is first set (``worker._Alarm.run``), before any handler can run.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor, CancelledError
from concurrent.futures import TimeoutError as FuturesTimeout

from ._errors import signal_name

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["TaskStopped", "TaskTimeout", "WorkerCrashed", "WorkerInitError", "missed_deadline"]


# On Python 3.10 concurrent.futures.TimeoutError is not yet the built-in TimeoutError: a
# TaskTimeout is both, so `except concurrent.futures.TimeoutError` catches it on every Python.
_TIMEOUT_BASES: tuple[type, ...] = (
    (TimeoutError,) if FuturesTimeout is TimeoutError else (TimeoutError, FuturesTimeout)
)


class TaskTimeout(*_TIMEOUT_BASES):  # type: ignore[misc]
    """A task ran past its ``task_timeout=`` and was stopped.

    A ``TimeoutError`` (and ``concurrent.futures.TimeoutError`` on every Python).

    Example::

        >>> import conveyor, time
        >>> conveyor.map(time.sleep, [5], task_timeout=0.5, on_error="return")[0].exception
        TaskTimeout('task ran past its timeout of 0.5 s')
    """

    def __init__(self, message: str = "task ran past its timeout", timeout: float | None = None):
        super().__init__(message)
        self.timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.timeout))


class TaskStopped(CancelledError):
    """A running task was stopped by :meth:`conveyor.Pool.stop`.

    A ``concurrent.futures.CancelledError``: ``except CancelledError`` code treats it as the
    cancellation it is.

    Example::

        >>> import threading, time
        >>> started = threading.Event()
        >>> with conveyor.Pool(workers=1, backend="thread") as pool:
        ...     fut = pool.submit(lambda: (started.set(), time.sleep(60)))
        ...     _ = started.wait(60)
        ...     _ = pool.stop(fut)
        ...     fut.exception()
        TaskStopped('the task was stopped by Pool.stop()')
    """


class WorkerCrashed(BrokenExecutor):
    """The worker process running a task died under it (a signal, ``os._exit``, the OOM killer).

    A ``concurrent.futures.BrokenExecutor`` (so a ``RuntimeError``), as the standard library
    reports a dead worker; unlike it, only the tasks assigned to the worker fail: the pool replaces
    the worker and goes on.

    ``exitcode`` is the process's exit code (negative: the signal number, as in
    ``multiprocessing``); ``signal_name`` names the signal when there was one.

    Example::

        >>> import conveyor, os
        >>> conveyor.map(os._exit, [3], backend="process", on_error="return")[0].exception
        WorkerCrashed('worker process (pid ...) died while running the task: exit code 3')
    """

    def __init__(self, message: str = "worker process died", exitcode: int | None = None):
        super().__init__(message)
        self.exitcode = exitcode

    @property
    def signal_name(self) -> str | None:
        """The name of the signal that killed the worker (``"SIGKILL"``), or None."""
        return signal_name(self.exitcode)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.exitcode))

    @classmethod
    def for_exit(cls, pid: int | None, exitcode: int | None) -> WorkerCrashed:
        """Build the error for a worker that ended with ``exitcode`` (negative: a signal)."""
        name = signal_name(exitcode)
        if name is not None:
            how = f"killed by {name}"
            if name == "SIGKILL":
                how += " (the out-of-memory killer sends it too)"
        else:
            how = f"exit code {exitcode}"
        return cls(f"worker process (pid {pid}) died while running the task: {how}", exitcode)


class WorkerInitError(BrokenExecutor):
    """A pool's ``initializer`` raised in a worker; the pool cannot run tasks.

    A ``concurrent.futures.BrokenExecutor``, as the standard library's executors report a
    failed initializer.

    Example::

        >>> with conveyor.Pool(initializer=int, initargs=("x",)) as pool:
        ...     try:
        ...         pool.submit(abs, 1).result()
        ...     except conveyor.WorkerInitError as e:
        ...         print(str(e).splitlines()[0])
        the pool's initializer int failed in a worker process:
    """


def missed_deadline(what: str, timeout: float) -> FuturesTimeout:
    """The TimeoutError for a call that ran past its ``timeout=`` (a deadline for the call).

    Its message names ``task_timeout=``: code written when ``timeout=`` meant a limit per item
    learns the new name from the first error it meets.

    Example::

        >>> missed_deadline("conveyor.map", 5)
        TimeoutError('conveyor.map ran past its timeout of 5 s (timeout= is a deadline for the whole call; a limit per item is task_timeout=)')
    """  # noqa: E501
    return FuturesTimeout(
        f"{what} ran past its timeout of {timeout:g} s (timeout= is a deadline for the whole "
        f"call; a limit per item is task_timeout=)"
    )


_PUBLIC = (TaskTimeout, TaskStopped, WorkerCrashed, WorkerInitError)
# The public classes print and pickle as conveyor.X (conveyor loads them on first use).
for _public in _PUBLIC:
    _public.__module__ = "conveyor"
del _public
# ... so doctest's finder would skip their examples as another module's: name them here.
__test__ = {cls.__name__: cls for cls in _PUBLIC}
