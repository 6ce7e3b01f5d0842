"""``conveyor run`` options of issue 13 beyond input shaping: -j forms, --shell, notices,
--timeout N%, --termseq, --load, --memfree, --results, -X/-m, and ``conveyor sem``
(real CLI in a subprocess; GNU parallel comparisons are in test_cli_vs_gnu.py)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conveyor.cli.options import MAX_JOBS, UsageError, parse_jobs, parse_run_args, usable_cores

from cli_helpers import CLI, alive, kill_tree, run, run_cli, wait_for

# -- -j ------------------------------------------------------------------------------------


def test_jobs_forms_follow_gnu_parallel() -> None:
    cores = usable_cores()
    assert parse_jobs("0") == MAX_JOBS >= 1
    assert parse_jobs("+2") == cores + 2
    assert parse_jobs("-1") == max(1, cores - 1)
    assert parse_jobs("75%") == math.ceil(cores * 0.75)  # rounded up: 2 on 2 cores
    assert parse_jobs("1%") == 1
    with pytest.raises(UsageError, match="-j/--jobs"):
        parse_jobs("+-1")


def test_negative_option_values_are_values() -> None:
    config = parse_run_args(["--halt", "-2", "-j", "-1", "echo", ":::", "a"])
    assert (config.halt.when, config.halt.what) == ("now", "success")
    assert config.command == ["echo"]


def test_j0_runs_all_jobs_at_once(tmp_path: Path) -> None:
    # Each of 5 jobs waits until all 5 have started: only possible if they run at once.
    job = f"touch {tmp_path}/s.{{}}; while [ $(ls {tmp_path} | wc -l) -lt 5 ]; do sleep 0.01; done"
    r = run("-j0", job, ":::", *"abcde", timeout=30)
    assert r.returncode == 0, r.stderr


# -- --shell and the environment -----------------------------------------------------------


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_shell_option_and_environment_variable() -> None:
    job = "[[ {} == a* ]] && echo yes {} || echo no {}"
    assert "[[" in run("-k", job, ":::", "ab").stderr  # /bin/sh (dash) has no [[
    r = run("-k", "--shell", "bash", job, ":::", "ab", "cd")
    assert (r.returncode, r.stdout) == (0, "yes ab\nno cd\n"), r.stderr
    env = dict(os.environ, CONVEYOR_SHELL="bash")
    done = subprocess.run(
        [*CLI, "run", "-k", job, ":::", "ab"], capture_output=True, text=True, env=env
    )
    assert (done.returncode, done.stdout) == (0, "yes ab\n"), done.stderr


def test_bad_shell_is_an_error_naming_it() -> None:
    r = run("--shell", "/nonexistent/sh", "echo", ":::", "a")
    assert r.returncode == 255
    assert "--shell" in r.stderr


def test_parallel_variables_in_shell_and_direct_jobs(tmp_path: Path) -> None:
    r = run("-j1", "-k", "echo $PARALLEL_SEQ $PARALLEL_JOBSLOT {}", ":::", "a", "b")
    assert r.stdout == "1 1 a\n2 1 b\n", r.stderr
    # A direct exec (env is a program, no shell syntax) gets them in its environment.
    r = run("-j1", "-k", "env", ":::", "--")
    lines = [x for x in r.stdout.splitlines() if x.startswith("PARALLEL_")]
    assert "PARALLEL_SEQ=1" in lines and "PARALLEL_JOBSLOT=1" in lines
    assert any(x.startswith("PARALLEL_PID=") for x in lines)


# -- notices, --timeout N%, --termseq ---------------------------------------------------------


def test_timeout_and_halt_notices_on_stderr() -> None:
    r = run("--timeout", "0.3", "sleep {}", ":::", "10")
    assert r.returncode == 1
    assert "This job was killed because it timed out:" in r.stderr
    assert "sleep 10" in r.stderr
    r = run("-j1", "--halt", "soon,fail=1", "exit {}", ":::", "0", "4", "0")
    assert r.returncode == 4
    assert "This job failed:\nexit 4\n" in r.stderr
    assert "Starting no more jobs" in r.stderr


def test_timeout_percent_kills_the_outlier_only() -> None:
    # 1000% of the median: generous, so that a loaded machine cannot make job 2 an outlier.
    r = run("-j1", "-k", "--timeout", "1000%", "sleep {}; echo {}", ":::", "0.2", "0.2", "30")
    assert r.returncode == 1
    assert r.stdout == "0.2\n0.2\n"
    assert "timed out" in r.stderr


@pytest.mark.parametrize("value", ["0", "-1", "abc", "%", "1x"])
def test_bad_timeout_is_an_error(value: str) -> None:
    r = run("--timeout", value, "echo", ":::", "a")
    assert r.returncode == 255
    assert "--timeout" in r.stderr


def test_termseq_sends_its_signals_in_order() -> None:
    job = ": {}; trap 'echo INT' INT; trap 'echo USR1' USR1; while :; do sleep 0.05; done"
    r = run("--timeout", "0.3", "--termseq", "INT,300,USR1,300,KILL,25", job, ":::", "a")
    assert r.returncode == 1
    assert r.stdout == "INT\nUSR1\n"


def test_bad_termseq_is_an_error() -> None:
    r = run("--termseq", "NOPE,10", "echo", ":::", "a")
    assert (r.returncode, "--termseq" in r.stderr) == (255, True)


# -- --load, --memfree ------------------------------------------------------------------------


def test_load_and_memfree_let_jobs_run_when_there_is_room(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 99999999 kB\nMemAvailable: 8388608 kB\n")
    env = dict(os.environ, CONVEYOR_MEMINFO=str(meminfo))
    done = subprocess.run(
        [*CLI, "run", "-k", "--load", "100000", "--memfree", "1G", "echo", ":::", "a", "b"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "a\nb\n"), done.stderr


def test_memfree_kills_the_youngest_job_and_runs_it_again(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable: 8388608 kB\n")  # 8 GiB
    work = tmp_path / "work"
    work.mkdir()
    job = f"echo $$ >> {work}/started.{{}}; while [ ! -e {tmp_path}/go ]; do sleep 0.02; done"
    env = dict(os.environ, CONVEYOR_MEMINFO=str(meminfo))
    proc = subprocess.Popen(
        [*CLI, "run", "-j2", "--memfree", "1G", job, ":::", "a", "b"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        wait_for(lambda: len(list(work.glob("started.*"))) == 2, what="both jobs started")
        pids = [int(p.read_text().split()[0]) for p in work.glob("started.*")]
        meminfo.write_text("MemAvailable: 102400 kB\n")  # 100 MiB: below half of 1G
        # One job (the younger) is killed and waits for memory; the older is left alone.
        wait_for(lambda: any(not alive(pid) for pid in pids), what="a job to be killed")
        assert sum(alive(pid) for pid in pids) == 1
        meminfo.write_text("MemAvailable: 8388608 kB\n")
        wait_for(
            lambda: sum(len(p.read_text().split()) for p in work.glob("started.*")) == 3,
            what="the killed job to run again",
        )
        (tmp_path / "go").touch()
        assert proc.wait(timeout=30) == 0
        counts = sorted(len(p.read_text().split()) for p in work.glob("started.*"))
        assert counts == [1, 2]
    finally:
        kill_tree(proc)


@pytest.mark.parametrize(
    "args, names",
    [
        (["--load", "x"], "--load"),
        (["--memfree", "lots"], "--memfree"),
        (["--results", "r", "-u"], "--results and -u/--ungroup"),
        (["-X", "-n", "2"], "not allowed with argument"),
        (["-X", "--colsep", ","], "-X and --colsep"),
    ],
)
def test_bad_resource_options_name_the_options(args: list[str], names: str) -> None:
    r = run(*args, "echo", ":::", "a")
    assert r.returncode == 255
    assert names in r.stderr


# -- --results --------------------------------------------------------------------------------


def test_results_directory_tree(tmp_path: Path) -> None:
    r = run("--results", "out", "echo {1}{2}; echo err >&2; exit 3", ":::", "a/b", "", ":::", "x",
            cwd=tmp_path)  # fmt: skip
    assert (r.returncode, r.stdout) == (2, "")
    job = tmp_path / "out" / "1" / "a\\_b" / "2" / "x"
    assert (job / "stdout").read_text() == "a/bx\n"
    assert (job / "stderr").read_text() == "err\n"
    assert (job / "seq").read_text() == "1"
    assert (job / "exitcode").read_text() == "3"
    assert (tmp_path / "out" / "1" / "\\_empty" / "2" / "x" / "seq").read_text() == "2"


def test_results_with_a_replacement_string(tmp_path: Path) -> None:
    r = run("--results", "my_{}", "echo {}", ":::", "foo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "my_foo").read_text() == "foo\n"
    assert (tmp_path / "my_foo.seq").read_text() == "1"
    r = run("--results", "d_{}/", "echo {}", ":::", "foo", cwd=tmp_path)
    assert (tmp_path / "d_foo" / "stdout").read_text() == "foo\n"


def test_results_tables(tmp_path: Path) -> None:
    r = run("-k", "--results", "t.csv", "echo {}; echo e >&2", ":::", "a", 'b,"c', cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    rows = list(csv.reader((tmp_path / "t.csv").open(newline="")))
    assert rows[0][:3] == ["Seq", "Host", "Starttime"]
    assert rows[0][6:] == ["Exitval", "Signal", "Command", "V1", "Stdout", "Stderr"]
    assert [row[0] for row in rows[1:]] == ["1", "2"]
    assert rows[2][9:] == ['b,"c', 'b,"c\n', "e\n"]
    r = run("-k", "--results", "-.tsv", "echo {}", ":::", "a")
    assert r.stdout.splitlines()[0].startswith("Seq\tHost\t")
    assert r.stdout.splitlines()[1].split("\t")[-2:] == ["a", '"a']  # "a\n": quoted
    r = run("-k", "--results", "-.json", "exit {}", ":::", "0", "2")
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["Seq"], x["Exitval"], x["V"]) for x in records] == [(1, 0, ["0"]), (2, 2, ["2"])]


def test_results_table_keeps_order_with_k(tmp_path: Path) -> None:
    # Job 1 ends last; with -k its row is still first, after the header.
    r = run("-k", "-j2", "--results", "t.tsv", "sleep {}", ":::", "0.5", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "t.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["Seq", "1", "2"]


# -- -X / -m ----------------------------------------------------------------------------------


def test_multi_fills_command_lines_up_to_the_limit(tmp_path: Path) -> None:
    values = [f"value-{i:06d}" for i in range(60000)]  # ~800 KB of arguments
    (tmp_path / "in").write_text("".join(v + "\n" for v in values))
    r = run("-j1", "-X", "echo", "::::", str(tmp_path / "in"), timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    lines = r.stdout.splitlines()
    assert 2 <= len(lines) < 60  # several jobs, each with many inputs
    assert " ".join(lines).split() == values


def test_multi_spreads_inputs_over_the_slots() -> None:
    r = run("-k", "-j3", "-m", "echo", ":::", *map(str, range(7)))
    assert r.stdout == "0 1 2\n3 4 5\n6\n"


def test_multi_with_direct_exec_and_quote() -> None:
    r = run("-k", "-j1", "-X", "-q", "printf", "[%s]", "x{}y", ":::", "a b", "c")
    assert r.stdout == "[xa by][xcy]"


# -- --help ------------------------------------------------------------------------------------


def test_every_new_option_is_in_the_help_with_an_example() -> None:
    text = run("--help").stdout
    for option in ("-X", "-m", "--shell", "--results", "--load", "--memfree", "--termseq",
                   "--timeout", "-j0", "-j +2", "conveyor sem"):  # fmt: skip
        assert option in text, option
    flat = " ".join(text.split())
    for option in ("--shell", "--load", "--memfree", "--termseq", "--results"):
        assert f"E.g. {option}" in flat, option
    assert "differences from GNU parallel" in text


# -- conveyor sem ----------------------------------------------------------------------------


def test_sem_limits_and_waits(tmp_path: Path) -> None:
    env = dict(os.environ, CONVEYOR_SEM_DIR=str(tmp_path / "sem"))
    log = tmp_path / "log"
    for _ in range(3):
        job = f"echo start >> {log}; sleep 0.2; echo end >> {log}"
        done = subprocess.run([*CLI, "sem", "-j", "1", "--id", "t", job], env=env, timeout=60)
        assert done.returncode == 0
    done = subprocess.run([*CLI, "sem", "--wait", "--id", "t"], env=env, timeout=60)
    assert done.returncode == 0
    assert log.read_text().split() == ["start", "end"] * 3  # never two at once


def test_sem_foreground_status_and_errors(tmp_path: Path) -> None:
    env = dict(os.environ, CONVEYOR_SEM_DIR=str(tmp_path / "sem"))
    done = subprocess.run([*CLI, "sem", "--fg", "--id", "f", "exit 5"], env=env)
    assert done.returncode == 5
    name = tmp_path / "a b; c"
    done = subprocess.run([*CLI, "sem", "--fg", "-q", "--id", "f", "touch", str(name)], env=env)
    assert (done.returncode, name.exists()) == (0, True)
    for args, message in (
        (["--id", "a/b", "true"], "--id"),
        (["--wait", "--id", "x", "true"], "--wait and COMMAND"),
        (["-j", "0", "true"], "-j"),
    ):
        r = run_cli("sem", *args)
        assert r.returncode == 255 and message in r.stderr, (args, r.stderr)


def test_sem_slot_is_held_while_the_command_runs(tmp_path: Path) -> None:
    env = dict(os.environ, CONVEYOR_SEM_DIR=str(tmp_path / "sem"))
    flag = tmp_path / "release"
    subprocess.run(
        [*CLI, "sem", "--id", "h", f"while [ ! -e {flag} ]; do sleep 0.02; done"],
        env=env,
        check=True,
    )
    waiter = subprocess.Popen([*CLI, "sem", "--wait", "--id", "h"], env=env)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiter.wait(timeout=0.5)  # still held by the command
        flag.touch()
        assert waiter.wait(timeout=30) == 0
    finally:
        flag.touch()
        waiter.kill()
        waiter.wait()
