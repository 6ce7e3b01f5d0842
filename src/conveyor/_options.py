"""Checking the options of the public calls, with errors that name the option and the value."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping

from ._work import MODE_MAP

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import Executor
    from typing import Any

    from ._stats import MapStats

__all__ = [
    "BACKENDS",
    "ON_ERROR",
    "Deadline",
    "JobOptions",
    "as_executor",
    "check_callable",
    "check_cluster",
    "check_deadline",
    "check_options",
    "check_timeout",
    "check_workers",
    "engine_limits",
]

#: what ``backend=`` may say (a Pool makes each of them; see _pool._make_backend)
BACKENDS = ("auto", "thread", "process", "dask")
ON_ERROR = ("raise", "return", "skip")


def _integral(value: object) -> bool:
    """An ``int`` (not a bool) or another ``numbers.Integral`` (numpy's, say); ``numbers`` is
    imported only for the latter (start-up time counts)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    import numbers

    return isinstance(value, numbers.Integral)


def _real(value: object) -> bool:
    """An ``int`` or ``float`` (not a bool) or another ``numbers.Real``."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    import numbers

    return isinstance(value, numbers.Real)


def check_callable(fn: Any, what: str = "fn") -> Callable[..., Any]:
    """Raise TypeError unless ``fn`` is callable."""
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {fn!r} (of type {type(fn).__name__})")
    return fn


def check_workers(workers: Any) -> int | None:
    """``workers`` must be None or a whole number of at least 1."""
    if workers is None:
        return None
    if not _integral(workers) or workers < 1:
        raise ValueError(f"workers must be a whole number of at least 1 or None, got {workers!r}")
    return int(workers)


def check_backend(backend: Any) -> str:
    """``backend`` must be one of :data:`BACKENDS` or a ``concurrent.futures.Executor``
    (then ``"executor"``: see conveyor.backends.executor).

    Example::

        >>> from concurrent.futures import ThreadPoolExecutor
        >>> check_backend("thread"), check_backend(ThreadPoolExecutor(1))
        ('thread', 'executor')
    """
    if isinstance(backend, str) and backend in BACKENDS:
        return backend
    if as_executor(backend) is not None:
        return "executor"
    raise ValueError(
        f"backend must be one of {', '.join(map(repr, BACKENDS))} or a "
        f"concurrent.futures.Executor, got {backend!r}"
    )


def as_executor(backend: Any) -> Executor | None:
    """``backend`` if it is a ``concurrent.futures.Executor``, else None; without importing
    ``concurrent.futures``, which a cold map does not (see ``_executor_errors``): where it is not
    imported, no object is an Executor.

    Example::

        >>> from concurrent.futures import ThreadPoolExecutor
        >>> as_executor("thread") is None, as_executor(ThreadPoolExecutor(1)) is not None
        (True, True)
    """
    executor = getattr(sys.modules.get("concurrent.futures._base"), "Executor", None)
    return backend if executor is not None and isinstance(backend, executor) else None


def check_cluster(backend: str, cluster: Any, security: Any) -> None:
    """``cluster=`` and ``security=`` belong to ``backend="dask"``.

    Example::

        >>> check_cluster("thread", "tcp://127.0.0.1:8786", None)
        Traceback (most recent call last):
        ...
        ValueError: cluster='tcp://127.0.0.1:8786' needs backend="dask", got backend='thread'
    """
    for name, value in (("cluster", cluster), ("security", security)):
        if value is not None and backend != "dask":
            raise ValueError(f'{name}={value!r} needs backend="dask", got backend={backend!r}')


def check_options(
    *,
    chunksize: Any = "auto",
    task_timeout: Any = None,
    retries: Any = 0,
    on_error: Any = "raise",
    ordered: Any = True,
) -> None:
    """Raise ValueError/TypeError naming the first bad option of a map call."""
    if chunksize != "auto" and (not _integral(chunksize) or chunksize < 1):
        raise ValueError(
            f'chunksize must be "auto" or a whole number of at least 1, got {chunksize!r}'
        )
    check_timeout(task_timeout, "task_timeout")
    if not _integral(retries) or retries < 0:
        raise ValueError(f"retries must be a whole number of at least 0, got {retries!r}")
    if on_error not in ON_ERROR:
        raise ValueError(
            f"on_error must be one of {', '.join(map(repr, ON_ERROR))}, got {on_error!r}"
        )
    if not isinstance(ordered, bool):
        raise TypeError(f"ordered must be True or False, got {ordered!r}")


def check_timeout(timeout: Any, name: str = "task_timeout") -> float | None:
    """``timeout`` (the option ``name``) must be None or a positive number of seconds."""
    if timeout is None:
        return None
    if not _real(timeout) or not float(timeout) > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {timeout!r}")
    return float(timeout)


class Deadline(float):
    """A ``timeout`` (seconds) whose clock has started: ``end`` is when it is up (monotonic).

    Example::

        >>> Deadline.starting_now(5.0) == 5.0
        True
    """

    end: float

    @classmethod
    def starting_now(cls, timeout: float) -> Deadline:
        deadline = cls(timeout)
        deadline.end = time.monotonic() + timeout
        return deadline


def check_deadline(timeout: Any) -> float | None:
    """``timeout`` (a deadline for a whole call, as in concurrent.futures) must be None or a
    number of seconds; zero or less means "already due", as ``Future.result(0)`` does.
    A :class:`Deadline` is kept as it is (its clock runs from an earlier call)."""
    if timeout is None or isinstance(timeout, Deadline):
        return timeout
    if not _real(timeout):
        raise ValueError(f"timeout must be a number of seconds or None, got {timeout!r}")
    return max(0.0, float(timeout))


def engine_limits(task_timeout: Any = None, retries: Any = 0) -> dict[str, Any]:
    """The per-task limits, checked (as :class:`JobOptions` checks them), as keyword arguments
    for ``Pool.options``, ``Pool.map``, ``Pool._submit_task`` and :class:`JobOptions`.

    The one check of the limits for the fronts that take only them (``Pool.options``,
    ``Pool.map``, the drop-ins in ``conveyor.multiprocessing`` and
    ``conveyor.joblib``).

    Example::

        >>> engine_limits(task_timeout=2, retries=1)
        {'task_timeout': 2.0, 'retries': 1}
    """
    options = JobOptions(task_timeout=task_timeout, retries=retries)
    return {"task_timeout": options.task_timeout, "retries": options.retries}


class JobOptions:
    """The options of one map call, checked: made once at the front door (``conveyor.map``,
    ``Pool.imap`` ..., the drop-ins, a pipeline's stage) and passed down whole, through
    ``Pool._job`` and backend="auto"'s routing, to :class:`~conveyor._job.MapJob`.

    Making one checks every field, with an error that names the option and the value; the
    public signatures stay explicit keyword arguments (typed for users) and build this.
    ``timeout`` is the whole call's deadline (a :class:`Deadline` when its clock started
    earlier, as imap's does: from the call, not the first ``next()``); ``mode`` says how an item
    is passed (``MODE_MAP``: ``fn(item)``, ``MODE_STAR``: ``fn(*item)``). Frozen. (A plain
    class with slots, not a dataclass: ``dataclasses`` imports ``inspect``, which a short
    script's first call must not pay for.)

    Example::

        >>> JobOptions(task_timeout=2, retries=1).task_timeout
        2.0
        >>> JobOptions(on_error="ignore")
        Traceback (most recent call last):
        ...
        ValueError: on_error must be one of 'raise', 'return', 'skip', got 'ignore'
        >>> JobOptions().replace(ordered=False).ordered
        False
        >>> JobOptions().retries = 3
        Traceback (most recent call last):
        ...
        AttributeError: JobOptions is frozen: make another with .replace(retries=...)
    """

    __slots__ = (
        "capture_output",
        "chunksize",
        "explain",
        "mode",
        "on_error",
        "ordered",
        "progress",
        "retries",
        "stats",
        "task_timeout",
        "timeout",
    )

    mode: int
    ordered: bool
    chunksize: int | str
    task_timeout: float | None
    timeout: float | None
    retries: int
    on_error: str
    progress: bool | dict[str, Any]
    explain: bool
    stats: MapStats | None
    capture_output: bool

    def __init__(
        self,
        *,
        mode: int = MODE_MAP,
        ordered: bool = True,
        chunksize: int | str = "auto",
        task_timeout: float | None = None,
        timeout: float | None = None,
        retries: int = 0,
        on_error: str = "raise",
        progress: bool | dict[str, Any] = False,
        explain: bool = False,
        stats: MapStats | None = None,
        capture_output: bool = False,
    ):
        check_options(
            chunksize=chunksize,
            task_timeout=task_timeout,
            retries=retries,
            on_error=on_error,
            ordered=ordered,
        )
        if stats is not None:
            from ._stats import MapStats

            if not isinstance(stats, MapStats):
                raise TypeError(
                    "stats must be a conveyor.MapStats (to be filled in), "
                    f"got {type(stats).__name__}"
                )
        set_field = object.__setattr__  # (frozen: only here are fields set)
        set_field(self, "mode", mode)
        set_field(self, "ordered", ordered)
        set_field(self, "chunksize", chunksize)
        set_field(self, "task_timeout", check_timeout(task_timeout))
        set_field(self, "timeout", check_deadline(timeout))
        set_field(self, "retries", int(retries))
        set_field(self, "on_error", on_error)
        set_field(self, "progress", progress)
        set_field(self, "explain", explain)
        set_field(self, "stats", stats)
        if not isinstance(capture_output, bool):
            raise TypeError(f"capture_output must be True or False, got {capture_output!r}")
        set_field(self, "capture_output", capture_output)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"JobOptions is frozen: make another with .replace({name}=...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("JobOptions is frozen")

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._fields().items())
        return f"JobOptions({fields})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobOptions) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # (progress may be a dict)

    @classmethod
    def from_call(cls, arguments: Mapping[str, Any], **overrides: Any) -> JobOptions:
        """The options among a front door's ``arguments`` (its ``locals()``, read before it
        makes any local of its own): each parameter named as a field, then ``overrides``.

        The public calls keep explicit, typed keyword parameters; this maps them here, once,
        instead of each call spelling every option out again.

        Example::

            >>> def imap(fn, iterable, *, chunksize="auto", retries=0, on_error="raise"):
            ...     return JobOptions.from_call(locals(), ordered=True)
            >>> imap(abs, [], retries=2).retries
            2
        """
        fields = cls.__slots__
        picked = {name: value for name, value in arguments.items() if name in fields}
        return cls(**{**picked, **overrides})

    def replace(self, **changes: Any) -> JobOptions:
        """A copy with ``changes`` (checked again)."""
        return JobOptions(**{**self._fields(), **changes})
