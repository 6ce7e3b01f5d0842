"""Turning functions, arguments and results into bytes for a worker process, and back.

Functions, arguments and results go through the standard pickler first (it is the fastest, and
it sends what a worker can import, ``math.sqrt`` or ``mypackage.work``, by name, as cloudpickle
would) and through cloudpickle when that fails or names ``__main__``: lambdas, closures and
functions typed into ``__main__`` or a notebook travel by value. cloudpickle is imported only
then (a cold script that never needs it does not pay its ~15 ms import). One exception: a
function of ``__main__`` given to the call that starts a pool's zygote goes by name (see
``FunctionCache.seed``).

Everything is pickled with protocol 5. Buffers of at least :data:`conveyor._shm.THRESHOLD` bytes
(numpy arrays, ``bytearray``, ``memoryview``, ``bytes`` passed directly as an argument or
returned as a result, anything that hands pickle a ``PickleBuffer``) are taken out of band and
copied once into a shared-memory :class:`~conveyor._shm.Segment`; the receiver's objects are views
of that segment. A :class:`Payload` is the pickle stream plus that segment.

When something cannot be sent, the error names it: which argument of which item, its type and
its repr, and suggests ``backend="thread"``, which needs no pickling at all.

An exception raised by a task goes back as itself (:func:`portable_exception`). Python pickles
an exception as ``type(exc)(*exc.args)`` plus its ``__dict__``, which fails for a class whose
``__init__`` takes other arguments than ``args`` (or keyword-only ones), or with an attribute
that cannot be pickled. Such an exception is rebuilt without calling its class's ``__init__``:
its ``__new__``, the ``__init__`` of the built-in exception it derives from (which sets
``OSError``'s ``errno`` and ``filename``, say), then ``args`` and the attributes that can be
pickled (those that cannot are named in a note, ``__notes__``). Only when even that cannot
work (the class itself cannot be pickled, or its ``__new__`` needs other arguments) does a
``RuntimeError`` naming the original type and message stand in for it.
"""

from __future__ import annotations

import io
import os
import pickle
import reprlib
import sys
from collections.abc import Iterable, Sequence

from . import _shm
from ._errors import Unsendable
from ._work import MODE_CALL, MODE_MAP, MODE_STAR

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

__all__ = [
    "Payload",
    "by_name",
    "callable_payload",
    "dumps_callable",
    "dumps_payload",
    "items_payload",
    "loads_payload",
    "names_main",
    "portable_exception",
]

PROTOCOL = 5
_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60

#: The standard pickler refers to functions and classes by module and name. Worker processes
#: never import the parent's ``__main__`` (see backends/process/spawning.py), so a stream naming
#: it is made again with cloudpickle, which sends such objects by value. (A plain string
#: "__main__" in the data only costs that slower path.)
_MAIN = b"__main__"


class Payload:
    """A pickle stream and the shared-memory segment holding its out-of-band buffers.

    ``spans`` are the buffers' ``(offset, length)`` in the segment (none without one).
    ``hold`` is set when the segment came from a :class:`~conveyor._shm.SegmentPool`.
    ``pull`` is set when the segment was only reserved: ``(pid, [(address, length), ...])``
    of the buffers that the receiver copies into it itself (see :mod:`conveyor._pull`).

    A plain class with slots: one is made per submit and per result (a dataclass's generated
    ``__init__`` with a default factory cost more than the pickling of a small argument).
    """

    __slots__ = ("data", "hold", "pull", "segment", "spans")

    def __init__(
        self,
        data: bytes,
        segment: _shm.Segment | _shm.PooledSegment | None = None,
        spans: Sequence[tuple[int, int]] = (),
        hold: _shm.Hold | None = None,
        pull: tuple[int, list[tuple[int, int]]] | None = None,
    ):
        self.data = data
        self.segment = segment
        self.spans = spans
        self.hold = hold
        self.pull = pull

    def __repr__(self) -> str:
        return f"Payload({len(self.data)} bytes, segment={self.segment!r}, spans={self.spans!r})"

    def release(self) -> None:
        """Give up the sender's use of the segment (receivers keep their views)."""
        if self.hold is not None:
            self.hold.release()
        elif isinstance(self.segment, _shm.Segment):
            self.segment.close()

    @property
    def nbytes(self) -> int:
        return len(self.data) + (self.segment.size if self.segment is not None else 0)


