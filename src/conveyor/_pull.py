"""Reading a map's large argument buffers straight out of the parent's memory, in the worker.

A map's chunk holding a 50 MB array used to be copied into its shared-memory segment by the
parent's dispatcher thread, one chunk after the other: for 400 MB that copy alone took longer
than summing the whole array on two threads. Here the parent only names where each buffer lies
in its memory, and the worker that runs the chunk copies it into the segment itself with one
``process_vm_readv`` system call. The copy is still made once, but by the workers, in parallel,
each just before it needs the data (still warm in its cache), and the parent's thread is free.

Data flow::

    parent (dispatcher thread)                              worker process
    --------------------------                              --------------
    pickle the chunk; large buffers out of band
    reserve a pooled segment (no copy), note each
    buffer's (address, length); the segment keeps
    the buffers alive  --- fd + (pid, sources) ------->     map the segment (kept, MAP_SHARED)
                                                            process_vm_readv(pid, sources) into
                                                            it: the one copy
                                                            unpickle: the arrays are views of
                                                            the segment, as with a pushed copy

Guarantees, and what keeps them:

* **The source is alive while a worker may read it.** The reserved segment holds the pickler's
  views of the buffers (``PooledSegment.keep``) until every hold on the segment is released:
  the parent's, when the unit is settled, and each worker's, once it reports that it has no
  view of the segment left (or it died). A worker can only read while it holds the segment.
* **Used only where it works.** Each worker tries a read of a known buffer of the parent at
  start (:func:`probe`) and says in READY whether it worked; the pool pulls only if it did.
  Where the kernel refuses (Yama's ``ptrace_scope`` >= 1 outside the parent's descendants, a
  parent that made itself non-dumpable, no such system call) the parent copies as before.
* **Only a map's chunks.** A ``submit`` is pickled by its caller and copied at once, so that
  changing the array after ``submit`` returns cannot change what the task sees. A map's chunks
  are pickled when they are sent anyway, so the arguments of a running map must not change
  (as with every executor); the read makes that window a few microseconds longer.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence

__all__ = ["AVAILABLE", "address_of", "probe", "probe_args", "read"]


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _PyBuffer(ctypes.Structure):
    # CPython's Py_buffer (Include/pybuffer.h), unchanged since 3.3.
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def _load() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux") or sys.implementation.name != "cpython":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).process_vm_readv
    except (OSError, AttributeError):
        return None
    fn.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    fn.restype = ctypes.c_ssize_t
    return fn


_readv = _load()
if _readv is not None:  # CPython only: the buffer protocol through its C API
    ctypes.pythonapi.PyObject_GetBuffer.argtypes = [
        ctypes.py_object,
        ctypes.POINTER(_PyBuffer),
        ctypes.c_int,
    ]
    ctypes.pythonapi.PyObject_GetBuffer.restype = ctypes.c_int
    ctypes.pythonapi.PyBuffer_Release.argtypes = [ctypes.POINTER(_PyBuffer)]
    ctypes.pythonapi.PyBuffer_Release.restype = None
#: whether this system has ``process_vm_readv`` at all (a worker still has to :func:`probe`)
AVAILABLE = _readv is not None
_PROBE = os.urandom(32)  # (not secrets: its hmac/hashlib imports cost ~4 ms at start-up)


def address_of(buffer: memoryview) -> int:
    """Where a contiguous buffer's bytes start in this process's memory.

    The address is valid for as long as ``buffer`` (or the object it views) is alive.

    Example::

        >>> data = bytearray(b"abc")
        >>> address_of(memoryview(data)) == ctypes.addressof(ctypes.c_char.from_buffer(data))
        True
    """
    view = _PyBuffer()
    # PyBUF_SIMPLE: contiguous bytes, read-only is fine; raises BufferError otherwise
    ctypes.pythonapi.PyObject_GetBuffer(buffer, ctypes.byref(view), 0)
    try:
        return int(view.buf or 0)
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


def read(pid: int, sources: Sequence[tuple[int, int]], targets: Sequence[tuple[int, int]]) -> None:
    """Copy each ``(address, length)`` of process ``pid`` to the matching local target.

    Raises OSError when the kernel refuses or a range is not mapped there.

    Example::

        >>> src, dst = b"conveyor", bytearray(8)
        >>> read(os.getpid(), [(address_of(memoryview(src)), 8)],
        ...      [(address_of(memoryview(dst)), 8)])
        >>> bytes(dst)
        b'conveyor'
    """
    if _readv is None:
        raise OSError("process_vm_readv is not available here")
    for (address, length), (target, target_length) in zip(sources, targets):
        if length != target_length:
            raise ValueError("a source and its target differ in length")
        done = 0
        while done < length:
            # One range at a time, in pieces: the kernel may copy less than asked.
            local = _IoVec(target + done, length - done)
            remote = _IoVec(address + done, length - done)
            got = _readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if got <= 0:
                errno = ctypes.get_errno() if got < 0 else 0
                raise OSError(
                    errno,
                    f"cannot read the arguments from process {pid}: "
                    f"{os.strerror(errno) if errno else 'nothing was copied'}",
                )
            done += got


def probe_args() -> tuple[int, int, bytes]:
    """What a worker needs to :func:`probe` this process: its pid, an address, the bytes there."""
    return os.getpid(), address_of(memoryview(_PROBE)), _PROBE


def probe(pid: int, address: int, expected: bytes) -> bool:
    """Whether this process may read the memory of ``pid`` (and reads what it should).

    Example::

        >>> probe(*probe_args())
        True
    """
    if _readv is None:
        return False
    out = bytearray(len(expected))
    try:
        read(pid, [(address, len(expected))], [(address_of(memoryview(out)), len(out))])
    except OSError:
        return False
    return bytes(out) == expected
