"""``conveyor run --cluster``: jobs on the workers of a real ``dask scheduler`` + two ``dask
worker`` processes started from the command line (the fixture of ``test_dask``), driven through
the real CLI.

The workers run on this machine, so the tests can see the jobs' processes: each job writes its
pid into a scratch directory, and the tests check where jobs ran (the job log's Host column),
that grouped output comes back whole and in order, and that ``--timeout`` and Ctrl-C kill the
remote jobs.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_helpers import assert_all_gone, kill_tree, read_pids, run, run_cli, start, wait_for

pytest.importorskip("distributed")

from test_dask import command_line_cluster

pytestmark = [pytest.mark.dask, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, torn down after."""
    yield from command_line_cluster(tmp_path_factory.mktemp("dask"))


def _hosts(joblog: Path) -> list[str]:
    with sqlite3.connect(joblog) as db:
        return [host for (host,) in db.execute("SELECT host FROM jobs ORDER BY seq")]


def test_grouped_output_order_and_joblog_hosts(address: str, tmp_path: Path) -> None:
    joblog = tmp_path / "jobs.db"
    done = run(
        "--cluster",
        address,
        "-k",
        "--joblog",
        str(joblog),
        "echo out {}; echo err {} >&2; echo {} more; exit $(( {} % 3 == 0 ))",
        ":::",
        *map(str, range(1, 9)),
    )
    expected = "".join(f"out {i}\n{i} more\n" for i in range(1, 9))
    assert done.stdout == expected  # -k: input order; each job's lines together
    assert sorted(done.stderr.splitlines()) == sorted(f"err {i}" for i in range(1, 9))
    assert done.returncode == 2  # jobs 3 and 6 failed
    hosts = _hosts(joblog)
    assert len(hosts) == 8
    assert all(host.startswith("tcp://127.0.0.1:") for host in hosts)
    assert len(set(hosts)) == 2, "the eight jobs were spread over both workers (-j = 2 threads)"
    shown = run_cli("joblog", str(joblog))
    rows = [line.split("\t") for line in shown.stdout.splitlines()[1:]]
    assert {row[1] for row in rows} == set(hosts)  # GNU's Host column names the worker


def test_resume_runs_only_what_failed(address: str, tmp_path: Path) -> None:
    joblog = tmp_path / "jobs.db"
    flag = tmp_path / "fixed"
    script = f"{{ test {{}} != 2 || test -e {flag}; }} && echo ran {{}}"
    first = run("--cluster", address, "--joblog", str(joblog), "-k", script, ":::", "1", "2", "3")
    assert first.returncode == 1
    flag.touch()
    again = run(
        "--cluster", address, "--joblog", str(joblog), "--resume-failed", "-k", script,
        ":::", "1", "2", "3",
    )  # fmt: skip
    assert again.returncode == 0
    assert again.stdout == "ran 2\n"


def test_timeout_kills_the_remote_job(address: str, tmp_path: Path) -> None:
    joblog = tmp_path / "jobs.db"
    started = time.monotonic()
    done = run(
        "--cluster",
        address,
        "--timeout",
        "2",
        "--joblog",
        str(joblog),
        f"echo $$ > {tmp_path}/pid.{{}}; exec sleep {{}}",
        ":::",
        "0",
        "60",
    )
    assert done.returncode == 1
    assert time.monotonic() - started < 40
    with sqlite3.connect(joblog) as db:
        timed_out = dict(db.execute("SELECT input, timed_out FROM jobs"))
    assert timed_out == {"0": 0, "60": 1}
    assert_all_gone(read_pids(tmp_path))


def test_interrupt_stops_remote_jobs(address: str, tmp_path: Path) -> None:
    proc = start("--cluster", address, f"echo $$ > {tmp_path}/pid.{{}}; exec sleep {{}}", ":::",
                 "61", "62")  # fmt: skip
    try:
        wait_for(lambda: len(read_pids(tmp_path)) == 2, 60, "both remote jobs to start")
        pids = read_pids(tmp_path)
        proc.send_signal(signal.SIGINT)
        proc.wait(30)  # the runner returns within seconds, not after the 60 s sleeps
        assert proc.returncode == 255
        assert_all_gone(pids, 15)
    finally:
        kill_tree(proc)


def test_bad_address_is_a_clear_error(tmp_path: Path) -> None:
    started = time.monotonic()
    done = run("--cluster", "tcp://127.0.0.1:9", "echo", ":::", "a")
    assert done.returncode == 255
    assert "--cluster tcp://127.0.0.1:9" in done.stderr
    assert "cannot reach the Dask scheduler" in done.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("flag", ["--line-buffer", "-u"])
def test_output_as_it_comes_is_refused(flag: str) -> None:
    done = run("--cluster", "tcp://127.0.0.1:9", flag, "echo", ":::", "a")
    assert done.returncode == 255
    assert "--cluster and" in done.stderr and "arrives whole" in done.stderr


def test_dry_run_does_not_connect() -> None:
    done = run("--cluster", "tcp://127.0.0.1:9", "--dry-run", "echo", ":::", "a")
    assert done.returncode == 0
    assert done.stdout == "echo a\n"
