"""Shared memory for large buffers: anonymous memory files, passed between processes by descriptor.

Data flow::

    sender (parent, or a worker for results)              receiver
    ----------------------------------------              --------
    pickle protocol 5: large buffers out of band
    Segment.from_buffers: memfd_create, pwrite each
    buffer once (the one copy)       -- fd over a unix socket (SCM_RIGHTS) -->  map the file
    the pickle stream, naming the    -- the worker's pipe ------------------->  (MAP_PRIVATE: the
    segment by position                                                         receiver's arrays
                                                                                are views of it,
                                                                                writes stay its own)

Why memory files and not named ``/dev/shm`` segments: a memory file has no name, so there is
nothing to unlink and nothing to leak. The kernel frees it when the last descriptor is closed and
the last mapping is gone, whatever happens to either process: a task that fails, times out,
crashes, a worker killed by SIGKILL, Ctrl-C, even the parent killed outright. No
``resource_tracker`` is involved, so no warnings either. The sender closes its descriptor when the
unit is settled (or when the :class:`Segment` is garbage-collected); the receiver closes its
descriptor as soon as it has mapped the file, and the mapping lives exactly as long as the
objects that view it.

The sender writes with ``pwrite`` rather than through a mapping, so the parent's resident memory
does not grow by the copy. A map's chunks skip even that: the parent only *reserves* a pooled
segment (:meth:`SegmentPool.reserve`) and the worker fills its own mapping of it from the
parent's memory (:meth:`WorkerMappings.fill`, see :mod:`conveyor._pull`).
Where memory files or descriptor passing do not exist (not Linux),
:data:`AVAILABLE` is False and large buffers simply travel in the pickle stream.

Recycling (arguments only). A fresh memory file costs the kernel a page allocation for every
4 KiB written, several times the copy itself, and a fresh mapping costs a fault per page. So the
parent's :class:`SegmentPool` reuses the segments that carry task arguments, and each worker keeps
its mapping of a pooled segment (:class:`WorkerMappings`, ``MAP_SHARED``) across tasks. Reuse is
safe only when nobody can still see the old contents, so a pooled segment goes back to the free
list only when every *hold* on it is released:

* the parent's hold, released when the unit that carries it is settled (or dropped);
* one hold per worker it was sent to, released when that worker reports that no view of its
  mapping is left once the task has ended (the worker checks that the mapping object is referred
  to by nothing but its own cache; a task that keeps a view, say in a global, keeps the hold),
  or when that worker dies.

Free segments idle for :data:`IDLE_SECONDS`, or beyond :data:`MAX_FREE_BYTES`, are closed;
workers are told to forget their mappings of closed segments with their next batch.
"""

from __future__ import annotations

import itertools
import mmap
import os
import socket
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence

__all__ = [
    "AVAILABLE",
    "THRESHOLD",
    "Hold",
    "PooledSegment",
    "Segment",
    "SegmentPool",
    "WorkerMappings",
    "recv_fds",
    "send_fds",
]

AVAILABLE = (
    sys.platform.startswith("linux") and hasattr(os, "memfd_create") and hasattr(socket, "send_fds")
)
#: buffers at least this large travel in shared memory
THRESHOLD = 256 * 1024
_ALIGN = 64
#: free pooled segments kept at most this long unused, and at most this many bytes of them
IDLE_SECONDS = 30.0
MAX_FREE_BYTES = 2 << 30
#: bytes of pooled segments a worker keeps mapped
WORKER_MAPPED_BYTES = 4 << 30
#: descriptors passed in one sendmsg (the kernel's SCM_MAX_FD is 253)
_MAX_FDS = 250