class _Buffers:
    """A buffer_callback keeping large buffers out of band, small ones in the stream."""

    __slots__ = ("large",)

    def __init__(self) -> None:
        self.large: list[memoryview] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < _shm.THRESHOLD:
            return True  # in band
        self.large.append(raw)
        return False


def cloudpickle_module() -> ModuleType:
    """cloudpickle, imported on first use (see the module docstring).

    Example::

        >>> cloudpickle_module().loads(cloudpickle_module().dumps(lambda x: x + 1))(1)
        2
    """
    import cloudpickle

    return cloudpickle


def _by_value_modules() -> bool:
    """Whether the user asked cloudpickle to send some module by value
    (``cloudpickle.register_pickle_by_value``): then every function goes through cloudpickle."""
    module = sys.modules.get("cloudpickle.cloudpickle")
    return bool(getattr(module, "_PICKLE_BY_VALUE_MODULES", None))


_pickler_class: Any = None


def _pickler(stream: io.BytesIO, buffer_callback: Any) -> Any:
    """A cloudpickle pickler that also sends memoryviews (as a buffer, rebuilt as a
    memoryview); its class is made on first use, with cloudpickle's import."""
    global _pickler_class
    if _pickler_class is None:
        cloudpickle = cloudpickle_module()

        class _Pickler(cloudpickle.Pickler):  # type: ignore[name-defined]
            def reducer_override(self, obj: Any) -> Any:
                if type(obj) is memoryview:
                    if obj.c_contiguous:
                        return _memoryview_of, (pickle.PickleBuffer(obj),)
                    return _memoryview_of, (obj.tobytes(),)
                return super().reducer_override(obj)

        _pickler_class = _Pickler
    return _pickler_class(stream, PROTOCOL, buffer_callback=buffer_callback)


def _memoryview_of(buffer: Any) -> memoryview:
    return memoryview(buffer)


class _SharedBytes:
    """Wraps a large ``bytes`` so it travels as an out-of-band buffer (pickle cannot do that)."""

    __slots__ = ("value",)

    def __init__(self, value: bytes):
        self.value = value

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return bytes, (pickle.PickleBuffer(self.value),)


def _cloudpickle_dumps(obj: Any, buffer_callback: Any) -> bytes:
    stream = io.BytesIO()
    _pickler(stream, buffer_callback).dump(obj)
    return stream.getvalue()


def dumps_payload(
    obj: Any, cloud: bool = False, pool: _shm.SegmentPool | None = None, pull: bool = False
) -> Payload:
    """Pickle ``obj`` (with cloudpickle when ``cloud`` or when the standard pickler fails).

    Large buffers go to a segment of ``pool`` when given, else to a segment of their own. With
    ``pull`` (and a pool) they are not copied: the receiver reads them from this process.
    """
    buffers = _Buffers() if _shm.AVAILABLE else None
    data = None
    if not cloud:
        try:
            data = pickle.dumps(obj, PROTOCOL, buffer_callback=buffers)
        except Exception:
            pass
        if data is not None and _MAIN in data:
            data = None  # refers to __main__ by name, which workers never import
        if data is None and buffers is not None:
            buffers.large.clear()
    if data is None:
        data = _cloudpickle_dumps(obj, buffers)
    if buffers is None or not buffers.large:
        return Payload(data)
    if pool is not None and pull:
        from ._pull import address_of

        sources = [(address_of(buf), buf.nbytes) for buf in buffers.large]
        pooled, spans, hold = pool.reserve(buffers.large)
        return Payload(data, pooled, spans, hold, (os.getpid(), sources))
    if pool is not None:
        pooled, spans, hold = pool.write(buffers.large)
        return Payload(data, pooled, spans, hold)
    segment, spans = _shm.Segment.from_buffers(buffers.large)
    return Payload(data, segment, spans)


