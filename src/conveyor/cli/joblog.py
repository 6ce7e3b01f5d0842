"""The ``--joblog`` of ``conveyor run``: one SQLite row per finished job.

Schema (table ``jobs``; ``start`` is Unix time, ``duration`` seconds from the start of
the first attempt to the end of the last)::

    id INTEGER PRIMARY KEY, seq INTEGER, input TEXT, command TEXT, start REAL,
    duration REAL, exit_code INTEGER, signal INTEGER, attempts INTEGER, timed_out INTEGER,
    received INTEGER (bytes of stdout; added to older logs when they are opened),
    host TEXT (':' for this machine, else the Dask worker that ran the job; likewise added)

``exit_code`` is the job's exit status, or -1 when a signal killed it (then ``signal``
is that signal's number, otherwise 0). ``input`` is the job's arguments joined by TAB.

Durability: the database is in WAL mode and every row is its own committed transaction,
written when its job ends. A commit in WAL mode is in the operating system's hands when
``record`` returns, so killing the runner (even with SIGKILL) loses no row written.

Resume: a job is identified by (``seq``, ``input``). ``--resume`` skips every job that
has a row (it finished, successfully or not); ``--resume-failed`` skips only jobs with a
successful row (exit 0) and so runs failed jobs again. Jobs that never finished -- not
started, or killed by Ctrl-C, ``--halt now`` or the runner's death -- have no row and
run again in both modes. Without either option an existing log is emptied first.

What "exactly once" rests on: a row is committed right after its job was reaped, and
resume skips exactly the jobs with a row. So after the runner and its jobs are killed
together (machine crash, container stop, a killed process tree), resume runs every job
that had not finished and none that had. Two windows remain, as with any job log: a job
that ended in the instant between its exit and its row's commit runs again; and since
jobs run in their own sessions, a SIGKILL of the runner alone leaves its running jobs
going on as orphans, and resume starts them again. Jobs that must never run twice should
be idempotent.

Thread-safety: :meth:`JobLog.record` may be called from any thread; a lock serialises
the writes on the one connection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from conveyor.cli.errors import CliError

__all__ = ["JobLog", "JobLogError", "JobRow", "input_text"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    input TEXT NOT NULL,
    command TEXT NOT NULL,
    start REAL NOT NULL,
    duration REAL NOT NULL,
    exit_code INTEGER NOT NULL,
    signal INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    timed_out INTEGER NOT NULL DEFAULT 0,
    received INTEGER NOT NULL DEFAULT 0,
    host TEXT NOT NULL DEFAULT ':'
)
"""

# GNU parallel's --joblog layout, which `conveyor joblog FILE` prints.
GNU_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"


class JobLogError(CliError):
    """The job log cannot be opened or written."""


def _text(value: str) -> str:
    # SQLite TEXT must be valid UTF-8; undecodable input bytes become \\xNN, stably.
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def input_text(args: tuple[str, ...]) -> str:
    """How a job's arguments are stored in the ``input`` column."""
    return _text("\t".join(args))


@dataclass(frozen=True)
class JobRow:
    """One finished job."""

    seq: int
    input: str
    command: str
    start: float
    duration: float
    exit_code: int
    signal: int
    attempts: int
    timed_out: bool
    received: int = 0
    host: str = ":"


class JobLog:
    """An open job log. ``mode`` is ``"new"``, ``"resume"`` or ``"resume-failed"``."""

    def __init__(self, path: str, mode: str = "new") -> None:
        import sqlite3  # lazy: start-up time counts, and most runs have no joblog

        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "received" not in columns:  # a log written before the column existed
                self._db.execute("ALTER TABLE jobs ADD COLUMN received INTEGER NOT NULL DEFAULT 0")
            if "host" not in columns:  # likewise, before --cluster
                self._db.execute("ALTER TABLE jobs ADD COLUMN host TEXT NOT NULL DEFAULT ':'")
            if mode == "new":
                self._db.execute("DELETE FROM jobs")
            where = "" if mode == "resume" else " WHERE exit_code = 0 AND signal = 0"
            self._done = {
                (seq, text) for seq, text in self._db.execute("SELECT seq, input FROM jobs" + where)
            }
        except sqlite3.Error as e:
            raise JobLogError(f"cannot use job log {path!r}: {e}") from None

    def is_done(self, seq: int, args: tuple[str, ...]) -> bool:
        """Whether the job is to be skipped under the resume mode the log was opened with."""
        return (seq, input_text(args)) in self._done

    def record(self, row: JobRow) -> None:
        """Append and commit one row (thread-safe)."""
        values = (
            row.seq,
            row.input,
            _text(row.command),
            row.start,
            row.duration,
            row.exit_code,
            row.signal,
            row.attempts,
            int(row.timed_out),
            row.received,
            _text(row.host),
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (seq, input, command, start, duration, exit_code, signal,"
                " attempts, timed_out, received, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )

    def gnu_lines(self) -> Iterator[str]:
        """The rows in GNU parallel's tab-separated --joblog layout, header first,
        in the order the jobs finished. Host is ':' (this machine) or the Dask worker's address
        (``--cluster``), Send 0, Receive
        the bytes of stdout; a job killed by a signal has Exitval 0 and that Signal,
        one killed by --timeout Exitval -1 (as GNU parallel writes them)."""
        yield GNU_HEADER
        query = (
            "SELECT seq, host, start, duration, exit_code, signal, timed_out, received, command"
            " FROM jobs ORDER BY id"
        )
        with self._lock:
            rows = self._db.execute(query).fetchall()
        for seq, host, start, duration, exit_code, signum, timed_out, received, command in rows:
            exitval = -1 if timed_out else 0 if signum else exit_code
            yield (
                f"{seq}\t{host}\t{start:.3f}\t{duration:10.3f}\t0\t{received}\t{exitval}\t"
                f"{signum}\t{command}"
            )

    def close(self) -> None:
        """Close the connection (rows are already committed)."""
        with self._lock:
            self._db.close()


def main(argv: list[str]) -> int:
    """``conveyor joblog FILE``: print a job log in GNU parallel's --joblog layout
    (exit status 0, or 255 with a message if FILE is not a readable job log).

    The SQLite file stays the record (it is what --resume reads); this prints it for
    scripts written for GNU parallel's tab-separated joblog.
    """
    import os
    import sys

    from conveyor.cli.options import ErrorRaisingParser, UsageError

    parser = ErrorRaisingParser(
        prog="conveyor joblog",
        description="Print a 'conveyor run --joblog FILE' log in GNU parallel's "
        "tab-separated layout: " + GNU_HEADER.replace("\t", " ") + ".",
        epilog="example: conveyor joblog jobs.db | awk -F'\\t' 'NR > 1 && $7 != 0'",
    )
    parser.add_argument("file", metavar="FILE", help="the SQLite job log")
    try:
        ns = parser.parse_args(argv)
        if not os.path.isfile(ns.file):
            raise JobLogError(f"no job log {ns.file!r}")
        log = JobLog(ns.file, "resume")
        try:
            out = sys.stdout
            for line in log.gnu_lines():
                out.write(line + "\n")
            out.flush()
        finally:
            log.close()
    except (UsageError, JobLogError) as e:
        print(f"conveyor joblog: error: {e}", file=sys.stderr)
        return 255
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0
