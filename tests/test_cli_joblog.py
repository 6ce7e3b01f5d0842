"""``conveyor run --joblog`` (SQLite), ``--resume``, ``--resume-failed``, and a resume
after the runner was SIGKILLed midway (real CLI)."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import psutil

from cli_helpers import assert_all_gone, kill_tree, run, run_cli, start, wait_for

COLUMNS = [
    "id",
    "seq",
    "input",
    "command",
    "start",
    "duration",
    "exit_code",
    "signal",
    "attempts",
    "timed_out",
    "received",
    "host",
]


def _rows(db: Path, order: str = "seq, id") -> list[dict[str, object]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM jobs ORDER BY {order}")]


def test_joblog_rows(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    before = time.time()
    r = run("--joblog", str(db), "-k", "exit {2}", ":::", "a b", ":::", "0", "3")
    assert r.returncode == 1
    rows = _rows(db)
    assert list(rows[0]) == COLUMNS
    assert [
        (x["seq"], x["input"], x["command"], x["exit_code"], x["signal"], x["attempts"])
        for x in rows
    ] == [(1, "a b\t0", "exit 0", 0, 0, 1), (2, "a b\t3", "exit 3", 3, 0, 1)]
    for x in rows:
        assert before - 1 <= float(x["start"]) <= time.time()  # type: ignore[arg-type]
        assert 0 <= float(x["duration"]) < 30  # type: ignore[arg-type]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_joblog_signal_and_attempts(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    run("--joblog", str(db), "--retries", "2", "kill -9 $$", ":::", "x")
    (row,) = _rows(db)
    assert (row["exit_code"], row["signal"], row["attempts"], row["timed_out"]) == (-1, 9, 3, 0)


def _counted(d: Path) -> str:
    # Appends its input to a marker file (one line per execution), then fails unless
    # the input is odd or the file 'fixed' exists.
    return f"echo {{}} >> {d}/ran; case {{}} in *[13579]) exit 0;; esac; [ -e {d}/fixed ]"


def test_resume_and_resume_failed(tmp_path: Path) -> None:
    db = str(tmp_path / "log.db")
    inputs = [str(i) for i in range(1, 7)]
    assert run("--joblog", db, _counted(tmp_path), ":::", *inputs).returncode == 3
    # --resume: every job finished (even the failed ones): nothing runs again.
    assert run("--resume", "--joblog", db, _counted(tmp_path), ":::", *inputs).returncode == 0
    assert Counter((tmp_path / "ran").read_text().split()) == Counter(inputs)
    # New inputs appended later are run by --resume.
    r = run("--resume", "--joblog", db, _counted(tmp_path), ":::", *inputs, "7")
    assert r.returncode == 0
    assert (tmp_path / "ran").read_text().split().count("7") == 1
    # --resume-failed re-runs the failed ones (now fixed), not the successful ones.
    (tmp_path / "fixed").touch()
    r = run("--resume-failed", "--joblog", db, _counted(tmp_path), ":::", *inputs, "7")
    assert r.returncode == 0, r.stderr
    runs = Counter((tmp_path / "ran").read_text().split())
    assert runs == {"1": 1, "2": 2, "3": 1, "4": 2, "5": 1, "6": 2, "7": 1}
    # And a dry run of a further resume has nothing left to do.
    r = run("--dry-run", "--resume-failed", "--joblog", db, "echo", ":::", *inputs, "7")
    assert (r.returncode, r.stdout) == (0, "")


def test_dry_run_with_resume_lists_remaining_jobs(tmp_path: Path) -> None:
    db = str(tmp_path / "log.db")
    run("--joblog", db, "exit {}", ":::", "0", "1")
    r = run("--dry-run", "--resume-failed", "--joblog", db, "exit {}", ":::", "0", "1", "0")
    assert r.stdout == "exit 1\nexit 0\n"
    r = run("--dry-run", "--joblog", db, "exit {}", ":::", "0")  # dry run: log untouched
    assert len(_rows(Path(db))) == 2


def test_new_run_empties_an_existing_log(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    run("--joblog", str(db), "true", ":::", "a", "b")
    run("--joblog", str(db), "true", ":::", "c")
    assert [row["input"] for row in _rows(db)] == ["c"]


def test_joblog_that_is_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "log.txt"
    bad.write_text("Seq\tHost\tStarttime\n" * 100)
    r = run("--joblog", str(bad), "true", ":::", "a")
    assert r.returncode == 255
    assert "job log" in r.stderr and "Traceback" not in r.stderr


def _logged(db: str) -> int:
    """Rows in the job log so far (0 while the runner has not created it yet)."""
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_resume_after_sigkill_runs_every_job_exactly_once(tmp_path: Path) -> None:
    """SIGKILL the runner midway through 40 jobs, resume, and check that every job
    completed successfully exactly once and that no written log row was lost."""
    db = str(tmp_path / "log.db")
    phase2 = tmp_path / "phase2"
    # Jobs 1-20 finish at once. Jobs 21+ block (in a sleep) during the first run, so the
    # kill lands while 4 jobs are running and none is between its end and its log row.
    cmd = (
        f"if [ {{}} -gt 20 ] && [ ! -e {phase2} ]; then exec sleep 300; fi; "
        f"echo {{}} >> {tmp_path}/done"
    )
    inputs = [str(i) for i in range(1, 41)]
    proc = start("-j", "4", "--joblog", db, cmd, ":::", *inputs)
    try:
        wait_for(lambda: _logged(db) == 20, what="20 rows in the joblog")
        runner = psutil.Process(proc.pid)

        def running_jobs() -> list[psutil.Process]:  # not the runner's guardian process
            return [c for c in runner.children() if "-I" not in c.cmdline()[1:3]]

        wait_for(lambda: len(running_jobs()) == 4, what="4 running jobs")
        jobs = runner.children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)  # the runner alone, as the OOM killer would
        proc.wait(timeout=10)
        # its guardian kills the jobs it left running, so none finishes unrecorded
        assert_all_gone(job.pid for job in jobs)
    finally:
        kill_tree(proc)
    assert len(_rows(Path(db))) == 20  # every written row survived the SIGKILL
    phase2.touch()
    r = run("-j", "4", "--resume", "--joblog", db, cmd, ":::", *inputs)
    assert r.returncode == 0, r.stderr
    assert Counter((tmp_path / "done").read_text().split()) == Counter(inputs)
    rows = _rows(Path(db))
    assert sorted(int(row["seq"]) for row in rows) == list(range(1, 41))  # type: ignore[call-overload]
    assert all(row["exit_code"] == 0 for row in rows)


def test_rows_survive_sigkill_while_jobs_keep_finishing(tmp_path: Path) -> None:
    """Kill at an arbitrary moment of a busy run: the log stays a valid database, each
    seq has at most one row, and --resume completes the rest."""
    db = str(tmp_path / "log.db")
    inputs = [str(i) for i in range(1, 201)]
    proc = start("-j", "4", "--joblog", db, "true", ":::", *inputs)
    try:
        wait_for(lambda: _logged(db) >= 30, what="30 rows")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        kill_tree(proc)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    first = _rows(Path(db), order="id")
    assert len(first) >= 30
    r = run("-j", "4", "--resume", "--joblog", db, "true", ":::", *inputs)
    assert r.returncode == 0
    seqs = [int(row["seq"]) for row in _rows(Path(db))]  # type: ignore[call-overload]
    assert sorted(seqs) == list(range(1, 201))
    assert first == _rows(Path(db), order="id")[: len(first)]  # earlier rows unchanged


def test_joblog_command_in_gnu_layout(tmp_path: Path) -> None:
    log = tmp_path / "jobs.db"
    r = run("-j1", "--joblog", str(log), "--timeout", "0.5", "printf ab; exit {}", ":::", "0", "4")
    assert r.returncode == 1
    done = run_cli("joblog", str(log))
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert lines[0] == [
        "Seq",
        "Host",
        "Starttime",
        "JobRuntime",
        "Send",
        "Receive",
        "Exitval",
        "Signal",
        "Command",
    ]
    assert [row[:2] + row[4:] for row in lines[1:]] == [
        ["1", ":", "0", "2", "0", "0", "printf ab; exit 0"],
        ["2", ":", "0", "2", "4", "0", "printf ab; exit 4"],
    ]
    missing = run_cli("joblog", str(tmp_path / "nope.db"))
    assert missing.returncode == 255 and "no job log" in missing.stderr
