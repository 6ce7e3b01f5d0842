"""``conveyor run --pipe`` and ``--pipe-part``: cut data into blocks of whole records and
give each block to one job on its stdin.

Data flow::

    --pipe (stdin, any stream)
    --------------------------
    fd 0 --readinto--> input thread (run._ReadAhead pump, queue of 1):
                    read_blocks() fills a fresh buffer to --block bytes, cuts it after
                    the last record end, keeps the rest for the next block
                --> (seq, BlockArgs(MemoryBlock)) --> worker loop (job slot) holds it
                    until the job is done, so a retry feeds the same bytes again
                --> process.run_command: Popen(stdin=PIPE), pipe enlarged to 1 MiB,
                    poll(POLLOUT) --> MemoryBlock writer: os.write --> job's stdin

    --pipe-part -a FILE (seekable files)
    ------------------------------------
    FILE --pread at each part's start + --block--> the first record end from there:
         split offsets (all found before any job runs, as GNU parallel's)
         --> (seq, BlockArgs(FileRange(fd, offset, length))) --> worker loop
         --> process.run_command: poll(POLLOUT) --> FileRange writer: os.sendfile(pipe,
             FILE, offset, n): the kernel copies page cache to the pipe, nothing passes
             through Python (pread + write where sendfile cannot be used)

Guarantees, and where they are kept:

* No record is split: a block ends only where ``--recend`` is followed by
  ``--recstart`` (:meth:`Records.last_split`, :meth:`Records.first_split`), or at the end
  of the data. A record longer than ``--block`` makes its block longer (the buffer grows
  until a record ends), never cut.
* The blocks, in order, are exactly the input: nothing is dropped, duplicated or
  reordered (``read_blocks`` hands out ``buffer[:split]`` and carries ``buffer[split:]``
  over; ``split_file`` returns adjacent ranges covering the file).
* Bounded memory for ``--pipe``: a block is held by the job that runs it (-j), one waits
  in the input queue and one is being read: at most -j + 2 blocks, each about ``--block``
  bytes (``run._ReadAhead`` with a queue of 1).
* Each attempt of a job gets a fresh writer (:meth:`StdinFeed.writer`), so a job run
  again by ``--retries`` reads its whole block again.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from conveyor.cli.errors import CliError
from conveyor.cli.inputs import Group, Inputs

__all__ = [
    "DEFAULT_BLOCK",
    "BlockArgs",
    "FileRange",
    "MemoryBlock",
    "PipeError",
    "PipeSpec",
    "Records",
    "StdinFeed",
    "add_pipe_options",
    "glue_negative_block",
    "parse_size",
    "pipe_inputs",
    "pipe_options",
    "read_blocks",
    "split_file",
    "stdin_of",
    "unescape",
]

DEFAULT_BLOCK = 1 << 20  # --block's default, as GNU parallel's: 1M
_WRITE = 1 << 20  # bytes per write()/sendfile() call into a job's stdin
_PROBE = 4096  # first read when looking for a record boundary in a file (then doubled)


class PipeError(CliError):
    """--pipe cannot run: a command with {}, an unreadable --pipe-part file."""


_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "p": 1000**5,
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "T": 1 << 40,
    "P": 1 << 50,
}
_SIZE = re.compile(r"\s*(-?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kmgtpKMGTP]?)\s*\Z")


def parse_size(text: str) -> int:
    """A ``--block`` size: a number with an optional unit, GNU parallel's: K M G T P are
    powers of 1024, k m g t p powers of 1000. A negative size (``--pipe-part`` only) is
    returned negative.

    >>> parse_size("1M"), parse_size("10k"), parse_size("1.5K"), parse_size("-2")
    (1048576, 10000, 1536, -2)
    >>> parse_size("1X")
    Traceback (most recent call last):
    ...
    ValueError: bad --block size '1X': expected a number with an optional unit, \
