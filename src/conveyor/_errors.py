"""The exceptions and the failure record that conveyor gives back to its callers.

A task that fails in a worker process comes back as its own exception, with the worker's
formatted traceback chained as ``__cause__`` (the same convention as
``concurrent.futures.ProcessPoolExecutor``), so the caller's traceback shows the function and
the line that failed in the worker.

The exceptions that are ``concurrent.futures``' own kinds (:class:`TaskTimeout`,
:class:`TaskStopped`, :class:`WorkerCrashed`, :class:`WorkerInitError`) live in
``_executor_errors``: subclassing them imports ``concurrent.futures``, and with it ``logging``
and ``traceback`` (~4 ms of a cold start), which a map that does not fail never needs. This
module imports neither; ``traceback`` is imported when a traceback is formatted.
"""

from __future__ import annotations

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Failure", "PoolClosed", "RemoteTraceback", "Unsendable"]


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


_PUBLIC = (
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


def signal_name(exitcode: int | None) -> str | None:
    """The name of the signal that ended a process with ``exitcode`` (negative: a signal), or
    None.

    Example::

        >>> signal_name(-9), signal_name(3)
        ('SIGKILL', None)
    """
    if exitcode is None or exitcode >= 0:
        return None
    try:
        import signal  # here: start-up time counts, and few programs meet a signal death

        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def format_exception_text(exc: BaseException) -> str:
    """The traceback text of ``exc`` as the standard library would print it."""
    import traceback  # here: a cold start does not pay for it (see the module's docstring)

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
