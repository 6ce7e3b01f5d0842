"""The function a pipeline stage runs per item: one or several stages composed into one call.

Adjacent process stages with the same options are *fused*: their functions run one after the
other inside one worker call, so an item crosses the pipe to the worker once and its results
come back once, instead of once per stage. :class:`Chain` is that composed callable; it is
pickled (by cloudpickle, with the user's functions inside) once per worker like any function.

A chain maps one input item to the list of its outputs (a filter may drop it, a flat_map may
make several). A :class:`~conveyor.Failure` arriving as input (an earlier stage said
``on_error="return"``) passes through untouched, in its place in the order. An exception is
marked with the index of the step that raised and a short repr of the item that step was given,
so the pipeline can name the stage and the item even when several stages ran in one call.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from typing import Any

from ._errors import Failure
from ._work import function_key

__all__ = ["FILTER", "FLAT", "MAP", "STAR", "Chain", "failed_step"]

MAP, STAR, FILTER, FLAT = "map", "starmap", "filter", "flat_map"

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80


def item_repr(item: Any) -> str:
    """A short repr of an item, for error messages.

    Example::

        >>> item_repr("x" * 500)[:12]
        "'xxxxxxxxxxx"
    """
    try:
        return _repr.repr(item)
    except Exception:
        return f"<{type(item).__name__} object>"


class Chain:
    """``steps`` applied in turn to one item; returns the list of outputs.

    Example::

        >>> Chain([(MAP, abs), (FILTER, bool), (FLAT, range)])(-3)
        [0, 1, 2]
        >>> Chain([(FILTER, bool)])(0)
        []
        >>> from conveyor._work import function_key  # remembered times: per chain
        >>> function_key(Chain([(MAP, abs)])) != function_key(Chain([(FILTER, abs)]))
        True
    """

    __slots__ = ("steps",)

    def __init__(self, steps: list[tuple[str, Callable[..., Any]]]):
        self.steps = steps

    def __call__(self, item: Any) -> list[Any]:
        if type(item) is Failure:
            return [item]  # an earlier stage's failure: passed on as it is
        items = [item]
        for index, (kind, fn) in enumerate(self.steps):
            out: list[Any] = []
            for value in items:
                try:
                    if kind == MAP:
                        out.append(fn(value))
                    elif kind == STAR:
                        out.append(fn(*value))
                    elif kind == FILTER:
                        if fn(value):
                            out.append(value)
                    else:
                        out.extend(fn(value))
                except Exception as exc:
                    _mark(exc, index, value)
                    raise
            items = out
        return items

    def __reduce__(self) -> tuple[Any, ...]:
        return (Chain, (self.steps,))

    @property
    def __code__(self) -> tuple[Any, ...]:
        """What identifies this chain for conveyor's per-function memory (``function_key``:
        backend="auto"'s measurement, remembered item times): its steps, not the Chain type,
        so that two different chains are never taken for the same function."""
        return tuple((kind, function_key(fn)) for kind, fn in self.steps)


def _mark(exc: BaseException, step: int, item: Any) -> None:
    try:
        exc._conveyor_step = step  # type: ignore[attr-defined]
        exc._conveyor_item = item_repr(item)  # type: ignore[attr-defined]
    except Exception:  # an exception type without a __dict__
        pass


def failed_step(exc: BaseException) -> tuple[int | None, str | None]:
    """Which step of a chain raised ``exc`` and a repr of the item it was given (or Nones).

    Example::

        >>> try:
        ...     Chain([(MAP, abs), (MAP, lambda x: 1 / (x - 2))])(2)
        ... except ZeroDivisionError as exc:
        ...     failed_step(exc)
        (1, '2')
    """
    return getattr(exc, "_conveyor_step", None), getattr(exc, "_conveyor_item", None)
