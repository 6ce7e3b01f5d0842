"""Where ``conveyor run`` gets its inputs: ``:::`` groups, ``::::`` files, stdin.

Each input *group* is a list of values; a job takes one value from every group, and the
jobs are the cartesian product of the groups, in order (the last group varies fastest).
A group given with ``:::+`` or ``::::+`` is *linked* to the one before it: linked groups
advance together (the i-th job of the link takes the i-th value of each, as many jobs as
the shortest has), and the product is taken over the links. ``--link`` links all groups
and wraps the shorter ones around to the longest (GNU parallel's rules for both).
Without any group the lines of stdin are one group, read lazily so that jobs start while
input is still arriving. Records are separated by newlines, or by NUL with ``-0``; a
trailing separator does not make an extra empty record, but empty lines are inputs.
Bytes that are not valid in the filesystem encoding survive unchanged (surrogateescape).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from conveyor.cli.errors import CliError

__all__ = [
    "Group",
    "InputError",
    "Inputs",
    "batched",
    "column_splitter",
    "csv_splitter",
    "open_inputs",
    "read_records",
    "split_argv",
]

ARGS_SEP = ":::"
FILES_SEP = "::::"
LINKED_ARGS_SEP = ":::+"
LINKED_FILES_SEP = "::::+"


class InputError(CliError):
    """An input source that cannot be read, or a malformed input specification."""


@dataclass
class Group:
    """One input group: literal values (``:::``) or a file to read (``::::``)."""

    kind: str  # "args" or "file"
    values: list[str] = field(default_factory=list)
    path: str = ""
    linked: bool = False  # advances together with the group before it (:::+, ::::+)


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[Group]]:
    """Split ``[options] COMMAND ::: a b :::: f`` into the head and the input groups.

    ``::: a b c`` is one group of values; ``:::: f g`` makes one group per file (``-``
    is stdin); ``:::+`` and ``::::+`` make groups linked to the one before. Everything
    before the first separator is options and COMMAND.

    >>> split_argv(["echo", ":::", "a", "b", ":::+", "1", "2"])[1][1]
    Group(kind='args', values=['1', '2'], path='', linked=True)
    """
    head: list[str] = []
    groups: list[Group] = []
    mode = ""
    linked = False
    for token in argv:
        if token in (ARGS_SEP, LINKED_ARGS_SEP):
            mode = "args"
            groups.append(Group("args", linked=token == LINKED_ARGS_SEP and bool(groups)))
        elif token in (FILES_SEP, LINKED_FILES_SEP):
            mode = "file"
            linked = token == LINKED_FILES_SEP
        elif mode == "args":
            groups[-1].values.append(token)
        elif mode == "file":
            groups.append(Group("file", path=token, linked=linked and bool(groups)))
        else:
            head.append(token)
    return head, groups


def read_records(read: Callable[[int], bytes], separator: bytes) -> Iterator[str]:
    """Yield the records read by ``read(n)`` (returning b"" at the end) as soon as each
    one is complete."""
    pending = b""
    while True:
        chunk = read(65536)
        if not chunk:
            break
        pending += chunk
        if separator in chunk:
            *records, pending = pending.split(separator)
            for record in records:
                yield os.fsdecode(record)
    if pending:
        yield os.fsdecode(pending)


def column_splitter(pattern: str) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """``--colsep``: split each of a job's values into columns at the Python regular
    expression ``pattern`` (one character is taken literally, so ``|`` and ``.`` mean
    themselves); every column is kept, empty ones too.

    >>> column_splitter(",")(("a,b,", "c"))
    ('a', 'b', '', 'c')
    """
    try:
        regex = re.compile(re.escape(pattern) if len(pattern) == 1 else pattern)
    except re.error as e:
        raise InputError(f"bad --colsep regular expression {pattern!r}: {e}") from None
    if regex.search(""):
        raise InputError(f"bad --colsep {pattern!r}: it matches the empty string")

    def split(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(itertools.chain.from_iterable(regex.split(v) for v in values))

    return split


def batched(jobs: Iterable[tuple[str, ...]], size: int) -> Iterator[tuple[str, ...]]:
    """``-n``/``-N``: ``size`` consecutive inputs make one job, whose arguments are
    theirs in order (the last job may have fewer); with 0, each input makes a job with
    no argument.

    >>> list(batched([("a",), ("b",), ("c",)], 2))
    [('a', 'b'), ('c',)]
    """
    if size == 0:
        return (() for _ in jobs)
    it = iter(jobs)
    return (
        tuple(itertools.chain.from_iterable(batch))
        for batch in iter(lambda: list(itertools.islice(it, size)), [])
    )


def _csv_records(lines: Iterable[str]) -> Iterator[str]:
    """Join lines into CSV records: a newline inside a quoted field (an odd number of
    quotes so far) continues the record. Escaped quotes ("") come in pairs, so the
    parity rule holds for any well-formed CSV."""
    pending: list[str] = []
    quotes = 0
    for line in lines:
        pending.append(line)
        quotes += line.count('"')
        if quotes % 2 == 0:
            yield "\n".join(pending)
            pending, quotes = [], 0
    if pending:
        yield "\n".join(pending)


def csv_splitter() -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """``--csv``: split each of a job's values into the fields of one CSV record.

    >>> csv_splitter()(('a,"b,c"', 'x'))
    ('a', 'b,c', 'x')
    """
    import csv

    def split(values: tuple[str, ...]) -> tuple[str, ...]:
        fields: list[str] = []
        for value in values:
            rows = list(csv.reader([value], strict=False)) if value else [[""]]
            fields.extend(rows[0] if rows else [""])
        return tuple(fields)

    return split


@dataclass
class Inputs:
    """The jobs' argument tuples, lazily, plus their number when known in advance."""

    jobs: Iterable[tuple[str, ...]]
    groups: int
    total: int | None
    header: tuple[str, ...] = ()  # --header: each group's first value


