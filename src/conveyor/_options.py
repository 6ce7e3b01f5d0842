"""Checking the options of the public calls, with errors that name the option and the value."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

__all__ = [
    "BACKENDS",
    "ON_ERROR",
    "check_callable",
    "check_cluster",
    "check_options",
    "check_workers",
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
    timeout: Any = None,
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
    check_timeout(timeout)
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral) or retries < 0:
        raise ValueError(f"retries must be a whole number of at least 0, got {retries!r}")
    if on_error not in ON_ERROR:
        raise ValueError(
            f"on_error must be one of {', '.join(map(repr, ON_ERROR))}, got {on_error!r}"
        )
    if not isinstance(ordered, bool):
        raise TypeError(f"ordered must be True or False, got {ordered!r}")


def check_timeout(timeout: Any) -> float | None:
    """``timeout`` must be None or a positive number of seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not float(timeout) > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return float(timeout)
