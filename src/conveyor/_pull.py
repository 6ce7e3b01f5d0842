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
* **Used only where it works.** A worker tries a read of a known buffer of the parent
  (:func:`probe`) when its first batch carrying shared memory arrives (so a pool that never
  sees large arguments never loads ctypes) and says in PROBED whether it worked; the pool
  copies until a worker said it did, and for good once one said it did not. Where the kernel
  refuses (Yama's ``ptrace_scope`` >= 1 outside the parent's descendants, a
  parent that made itself non-dumpable, no such system call) the parent copies as before.
* **Only a map's chunks.** A ``submit`` is pickled by its caller and copied at once, so that
  changing the array after ``submit`` returns cannot change what the task sees. A map's chunks
  are pickled when they are sent anyway, so the arguments of a running map must not change
  (as with every executor); the read makes that window a few microseconds longer.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["AVAILABLE", "address_of", "probe", "probe_args", "read"]

#: whether this system may have ``process_vm_readv`` at all (Linux, CPython); a worker still
#: has to :func:`probe`, which also finds out whether the C library has it
AVAILABLE = sys.platform.startswith("linux") and sys.implementation.name == "cpython"
_PROBE = os.urandom(32)  # (not secrets: its hmac/hashlib imports cost ~4 ms at start-up)

_lib: Any = None  # see _ctypes_lib: made on first use (ctypes costs ~3 ms to import)


class _Lib:
    """``process_vm_readv`` and the buffer protocol through ctypes, loaded on first use: a
    cold process map must not pay for ctypes in the caller (its workers load it to probe)."""

    def __init__(self) -> None:
        import ctypes

        self.ctypes = ctypes

        class IoVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        class PyBuffer(ctypes.Structure):
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

        self.IoVec = IoVec
        self.PyBuffer = PyBuffer
        self.readv: Any = None
        if not AVAILABLE:
            return
        try:
            readv = ctypes.CDLL(None, use_errno=True).process_vm_readv
        except (OSError, AttributeError):
            return
        readv.argtypes = [
            ctypes.c_int,
            ctypes.POINTER(IoVec),
            ctypes.c_ulong,
            ctypes.POINTER(IoVec),
            ctypes.c_ulong,
            ctypes.c_ulong,
        ]
        readv.restype = ctypes.c_ssize_t
        self.readv = readv
        api = ctypes.pythonapi  # CPython only: the buffer protocol through its C API
        api.PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int]
        api.PyObject_GetBuffer.restype = ctypes.c_int
        api.PyBuffer_Release.argtypes = [ctypes.POINTER(PyBuffer)]
        api.PyBuffer_Release.restype = None


def _ctypes_lib() -> _Lib:
    global _lib
    if _lib is None:
        _lib = _Lib()
    lib: _Lib = _lib
    return lib


def address_of(buffer: memoryview) -> int:
    """Where a contiguous buffer's bytes start in this process's memory.

    The address is valid for as long as ``buffer`` (or the object it views) is alive.

    Example::

        >>> import ctypes
        >>> data = bytearray(b"abc")
        >>> address_of(memoryview(data)) == ctypes.addressof(ctypes.c_char.from_buffer(data))
        True
    """
    lib = _ctypes_lib()
    ctypes = lib.ctypes
    view = lib.PyBuffer()
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
    lib = _ctypes_lib()
    readv, ctypes = lib.readv, lib.ctypes
    if readv is None:
        raise OSError("process_vm_readv is not available here")
    for (address, length), (target, target_length) in zip(sources, targets):
        if length != target_length:
            raise ValueError("a source and its target differ in length")
        done = 0
        while done < length:
            # One range at a time, in pieces: the kernel may copy less than asked.
            local = lib.IoVec(target + done, length - done)
            remote = lib.IoVec(address + done, length - done)
            got = readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if got <= 0:
                errno = ctypes.get_errno() if got < 0 else 0
                raise OSError(
                    errno,
                    f"cannot read the arguments from process {pid}: "
                    f"{os.strerror(errno) if errno else 'nothing was copied'}",
                )
            done += got


def probe_args() -> tuple[int, int, bytes]:
    """What a worker needs to :func:`probe` this process: its pid, an address, the bytes there.

    The address of the probe's bytes is taken without ctypes (see :class:`_Lib`): CPython keeps
    a ``bytes`` object's data inline at ``bytes.__basicsize__ - 1`` from its start. Were that
    ever wrong, the probe would read other bytes and the pool would copy instead of pulling.

    Example::

        >>> import ctypes
        >>> pid, address, expected = probe_args()
        >>> ctypes.string_at(address, len(expected)) == expected
        True
    """
    return os.getpid(), id(_PROBE) + bytes.__basicsize__ - 1, _PROBE


def probe(pid: int, address: int, expected: bytes) -> bool:
    """Whether this process may read the memory of ``pid`` (and reads what it should).

    Example::

        >>> probe(*probe_args())
        True
    """
    if _ctypes_lib().readv is None:
        return False
    out = bytearray(len(expected))
    try:
        read(pid, [(address, len(expected))], [(address_of(memoryview(out)), len(out))])
    except OSError:
        return False
    return bytes(out) == expected