e.g. 1M (1048576 bytes) or 10k (10000); K M G T P are powers of 1024, k m g t p of 1000
    """
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(
            f"bad --block size {text!r}: expected a number with an optional unit, e.g. 1M "
            "(1048576 bytes) or 10k (10000); K M G T P are powers of 1024, k m g t p of 1000"
        )
    sign, number, unit = m.groups()
    size = int(float(number) * _UNITS[unit])
    if size == 0:
        raise ValueError(f"bad --block size {text!r}: must not be 0")
    return -size if sign else size


_ESCAPES = {"0": "\0", "r": "\r", "n": "\n", "t": "\t", "'": "'", '"': '"', "\\": "\\"}


def unescape(text: str) -> str:
    r"""GNU parallel's escapes in a literal ``--recend``/``--recstart``: ``\n \t \r \0
    \\ \' \"``; any other backslash stays as it is.

    >>> unescape(r"\n>"), unescape(r"a\qb")
    ('\n>', 'a\\qb')
    """
    return re.sub(r"\\([0rnt'\"\\])", lambda m: _ESCAPES[m.group(1)], text)


class Records:
    """Where records end: between ``recend`` and ``recstart`` (bytes, or regular
    expressions with ``regexp``). A *split* is the offset just after a ``recend`` that
    ``recstart`` follows: where one block ends and the next begins.

    >>> r = Records(b"\\n", b"")
    >>> r.last_split(b"a\\nb\\nc", 0, 5), r.first_split(b"a\\nb\\nc", 0, 5)
    (4, 2)
    >>> Records(b"", b">").last_split(b">a\\n>b\\n", 0, 6)
    3
    """

    def __init__(self, recend: bytes, recstart: bytes, *, regexp: bool = False) -> None:
        self.recend = recend
        self.recstart = recstart
        self._joined = recend + recstart
        self._regex: re.Pattern[bytes] | None = None
        self._last: re.Pattern[bytes] | None = None
        if regexp:
            # GNU: --regexp --recend '' means "any character", so that a record ends
            # anywhere before a --recstart.
            end = b"(?:" + (recend or rb"(?s:.)") + b")"
            ahead = b"(?=" + recstart + b")" if recstart else b""
            self._regex = re.compile(end + ahead)
            self._last = re.compile(rb"(?s:.*)" + end + ahead)

    @property
    def anywhere(self) -> bool:
        """Whether a record may end anywhere (``--recend ''`` and no ``--recstart``)."""
        return self._regex is None and not self._joined

    def last_split(self, buf: bytes | bytearray, start: int, end: int) -> int:
        """The last split in ``buf[start:end]`` after offset 0 (a split at 0 would make
        an empty block); -1 if there is none."""
        if self._last is not None:
            m = self._last.match(buf, start, end)
            return m.end() if m is not None and m.end() > 0 else -1
        if not self._joined:
            return end if end > 0 else -1
        i = buf.rfind(self._joined, start, end)
        if i < 0 or i + len(self.recend) == 0:
            return -1
        return i + len(self.recend)

    def first_split(self, buf: bytes | bytearray, start: int, end: int) -> int:
        """The first split whose separator starts at or after ``start``; -1 if none."""
        return self._find(buf, start, end)[1]

    def _find(self, buf: bytes | bytearray, start: int, end: int) -> tuple[int, int]:
        """(where the first separator at or after ``start`` begins, the split after it),
        or (-1, -1)."""
        if self._regex is not None:
            m = self._regex.search(buf, start, end)
            return (-1, -1) if m is None else (m.start(), m.end())
        if not self._joined:
            return (start, start) if start < end else (-1, -1)
        i = buf.find(self._joined, start, end)
        return (-1, -1) if i < 0 else (i, i + len(self.recend))

    def nth_split(self, buf: bytes | bytearray, end: int, n: int) -> int:
        """The split after the ``n``-th record of ``buf[:end]`` (``-N``); -1 if it does
        not hold ``n`` whole records. As GNU parallel counts: separators may overlap, and
        one at offset 0 does not count (an empty first line joins the next record).

        >>> Records(b"\\n", b"").nth_split(b"a\\nb\\nc\\n", 6, 2)
        4
        """
        if self.anywhere:
            return n if n <= end else -1
        start, split = 1, 0
        for _ in range(n):
            begin, split = self._find(buf, start, end)
            if begin < 0:
                return -1
            start = begin + 1
        return split


# ---------------------------------------------------------------------------------------
# What a job's stdin is fed from


class StdinWriter(Protocol):
    """Feeds one attempt of a job: :meth:`write` is called when its pipe is writable."""

    def write(self, fd: int) -> bool:
        """Write more into the non-blocking pipe ``fd``; True once everything is written.
        Raises ``BlockingIOError`` if the pipe is full, ``BrokenPipeError`` if the job
        closed its stdin."""


class StdinFeed(Protocol):
    """The data a job reads on its stdin (one block)."""

    @property
    def size(self) -> int:
        """Its length in bytes."""

    def writer(self) -> StdinWriter:
        """A writer from the start (one per attempt, so a retry feeds it all again)."""


class MemoryBlock:
    """A ``--pipe`` block held in memory.

    >>> r, w = os.pipe()
    >>> MemoryBlock(memoryview(b"a\\nb\\n")).writer().write(w)
    True
    >>> os.read(r, 10)
    b'a\\nb\\n'
    """

    def __init__(self, data: memoryview, header: bytes = b"") -> None:
        self.data = data
        self.header = header  # --header: written before the block

    @property
    def size(self) -> int:
        """Its length in bytes (with the header)."""
        return len(self.header) + len(self.data)

    def writer(self) -> _MemoryWriter:
        """A writer from the start of the block."""
        return _MemoryWriter([memoryview(self.header), self.data])


class _MemoryWriter:
    def __init__(self, parts: list[memoryview]) -> None:
        self._parts = [p for p in parts if len(p)]
        self._pos = 0  # in the first part

    def write(self, fd: int) -> bool:
        while self._parts:
            data = self._parts[0]
            while self._pos < len(data):
                self._pos += os.write(fd, data[self._pos : self._pos + _WRITE])
            self._parts.pop(0)
            self._pos = 0
        return True


class FileRange:
    """A ``--pipe-part`` block: ``length`` bytes of the open file ``fd`` from ``offset``.

    >>> import tempfile
    >>> with tempfile.TemporaryFile() as f:
    ...     _ = f.write(b"0123456789"); f.flush()
    ...     r, w = os.pipe()
    ...     FileRange(f.fileno(), 2, 5).writer().write(w)
    ...     os.read(r, 10)
    True
    b'23456'
    """

    def __init__(self, fd: int, offset: int, length: int, header: bytes = b"") -> None:
        self.fd = fd
        self.offset = offset
        self.length = length
        self.header = header  # --header: written before the range

    @property
    def size(self) -> int:
        """Its length in bytes (with the header)."""
        return len(self.header) + self.length

    def writer(self) -> _RangeWriter:
        """A writer from the start of the range."""
        return _RangeWriter(self.fd, self.offset, self.length, self.header)


_sendfile_works = hasattr(os, "sendfile")


class _RangeWriter:
    def __init__(self, fd: int, offset: int, length: int, header: bytes) -> None:
        self._fd = fd
        self._pos = offset
        self._end = offset + length
        self._header = _MemoryWriter([memoryview(header)])

    def write(self, fd: int) -> bool:
        global _sendfile_works
        self._header.write(fd)
        while self._pos < self._end:
            count = min(_WRITE, self._end - self._pos)
            if _sendfile_works:
                try:
                    sent = os.sendfile(fd, self._fd, self._pos, count)
                except OSError as e:
                    if isinstance(e, (BlockingIOError, BrokenPipeError)):
                        raise
                    _sendfile_works = False  # e.g. EINVAL: not to a pipe on this system
                    continue
            else:
                data = os.pread(self._fd, count, self._pos)
                sent = os.write(fd, data) if data else 0
                # a short write: the rest is read again next time (a pipe takes whole
                # writes up to its size, so this is rare)
            if sent == 0:  # the file shrank under us: end this block here
                return True
            self._pos += sent
        return True


class BlockArgs(tuple):  # type: ignore[type-arg,unused-ignore]
    """A ``--pipe`` job's arguments: none (the command has no ``{}``), carrying the
    block that is its stdin, so the block travels with the job through the queue."""

    feed: StdinFeed

    def __new__(cls, feed: StdinFeed) -> BlockArgs:
        self = super().__new__(cls, ())
        self.feed = feed
        return self


def stdin_of(args: Sequence[str]) -> StdinFeed | None:
    """What a job's stdin is fed from: its block with ``--pipe``, else None (/dev/null).

    >>> stdin_of(("a",)) is None, stdin_of(BlockArgs(MemoryBlock(memoryview(b"x")))).size
    (True, 1)
    """
    return args.feed if isinstance(args, BlockArgs) else None


# ---------------------------------------------------------------------------------------
# Cutting the input into blocks


def read_blocks(
    readinto: Callable[[memoryview], int], block: int, records: Records, count: int | None = None
) -> Iterator[memoryview]:
    """Read with ``readinto`` (returns 0 at the end) and yield blocks of whole records,
    each at most ``block`` bytes unless one record is longer: GNU parallel's --pipe, a
    block ends after the last record in the first ``block`` bytes, the rest begins the
    next. With ``count`` (``-N``), each block is ``count`` records instead (the last may
    have fewer), however long.

    >>> import io
    >>> src = io.BytesIO(b"aa\\nbb\\ncccccc\\ndd\\nee\\n")
    >>> [bytes(b) for b in read_blocks(src.readinto, 6, Records(b"\\n", b""))]
    [b'aa\\nbb\\n', b'cccccc\\n', b'dd\\nee\\n']
    """
    carry = b""  # what was read after the last block
    eof = False
    while not eof or carry:
        size = max(block, len(carry))
        buf = bytearray(size)  # a new buffer per block: the last one goes to a job
        buf[: len(carry)] = carry
        filled = len(carry)
        filled, eof = _fill(readinto, buf, filled, eof)
        if count is not None:
            split = records.nth_split(buf, filled, count)
        elif eof and filled <= block:
            split = filled
        else:  # the last record end in the first ``block`` bytes
            split = records.last_split(buf, 0, min(filled, block))
        while split < 0:  # a record longer than the block: it is the block
            if count is not None:
                split = records.nth_split(buf, filled, count)
            else:
                split = records.first_split(buf, 0, filled) or records.first_split(buf, 1, filled)
            if split < 0 and eof:
                split = filled
            elif split < 0:
                buf.extend(bytes(len(buf)))  # read on, in a buffer twice as large
                filled, eof = _fill(readinto, buf, filled, eof)
        carry = bytes(memoryview(buf)[split:filled])
        if split:
            yield memoryview(buf)[:split]


def _fill(
    readinto: Callable[[memoryview], int], buf: bytearray, filled: int, eof: bool
) -> tuple[int, bool]:
    """Read into ``buf`` from offset ``filled`` until it is full or the input ends."""
    while filled < len(buf) and not eof:
        n = readinto(memoryview(buf)[filled:])
        if n:
            filled += n
        else:
            eof = True
    return filled, eof


def split_file(
    fd: int, size: int, block: int, records: Records, start: int = 0
) -> list[tuple[int, int]]:
    """``--pipe-part``: cut the file open at ``fd`` (``size`` bytes) into adjacent
    ``(offset, length)`` ranges of whole records. As GNU parallel does, each range is at
    least ``block`` bytes: it ends at the first record end whose separator starts
    ``block`` bytes or more after the range's start (the last range may be shorter).
    The first range begins at ``start`` (after a ``--header``).

    >>> import tempfile
    >>> with tempfile.TemporaryFile() as f:
    ...     _ = f.write(b"aa\\nbb\\ncccccc\\nd"); f.flush()
    ...     split_file(f.fileno(), 14, 4, Records(b"\\n", b""))
    [(0, 6), (6, 7), (13, 1)]
    """
    positions = [start]
    while (target := positions[-1] + block) < size:
        split = target if records.anywhere else _split_after(fd, target, size, records)
        if split < 0:
            break
        positions.append(split)
    if positions[-1] != size:
        positions.append(size)
    return [(a, b - a) for a, b in itertools.pairwise(positions)]


def _split_after(fd: int, target: int, size: int, records: Records) -> int:
    """The first split whose separator starts at or after offset ``target``; -1 if
    there is none."""
    probe = _PROBE
    while True:
        data = os.pread(fd, probe, target)
        at_end = target + len(data) >= size
        # the separator (a regular expression may match more) must end before the
        # data read does, unless that is the end of the file
        split = records.first_split(data, 0, len(data))
        if split >= 0 and (split < len(data) or at_end):
            return target + split
        if at_end:
            return -1
        probe *= 2


@dataclass(frozen=True)
class PipeSpec:
    """``--pipe`` / ``--pipe-part`` as given on the command line (validated)."""

    part: bool  # --pipe-part
    block: int  # bytes; negative with --pipe-part: blocks per job slot
    recend: str
    recstart: str
    regexp: bool
    count: int | None = None  # -N: records per block (--pipe)
    header: bool = False  # --header :: the first line goes before every block

    def records(self) -> Records:
        """The record boundaries, as bytes (escapes resolved unless ``--regexp``)."""
        if self.regexp:
            return Records(os.fsencode(self.recend), os.fsencode(self.recstart), regexp=True)
        return Records(os.fsencode(unescape(self.recend)), os.fsencode(unescape(self.recstart)))


def add_pipe_options(parser: argparse.ArgumentParser) -> None:
    """The ``--pipe`` family's options and their help, in a group of their own."""
    piped = parser.add_argument_group(
        "blocks of data on stdin (--pipe)",
        "Instead of arguments, each job gets a block of data on its stdin; COMMAND may\n"
        "use {#} and {%} but no {}. A block ends at a record end (default: a newline),\n"
        "so no record is ever split; a record longer than --block makes its block\n"
        "longer. -N N (or -n N) gives each job N records instead, whatever their size;\n"
        "--header : puts the first line (e.g. CSV column names) before every block.\n"
        "  cat access.log | conveyor run --pipe grep -c ' 404 '   # 1M blocks of lines\n"
        "  conveyor run --pipe-part -a big.csv --block 10M 'wc -l' # no copy of big.csv\n"
        "  conveyor run -k --pipe --recstart '>' ./align < seqs.fasta   # FASTA records\n"
        "  conveyor run --pipe -N 1000 --header : ./load.py < rows.csv # 1000 a job\n"
        "Output, -k, --joblog, --timeout, --halt and --retries (the block is fed again)\n"
        "work as for other jobs; at most -j + 2 blocks are held in memory.\n"
        "Differences from GNU parallel: a record longer than --block enlarges only its\n"
        "own block (GNU enlarges all later ones and warns); -L (lines per job), --rrs,\n"
        "--header REGEX or N, --cat/--fifo and --round-robin are not supported;\n"
        "--regexp uses Python's regular expressions (GNU: Perl's).",
    )
    piped.add_argument(
        "--pipe",
        "--spreadstdin",
        action="store_true",
        help="split stdin into blocks and give each job one block on its stdin "
        "(e.g. conveyor run --pipe wc -l < data.txt)",
    )
    piped.add_argument(
        "--pipe-part",
        action="store_true",
        help="like --pipe for the seekable file -a FILE, much faster: each job's block is "
        "sent from the file by the kernel, nothing is read through conveyor "
        "(e.g. conveyor run --pipe-part -a data.txt wc -l)",
    )
    piped.add_argument(
        "--block",
        "--block-size",
        metavar="SIZE",
        help="block size in bytes, with K M G (x1024) or k m g (x1000); default 1M. "
        "With --pipe-part, -N means N parts per job slot (default -10) "
        "(e.g. --block 10M, --block -1)",
    )
    piped.add_argument(
        "--recend",
        metavar="STR",
        help="a record ends with STR (default: '\\n'; '' for none); \\n \\t \\0 are "
        "understood (e.g. --recend '\\n\\n' for paragraphs)",
    )
    piped.add_argument(
        "--recstart",
        metavar="STR",
        help="a record starts with STR; with --recend, blocks end only between --recend "
        "and --recstart (e.g. --recstart '>' for FASTA)",
    )
    piped.add_argument(
        "--regexp",
        action="store_true",
        help="--recend and --recstart are Python regular expressions "
        "(e.g. --regexp --recstart '[0-9]{4}-' for dated log entries)",
    )