class Segment:
    """An anonymous shared-memory file holding buffers back to back.

    Example::

        >>> segment, spans = Segment.from_buffers([memoryview(b"x" * 1000)])
        >>> bytes(segment.view(*spans[0])[:3])
        b'xxx'
        >>> segment.close()
    """

    __slots__ = ("__weakref__", "_closer", "_mapping", "fd", "size")

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size
        self._mapping: mmap.mmap | None = None
        self._closer = weakref.finalize(self, _close_fd, fd)

    @classmethod
    def from_buffers(cls, buffers: Sequence[memoryview]) -> tuple[Segment, list[tuple[int, int]]]:
        """Copy ``buffers`` into a new segment; returns it and each buffer's (offset, length)."""
        spans = []
        offset = 0
        for buf in buffers:
            spans.append((offset, buf.nbytes))
            offset += -(-buf.nbytes // _ALIGN) * _ALIGN
        fd = os.memfd_create("conveyor", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, max(offset, 1))
            _write(fd, buffers, spans)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, max(offset, 1)), spans

    #: the pool's id of a pooled segment; -1 for a segment of its own
    pool_id = -1

    def release(self) -> None:
        """Give up this holder's use of the segment."""
        self.close()

    @classmethod
    def adopt(cls, fd: int) -> Segment:
        """Take ownership of a descriptor received from another process."""
        return cls(fd, os.fstat(fd).st_size)

    def view(self, offset: int, length: int) -> memoryview:
        """A writable, copy-on-write view of part of the segment (mapped on first use)."""
        if self._mapping is None:
            # Not MAP_POPULATE: populating a writable private mapping copies every page.
            self._mapping = _map(self.fd, self.size, mmap.MAP_PRIVATE)
        return memoryview(self._mapping)[offset : offset + length]

    def close(self) -> None:
        """Close this process's descriptor; views already made stay valid."""
        self._closer()
        self._mapping = None  # freed when the last view of it is gone


