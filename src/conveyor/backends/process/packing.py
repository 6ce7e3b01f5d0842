"""Packing units for the wire: each unit pickled once, each function once per pool, and the
record of a unit in a RUN for one worker.

Data flow::

    caller threads                     dispatcher thread                    worker process
    --------------                     -----------------                    --------------
    submit: Packer.wire_of(unit)       Packer.with_wires(batch): a map's
    (a submit's items; a map's         chunks pickled as they are sent
    function only: FunctionCache)      Packer.wire_unit(worker, unit): fn   -- RUN -->  fn cache
                                       only if the worker lacks it; pooled               (same LRU)
                                       segments held for the worker

Concurrency: :meth:`Packer.wire_of` runs in any thread (a unit is packed by one thread: its
caller's for a submit, the dispatcher's for a map's chunk); the function cache has its own lock
(see :class:`FunctionCache`). :meth:`Packer.wire_unit` and :meth:`Packer.message_size` touch a
worker record's own fields and run in the dispatcher thread only.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

from ... import _shm
from ..._serialize import Payload, callable_payload, items_payload
from ..._work import Unit
from ..base import fail_units
from .protocol import FN_CACHE_SIZE, WireUnit, to_wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    from .workers import WorkerRecord
else:
    from ..._records import NamedTuple

__all__ = ["FunctionCache", "Packer", "Wire"]


class Wire(NamedTuple):
    """A unit's pickled form, made once: in the caller's thread for an eager unit (a
    ``submit``), by the dispatcher just before sending for a map's chunks and for pieces.

    Large buffers of the function (cached, so once per pool) and of the items sit in
    shared-memory segments (see :mod:`conveyor._shm`); the item segment's descriptor is closed
    when the unit is dropped, the function's when the function leaves the cache.
    """

    fn_key: int
    fn: Payload
    items: Payload


class FunctionCache:
    """Pickled functions, each pickled once per pool while it lives; never the function itself.

    An entry holds a weak reference to the function (and its pickled form), so the cache never
    keeps a user's callable (a bound method, a closure over a large array) alive: once the caller
    drops it, its entry goes (its shared-memory segment is closed when the last queued unit using
    it goes too). A callable that takes no weak reference (a C object such as
    ``operator.itemgetter``) is pickled on every use instead of being kept; its key is then its
    pickled bytes, so workers still load it once.

    Concurrency: ``get`` runs in callers' threads and in the dispatcher; a weak reference's
    callback may run in any thread, even inside ``get`` while the lock is held (a collection
    started there), so it only appends to ``_dead`` (atomic), and ``get`` purges under the lock.
    """

    def __init__(self, size: int = 256):
        self._size = size
        self._lock = threading.Lock()
        self._by_id: OrderedDict[int, tuple[weakref.ref[Any], int, Payload]] = OrderedDict()
        self._by_bytes: OrderedDict[bytes, int] = OrderedDict()
        self._dead: list[int] = []
        self._keys = itertools.count(1)
        # keys whose payload names the caller's __main__ (see seed), and their by-value form
        # for a worker that is not a fork of the zygote, made when one needs it
        self._main_keys: dict[int, Payload | None] = {}

    def __len__(self) -> int:
        with self._lock:
            self._purge()
            return len(self._by_id)

    def clear(self) -> None:
        """Forget every function, giving up their shared-memory segments."""
        with self._lock:
            entries, self._by_id = list(self._by_id.values()), OrderedDict()
            self._by_bytes.clear()
            by_value, self._main_keys = list(self._main_keys.values()), {}
        for _, _, payload in entries:
            payload.release()
        for value in by_value:
            if value is not None:
                value.release()

    def _purge(self) -> None:
        while self._dead:
            fn_id = self._dead.pop()
            entry = self._by_id.get(fn_id)
            if entry is not None and entry[0]() is None:
                del self._by_id[fn_id]
                self._main_keys.pop(entry[1], None)

    def seed(self, fn: Callable[..., Any], data: bytes) -> None:
        """Keep ``data``, ``fn`` pickled by name (naming ``__main__``), as its pickled form.

        Only for the first function of a pool whose zygote was born in the same call, with
        ``data`` pickled just before that birth (``ProcessBackend``'s ``first_function``): no
        code of the user's ran in between, so the zygote's ``__main__`` (which its workers
        inherit) is the caller's as it was when ``data`` was made, and loading ``__main__.fn``
        there gives what cloudpickle would have sent by value at that moment: the same code,
        defaults, closure and globals. As with a function sent by value, the pool keeps these
        bytes while the function lives, so its tasks see the function as it was when the pool
        first got it. Neither process needs cloudpickle for it. A worker not forked from the
        zygote (started by the fork server after the zygote was killed) gets the function by
        value instead, pickled when it first needs it (:meth:`by_value`). A callable that takes
        no weak reference is not kept (it goes by value, as :meth:`get` makes it).
        """
        try:
            ref: weakref.ref[Any] = weakref.ref(fn, _on_death_of(id(fn), self._dead))
        except TypeError:
            return
        with self._lock:
            if id(fn) not in self._by_id:
                key = next(self._keys)
                self._by_id[id(fn)] = (ref, key, Payload(data))
                self._main_keys[key] = None

    def by_value(self, key: int, fn: Callable[..., Any]) -> Payload | None:
        """For a worker that is not a fork of the zygote: the function of ``key`` by value if
        its kept form names ``__main__`` (see :meth:`seed`), else ``None`` (the kept form does).

        Dispatcher thread only (it sends functions); cloudpickle is imported here if need be.
        """
        if key not in self._main_keys:
            return None
        payload = self._main_keys[key]
        if payload is None:
            payload = callable_payload(fn, cloud=True)
            with self._lock:
                if key in self._main_keys:  # not dropped meanwhile
                    self._main_keys[key] = payload
        return payload

    def get(self, fn: Callable[..., Any]) -> tuple[int, Payload]:
        fn_id = id(fn)
        with self._lock:
            if self._dead:
                self._purge()
            entry = self._by_id.get(fn_id)
            if entry is not None and entry[0]() is fn:
                self._by_id.move_to_end(fn_id)
                return entry[1], entry[2]
        blob = callable_payload(fn)
        try:
            ref: weakref.ref[Any] | None = weakref.ref(fn, _on_death_of(fn_id, self._dead))
        except TypeError:
            ref = None
        with self._lock:
            if ref is None and blob.segment is not None:
                return next(self._keys), blob  # equal bytes, yet maybe other buffers: new key
            if ref is None:  # remembered by its bytes only
                key = self._by_bytes.get(blob.data) or next(self._keys)
                self._by_bytes[blob.data] = key
                self._by_bytes.move_to_end(blob.data)
                while len(self._by_bytes) > self._size:
                    self._by_bytes.popitem(last=False)
                return key, blob
            key = next(self._keys)
            self._by_id[fn_id] = (ref, key, blob)
            while len(self._by_id) > self._size:
                # units still queued may share the payload: it closes when the last one goes
                _, (_, old_key, _) = self._by_id.popitem(last=False)
                self._main_keys.pop(old_key, None)
        return key, blob


_new_wire = tuple.__new__


def _on_death_of(fn_id: int, dead: list[int]) -> Callable[[weakref.ref[Any]], None]:
    """A weak reference callback noting that the function ``fn_id`` is gone (any thread)."""

    def callback(_: weakref.ref[Any]) -> None:
        dead.append(fn_id)

    return callback


class Packer:
    """Makes and keeps units' pickled forms for one pool (see the module's data flow).

    ``pull_ok``: whether workers may read a map's large arguments out of our memory
    (conveyor._pull); unknown until the first worker says READY. ``suspects``: units sent back
    exact after a death at an unknown item (dispatcher thread only).
    """

    def __init__(self, segments: _shm.SegmentPool | None) -> None:
        self.functions = FunctionCache()
        self.segments = segments
        self.pull_ok: bool | None = None
        self.suspects: weakref.WeakSet[Unit] = weakref.WeakSet()

    def wire_of(self, unit: Unit) -> Wire:
        """The unit's pickled form, made now if it has none yet (any thread).

        Raises :class:`~conveyor._errors.Unsendable` naming the item that cannot be pickled.
        """
        if unit.wire is None:
            key, fn_payload = self.functions.get(unit.fn)
            first = unit.tags[0] if unit.tags and isinstance(unit.tags[0], int) else 0
            # A map's chunk (pickled here, as it is sent) lets the worker copy its large
            # buffers itself; a submit is copied by its caller now (see conveyor._pull).
            pull = not unit.eager and self.pull_ok is True
            items = items_payload(unit.items, unit.mode, first, self.segments, pull)
            unit.wire = _new_wire(Wire, (key, fn_payload, items))  # (Wire() is Python code)
        wire: Wire = unit.wire
        return wire

    def with_wires(self, units: list[Unit]) -> list[Unit]:
        """The units whose pickled form exists or can be made now; each other one is failed
        with the reason (a map's item that cannot be pickled, shared memory exhausted)."""
        sendable = []
        for unit in units:
            try:
                self.wire_of(unit)
            except Exception as exc:
                fail_units([unit], exc)
                continue
            sendable.append(unit)
        return sendable

    def wire_units(
        self, worker: WorkerRecord, units: list[Unit], stream: bool, fds: list[int]
    ) -> tuple[list[WireUnit], list[bool]]:
        """A RUN's units for ``worker``, and which of them go exact (see protocol.py).

        Descriptors to send go to ``fds``, in the order the units' payloads name them.
        """
        suspects = self.suspects
        if stream or not suspects:  # (the usual case: no unit is suspect, none is looked up)
            exacts = [stream] * len(units)
        else:
            exacts = [unit in suspects for unit in units]
        rows = [self._wire_unit(worker, u, exact, fds) for u, exact in zip(units, exacts)]
        return rows, exacts

    def _wire_unit(self, worker: WorkerRecord, unit: Unit, exact: bool, fds: list[int]) -> WireUnit:
        """A RUN's row for ``unit``: the function only if the worker's cache lacks it (both
        caches are updated here alike, see protocol.py); its pooled segment is held until the
        worker says it let go of it."""
        wire = self.wire_of(unit)
        fn_wire = None
        if wire.fn_key in worker.fn_keys:
            worker.fn_keys.move_to_end(wire.fn_key)
        else:
            by_value = (
                None if worker.has_birth_main else self.functions.by_value(wire.fn_key, unit.fn)
            )
            fn_wire = to_wire(by_value or wire.fn, fds)
            worker.fn_keys[wire.fn_key] = None
            while len(worker.fn_keys) > FN_CACHE_SIZE:
                worker.fn_keys.popitem(last=False)
        pooled = wire.items.segment
        if isinstance(pooled, _shm.PooledSegment) and self.segments is not None:
            worker.holds.setdefault(pooled.pool_id, []).append(self.segments.hold(pooled))
            worker.mapped.add(pooled.pool_id)
        items = to_wire(wire.items, fds)
        return (
            unit.id,
            wire.fn_key,
            fn_wire,
            unit.mode,
            unit.timeout,
            len(unit.items),
            items,
            exact,
        )

    def message_size(self, worker: WorkerRecord, units: list[Unit]) -> int:
        """About how many bytes a RUN of ``units`` to ``worker`` would take."""
        size = 0
        for unit in units:
            wire = self.wire_of(unit)
            size += len(wire.items.data) + 64
            if wire.fn_key not in worker.fn_keys:
                size += len(wire.fn.data)
        return size

    def close(self) -> None:
        """Give up the function cache and the segment pool (the pool has finished)."""
        if self.segments is not None:
            self.segments.close()
        self.functions.clear()  # a captured 1 GB array must not outlive the pool


def release(unit: Unit) -> None:
    """Close our descriptor of a settled unit's item segment (retries are pickled anew)."""
    wire: Wire | None = unit.wire
    if wire is not None:
        wire.items.release()