def pipe_options(
    ns: argparse.Namespace, groups: Sequence[Group], command: Sequence[str]
) -> PipeSpec | None:
    """:func:`pipe_spec` from parsed options (the ``:::``/``::::`` ``groups`` apart).
    With ``--pipe``, ``-N``/``-n`` counts records per job, so ``ns.max_args`` is taken
    (set to None) here."""
    spec = pipe_spec(
        pipe=ns.pipe,
        pipe_part=ns.pipe_part,
        block=ns.block,
        recend=ns.recend,
        recstart=ns.recstart,
        regexp=ns.regexp,
        files=[*ns.arg_file, *(g.path for g in groups if g.kind == "file")],
        arg_groups=sum(g.kind == "args" for g in groups),
        max_args=ns.max_args,
        has_command=bool(command),
        unsupported=_unsupported_with_pipe(ns),
    )
    if spec is not None and ns.header is not None:
        spec = dataclasses.replace(spec, header=True)
    if spec is not None:
        ns.max_args = None
        ns.header = None  # the header of the data, not of arguments
    return spec


def _unsupported_with_pipe(ns: argparse.Namespace) -> list[str]:
    """Options that make no sense with --pipe (they shape arguments, or need to know the
    number of jobs before stdin is read)."""
    given = [
        ("--colsep", ns.colsep is not None),
        ("--csv", ns.csv),
        ("--link", ns.link),
        ("-0/--null", ns.null),
        # --cluster runs jobs on Dask workers, which get no stdin
        ("--cluster", ns.cluster is not None),
        ("-X/-m", getattr(ns, "multi", None) is not None),
    ]
    if not ns.pipe_part:  # --pipe-part knows its blocks in advance
        given += [("--shuf", ns.shuf), ("--eta", ns.eta), ("--halt N%", "%" in ns.halt)]
    return [flag for flag, on in given if on]


