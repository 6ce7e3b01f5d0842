"""``conveyor run`` output: grouped, --line-buffer, --tag, --keep-order (real CLI)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from cli_helpers import kill_tree, run, start

# A job that writes 300 lines one write at a time: plenty of chances to interleave.
CHATTY = "i=0; while [ $i -lt 300 ]; do echo {}-$i; i=$((i+1)); done"


def test_grouped_output_never_interleaves() -> None:
    r = run("-j", "4", CHATTY, ":::", "a", "b", "c", "d")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1200
    blocks = [key for key, _ in itertools.groupby(line.split("-")[0] for line in lines)]
    assert sorted(blocks) == ["a", "b", "c", "d"]  # each job's output is one block
    for job in "abcd":
        assert [x for x in lines if x.startswith(job + "-")] == [f"{job}-{i}" for i in range(300)]


def test_big_output_is_whole_and_tagged_across_pieces() -> None:
    # 20 MB: more than is kept in memory (it spills to a temporary file), read back in
    # pieces that split lines; every line must still be whole and tagged once.
    big = "head -c 20000000 /dev/zero | tr '\\0' a | fold -w 99; echo; echo end; : {}"
    r = run("-k", "--tag", big, ":::", "big", "small")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines.pop() == ""
    full, rest = divmod(20_000_000, 99)
    for n, tag in enumerate(("big", "small")):
        block = lines[n * (full + 2) : (n + 1) * (full + 2)]
        expected = [f"{tag}\t" + "a" * 99] * full + [f"{tag}\t" + "a" * rest, f"{tag}\tend"]
        assert block == expected
    assert len(lines) == 2 * (full + 2)


def test_stdout_and_stderr_are_kept_apart() -> None:
    r = run("-k", "echo out {}; echo err {} >&2", ":::", "1", "2")
    assert r.stdout == "out 1\nout 2\n"
    assert r.stderr == "err 1\nerr 2\n"


def test_keep_order_when_later_jobs_finish_first(tmp_path: Path) -> None:
    # Job 1 cannot end before job 3 has ended, yet -k prints 1, 2, 3.
    cmd = (
        f"if [ {{}} = 1 ]; then while [ ! -e {tmp_path}/3.done ]; do sleep 0.01; done; fi;"
        f" echo {{}}; echo {{}}-err >&2; touch {tmp_path}/{{}}.done"
    )
    r = run("-k", "-j", "3", cmd, ":::", "1", "2", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "1\n2\n3\n"
    assert r.stderr == "1-err\n2-err\n3-err\n"


def test_tag_prefixes_every_line() -> None:
    r = run("-k", "--tag", "printf 'x\\ny\\n'; printf 'e\\n' >&2", ":::", "a", "b c")
    assert r.stdout == "a\tx\na\ty\nb c\tx\nb c\ty\n"
    assert r.stderr == "a\te\nb c\te\n"
    r = run("-k", "--tag", "echo {2}", ":::", "a", ":::", "1", "2")
    assert r.stdout == "a 1\t1\na 2\t2\n"
    r = run("--tag", "printf abc", ":::", "p")  # a final partial line is tagged too
    assert r.stdout == "p\tabc"


def test_line_buffer_streams_whole_lines(tmp_path: Path) -> None:
    go = tmp_path / "go"
    proc = start(
        "--line-buffer",
        "--tag",
        "-j",
        "2",
        f"if [ {{}} = slow ]; then echo first; while [ ! -e {go} ]; do sleep 0.01;"
        f" done; printf 'half'; sleep 0.05; echo ' line'; else echo quick; fi",
        ":::",
        "slow",
        "fast",
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # arrives while the slow job is still running
        assert first in (b"slow\tfirst\n", b"fast\tquick\n")
        second = proc.stdout.readline()
        assert {first, second} == {b"slow\tfirst\n", b"fast\tquick\n"}
        assert proc.poll() is None
        go.touch()
        assert proc.stdout.read() == b"slow\thalf line\n"  # never a half line
        assert proc.wait(timeout=30) == 0
    finally:
        kill_tree(proc)


def test_line_buffer_with_keep_order(tmp_path: Path) -> None:
    cmd = (
        f"echo {{}}-a; if [ {{}} = 1 ]; then while [ ! -e {tmp_path}/2.done ]; do"
        f" sleep 0.01; done; fi; echo {{}}-b; touch {tmp_path}/{{}}.done"
    )
    r = run("--line-buffer", "-k", "-j", "2", cmd, ":::", "1", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "1-a\n1-b\n2-a\n2-b\n"


def test_line_buffer_many_jobs_whole_lines() -> None:
    r = run("--line-buffer", "-j", "4", CHATTY, ":::", "a", "b", "c", "d")
    lines = r.stdout.splitlines()
    assert sorted(lines) == sorted(f"{j}-{i}" for j in "abcd" for i in range(300))


def test_progress_bar_on_stderr() -> None:
    r = run("--progress", "-k", "echo", ":::", "a", "b", "c", "d", "e")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "a\nb\nc\nd\ne\n"
    assert "5/5" in r.stderr


def test_eta_counts_stdin_inputs_first_and_shows_time_left() -> None:
    r = run("--eta", "-k", "echo", input="a\nb\nc\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "a\nb\nc\n"
    assert "3/3" in r.stderr
    assert "<00:00" in r.stderr  # tqdm's [elapsed<remaining]


def test_closed_stdout_stops_quietly(tmp_path: Path) -> None:
    proc = start("-j", "2", "yes {} | head -c 100000", ":::", *[str(i) for i in range(50)])
    try:
        assert proc.stdout is not None
        proc.stdout.read(10)
        proc.stdout.close()
        code = proc.wait(timeout=30)
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert code == 255
        assert b"Traceback" not in err
    finally:
        kill_tree(proc)


def test_ungroup_writes_partial_lines_as_they_come(tmp_path: Path) -> None:
    # The job prints a partial line, then waits for the test to have seen it: only
    # ungrouped output can show it before the job ends.
    go = tmp_path / "go"
    wait = f"while [ ! -e {go} ]; do sleep 0.01; done"
    proc = start("-u", f"printf partial; {wait}; echo ' done'; : {{}}", ":::", "x")
    try:
        assert proc.stdout is not None
        seen = b""
        while not seen.endswith(b"partial"):
            chunk = os.read(proc.stdout.fileno(), 100)
            assert chunk, "output ended before the partial line arrived"
            seen += chunk
        go.touch()
        assert proc.wait(timeout=30) == 0
        assert seen + proc.stdout.read() == b"partial done\n"
    finally:
        kill_tree(proc)


def test_tagstring_and_ungroup_errors() -> None:
    r = run("-k", "--tagstring", "{#}/{/}", "echo x", ":::", "d/a", "b")
    assert r.stdout == "1/a\tx d/a\n2/b\tx b\n"
    r = run("-u", "--tag", "echo", ":::", "a")
    assert r.returncode == 255 and "-u/--ungroup and --tag" in r.stderr
