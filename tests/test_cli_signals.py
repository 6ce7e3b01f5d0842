"""Ctrl-C / SIGTERM to ``conveyor run``: every job's process group dies, exit is prompt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import alive, assert_all_gone, kill_tree, read_pids, start, wait_for


def _family_job(d: Path) -> str:
    # The job's shell starts a grandchild and waits; both record their pids.
    return f"sleep 300 & echo $! > {d}/pid.{{}}.child; echo $$ > {d}/pid.{{}}; wait"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("options", [[], ["-k", "--line-buffer", "--tag"]])
def test_interrupt_kills_every_job_group(tmp_path: Path, signum: int, options: list[str]) -> None:
    proc = start("-j", "3", *options, _family_job(tmp_path), ":::", *[str(i) for i in range(10)])
    try:
        wait_for(lambda: len(read_pids(tmp_path)) == 6, what="3 jobs with children")
        pids = read_pids(tmp_path)
        t = time.monotonic()
        os.kill(proc.pid, signum)
        code = proc.wait(timeout=15)
        assert time.monotonic() - t < 5
        assert code == 255
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert b"interrupted" in err and b"Traceback" not in err
        assert_all_gone(pids)
        assert len(read_pids(tmp_path)) == 6  # no job started after the signal
    finally:
        kill_tree(proc)


def test_interrupt_while_reading_stdin(tmp_path: Path) -> None:
    proc = start(_family_job(tmp_path), stdin=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"only\n")
        proc.stdin.flush()
        wait_for(lambda: len(read_pids(tmp_path)) == 2, what="the job and its child")
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=15) == 255
        assert_all_gone(read_pids(tmp_path))
    finally:
        kill_tree(proc)


def test_interrupt_during_delay(tmp_path: Path) -> None:
    proc = start("--delay", "300", _family_job(tmp_path), ":::", "a", "b")
    try:
        wait_for(lambda: len(read_pids(tmp_path)) == 2, what="the first job")
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=15) == 255
        assert_all_gone(read_pids(tmp_path))
        assert not (tmp_path / "pid.b").exists()
    finally:
        kill_tree(proc)


def test_job_ignoring_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    cmd = f"trap '' TERM; sleep 300 & echo $! > {tmp_path}/pid.{{}}; wait; wait"
    proc = start(cmd, ":::", "x")
    try:
        wait_for(lambda: len(read_pids(tmp_path)) == 1, what="the job")
        t = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=15) == 255
        assert time.monotonic() - t < 5
        assert_all_gone(read_pids(tmp_path))
    finally:
        kill_tree(proc)


@pytest.mark.parametrize("grandchild", ["sleep 300", "setsid sleep 300"])
def test_sigkill_of_the_runner_alone_takes_its_jobs_along(tmp_path: Path, grandchild: str) -> None:
    # The out-of-memory killer kills the runner, not its jobs (they run in sessions of their
    # own): the guardian must kill them, or a --resume would run them a second time. A
    # grandchild that left the job's session (setsid) is out of killpg's reach: the guardian
    # finds it by the run id every job and descendant inherits in its environment.
    job = _family_job(tmp_path).replace("sleep 300", grandchild)
    proc = start("-j", "3", job, ":::", *[str(i) for i in range(10)])
    try:
        wait_for(lambda: len(read_pids(tmp_path)) == 6, what="3 jobs with children")
        pids = read_pids(tmp_path)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
        assert_all_gone(pids)
    finally:
        kill_tree(proc)


def test_a_normal_end_leaves_background_processes_a_job_started_on_purpose(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "daemon.pid"
    job = f": {{}}; setsid sleep 300 >/dev/null 2>&1 < /dev/null & echo $! > {pidfile}"
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "run", job, ":::", "x"], timeout=60, capture_output=True
    )
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        assert alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
