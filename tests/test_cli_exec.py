"""``conveyor run`` scheduling: -j, --timeout, --retries, --halt, --delay, --shuf,
--dry-run and exit codes (real CLI in a subprocess)."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path

import pytest

from cli_helpers import CLI, assert_all_gone, kill_tree, read_pids, run, start, wait_for

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _intervals(directory: Path) -> list[tuple[int, int]]:
    spans = []
    for path in directory.glob("span.*"):
        start, end = path.read_text().split()
        spans.append((int(start), int(end)))
    return spans


def _max_overlap(spans: list[tuple[int, int]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_jobs_limit_is_reached_and_never_exceeded(tmp_path: Path) -> None:
    # Each job records its own start and end (ns). The first jobs wait (5 s at most)
    # until 3 have started, so a correct runner reaches 3; a 4th would show as overlap.
    d = tmp_path
    cmd = (
        f"s=$(date +%s%N); touch {d}/started.{{}}; n=0; "
        f"while [ $(ls {d} | grep -c started) -lt 3 ] && [ $n -lt 500 ]; do "
        f"sleep 0.01; n=$((n+1)); done; sleep 0.1; echo $s $(date +%s%N) > {d}/span.{{}}"
    )
    r = run("-j", "3", cmd, ":::", *[str(i) for i in range(9)])
    assert r.returncode == 0, r.stderr
    spans = _intervals(tmp_path)
    assert len(spans) == 9
    assert _max_overlap(spans) == 3


@pytest.mark.parametrize(
    "jobs, expected",
    [
        (None, CORES),
        ("1", 1),
        ("5", 5),
        ("50%", max(1, (CORES or 1) // 2)),
        ("200%", 2 * (CORES or 1)),
    ],
)
def test_jobs_option_sets_the_slots(jobs: str | None, expected: int) -> None:
    options = ["-j", jobs] if jobs else []
    r = run(*options, "--dry-run", "echo {%}", ":::", *[str(i) for i in range(40)])
    assert r.returncode == 0, r.stderr
    assert {int(line.split()[1]) for line in r.stdout.splitlines()} == set(range(1, expected + 1))


@pytest.mark.parametrize("value", ["abc", "0%", "1.5", "+-1", "-5%"])
def test_bad_jobs_value(value: str) -> None:
    r = run("-j", value, "echo", ":::", "a")
    assert r.returncode == 255
    assert "-j/--jobs" in r.stderr or "expected one argument" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_jobs_get_only_stdio_and_default_sigpipe(tmp_path: Path) -> None:
    # A job sees the same descriptors as the shell started by subprocess with
    # close_fds=True: nothing of the runner's (joblog, pipes, inherited) leaks in.
    # SIGPIPE is back to its default: 'yes' dies quietly once 'head' is done.
    job = "ls /proc/self/fd | tr '\\n' ' '; yes | head -1"
    expected = subprocess.run(
        ["/bin/sh", "-c", job], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True
    ).stdout
    with open(tmp_path / "inherited", "w") as leak:  # an inheritable descriptor
        os.set_inheritable(leak.fileno(), True)
        done = subprocess.run(
            [
                *CLI,
                "run",
                "-k",
                "-j",
                "2",
                "--joblog",
                str(tmp_path / "log.db"),
                job + "; : {}",
                ":::",
                "a",
                "b",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            close_fds=False,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected * 2
    assert done.stderr == ""


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    # The job's shell starts a grandchild (sleep) and waits for it; both must die.
    cmd = f"sleep 300 & echo $! > {tmp_path}/pid.grandchild; echo $$ > {tmp_path}/pid.sh; wait"
    t = time.monotonic()
    r = run("--timeout", "0.5", "--joblog", str(tmp_path / "log.db"), cmd, ":::", "x")
    assert time.monotonic() - t < 20
    assert r.returncode == 1, r.stderr
    pids = read_pids(tmp_path)
    assert len(pids) == 2
    assert_all_gone(pids)
    import sqlite3

    with sqlite3.connect(tmp_path / "log.db") as db:
        row = db.execute("SELECT exit_code, signal, timed_out FROM jobs").fetchone()
    exit_code, signum, timed_out = row
    assert timed_out == 1 and (exit_code, signum) != (0, 0)


def test_timeout_escalates_to_sigkill(tmp_path: Path) -> None:
    # SIGTERM is ignored by the shell and (inherited) by its child: SIGKILL follows.
    cmd = f"trap '' TERM; sleep 300 & echo $! > {tmp_path}/pid.child; wait; wait"
    r = run("--timeout", "0.3", cmd, ":::", "x")
    assert r.returncode == 1
    assert_all_gone(read_pids(tmp_path))


def test_timeout_spares_quick_jobs() -> None:
    r = run("--timeout", "20", "-k", "echo", ":::", "a", "b")
    assert (r.returncode, r.stdout) == (0, "a\nb\n")


_FLAKY = (
    "n=$(cat {d}/n.{{}} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/n.{{}}; "
    "echo attempt $n; [ $n -ge 3 ]"
)


def test_retries_until_success(tmp_path: Path) -> None:
    r = run("--retries", "2", _FLAKY.format(d=tmp_path), ":::", "a", "b")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "attempt 3\nattempt 3\n"  # only the last attempt's output


def test_retries_exhausted(tmp_path: Path) -> None:
    r = run("--retries", "1", _FLAKY.format(d=tmp_path), ":::", "a")
    assert r.returncode == 1
    assert (tmp_path / "n.a").read_text() == "2\n"


def test_exit_code_counts_failures_capped_at_101() -> None:
    assert run("exit {}", ":::", "0", "1", "2", "0", "3").returncode == 3
    assert run("-j", "8", "exit 1", ":::", *[str(i) for i in range(105)]).returncode == 101
    assert run("kill -9 $$", ":::", "x").returncode == 1  # killed by a signal: failed


def _sleeper(d: Path) -> str:
    return (
        f"if [ {{}} = fail ]; then exit 1; elif [ {{}} = ok ]; then exit 0; fi; "
        f"echo $$ > {d}/pid.{{}}; exec sleep 300"
    )


@pytest.mark.parametrize(
    "spec, trigger, code",
    [
        ("now,fail=1", "fail", 1),
        ("2", "fail", 1),
        ("now,success=1", "ok", 0),
        ("now,done=1", "ok", 0),
    ],
)
def test_halt_now_kills_running_jobs(tmp_path: Path, spec: str, trigger: str, code: int) -> None:
    t = time.monotonic()
    r = run(
        "-j",
        "3",
        "--halt",
        spec,
        _sleeper(tmp_path),
        ":::",
        "s1",
        "s2",
        trigger,
        "never1",
        "never2",
    )
    assert time.monotonic() - t < 20
    assert r.returncode == code, r.stderr
    assert_all_gone(read_pids(tmp_path))
    assert not list(tmp_path.glob("pid.never*"))


def test_halt_now_while_stdin_is_still_open(tmp_path: Path) -> None:
    proc = start("-j", "2", "--halt", "now,fail=1", _sleeper(tmp_path), stdin=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"s1\n")
        proc.stdin.flush()
        wait_for(lambda: len(read_pids(tmp_path)) == 1, what="the first job")
        proc.stdin.write(b"fail\n")
        proc.stdin.flush()  # ... and stdin stays open
        assert proc.wait(timeout=15) == 1
        assert_all_gone(read_pids(tmp_path))
    finally:
        kill_tree(proc)


def test_halt_soon_lets_running_jobs_finish(tmp_path: Path) -> None:
    # 'slow' keeps running until 'fail' has failed and been reaped, then succeeds.
    failpid = tmp_path / "failpid"
    cmd = (
        f"if [ {{}} = fail ]; then echo $$ > {failpid}; exit 1; fi; "
        f"if [ {{}} = slow ]; then while [ ! -s {failpid} ] || "
        f"kill -0 $(cat {failpid}) 2>/dev/null; do sleep 0.01; done; fi; echo {{}} done"
    )
    r = run("-j", "2", "--halt", "soon,fail=1", cmd, ":::", "slow", "fail", "x", "y")
    assert r.returncode == 1
    assert r.stdout == "slow done\n"  # the running job finished, no new job started


def test_halt_fail_count_and_percentage(tmp_path: Path) -> None:
    r = run("-j", "1", "--halt", "soon,fail=2", "echo {}; exit {}", ":::", "1", "0", "1", "0", "1")
    assert (r.returncode, r.stdout) == (2, "1\n0\n1\n")
    # With a percentage, the exit status is the percentage of all jobs that failed.
    r = run("-j", "1", "--halt", "soon,fail=50%", "echo {}; exit {}", ":::", "1", "0", "1", "0")
    assert (r.returncode, r.stdout) == (50, "1\n0\n1\n")


@pytest.mark.parametrize(
    "spec", ["bogus", "now", "now,fail=0", "later,fail=1", "now,x=1", "soon,fail=150%"]
)
def test_bad_halt_spec(spec: str) -> None:
    r = run("--halt", spec, "echo", ":::", "a")
    assert r.returncode == 255
    assert "--halt" in r.stderr and "Traceback" not in r.stderr


def test_delay_between_starts(tmp_path: Path) -> None:
    cmd = f"date +%s%N > {tmp_path}/start.{{}}"
    r = run("-j", "4", "--delay", "0.2", cmd, ":::", "1", "2", "3", "4")
    assert r.returncode == 0
    starts = sorted(int((tmp_path / f"start.{i}").read_text()) for i in range(1, 5))
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(starts)]
    # Each start is stamped by the job itself, so allow for its own start-up jitter.
    assert min(gaps) >= 0.1 and sum(gaps) >= 0.55, gaps


def test_shuf_runs_every_job_once_in_another_order() -> None:
    inputs = [str(i) for i in range(60)]
    r = run("-j", "1", "--shuf", "echo {#} {}", ":::", *inputs)
    assert r.returncode == 0
    pairs = [line.split() for line in r.stdout.splitlines()]
    assert all(int(seq) == int(value) + 1 for seq, value in pairs)  # {#}: input order
    values = [value for _, value in pairs]
    assert sorted(values, key=int) == inputs
    assert values != inputs  # 1 in 60! to fail by chance


def test_dry_run_prints_and_runs_nothing(tmp_path: Path) -> None:
    r = run("--dry-run", "touch {}.made", ":::", "a b", "c", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout == "touch 'a b'.made\ntouch c.made\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--timeout", "0", "echo"], "--timeout"),
        (["--timeout", "x", "echo"], "--timeout"),
        (["--retries", "-1", "echo"], "--retries"),
        (["--delay", "-1", "echo"], "--delay"),
        (["--resume", "echo"], "--joblog"),
        (["--no-such-option", "echo"], "unrecognized arguments"),
    ],
)
def test_bad_options_exit_255(args: list[str], message: str) -> None:
    r = run(*args, ":::", "a")
    assert r.returncode == 255
    assert message in r.stderr and "Traceback" not in r.stderr