def loads_payload(
    data: bytes,
    segment: _shm.Segment | None,
    spans: Sequence[tuple[int, int]],
    pool_id: int = -1,
    mappings: _shm.WorkerMappings | None = None,
) -> Any:
    """Unpickle a payload; its out-of-band buffers become views of ``segment``.

    A pooled segment (``pool_id`` >= 0) is viewed through the worker's kept ``mappings``.
    """
    if segment is None:
        return pickle.loads(data)
    if pool_id >= 0 and mappings is not None:
        views = [mappings.view(pool_id, segment, offset, length) for offset, length in spans]
    else:
        views = [segment.view(offset, length) for offset, length in spans]
    return pickle.loads(data, buffers=views)


def portable_exception(exc: BaseException) -> BaseException | _RebuiltException:
    """``exc``, or what unpickles as an exception of its type; a RuntimeError as a last resort.

    Example::

        >>> class Custom(Exception):
        ...     def __init__(self, a, b):
        ...         super().__init__(f"{a}-{b}")
        >>> import cloudpickle
        >>> back = cloudpickle.loads(cloudpickle.dumps(portable_exception(Custom(1, 2))))
        >>> type(back).__name__, back.args
        ('Custom', ('1-2',))
    """
    try:
        pickle.loads(pickle.dumps(exc, PROTOCOL))
        return exc
    except Exception:
        pass
    cloudpickle = cloudpickle_module()
    try:
        cloudpickle.loads(cloudpickle.dumps(exc, PROTOCOL))
        return exc
    except Exception:
        pass
    try:
        rebuilt = _RebuiltException(exc)
        cloudpickle.loads(cloudpickle.dumps(rebuilt, PROTOCOL))
        return rebuilt
    except Exception:
        return RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")


class _RebuiltException:
    """Pickles as ``exc`` rebuilt without its ``__init__`` (see the module docstring)."""

    def __init__(self, exc: BaseException):
        self.cls = type(exc)
        self.args = _picklable_args(exc.args)
        # what the built-in base class is made from (OSError: errno, strerror, filename)
        self.native_args = self.args
        try:
            reduced = exc.__reduce__()
            if isinstance(reduced, tuple) and len(reduced) > 1 and isinstance(reduced[1], tuple):
                self.native_args = _picklable_args(reduced[1])
        except Exception:
            pass
        self.state: dict[str, Any] = {}
        lost = []
        for name, value in getattr(exc, "__dict__", {}).items():
            if _picklable(value):
                self.state[name] = value
            else:
                lost.append(name)
        if lost:
            notes = list(self.state.get("__notes__", []))
            notes.append(
                f"(conveyor: attribute {', '.join(map(repr, lost))} of this exception could "
                f"not be pickled, and was left behind in the worker process)"
            )
            self.state["__notes__"] = notes

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_exception, (self.cls, self.native_args, self.args, self.state)


def _picklable_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a if _picklable(a) else repr(a) for a in args)


def _rebuild_exception(
    cls: type[BaseException],
    native_args: tuple[Any, ...],
    args: tuple[Any, ...],
    state: dict[str, Any],
) -> BaseException:
    try:
        exc = cls.__new__(cls, *native_args)
    except TypeError:
        exc = cls.__new__(cls)
    native = next(c for c in cls.__mro__ if c.__module__ == "builtins")
    try:
        native.__init__(exc, *native_args)  # type: ignore[misc]
    except Exception:
        pass
    exc.args = args
    for name, value in state.items():
        setattr(exc, name, value)
    return exc


def share_large_bytes(values: list[Any], mode: int, stream_size: int) -> list[Any] | None:
    """``values`` with large top-level ``bytes`` wrapped to travel out of band, or None.

    Only looked for when the in-band stream came out large for its number of items, so a chunk
    of many small items never pays for the scan.
    """
    if not _shm.AVAILABLE or stream_size < _shm.THRESHOLD or not values:
        return None
    if stream_size / len(values) < _shm.THRESHOLD / 4:
        return None
    changed = False
    out = []
    for value in values:
        if mode == MODE_MAP:
            new = _wrap(value)
        elif mode == MODE_STAR and isinstance(value, tuple):
            new = tuple(_wrap(v) for v in value)
        elif mode == MODE_CALL:
            args, kwargs = value
            new = (tuple(_wrap(v) for v in args), {k: _wrap(v) for k, v in kwargs.items()})
        else:
            new = value
        changed = changed or new is not value
        out.append(new)
    return out if changed else None


