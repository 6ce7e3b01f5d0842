"""What the parent pickles once: a unit's wire form, and each function once per pool.

Concurrency is described on :class:`FunctionCache`; nothing here moves work between threads.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from ..._serialize import Payload, callable_payload

__all__ = ["FunctionCache", "Wire"]


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

    def __len__(self) -> int:
        with self._lock:
            self._purge()
            return len(self._by_id)

    def clear(self) -> None:
        """Forget every function, giving up their shared-memory segments."""
        with self._lock:
            entries, self._by_id = list(self._by_id.values()), OrderedDict()
            self._by_bytes.clear()
        for _, _, payload in entries:
            payload.release()

    def _purge(self) -> None:
        while self._dead:
            fn_id = self._dead.pop()
            entry = self._by_id.get(fn_id)
            if entry is not None and entry[0]() is None:
                del self._by_id[fn_id]

    def get(self, fn: Callable[..., Any]) -> tuple[int, Payload]:
        fn_id = id(fn)
        with self._lock:
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
                self._by_id.popitem(last=False)
        return key, blob


def _on_death_of(fn_id: int, dead: list[int]) -> Callable[[weakref.ref[Any]], None]:
    """A weak reference callback noting that the function ``fn_id`` is gone (any thread)."""

    def callback(_: weakref.ref[Any]) -> None:
        dead.append(fn_id)

    return callback
