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
  ``-.csv`` (etc.) writes the table to stdout.

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

    def __init__(self, name: str, names: Sequence[str] = ()) -> None:
        self.name = name
        self.names = list(names)  # --header's group names
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
        self, seq: int, args: Sequence[str], command: str, result: Completed, status: int
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
        return self._row(seq, args, command, result, out, err)

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
                if not self._columns:
                    self._columns = len(args)
                    header = [*_HEADER, "Command"]
                    header += [f"V{i}" for i in range(1, len(args) + 1)]
                    text = table_row([*header, "Stdout", "Stderr"], sep) + "\n"
                text += table_row([*fields, *args, stdout, stderr], sep) + "\n"
            if self._table is not None:
                self._table.write(text)
                self._table.flush()
                return b""
        return os.fsencode(text)

    def close(self) -> None:
        """Close the table file, if any."""
        if self._table is not None:
            self._table.close()
