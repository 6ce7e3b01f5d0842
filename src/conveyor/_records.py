"""``typing.NamedTuple``'s class syntax without importing :mod:`typing`.

A cold ``conveyor.map(..., backend="process")`` is compared with ``ProcessPoolExecutor``'s,
which never imports :mod:`typing` (about 4 ms). The process backend's records (its messages, a
unit's pickled form, a lost batch) are named tuples; modules declare them as usual::

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from conveyor._records import NamedTuple

so type checkers see ``typing.NamedTuple`` and the interpreter gets the same class from
:func:`collections.namedtuple`: fields from the annotations in order, defaults from the
assignments, methods and docstring from the body. Annotations must be strings (``from
__future__ import annotations``), as in every conveyor module.

Example::

    >>> class Point(NamedTuple):
    ...     '''A point.'''
    ...     x: int
    ...     y: int = 0
    ...     def norm1(self):
    ...         return abs(self.x) + abs(self.y)
    >>> Point(3), Point(3, -4).norm1(), Point.__doc__, Point._fields
    (Point(x=3, y=0), 7, 'A point.', ('x', 'y'))
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["NamedTuple"]

#: what the class body holds that is not a field, a method or the docstring
_INTERNAL = {"__module__", "__qualname__", "__annotations__", "__dict__", "__weakref__"}


class _NamedTupleMeta(type):
    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> Any:
        if not bases:  # NamedTuple itself
            return super().__new__(mcls, name, bases, namespace)
        annotations = namespace.get("__annotations__")
        if annotations is None:
            raise TypeError(f"{name}: a NamedTuple's fields must be annotated as strings")
        fields = list(annotations)
        defaults = [namespace[field] for field in fields if field in namespace]
        make: Any = collections.namedtuple  # (a type checker wants literal fields)
        cls = make(name, fields, defaults=defaults, module=namespace.get("__module__"))
        for key, value in namespace.items():
            if key not in _INTERNAL and key not in annotations:
                setattr(cls, key, value)
        cls.__qualname__ = namespace.get("__qualname__", name)
        cls.__annotations__ = dict(annotations)
        return cls


class NamedTuple(metaclass=_NamedTupleMeta):
    """The base of a named tuple declared as a class (see the module's docstring)."""
