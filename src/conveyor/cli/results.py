r"""``conveyor run --results NAME``: save every job's output, in GNU parallel's layouts.

* ``NAME`` a directory (no replacement string, no .csv/.tsv/.json suffix): a tree
  ``NAME/<g>/<value>/<g>/<value>/.../`` per job -- ``<g>`` the input group's number (or
  its --header name), ``<value>`` the job's argument from that group -- holding
  ``stdout``, ``stderr``, ``seq`` (the job number) and ``exitcode`` (its status as the
  exit status reports it: 128+N for signal N). As in GNU parallel, ``/`` in a value is
  written ``\\_``; conveyor also writes the values ``""``, ``.`` and ``..`` as ``\\_empty``,
  ``\\_.`` and ``\\_..`` (GNU parallel writes them into the parent directories), and
  shortens a value longer than 200 bytes to its first 200 and a hash.
* ``NAME`` with a replacement string: rendered per job (values as they are); if the
  result ends in ``/`` it is that job's directory (stdout, stderr, seq, exitcode), else
  stdout goes to that file, stderr to ``.err``, the job number to ``.seq``.
* ``NAME.csv`` / ``.tsv`` / ``.json``: one table: a header row, then one row per job --
  Seq, Host (``:``), Starttime, JobRuntime, Send, Receive, Exitval, Signal, Command,
  V1..Vn, Stdout, Stderr (JSON: one object a line, the values as a list ``V``).
  ``-.csv`` (etc.) writes the table to stdout. Rows are in completion order, or in job
  order with ``-k`` (a row waits in memory until the rows before it are written).

As with GNU parallel, the jobs' output is saved instead of printed (only the table goes
to stdout with ``-.csv``).

>>> path_part("a/b"), path_part(""), path_part("..")
('a\\_b', '\\_empty', '\\_..')
>>> table_row([1, "a b", "x,y"], ",")
'1,"a b","x,y"'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from conveyor.cli.process import Completed

__all__ = ["Results", "path_part", "table_row"]

_HEADER = ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal"]
_FIELD = re.compile(r"\{(?:[#%]|-?[1-9][0-9]*)?(?:\.|//|/\.|/)?\}")


def path_part(value: str) -> str:
    """A value as one directory name (GNU parallel's ``/`` -> ``\\_``)."""
    if value in ("", ".", ".."):
        return "\\_" + (value or "empty")
    text = value.replace("/", "\\_")
    raw = os.fsencode(text)
    if len(raw) > 200:
        digest = hashlib.sha1(raw).hexdigest()[:16]
        text = os.fsdecode(raw[:200]) + "\\_" + digest
    return text


def table_row(fields: Sequence[object], sep: str) -> str:
    """One CSV/TSV row, quoted as GNU parallel does: a field with the separator, a
    quote or whitespace is put in double quotes (doubling its quotes)."""
    out = []
    for f in fields:
        text = str(f)
        if text and (sep in text or '"' in text or re.search(r"\s", text)):
            text = '"' + text.replace('"', '""') + '"'
        out.append(text)
    return sep.join(out)


def _status(result: Completed) -> tuple[int, int]:
    """(Exitval, Signal) as GNU parallel's joblog has them."""
    if result.returncode < 0:
        return -1 if result.timed_out else 0, -result.returncode
    return result.returncode, 0


class Results:
    """Where --results saves each job (called from the executor threads)."""

    def __init__(self, name: str, names: Sequence[str] = (), keep_order: bool = False) -> None:
        self.name = name
        self.names = list(names)  # --header's group names
        # -k: rows in job order (a table file holds back later rows; on stdout the
        # runner's output keeps the order, and the header goes with job 0's row).
        self.keep_order = keep_order
        self._header = ""  # the table's header row, once known (CSV/TSV)
        self._header_out = False
        self._next = 0  # -k, table file: the next order to write
        self._held: dict[int, str | None] = {}  # -k, table file: rows waiting their turn
        self._lock = threading.Lock()
        self._table: IO[str] | None = None
        self.to_stdout = False
        self.kind = "dir"
        self._columns = 0
        suffix = os.path.splitext(name)[1].lower()
        if _FIELD.search(name):
            self.kind = "template"
        elif suffix in (".csv", ".tsv", ".json"):
            self.kind = suffix[1:]
            self.to_stdout = os.path.basename(name).startswith("-.")
            if not self.to_stdout:
                Path(name).parent.mkdir(parents=True, exist_ok=True)
                self._table = open(name, "w", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        else:
            Path(name).mkdir(parents=True, exist_ok=True)

    def save(
        self,
        seq: int,
        args: Sequence[str],
        command: str,
        result: Completed,
        status: int,
        order: int = 0,
    ) -> bytes:
        """Save one finished job; returns what to print instead of its output (the
        table row with ``-.csv``, else nothing)."""
        out, err = result.stdout.getvalue(), result.stderr.getvalue()
        if self.kind == "dir":
            parts = [self.name]
            for i, value in enumerate(args):
                group = self.names[i] if i < len(self.names) else str(i + 1)
                parts += [path_part(group), path_part(value)]
            self._files(Path(*parts), seq, out, err, status)
            return b""
        if self.kind == "template":
            from conveyor.cli.templates import TagString

            target = TagString(self.name).render(args, seq, 1)
            if target.endswith("/"):
                self._files(Path(target), seq, out, err, status)
            else:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                Path(target).write_bytes(out)
                Path(target + ".err").write_bytes(err)
                Path(target + ".seq").write_text(str(seq))
            return b""
        return self._row(seq, args, command, result, out, err, order)

    def skip(self, order: int) -> None:
        """A job that was taken but saved nothing (killed, never ran): with -k, later
        rows of a table file must not wait for it."""
        if self._table is not None and self.keep_order:
            with self._lock:
                if order >= self._next and order not in self._held:
                    self._held[order] = None
                    self._flush()

    def _flush(self) -> None:
        """Write the held rows that are next in order (under the lock)."""
        assert self._table is not None
        while self._next in self._held:
            text = self._held.pop(self._next)
            self._next += 1
            if text is not None:
                self._write(text)

    def _write(self, text: str) -> None:
        assert self._table is not None
        if not self._header_out and self._header:
            self._header_out = True
            text = self._header + text
        self._table.write(text)
        self._table.flush()

    @staticmethod
    def _files(directory: Path, seq: int, out: bytes, err: bytes, status: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "stdout").write_bytes(out)
        (directory / "stderr").write_bytes(err)
        (directory / "seq").write_text(str(seq))
        (directory / "exitcode").write_text(str(status))

    def _row(
        self,
        seq: int,
        args: Sequence[str],
        command: str,
        result: Completed,
        out: bytes,
        err: bytes,
        order: int,
    ) -> bytes:
        exitval, signum = _status(result)
        stdout, stderr = os.fsdecode(out), os.fsdecode(err)
        fields: list[object] = [
            seq,
            ":",
            f"{result.start:.3f}",
            f"{result.duration:.3f}",
            0,
            result.received,
            exitval,
            signum,
            command,
        ]
        text = ""
        with self._lock:
            if self.kind == "json":
                record = dict(zip([*_HEADER, "Command"], fields))
                record.update(V=list(args), Stdout=stdout, Stderr=stderr)
                for key in ("Starttime", "JobRuntime"):
                    record[key] = float(str(record[key]))
                text = json.dumps(record, ensure_ascii=False) + "\n"
            else:
                sep = "," if self.kind == "csv" else "\t"
                if not self._header:
                    header = [*_HEADER, "Command"]
                    header += [f"V{i}" for i in range(1, len(args) + 1)]
                    self._header = table_row([*header, "Stdout", "Stderr"], sep) + "\n"
                text = table_row([*fields, *args, stdout, stderr], sep) + "\n"
            if self._table is not None:
                if self.keep_order:
                    self._held[order] = text
                    self._flush()
                else:
                    self._write(text)
                return b""
            if self._header and not self._header_out and (order == 0 or not self.keep_order):
                self._header_out = True
                text = self._header + text
        return os.fsencode(text)

    def close(self) -> None:
        """Close the table file, if any."""
        if self._table is not None:
            self._table.close()
