"""Helpers for the ``conveyor run`` tests: run the real CLI in a subprocess, wait on
conditions (never on fixed sleeps), and make sure no process is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

CLI = [sys.executable, "-m", "conveyor"]


def run_cli(
    *args: str, input: bytes | str | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``conveyor ARGS`` to completion; stdout/stderr as text."""
    data = input.encode() if isinstance(input, str) else input
    done = subprocess.run(
        [*CLI, *args],
        input=data if data is not None else b"",
        capture_output=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode(errors="surrogateescape"),
        done.stderr.decode(errors="surrogateescape"),
    )


def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``conveyor run ARGS``."""
    return run_cli("run", *args, **kwargs)  # type: ignore[arg-type]


def _default_sigint() -> None:
    # The test runner may have SIGINT ignored; an ignored SIGINT is inherited and Python
    # would then (rightly) not install its KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(
    *args: str, cwd: Path | None = None, stdin: int | None = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """Start ``conveyor run ARGS`` in the background (stdout/stderr piped)."""
    return subprocess.Popen(
        [*CLI, "run", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        preexec_fn=_default_sigint,
    )


def wait_for(condition: Callable[[], object], timeout: float = 30, what: str = "condition") -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def read_pids(directory: Path, pattern: str = "pid.*") -> list[int]:
    """The pids that jobs wrote into files matching ``pattern``."""
    pids = []
    for path in directory.glob(pattern):
        text = path.read_text().strip()
        if text:
            pids.append(int(text))
    return pids


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_all_gone(pids: Iterable[int], timeout: float = 10) -> None:
    """Every pid is dead (orphans may need a moment to be reaped by init). On failure
    the survivors are killed before the test fails, so that nothing is left behind."""
    pids = list(pids)
    try:
        wait_for(
            lambda: not any(alive(p) for p in pids),
            timeout,
            f"processes {[p for p in pids if alive(p)]} to be gone",
        )
    except AssertionError:
        survivors = [p for p in pids if alive(p)]
        for pid in survivors:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        raise AssertionError(f"processes {survivors} outlived the test") from None


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Test cleanup: kill a runner and every process it started (their own groups too)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.kill()
    for child in family:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
