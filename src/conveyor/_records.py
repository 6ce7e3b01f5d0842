"""``typing.NamedTuple``'s class syntax without importing :mod:`typing`.

A cold ``conveyor.map(..., backend="process")`` is compared with ``ProcessPoolExecutor``'s,
which never imports :mod:`typing` (about 4 ms). The process backend's records (its messages, a
unit's pickled form, a lost batch) are named tuples; modules declare them as usual::

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from conveyor._records import NamedTuple

so type checkers see ``typing.NamedTuple`` and the interpreter gets a tuple subclass like
:func:`collections.namedtuple`'s (fields from the annotations in order, defaults from the
assignments, methods and docstring from the body, ``_fields``, ``_make``, ``_replace``,
``_asdict``), made without compiling source (collections.namedtuple's ~150 us a class).
Annotations must be strings (``from __future__ import annotations``), as in every conveyor
module.

Example::

    >>> class Point(NamedTuple):
    ...     '''A point.'''
    ...     x: int
    ...     y: int = 0
    ...     def norm1(self):
    ...         return abs(self.x) + abs(self.y)
    >>> Point(3), Point(3, -4).norm1(), Point.__doc__, Point._fields
    (Point(x=3, y=0), 7, 'A point.', ('x', 'y'))
    >>> Point(y=2, x=1), Point(1, 2) == (1, 2), Point(1)._replace(y=5), Point(1, 2)._asdict()
    (Point(x=1, y=2), True, Point(x=1, y=5), {'x': 1, 'y': 2})
    >>> Point()
    Traceback (most recent call last):
    TypeError: Point() missing required argument 'x'

"""

from __future__ import annotations

try:  # what collections.namedtuple's fields are made of (C, CPython)
    from _collections import _tuplegetter  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover (other interpreters)
    from operator import itemgetter as _itemgetter

    def _tuplegetter(index: int, doc: str | None) -> property:
        return property(_itemgetter(index), doc=doc)


TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

__all__ = ["NamedTuple"]

#: what the class body holds that is not a field, a method or the docstring
_INTERNAL = {"__module__", "__qualname__", "__annotations__", "__dict__", "__weakref__"}
_MISSING = object()
_tuple_new = tuple.__new__


def _constructor(name: str, fields: tuple[str, ...], defaults: tuple[Any, ...]) -> Any:
    """A ``__new__`` taking the fields by position or name, with ``defaults`` for the last
    ones: what :func:`collections.namedtuple` compiles from source for each class (that
    compilation is most of its ~150 us a class; this is a closure)."""
    count = len(fields)
    required = count - len(defaults)
    position = {field: i for i, field in enumerate(fields)}

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        if not kwargs and len(args) == count:
            return _tuple_new(cls, args)
        if len(args) > count:
            raise TypeError(f"{name}() takes {count} arguments, got {len(args)}")
        values = [*args, *[_MISSING] * (count - len(args))]
        for key, value in kwargs.items():
            i = position.get(key)
            if i is None:
                raise TypeError(f"{name}() got an unexpected keyword argument {key!r}")
            if values[i] is not _MISSING:
                raise TypeError(f"{name}() got multiple values for argument {key!r}")
            values[i] = value
        for i in range(count):
            if values[i] is _MISSING:
                if i < required:
                    raise TypeError(f"{name}() missing required argument {fields[i]!r}")
                values[i] = defaults[i - required]
        return _tuple_new(cls, values)

    return __new__


class _Methods(tuple):
    """What every class made here has besides its fields (as ``collections.namedtuple``'s)."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def __repr__(self) -> str:
        pairs = ", ".join(f"{field}={value!r}" for field, value in zip(self._fields, self))
        return f"{type(self).__name__}({pairs})"

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Any:
        values = tuple(iterable)
        if len(values) != len(cls._fields):
            raise TypeError(f"expected {len(cls._fields)} values, got {len(values)}")
        return _tuple_new(cls, values)

    def _replace(self, **changes: Any) -> Any:
        unknown = set(changes) - set(self._fields)
        if unknown:
            raise ValueError(f"got unexpected field names: {sorted(unknown)!r}")
        values = [changes.get(field, value) for field, value in zip(self._fields, self)]
        return _tuple_new(type(self), values)

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self))


class _NamedTupleMeta(type):
    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> Any:
        if not bases:  # NamedTuple itself
            return super().__new__(mcls, name, bases, namespace)
        annotations = namespace.get("__annotations__")
        if annotations is None:
            raise TypeError(f"{name}: a NamedTuple's fields must be annotated as strings")
        fields = tuple(annotations)
        defaults = tuple(namespace[field] for field in fields if field in namespace)
        body: dict[str, Any] = {
            key: value
            for key, value in namespace.items()
            if key not in _INTERNAL and key not in annotations
        }
        body.update(
            {
                field: _tuplegetter(i, f"Alias for field number {i}")
                for i, field in enumerate(fields)
            }
        )
        body.update(
            __slots__=(),
            __module__=namespace.get("__module__"),
            __qualname__=namespace.get("__qualname__", name),
            __annotations__=dict(annotations),
            __match_args__=fields,
            _fields=fields,
            _field_defaults=dict(zip(fields[len(fields) - len(defaults) :], defaults)),
            __new__=_constructor(name, fields, defaults),
        )
        return type(name, (_Methods,), body)


class NamedTuple(metaclass=_NamedTupleMeta):
    """The base of a named tuple declared as a class (see the module's docstring)."""
