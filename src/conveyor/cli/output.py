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
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO

__all__ = ["Chunk", "LineSink", "Output", "tag_lines", "tag_pieces"]

# (1 = stdout or 2 = stderr, the data: bytes, or pieces of bytes to be read once)
Chunk = tuple[int, "bytes | Iterable[bytes]"]


def tag_pieces(tag: bytes, pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Prefix every line (including a final partial line) of the output that arrives
    in ``pieces`` with ``tag``; a line may span pieces."""
    at_line_start = True
    for piece in pieces:
        if not piece:
            continue
        lines = piece.split(b"\n")
        last = lines.pop()
        out = [(tag if at_line_start or i else b"") + line + b"\n" for i, line in enumerate(lines)]
        if lines:
            at_line_start = True
        if last:
            out.append((tag if at_line_start else b"") + last)
            at_line_start = False
        yield b"".join(out)


def tag_lines(tag: bytes, data: bytes) -> bytes:
    """Prefix every line of ``data`` (including a final partial line) with ``tag``."""
    if not tag or not data:
        return data
    return b"".join(tag_pieces(tag, [data]))


class _Pending:
    __slots__ = ("chunks", "done")

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.done = False


class Output:
    """Serialises job output onto ``stdout``/``stderr`` (see the module docstring)."""

    def __init__(
        self,
        stdout: BinaryIO,
        stderr: BinaryIO,
        *,
        keep_order: bool,
        around_write: Callable[[], AbstractContextManager[object]] | None = None,
        on_broken: Callable[[], None] | None = None,
    ) -> None:
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
        # Called with self._lock held: this is what keeps units from interleaving.
        if self.broken or not any(data for _, data in chunks):
            return
        try:
            with self._around_write():
                for stream in (1, 2):
                    f = self._files[stream]
                    wrote = False
                    for s, data in chunks:
                        if s != stream:
                            continue
                        for piece in [data] if isinstance(data, bytes) else data:
                            if piece:
                                f.write(piece)
                                wrote = True
                    if wrote:
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

    def rest(self) -> list[tuple[int, bytes]]:
        """The unterminated last lines, to be written when the job ends."""
        rest = [(s, tag_lines(self._tag, d)) for s, d in self._partial.items() if d]
        self._partial = {1: b"", 2: b""}
        return rest
