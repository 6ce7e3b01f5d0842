"""The exceptions and the failure record that conveyor gives back to its callers.

A task that fails in a worker process comes back as its own exception, with the worker's
formatted traceback chained as ``__cause__`` (the same convention as
``concurrent.futures.ProcessPoolExecutor``), so the caller's traceback shows the function and
the line that failed in the worker.
"""

from __future__ import annotations

import traceback
from concurrent.futures import BrokenExecutor, CancelledError
from concurrent.futures import TimeoutError as FuturesTimeout

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "Failure",
    "PoolClosed",
    "RemoteTraceback",
    "TaskStopped",
    "TaskTimeout",
    "Unsendable",
    "WorkerCrashed",
    "WorkerInitError",
]


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
        return _signal_name(self.exitcode)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.exitcode))

    @classmethod
    def for_exit(cls, pid: int | None, exitcode: int | None) -> WorkerCrashed:
        """Build the error for a worker that ended with ``exitcode`` (negative: a signal)."""
        name = _signal_name(exitcode)
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


class Unsendable(TypeError):
    """An item (or argument) cannot be pickled to go to a worker process.

    A mistake in the call, not a failure of the task: a map raises it whatever ``on_error``
    says, and never retries it.

    Example::

        >>> import threading
        >>> try:
        ...     conveyor.map(len, [threading.Lock()], backend="process")
        ... except conveyor.Unsendable as e:
        ...     print(e)
        cannot send the argument of item 0 to a worker process: ..._thread.lock...
    """


class PoolClosed(RuntimeError):
    """Work was submitted to a pool that was shut down, or the pool was terminated under it.

    A ``RuntimeError``, as the standard library's executors raise on a submit after shutdown.

    Example::

        >>> pool = conveyor.Pool(); pool.shutdown()
        >>> try:
        ...     pool.submit(abs, 1)
        ... except conveyor.PoolClosed as e:
        ...     print(e)
        cannot submit to a pool that was shut down
    """


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, chained as ``__cause__``.

    Example::

        >>> try:
        ...     conveyor.map(int, ["x"], backend="process")
        ... except ValueError as exc:
        ...     print(type(exc.__cause__).__name__)
        RemoteTraceback
    """

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class Failure:
    """What ``on_error="return"`` puts in the place of an item's result.

    ``item`` is the input, ``exception`` the final exception, ``traceback`` its formatted text
    (the worker's traceback for a remote failure), ``attempts`` how many times it was run.
    A Failure is falsy, so ``[r for r in results if r]`` keeps the successes.

    Example::

        >>> [r for r in conveyor.map(int, ["1", "x"], on_error="return")]
        [1, Failure(item='x', exception=ValueError(...), attempts=1)]
    """

    __slots__ = ("attempts", "exception", "item", "traceback")

    def __init__(self, item: Any, exception: BaseException, traceback: str = "", attempts: int = 1):
        self.item = item
        self.exception = exception
        self.traceback = traceback
        self.attempts = attempts

    def __repr__(self) -> str:
        return (
            f"Failure(item={self.item!r}, exception={self.exception!r}, attempts={self.attempts})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Failure):
            return NotImplemented
        return (self.item, self.exception, self.traceback, self.attempts) == (
            other.item,
            other.exception,
            other.traceback,
            other.attempts,
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (Failure, (self.item, self.exception, self.traceback, self.attempts))

    def __bool__(self) -> bool:
        return False

    def reraise(self) -> None:
        """Raise the stored exception (with its remote traceback chained)."""
        raise self.exception

    @property
    def stdout(self) -> str:
        """What the item printed to ``sys.stdout`` (with ``capture_output=True``; else '').

        Example::

            >>> def noisy(x):
            ...     print("reading", x)
            ...     return int(x)
            >>> conveyor.map(noisy, ["x"], on_error="return", capture_output=True)[0].stdout
            'reading x\\n'
        """
        from ._capture import output_of

        return output_of(self.exception)[0]

    @property
    def stderr(self) -> str:
        """What the item wrote to ``sys.stderr`` (with ``capture_output=True``; else '')."""
        from ._capture import output_of

        return output_of(self.exception)[1]


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


_PUBLIC = (
    TaskTimeout,
    TaskStopped,
    WorkerCrashed,
    WorkerInitError,
    Unsendable,
    PoolClosed,
    RemoteTraceback,
    Failure,
)
# The public classes print and pickle as conveyor.X (conveyor loads them on first use).
for _public in _PUBLIC:
    _public.__module__ = "conveyor"
del _public
# ... so doctest's finder would skip their examples as another module's: name them here.
__test__ = {cls.__name__: cls for cls in _PUBLIC}


def _signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        import signal  # here: start-up time counts, and few programs meet a signal death

        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def format_exception_text(exc: BaseException) -> str:
    """The traceback text of ``exc`` as the standard library would print it."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def attach_remote_traceback(exc: BaseException, tb: str) -> BaseException:
    """Chain the worker's traceback text to ``exc`` so that printing it shows where it failed."""
    if tb:
        exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return exc


def traceback_text(exc: BaseException) -> str:
    """The most useful traceback text for ``exc``: the remote one when it has one."""
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        return cause.tb.strip().strip('"').strip("\n") + "\n"
    if exc.__traceback__ is not None:
        return format_exception_text(exc)
    return f"{type(exc).__name__}: {exc}\n"
