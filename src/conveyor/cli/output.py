"""Job output for ``conveyor run``: grouped, line-buffered, tagged, kept in order.

Data flow::

    executor threads                      Output (one lock)                  our stdout/err
    ----------------                      -----------------                  --------------
    --line-buffer: whole lines --------> emit(order, stream, data) --+
    job end: last chunks / grouped ----> finish(order, chunks) ------+--> head job? write
                                                                     +--> else buffer until
                                                                          it is the head

Guarantees, and where they are kept:

* Whole units only: every write of job output happens under ``self._lock`` and is a
  complete unit -- a job's whole stdout then its whole stderr (grouped), or whole lines
  (``--line-buffer``; :class:`LineSink` holds back a partial line until its newline or
  the job's end). So one job's output never interleaves inside another's unit.
* ``--keep-order``: ``order`` numbers the jobs as they were started, 0, 1, 2, ...; only
  the lowest unfinished order (the *head*) writes directly; later jobs buffer in memory
  until every earlier job has finished. A job must call :meth:`Output.finish` exactly
  once, even when it was killed or never ran, or later jobs would wait forever.
* A closed stdout (``| head``) stops output quietly and calls ``on_broken`` once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import BinaryIO

__all__ = ["LineSink", "Output", "tag_lines"]

Chunk = tuple[int, bytes]  # (1 = stdout or 2 = stderr, data)


def tag_lines(tag: bytes, data: bytes) -> bytes:
    """Prefix every line of ``data`` (including a final partial line) with ``tag``."""
    if not tag or not data:
        return data
    lines = data.split(b"\n")
    last = lines.pop()
    tagged = b"".join(tag + line + b"\n" for line in lines)
    return tagged + tag + last if last else tagged


class _Pending:
    __slots__ = ("chunks", "done")

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.done = False


class Output:
    """Serialises job output onto ``stdout``/``stderr`` (see the module docstring)."""

    def __init__(self, stdout: BinaryIO, stderr: BinaryIO, *, keep_order: bool,
                 around_write: Callable[[], AbstractContextManager[object]] | None = None,
                 on_broken: Callable[[], None] | None = None) -> None:
        self._files = {1: stdout, 2: stderr}
        self._keep_order = keep_order
        self._around_write = around_write or contextlib.nullcontext
        self._on_broken = on_broken
        self._lock = threading.Lock()
        self._head = 0
        self._pending: dict[int, _Pending] = {}
        self.broken = False

    def emit(self, order: int, stream: int, data: bytes) -> None:
        """Write (or, if an earlier job is unfinished under --keep-order, buffer) data."""
        with self._lock:
            if not self._keep_order or order == self._head:
                self._write([(stream, data)])
            else:
                self._pending.setdefault(order, _Pending()).chunks.append((stream, data))

    def finish(self, order: int, chunks: list[Chunk]) -> None:
        """The job numbered ``order`` has ended; ``chunks`` is its remaining output."""
        with self._lock:
            if not self._keep_order:
                self._write(chunks)
                return
            if order != self._head:
                pending = self._pending.setdefault(order, _Pending())
                pending.chunks.extend(chunks)
                pending.done = True
                return
            self._write(chunks)
            self._head += 1
            while self._head in self._pending:
                pending = self._pending.pop(self._head)
                self._write(pending.chunks)
                if not pending.done:
                    break  # it is the head now and writes directly from here on
                self._head += 1

    def _write(self, chunks: list[Chunk]) -> None:
        # Called with self._lock held.
        if self.broken or not any(data for _, data in chunks):
            return
        try:
            with self._around_write():
                for stream in (1, 2):
                    f = self._files[stream]
                    data = b"".join(d for s, d in chunks if s == stream)
                    if data:
                        f.write(data)
                        f.flush()
        except BrokenPipeError:
            self.broken = True
            if self._on_broken is not None:
                self._on_broken()


class LineSink:
    """Feeds one job's output to :meth:`Output.emit` in whole lines (--line-buffer)."""

    def __init__(self, output: Output, order: int, tag: bytes) -> None:
        self._output = output
        self._order = order
        self._tag = tag
        self._partial = {1: b"", 2: b""}

    def __call__(self, stream: int, data: bytes) -> None:
        """Take a chunk as read from the job's pipe ``stream`` (1 or 2)."""
        data = self._partial[stream] + data
        cut = data.rfind(b"\n") + 1
        self._partial[stream] = data[cut:]
        if cut:
            self._output.emit(self._order, stream, tag_lines(self._tag, data[:cut]))

    def rest(self) -> list[Chunk]:
        """The unterminated last lines, to be written when the job ends."""
        rest = [(s, tag_lines(self._tag, d)) for s, d in self._partial.items() if d]
        self._partial = {1: b"", 2: b""}
        return rest
