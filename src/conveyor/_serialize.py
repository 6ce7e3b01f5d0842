"""Turning functions, arguments and results into bytes for a worker process, and back.

Functions go through cloudpickle, so lambdas, closures, ``functools.partial`` and functions typed
into ``__main__`` or a notebook all work. Arguments and results go through the standard pickler
first (it is the fastest for plain data) and through cloudpickle only when that fails.

When something cannot be sent, the error names it: which argument of which item, its type and
its repr, and suggests ``backend="thread"``, which needs no pickling at all.
"""

from __future__ import annotations

import pickle
import reprlib
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from ._work import MODE_CALL, MODE_STAR

__all__ = ["dumps", "dumps_callable", "dumps_items", "loads"]

PROTOCOL = 5
_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60

loads = pickle.loads


def dumps(obj: Any) -> bytes:
    """Pickle ``obj``: the standard pickler, or cloudpickle for what it cannot handle."""
    try:
        return pickle.dumps(obj, PROTOCOL)
    except Exception:
        return cloudpickle.dumps(obj, PROTOCOL)  # type: ignore[no-any-return]


def dumps_callable(fn: Callable[..., Any], what: str = "function") -> bytes:
    """Pickle a callable with cloudpickle, or raise a TypeError that names it."""
    try:
        return cloudpickle.dumps(fn, PROTOCOL)  # type: ignore[no-any-return]
    except Exception as exc:
        raise TypeError(
            f"cannot send the {what} {_describe(fn)} to a worker process: "
            f"{type(exc).__name__}: {exc}. {_HINT}"
        ) from exc


def dumps_items(items: list[Any], mode: int, first_index: int = 0) -> bytes:
    """Pickle a chunk of items, or raise a TypeError naming the first item that cannot be sent."""
    try:
        return pickle.dumps(items, PROTOCOL)
    except Exception:
        pass
    try:
        return cloudpickle.dumps(items, PROTOCOL)  # type: ignore[no-any-return]
    except Exception as exc:
        raise _unsendable(items, mode, first_index, exc) from exc


_HINT = 'Use backend="thread" to run it without pickling.'


def _unsendable(items: list[Any], mode: int, first_index: int, error: Exception) -> TypeError:
    """Find which item (and which argument of it) cannot be pickled, and say so."""
    for offset, item in enumerate(items):
        if _picklable(item):
            continue
        where = f"item {first_index + offset}" if mode != MODE_CALL else "the call"
        for label, value in _arguments(item, mode):
            if not _picklable(value):
                return TypeError(
                    f"cannot send {label} of {where} to a worker process: {_describe(value)} "
                    f"cannot be pickled ({type(error).__name__}: {error}). {_HINT}"
                )
        return TypeError(
            f"cannot send {where} to a worker process: {_describe(item)} cannot be pickled "
            f"({type(error).__name__}: {error}). {_HINT}"
        )
    return TypeError(f"cannot send the items to a worker process: {error}. {_HINT}")


def _arguments(item: Any, mode: int) -> Iterable[tuple[str, Any]]:
    if mode == MODE_CALL:
        args, kwargs = item
        yield from ((f"argument {i}", a) for i, a in enumerate(args))
        yield from ((f"keyword argument {k!r}", v) for k, v in kwargs.items())
    elif mode == MODE_STAR and isinstance(item, tuple):
        yield from ((f"argument {i}", a) for i, a in enumerate(item))
    else:
        yield "the argument", item


def _picklable(obj: Any) -> bool:
    try:
        cloudpickle.dumps(obj, PROTOCOL)
        return True
    except Exception:
        return False


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None)
    if name is not None and callable(obj):
        return f"{name!s} ({type(obj).__name__})"
    return f"{_repr.repr(obj)} (of type {type(obj).__module__}.{type(obj).__qualname__})"
