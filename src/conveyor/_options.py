"""Checking the options of the public calls, with errors that name the option and the value."""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "BACKENDS",
    "ON_ERROR",
    "Deadline",
    "check_callable",
    "check_cluster",
    "check_deadline",
    "check_options",
    "check_timeout",
    "check_workers",
    "engine_limits",
]

BACKENDS = ("auto", "thread", "process", "dask")
ON_ERROR = ("raise", "return", "skip")


def check_callable(fn: Any, what: str = "fn") -> Callable[..., Any]:
    """Raise TypeError unless ``fn`` is callable."""
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {fn!r} (of type {type(fn).__name__})")
    return fn


def check_workers(workers: Any) -> int | None:
    """``workers`` must be None or a whole number of at least 1."""
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ValueError(f"workers must be a whole number of at least 1 or None, got {workers!r}")
    return int(workers)


def check_backend(backend: Any) -> str:
    """``backend`` must be one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        )
    return str(backend)


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
    if chunksize != "auto" and (
        isinstance(chunksize, bool) or not isinstance(chunksize, numbers.Integral) or chunksize < 1
    ):
        raise ValueError(
            f'chunksize must be "auto" or a whole number of at least 1, got {chunksize!r}'
        )
    check_timeout(task_timeout, "task_timeout")
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral) or retries < 0:
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
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not float(timeout) > 0:
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
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise ValueError(f"timeout must be a number of seconds or None, got {timeout!r}")
    return max(0.0, float(timeout))


def engine_limits(task_timeout: Any = None, retries: Any = 0) -> dict[str, Any]:
    """The per-task limits as the engine's keyword arguments (``Pool.options``, ``Pool._job``).

    The one place where a front that says ``task_timeout`` (the drop-ins in
    ``conveyor.multiprocessing`` and ``conveyor.joblib``) meets the engine's own name for it.

    Example::

        >>> engine_limits(task_timeout=2, retries=1)
        {'task_timeout': 2.0, 'retries': 1}
    """
    check_options(task_timeout=task_timeout, retries=retries)
    return {"task_timeout": check_timeout(task_timeout), "retries": int(retries)}