def _read_stdin(size: int) -> bytes:
    # os.read on fd 0, not sys.stdin: no buffer lock is held while blocked in a read,
    # so the reading thread can be abandoned at exit (see run._ReadAhead).
    try:
        return os.read(0, size)
    except OSError:  # stdin closed or not readable: no input
        return b""


def _linked(columns: Sequence[list[str]], *, wrap: bool) -> list[tuple[str, ...]]:
    """Linked groups' values taken together: as many as the shortest, or with ``wrap``
    as many as the longest, the shorter ones starting over (an empty one gives none)."""
    if not all(columns):
        return []
    if not wrap:
        return list(zip(*columns))
    longest = max(len(c) for c in columns)
    return [tuple(c[i % len(c)] for c in columns) for i in range(longest)]


def open_inputs(
    groups: Sequence[Group],
    *,
    null: bool,
    materialize: bool = False,
    link: bool = False,
    csv: bool = False,
    header: bool = False,
) -> Inputs:
    """Read every file group now (so an unreadable file fails before any job starts)
    and return the jobs. stdin alone is read lazily unless ``materialize``. ``link``
    links every group (``--link``); ``csv`` reads CSV records (a quoted field may hold
    newlines); ``header`` takes each group's first value apart as its header."""
    separator = b"\0" if null else b"\n"

    def records(read: Callable[[int], bytes]) -> Iterator[str]:
        lines = read_records(read, separator)
        return _csv_records(lines) if csv else lines

    if not groups:
        lazy = records(_read_stdin)
        first: tuple[str, ...] = ()
        if header:
            top = next(lazy, None)
            first = () if top is None else (top,)
        stdin_jobs: Iterator[tuple[str, ...]] = ((value,) for value in lazy)
        if materialize:
            values = list(stdin_jobs)
            return Inputs(values, 1, len(values), first)
        return Inputs(stdin_jobs, 1, None, first)
    columns: list[list[str]] = []
    for group in groups:
        if group.kind == "args":
            columns.append(list(group.values))
            continue
        try:
            if group.path == "-":
                columns.append(list(records(_read_stdin)))
            else:
                with open(group.path, "rb") as f:
                    columns.append(list(records(f.read1)))
        except OSError as e:
            raise InputError(f"cannot read input file {group.path!r}: {e.strerror}") from None
    names: tuple[str, ...] = ()
    if header:
        names = tuple(column.pop(0) if column else "" for column in columns)
    # Links: runs of groups joined by :::+ (all of them with --link), each a list of
    # tuples; the jobs are the product of the links, each job their concatenation.
    links: list[list[list[str]]] = []
    for group, column in zip(groups, columns):
        if links and (link or group.linked):
            links[-1].append(column)
        else:
            links.append([column])
    blocks = [_linked(block, wrap=link) for block in links]
    total = 1
    for block in blocks:
        total *= len(block)
    jobs = (tuple(itertools.chain.from_iterable(p)) for p in itertools.product(*blocks))
    return Inputs(jobs, len(columns), total, names)
