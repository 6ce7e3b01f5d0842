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
does not grow by the copy. Where memory files or descriptor passing do not exist (not Linux),
:data:`AVAILABLE` is False and large buffers simply travel in the pickle stream.
"""

from __future__ import annotations

import mmap
import os
import socket
import sys
import weakref
from collections.abc import Sequence

__all__ = ["AVAILABLE", "THRESHOLD", "Segment", "recv_fds", "send_fds"]

AVAILABLE = (
    sys.platform.startswith("linux") and hasattr(os, "memfd_create") and hasattr(socket, "send_fds")
)
#: buffers at least this large travel in shared memory
THRESHOLD = 256 * 1024
_ALIGN = 64
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
            for buf, (start, length) in zip(buffers, spans):
                _pwrite_all(fd, buf.cast("B") if buf.format != "B" else buf, start, length)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, max(offset, 1)), spans

    @classmethod
    def adopt(cls, fd: int) -> Segment:
        """Take ownership of a descriptor received from another process."""
        return cls(fd, os.fstat(fd).st_size)

    def view(self, offset: int, length: int) -> memoryview:
        """A writable, copy-on-write view of part of the segment (mapped on first use)."""
        if self._mapping is None:
            # Not MAP_POPULATE: populating a writable private mapping copies every page.
            self._mapping = mmap.mmap(
                self.fd, self.size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        return memoryview(self._mapping)[offset : offset + length]

    def close(self) -> None:
        """Close this process's descriptor; views already made stay valid."""
        self._closer()
        self._mapping = None  # freed when the last view of it is gone


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