def _wrap(value: Any) -> Any:
    if type(value) is bytes and len(value) >= _shm.THRESHOLD:
        return _SharedBytes(value)
    return value


def dumps_callable(fn: Any, what: str = "function") -> bytes:
    """Pickle a callable in band (for what travels without shared memory)."""
    try:
        return cloudpickle_module().dumps(fn, PROTOCOL)
    except Exception as exc:
        raise _unsendable_callable(fn, what, exc) from exc


def callable_payload(fn: Any, what: str = "function", cloud: bool = False) -> Payload:
    """Pickle a callable, or raise :class:`~conveyor.Unsendable` (a ``TypeError``) that names it.

    By name with the standard pickler when the worker can import it, else (or with ``cloud``)
    by value with cloudpickle. Large buffers it holds (a partial or closure over a big array)
    go to shared memory once.
    """
    try:
        return dumps_payload(fn, cloud=cloud or _by_value_modules())
    except Exception as exc:
        raise _unsendable_callable(fn, what, exc) from exc


def by_name(fn: Any) -> bytes | None:
    """``fn`` pickled by the standard pickler, which sends functions and classes by name; or
    ``None`` where that cannot be (a lambda, a closure), or when cloudpickle was asked to send
    some module by value. The stream may name ``__main__`` (see :func:`names_main`): only a
    worker forked from the caller at the right moment can load that (see
    ``FunctionCache.seed``).

    Example::

        >>> import pickle
        >>> pickle.loads(by_name(abs))(-3), by_name(lambda x: x)
        (3, None)
    """
    if _by_value_modules():
        return None
    try:
        return pickle.dumps(fn, PROTOCOL)
    except Exception:
        return None


def names_main(data: bytes) -> bool:
    """Whether a pickle stream may refer to ``__main__`` by name (see ``_MAIN``)."""
    return _MAIN in data


def items_payload(
    items: list[Any],
    mode: int,
    first_index: int = 0,
    pool: _shm.SegmentPool | None = None,
    pull: bool = False,
) -> Payload:
    """Pickle a chunk of items, or raise a TypeError naming the first item that cannot be sent.

    ``pull``: large buffers are read by the worker out of this process (see conveyor._pull).
    """
    try:
        payload = dumps_payload(items, pool=pool, pull=pull)
    except Exception as exc:
        raise _unsendable(items, mode, first_index, exc) from exc
    wrapped = share_large_bytes(items, mode, len(payload.data))
    if wrapped is not None:
        payload.release()
        payload = dumps_payload(wrapped, pool=pool, pull=pull)
    return payload


_HINT = 'Use backend="thread" to run it without pickling.'


def _unsendable_callable(fn: Any, what: str, error: Exception) -> Unsendable:
    return Unsendable(
        f"cannot send the {what} {_describe(fn)} to a worker process: "
        f"{type(error).__name__}: {error}. {_HINT}"
    )


def _unsendable(items: list[Any], mode: int, first_index: int, error: Exception) -> Unsendable:
    """Find which item (and which argument of it) cannot be pickled, and say so."""
    for offset, item in enumerate(items):
        if _picklable(item):
            continue
        where = f"item {first_index + offset}" if mode != MODE_CALL else "the call"
        for label, value in _arguments(item, mode):
            if not _picklable(value):
                return Unsendable(
                    f"cannot send {label} of {where} to a worker process: {_describe(value)} "
                    f"cannot be pickled ({type(error).__name__}: {error}). {_HINT}"
                )
        return Unsendable(
            f"cannot send {where} to a worker process: {_describe(item)} cannot be pickled "
            f"({type(error).__name__}: {error}). {_HINT}"
        )
    return Unsendable(f"cannot send the items to a worker process: {error}. {_HINT}")


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
        pickle.dumps(obj, PROTOCOL)
        return True
    except Exception:
        pass
    try:
        cloudpickle_module().dumps(obj, PROTOCOL)
        return True
    except Exception:
        return False


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None)
    if name is not None and callable(obj):
        return f"{name!s} ({type(obj).__name__})"
    return f"{_repr.repr(obj)} (of type {type(obj).__module__}.{type(obj).__qualname__})"
