"""``conveyor run`` input sources: ``:::``, ``::::``, stdin, ``-0`` (real CLI)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cli_helpers import CLI, kill_tree, run, start, wait_for


def test_stdin_lines_including_empty_ones() -> None:
    r = run("-k", "echo x{}y", input="a\n\nb c\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "xay\nxy\nxb cy\n"


def test_stdin_without_trailing_newline() -> None:
    r = run("-k", "echo", input="a\nb")
    assert r.stdout == "a\nb\n"


def test_null_separated_stdin_keeps_newlines() -> None:
    r = run("-k", "-0", "printf '[%s]'", input=b"a\nb\0c d\0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[a\nb][c d]"


def test_arg_file_and_null_arg_file(tmp_path: Path) -> None:
    lines = tmp_path / "lines"
    lines.write_text("one\ntwo 2\n")
    nul = tmp_path / "nul"
    nul.write_bytes(b"x\ny\0z")
    r = run("-k", "echo {1}/{2}", "::::", str(lines), ":::", "p", "q")
    assert r.stdout.splitlines() == ["one/p", "one/q", "two 2/p", "two 2/q"]
    r = run("-k", "-0", "printf '<%s>'", "::::", str(nul))
    assert r.stdout == "<x\ny><z>"
    r = run("-k", "echo {1}{2}", "::::", str(lines), str(lines))  # two file groups
    assert r.stdout.splitlines() == ["oneone", "onetwo 2", "two 2one", "two 2two 2"]


def test_dash_arg_file_is_stdin() -> None:
    r = run("-k", "echo {1}{2}", ":::", "a", "b", "::::", "-", input="1\n2\n")
    assert r.stdout.splitlines() == ["a1", "a2", "b1", "b2"]


def test_cartesian_product_of_three_groups() -> None:
    r = run("-k", "echo {1}{2}{3}", ":::", "a", "b", ":::", "1", "2", ":::", "x", "y")
    assert r.stdout.split() == [f"{a}{n}{x}" for a in "ab" for n in "12" for x in "xy"]


def test_empty_group_means_no_jobs() -> None:
    r = run("echo", "{}", ":::")
    assert (r.returncode, r.stdout) == (0, "")
    r = run("echo", input="")
    assert (r.returncode, r.stdout) == (0, "")


def test_undecodable_bytes_survive() -> None:
    name = b"caf\xe9 \xff"
    r = subprocess.run(
        [*CLI, "run", "printf '%s'"], input=name + b"\n", capture_output=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == name


def test_unreadable_arg_file_is_an_error(tmp_path: Path) -> None:
    r = run("echo", "::::", str(tmp_path / "missing"))
    assert r.returncode == 255
    assert "cannot read input file" in r.stderr and "missing" in r.stderr
    r = run("echo", "::::", str(tmp_path))  # a directory
    assert r.returncode == 255 and "cannot read input file" in r.stderr
    assert "Traceback" not in r.stderr


def test_jobs_start_while_stdin_is_still_open(tmp_path: Path) -> None:
    """Input is read lazily: the first job runs before stdin is closed."""
    proc = start(
        "--line-buffer", f"echo {{}} > {tmp_path}/{{}}.done; echo {{}}", stdin=subprocess.PIPE
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"first\n")
        proc.stdin.flush()
        wait_for(lambda: (tmp_path / "first.done").exists(), what="first job")
        proc.stdin.write(b"second\n")
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        assert proc.stdout is not None
        out = proc.stdout.read()
        assert sorted(out.split()) == [b"first", b"second"]
    finally:
        kill_tree(proc)
    assert os.path.exists(tmp_path / "second.done")


def test_linked_groups_advance_together(tmp_path: Path) -> None:
    # GNU parallel's rules (also checked against it in test_cli_vs_gnu.py): :::+ zips
    # with the group before, to the shorter; --link zips all, wrapping to the longest.
    r = run("-k", "echo {1}{2}{3}", ":::", "a", "b", ":::", "1", "2", "3", ":::+", "x", "y")
    assert r.stdout.split() == ["a1x", "a2y", "b1x", "b2y"]
    r = run("-k", "--link", "echo {1}{2}", ":::", "a", "b", "c", ":::", "1", "2")
    assert r.stdout.split() == ["a1", "b2", "c1"]
    r = run("--link", "echo {1}{2}", ":::", "a", ":::")  # an empty group: no job
    assert (r.returncode, r.stdout) == (0, "")


def test_arg_file_option_is_a_group_before_the_others(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("f1\nf2\n")
    r = run("-k", "-a", "f", "--arg-file", "f", "echo", ":::", "x", cwd=tmp_path)
    assert r.stdout.splitlines() == ["f1 f1 x", "f1 f2 x", "f2 f1 x", "f2 f2 x"]
    r = run("-a", "missing", "echo", cwd=tmp_path)
    assert r.returncode == 255 and "cannot read input file 'missing'" in r.stderr


def test_colsep_splits_inputs_into_columns() -> None:
    r = run("-k", "--colsep", ",", "echo {2}+{1} [{3}]", input="a,b\nc,d,e\n")
    assert r.stdout.splitlines() == ["b+a []", "d+c [e]"]
    r = run("--colsep", "(x", "echo", ":::", "a")
    assert r.returncode == 255 and "bad --colsep regular expression '(x'" in r.stderr
    r = run("--colsep", "x*", "echo", ":::", "a")
    assert r.returncode == 255 and "matches the empty string" in r.stderr


def test_max_args_gives_each_job_several_inputs() -> None:
    r = run("-k", "-n", "2", "echo {2}-{1} [{}]", ":::", "a", "b", "c")
    assert r.stdout.splitlines() == ["b-a [a b]", "-c [c]"]
    r = run("-k", "-N0", "echo x", ":::", "a", "b")
    assert r.stdout == "x\nx\n"
    r = run("--max-args=-1", "echo", ":::", "a")
    assert r.returncode == 255 and "-n/-N" in r.stderr


def test_csv_records_and_named_columns() -> None:
    r = run("-k", "--csv", "echo {2}-{1}", input='a,"b,c"\n"x\ny",z\n')
    assert r.stdout == "b,c-a\nz-x\ny\n"
    r = run("-k", "--header", ":", "--csv", "echo {new}-{old}", input="old,new\n1,2\n3,4\n")
    assert r.stdout == "2-1\n4-3\n"
    r = run("--header", "x", "echo", ":::", "a")
    assert r.returncode == 255 and "--header" in r.stderr
    r = run("--csv", "--colsep", ",", "echo", ":::", "a")
    assert r.returncode == 255 and "--csv and --colsep" in r.stderr