def _layout(buffers: Sequence[memoryview]) -> tuple[list[tuple[int, int]], int]:
    spans = []
    offset = 0
    for buf in buffers:
        spans.append((offset, buf.nbytes))
        offset += -(-buf.nbytes // _ALIGN) * _ALIGN
    return spans, max(offset, 1)


def _write(fd: int, buffers: Sequence[memoryview], spans: list[tuple[int, int]]) -> None:
    for buf, (start, length) in zip(buffers, spans):
        _pwrite_all(fd, buf.cast("B") if buf.format != "B" else buf, start, length)


class Hold:
    """One holder's claim on a pooled segment; released once, explicitly or when collected."""

    __slots__ = ("__weakref__", "_finalizer")

    def __init__(self, segment: PooledSegment):
        segment.holds += 1
        self._finalizer = weakref.finalize(self, segment.pool._unhold, segment)

    def release(self) -> None:
        self._finalizer()


class PooledSegment:
    """A segment owned by a :class:`SegmentPool`; reused once every hold on it is released."""

    __slots__ = ("capacity", "fd", "holds", "idle_since", "keep", "pool", "pool_id")

    def __init__(self, pool: SegmentPool, pool_id: int, fd: int, capacity: int):
        self.pool = pool
        self.pool_id = pool_id
        self.fd = fd
        self.capacity = capacity
        self.holds = 0
        self.idle_since = 0.0
        #: for a reserved segment, the sender's buffers its receivers copy from (conveyor._pull):
        #: kept alive until every hold is released
        self.keep: Sequence[memoryview] | None = None

    @property
    def size(self) -> int:
        return self.capacity


class SegmentPool:
    """Recycles the segments that carry task arguments (see the module docstring).

    Example::

        >>> pool = SegmentPool()
        >>> segment, spans, hold = pool.write([memoryview(b"x" * 300_000)])
        >>> hold.release()          # the unit is settled and no worker holds it: free again
        >>> pool.write([memoryview(b"y" * 300_000)])[0] is segment
        True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._free: list[PooledSegment] = []
        self._open: set[PooledSegment] = set()
        self._closed = False
        #: ids of segments closed since each listener last asked (workers must forget them)
        self._forgotten: list[int] = []

    def write(
        self, buffers: Sequence[memoryview]
    ) -> tuple[PooledSegment, list[tuple[int, int]], Hold]:
        """Copy ``buffers`` into a free (or new) segment; returns it, the spans, and a hold."""
        spans, size = _layout(buffers)
        segment = self._take(size)
        hold = Hold(segment)  # under no lock: holds only change from 0 in _take's caller
        try:
            _write(segment.fd, buffers, spans)
        except BaseException:
            hold.release()
            raise
        return segment, spans, hold

    def reserve(
        self, buffers: Sequence[memoryview]
    ) -> tuple[PooledSegment, list[tuple[int, int]], Hold]:
        """A free (or new) segment for ``buffers`` that each receiver fills itself by reading
        them from this process (see :mod:`conveyor._pull`): no copy here. The segment keeps
        ``buffers`` alive until its last hold is released."""
        spans, size = _layout(buffers)
        segment = self._take(size)
        segment.keep = list(buffers)
        return segment, spans, Hold(segment)

    def hold(self, segment: PooledSegment) -> Hold:
        """Another claim on ``segment`` (a worker it is sent to)."""
        with self._lock:
            return Hold(segment)

    def forgotten(self) -> list[int]:
        """Ids of segments closed since the last call."""
        with self._lock:
            ids, self._forgotten = self._forgotten, []
            return ids

    def close(self) -> None:
        """Close every free segment now, and every other one when its last hold goes."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for segment in free:
            _close_fd(segment.fd)
            with self._lock:
                self._open.discard(segment)

    def _take(self, size: int) -> PooledSegment:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            best = None
            for segment in self._free:
                if size <= segment.capacity <= 2 * size + (1 << 20) and (
                    best is None or segment.capacity < best.capacity
                ):
                    best = segment
            if best is not None:
                self._free.remove(best)
                return best
            pool_id = next(self._ids)
        capacity = _size_class(size)
        fd = os.memfd_create("conveyor", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, capacity)
        except BaseException:
            os.close(fd)
            raise
        segment = PooledSegment(self, pool_id, fd, capacity)
        with self._lock:
            self._open.add(segment)
        return segment

    def counts(self) -> tuple[int, int]:
        """(segments held by a unit or a worker, free segments): for tests and diagnostics."""
        with self._lock:
            return len(self._open) - len(self._free), len(self._free)

    def _unhold(self, segment: PooledSegment) -> None:
        with self._lock:
            segment.holds -= 1
            if segment.holds > 0:
                return
            segment.keep = None  # nobody can read the sender's buffers any more
            if self._closed:
                self._drop(segment)
                return
            segment.idle_since = time.monotonic()
            self._free.append(segment)
            self._expire(segment.idle_since)

    def _expire(self, now: float) -> None:
        """Close free segments idle too long, and the oldest beyond the byte limit (locked)."""
        self._free.sort(key=lambda s: s.idle_since)
        total = sum(s.capacity for s in self._free)
        while self._free and (
            total > MAX_FREE_BYTES or now - self._free[0].idle_since > IDLE_SECONDS
        ):
            segment = self._free.pop(0)
            total -= segment.capacity
            self._drop(segment)

    def _drop(self, segment: PooledSegment) -> None:
        _close_fd(segment.fd)
        self._open.discard(segment)
        self._forgotten.append(segment.pool_id)


def _size_class(size: int) -> int:
    """Round up to within 1/16 (at least 64 KiB), so near-equal sizes share segments."""
    step = max(64 << 10, 1 << max(0, size.bit_length() - 4))
    return -(-size // step) * step


class WorkerMappings:
    """A worker's mappings of pooled segments, kept across tasks (``MAP_SHARED``).

    :meth:`view` maps a segment (or reuses the mapping), :meth:`released` says which of the
    segments used since the last call no longer have any view alive. That test relies on CPython
    reference counts: every buffer exported from the mapping keeps a reference to the mapping
    object. Elsewhere nothing is ever reported released, so the parent never reuses a segment.
    """

    def __init__(self) -> None:
        self._maps: OrderedDict[int, mmap.mmap] = OrderedDict()
        self._used: list[int] = []
        self._retained: list[int] = []
        self._exact = sys.implementation.name == "cpython"

    def view(self, pool_id: int, segment: Segment, offset: int, length: int) -> memoryview:
        mapping = self._mapping(pool_id, segment)
        return memoryview(mapping)[offset : offset + length]

    def fill(
        self,
        pool_id: int,
        segment: Segment,
        spans: Sequence[tuple[int, int]],
        pid: int,
        sources: Sequence[tuple[int, int]],
    ) -> None:
        """Copy the sender's buffers (``sources`` in process ``pid``) into our mapping of a
        reserved segment, at ``spans`` (see :mod:`conveyor._pull`)."""
        import ctypes  # (only here: a cold process map must not pay for it, see conveyor._pull)

        from . import _pull

        mapping = self._mapping(pool_id, segment)
        exported = ctypes.c_char.from_buffer(mapping)
        base = ctypes.addressof(exported)
        del exported  # no export may outlive this call: released() counts references
        _pull.read(pid, sources, [(base + offset, length) for offset, length in spans])

    def _mapping(self, pool_id: int, segment: Segment) -> mmap.mmap:
        mapping = self._maps.get(pool_id)
        if mapping is None:
            mapping = _map(segment.fd, segment.size, mmap.MAP_SHARED)
            self._maps[pool_id] = mapping
            self._evict()
        self._maps.move_to_end(pool_id)
        if pool_id not in self._used:
            self._used.append(pool_id)
        return mapping

    def released(self) -> list[int]:
        """Segments used since the last call (or retained before) with no view left."""
        if not self._exact:
            return []
        candidates, self._used = self._retained + self._used, []
        released, self._retained = [], []
        for pool_id in candidates:
            mapping = self._maps.get(pool_id)
            # references: the cache, `mapping`, getrefcount's argument; any more is a view
            if mapping is None or sys.getrefcount(mapping) <= 3:
                released.append(pool_id)
            else:
                self._retained.append(pool_id)
        return released

    def forget(self, pool_ids: Sequence[int]) -> None:
        """Unmap segments the parent closed (a view still alive keeps its mapping alive)."""
        for pool_id in pool_ids:
            mapping = self._maps.pop(pool_id, None)
            if mapping is not None:
                _close_mapping(mapping)

    def _evict(self) -> None:
        total = sum(len(m) for m in self._maps.values())
        while total > WORKER_MAPPED_BYTES and len(self._maps) > 1:
            pool_id, mapping = self._maps.popitem(last=False)
            total -= len(mapping)
            if pool_id in self._used or pool_id in self._retained:
                self._maps[pool_id] = mapping  # still in use: keep it, try the next
                self._maps.move_to_end(pool_id, last=False)
                break
            _close_mapping(mapping)


def _map(fd: int, size: int, flags: int) -> mmap.mmap:
    """Map a memory file. Before Python 3.13 the mapping keeps a duplicate of the descriptor
    open for as long as it lives (an array viewing a result holds one), so the soft limit on open
    files is raised to the hard one the first time; 3.13's ``trackfd=False`` avoids the duplicate.
    """
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, size, flags=flags, prot=prot, trackfd=False)
    _raise_open_file_limit()
    return mmap.mmap(fd, size, flags=flags, prot=prot)


_limit_raised = False


def _raise_open_file_limit() -> None:
    global _limit_raised
    if _limit_raised:
        return
    _limit_raised = True
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(
                resource.RLIMIT_NOFILE,
                (hard if hard != resource.RLIM_INFINITY else max(soft, 65536), hard),
            )
    except (ImportError, ValueError, OSError):
        pass


def _close_mapping(mapping: mmap.mmap) -> None:
    try:
        mapping.close()
    except BufferError:
        pass  # a view is alive; the mapping goes when it does


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _pwrite_all(fd: int, buf: memoryview, offset: int, length: int) -> None:
    done = 0
    while done < length:
        done += os.pwrite(fd, buf[done:], offset + done)


def send_fds(sock: socket.socket, fds: Sequence[int]) -> None:
    """Send descriptors over a unix socket, in groups the kernel accepts."""
    for start in range(0, len(fds), _MAX_FDS):
        group = list(fds[start : start + _MAX_FDS])
        socket.send_fds(sock, [b"F"], group)


def recv_fds(sock: socket.socket, count: int) -> list[int]:
    """Receive ``count`` descriptors sent by :func:`send_fds`."""
    fds: list[int] = []
    while len(fds) < count:
        want = min(_MAX_FDS, count - len(fds))
        _, got, _, _ = socket.recv_fds(sock, 1, want)
        if not got:
            raise EOFError("the other process closed the descriptor channel")
        fds.extend(got)
    return fds