def pipe_spec(
    *,
    pipe: bool,
    pipe_part: bool,
    block: str | None,
    recend: str | None,
    recstart: str | None,
    regexp: bool,
    files: Sequence[str],
    arg_groups: int,
    max_args: int | None,
    has_command: bool = True,
    unsupported: Sequence[str] = (),
) -> PipeSpec | None:
    """Validate the ``--pipe`` family of options; ``ValueError`` names what is wrong.

    ``files`` are the ``-a``/``::::`` files, ``arg_groups`` the number of ``:::`` groups.

    >>> pipe_spec(pipe=True, pipe_part=False, block="10k", recend=None, recstart=None,
    ...           regexp=False, files=[], arg_groups=0, max_args=None).block
    10000
    >>> pipe_spec(pipe=False, pipe_part=False, block=None, recend="x", recstart=None,
    ...           regexp=False, files=[], arg_groups=0, max_args=None)
    Traceback (most recent call last):
    ...
    ValueError: --recend needs --pipe or --pipe-part: records are cut only in piped input
    """
    if not (pipe or pipe_part):
        for flag, given in (
            ("--block", block is not None),
            ("--recend", recend is not None),
            ("--recstart", recstart is not None),
            ("--regexp", regexp),
        ):
            if given:
                raise ValueError(
                    f"{flag} needs --pipe or --pipe-part: records are cut only in piped input"
                )
        return None
    which = "--pipe-part" if pipe_part else "--pipe"
    if arg_groups:
        raise ValueError(
            f"{which} with ::: inputs: with {which} a job's input is a block of "
            + ("the -a FILE" if pipe_part else "stdin")
            + ", so there are no arguments to give it"
        )
    if pipe_part:
        if not files:
            raise ValueError(
                "--pipe-part needs -a FILE (or :::: FILE): it reads parts of a seekable "
                "file; use --pipe for stdin"
            )
        if "-" in files:
            raise ValueError("--pipe-part -a -: stdin is not seekable; use --pipe for stdin")
    elif files:
        raise ValueError(
            "--pipe with -a/:::: FILE: --pipe splits stdin (use --pipe-part -a FILE to "
            "split a file, or < FILE)"
        )
    if not has_command:
        raise ValueError(f"{which} needs a COMMAND to give the blocks to (e.g. cat)")
    for flag in unsupported:
        raise ValueError(
            f"{which} and {flag}: "
            + (
                "the number of blocks is not known before stdin is read (--pipe-part "
                "-a FILE knows it)"
                if flag in ("--shuf", "--eta", "--halt N%")
                else "a job on a cluster worker has no stdin to feed"
                if flag == "--cluster"
                else f"{flag} shapes arguments, and {which} jobs have none"
            )
        )
    if max_args is not None and (pipe_part or max_args < 1):
        raise ValueError(
            "--pipe-part with -n/-N: parts are cut by size (--block); use --pipe -N"
            if pipe_part
            else f"--pipe with -N {max_args}: a job needs at least one record"
        )
    # GNU's defaults: 1M blocks; --pipe-part: 10 parts per job slot
    default = -10 if pipe_part else DEFAULT_BLOCK
    size = default if block is None else parse_size(block)
    if size < 0 and not pipe_part:
        raise ValueError(
            f"bad --block {block}: a negative size (blocks per job slot) needs --pipe-part"
        )
    recend_text = "\n" if recend is None and recstart is None else (recend or "")
    recstart_text = recstart or ""
    if regexp:
        for flag, pattern in (("--recend", recend_text), ("--recstart", recstart_text)):
            try:
                compiled = re.compile(os.fsencode(pattern))
            except re.error as e:
                raise ValueError(f"bad {flag} regular expression {pattern!r}: {e}") from None
            if flag == "--recend" and pattern and compiled.search(b""):
                raise ValueError(f"bad --recend {pattern!r}: it matches the empty string")
    return PipeSpec(pipe_part, size, recend_text, recstart_text, regexp, max_args)


