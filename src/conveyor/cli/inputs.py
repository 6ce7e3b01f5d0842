"""Where ``conveyor run`` gets its inputs: ``:::`` groups, ``::::`` files, stdin.

Each input *group* is a list of values; a job takes one value from every group, and the
jobs are the cartesian product of the groups, in order (the last group varies fastest).
Without any group the lines of stdin are one group, read lazily so that jobs start while
input is still arriving. Records are separated by newlines, or by NUL with ``-0``; a
trailing separator does not make an extra empty record, but empty lines are inputs.
Bytes that are not valid in the filesystem encoding survive unchanged (surrogateescape).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from conveyor.cli.errors import CliError

__all__ = ["Group", "InputError", "Inputs", "open_inputs", "read_records", "split_argv"]

ARGS_SEP = ":::"
FILES_SEP = "::::"


class InputError(CliError):
    """An input source that cannot be read, or a malformed input specification."""


@dataclass
class Group:
    """One input group: literal values (``:::``) or a file to read (``::::``)."""

    kind: str  # "args" or "file"
    values: list[str] = field(default_factory=list)
    path: str = ""


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[Group]]:
    """Split ``[options] COMMAND ::: a b :::: f`` into the head and the input groups.

    ``::: a b c`` is one group of values; ``:::: f g`` makes one group per file (``-``
    is stdin). Everything before the first ``:::``/``::::`` is options and COMMAND.
    """
    head: list[str] = []
    groups: list[Group] = []
    mode = ""
    for token in argv:
        if token == ARGS_SEP:
            mode = "args"
            groups.append(Group("args"))
        elif token == FILES_SEP:
            mode = "file"
        elif mode == "args":
            groups[-1].values.append(token)
        elif mode == "file":
            groups.append(Group("file", path=token))
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


@dataclass
class Inputs:
    """The jobs' argument tuples, lazily, plus their number when known in advance."""

    jobs: Iterable[tuple[str, ...]]
    groups: int
    total: int | None


def _read_stdin(size: int) -> bytes:
    # os.read on fd 0, not sys.stdin: no buffer lock is held while blocked in a read,
    # so the reading thread can be abandoned at exit (see run._ReadAhead).
    try:
        return os.read(0, size)
    except OSError:  # stdin closed or not readable: no input
        return b""


def open_inputs(groups: Sequence[Group], *, null: bool, materialize: bool = False) -> Inputs:
    """Read every file group now (so an unreadable file fails before any job starts)
    and return the jobs. stdin alone is read lazily unless ``materialize``."""
    separator = b"\0" if null else b"\n"
    if not groups:
        lazy = ((value,) for value in read_records(_read_stdin, separator))
        if materialize:
            values = list(lazy)
            return Inputs(values, 1, len(values))
        return Inputs(lazy, 1, None)
    columns: list[list[str]] = []
    for group in groups:
        if group.kind == "args":
            columns.append(group.values)
            continue
        try:
            if group.path == "-":
                columns.append(list(read_records(_read_stdin, separator)))
            else:
                with open(group.path, "rb") as f:
                    columns.append(list(read_records(f.read1, separator)))
        except OSError as e:
            raise InputError(f"cannot read input file {group.path!r}: {e.strerror}") from None
    total = 1
    for column in columns:
        total *= len(column)
    return Inputs(itertools.product(*columns), len(columns), total)