class _Field(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def op(self) -> str: ...


def glue_negative_block(args: Sequence[str]) -> list[str]:
    """Write ``--block -N`` as ``--block=-N``, which argparse cannot take for an option.

    >>> glue_negative_block(["--pipe-part", "--block", "-2", "wc"])
    ['--pipe-part', '--block=-2', 'wc']
    """
    out: list[str] = []
    for arg in args:
        if out and out[-1] in ("--block", "--block-size") and _SIZE.match(arg):
            out[-1] += "=" + arg
        else:
            out.append(arg)
    return out


def check_command(fields: Sequence[_Field]) -> None:
    """A ``--pipe`` command may use ``{#}`` and ``{%}`` but no input (``{}``, ``{1}``...).

    >>> from conveyor.cli.templates import compile_template
    >>> check_command(compile_template(["cat", ">", "out.{#}"], groups=1).fields)
    >>> check_command(compile_template(["echo", "{1}"], groups=1).fields)
    Traceback (most recent call last):
    ...
    conveyor.cli.pipe.PipeError: --pipe and {1} in COMMAND: a job's input is its stdin, ...
    """
    for field in fields:
        if field.op not in ("#", "%"):
            raise PipeError(
                f"--pipe and {field.text} in COMMAND: a job's input is its stdin, not an "
                "argument ({#} and {%} may be used)"
            )


def pipe_inputs(
    spec: PipeSpec, fields: Sequence[_Field], paths: Sequence[str], slots: int
) -> Inputs:
    """The jobs of ``--pipe`` (lazily, as stdin arrives) or ``--pipe-part`` (all parts
    of ``paths``, found now), for a command with these replacement ``fields``."""
    check_command(fields)
    if not spec.part:
        return Inputs(stdin_blocks(spec), 0, None)
    try:
        parts = file_parts(spec, paths, slots)
    except OSError as e:
        raise PipeError(
            f"--pipe-part: cannot read {e.filename or paths[0]!r}: {e.strerror}"
        ) from None
    return Inputs(parts, 0, len(parts))


def stdin_blocks(spec: PipeSpec) -> Iterator[tuple[str, ...]]:
    """``--pipe``: the jobs' arguments, one :class:`BlockArgs` per block of stdin."""
    raw = io.FileIO(0, closefd=False)

    def readinto(view: memoryview) -> int:
        # os-level reads (no buffer lock held while blocked: the input thread may be
        # abandoned at exit, see run._ReadAhead)
        try:
            return raw.readinto(view) or 0
        except OSError:  # stdin closed or not readable: no input
            return 0

    header = b""
    source: Callable[[memoryview], int] = readinto
    if spec.header:
        header, rest = _first_line(readinto)
        source = _pushed_back(rest, readinto)
    for data in read_blocks(source, spec.block, spec.records(), spec.count):
        yield BlockArgs(MemoryBlock(data, header))


def _first_line(readinto: Callable[[memoryview], int]) -> tuple[bytes, bytes]:
    """``--header :``: read the first line; returns it and what was read after it.

    >>> import io
    >>> _first_line(io.BytesIO(b"a,b\\n1,2\\n").readinto)
    (b'a,b\\n', b'1,2\\n')
    """
    read = bytearray()
    buf = bytearray(65536)
    while b"\n" not in read:
        n = readinto(memoryview(buf))
        if not n:
            break
        read += buf[:n]
    line, newline, rest = bytes(read).partition(b"\n")
    return line + newline, rest


def _file_first_line(fd: int) -> bytes:
    """The first line of the open file ``fd`` (read with pread: the offset stays)."""
    probe = _PROBE
    while True:
        data = os.pread(fd, probe, 0)
        end = data.find(b"\n")
        if end >= 0:
            return data[: end + 1]
        if len(data) < probe:
            return data
        probe *= 2


def _pushed_back(data: bytes, readinto: Callable[[memoryview], int]) -> Callable[[memoryview], int]:
    """A ``readinto`` that gives ``data`` first, then reads on with ``readinto``."""
    pending = memoryview(data)

    def read(view: memoryview) -> int:
        nonlocal pending
        if not len(pending):
            return readinto(view)
        n = min(len(view), len(pending))
        view[:n] = pending[:n]
        pending = pending[n:]
        return n

    return read


def file_parts(spec: PipeSpec, paths: Sequence[str], slots: int) -> list[tuple[str, ...]]:
    """``--pipe-part``: one :class:`BlockArgs` per part of each file (the files are
    opened now and stay open until the process ends; ``OSError`` if one cannot be)."""
    records = spec.records()
    parts: list[tuple[str, ...]] = []
    opened: list[tuple[int, int]] = []
    for path in paths:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            os.close(fd)
            raise PipeError(
                f"--pipe-part: {path!r} is not a seekable file (a pipe, a FIFO or a "
                f"directory): use --pipe < {path}"
            )
        size = os.lseek(fd, 0, os.SEEK_END)
        opened.append((fd, size))
    block = spec.block
    if block < 0:  # GNU: -N means N blocks per job slot in all
        total = sum(size for _, size in opened)
        block = 1 + total // slots // -block
    for fd, size in opened:
        header = b""
        if spec.header:  # the first line, before every part
            header = _file_first_line(fd)
        for offset, length in split_file(fd, size, block, records, len(header)):
            parts.append(BlockArgs(FileRange(fd, offset, length, header)))
    return parts
