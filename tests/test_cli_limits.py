"""``conveyor run`` and the system's command-line limits (issue 16, item 8): a job over
``ARG_MAX`` / ``MAX_ARG_STRLEN`` is named with the limit, not a raw ``E2BIG``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conveyor.cli.limits import arg_max

from cli_helpers import run

LONG = "a" * 140_000  # over Linux's 128 KiB per argument

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="MAX_ARG_STRLEN is Linux's"
)


@linux_only
def test_known_inputs_over_the_limit_fail_before_any_job_runs(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.write_text(f"first\n{LONG}\n")
    r = run("-j1", "touch {}.ran; echo {}", "::::", str(inputs), cwd=tmp_path)
    assert r.returncode == 255
    assert "job 2 (input 'aaaa" in r.stderr
    assert "command line too long" in r.stderr
    assert "MAX_ARG_STRLEN" in r.stderr
    assert "Errno" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "first.ran").exists()  # decided before anything ran
    assert r.stdout == ""


def test_total_over_arg_max_is_named(tmp_path: Path) -> None:
    # Many groups whose values fit one by one but not together.
    piece = "b" * 100_000
    groups = arg_max() // 100_000 + 2
    files = []
    for i in range(groups):
        path = tmp_path / f"g{i}"
        path.write_text(piece + "\n")
        files.append(str(path))
    r = run("true {}", "::::", *files, cwd=tmp_path)
    assert r.returncode == 255
    assert "job 1 (input 'bbbb" in r.stderr
    assert "ARG_MAX" in r.stderr and str(arg_max()) in r.stderr
    assert "Errno" not in r.stderr


@linux_only
def test_stdin_input_over_the_limit_fails_only_its_job(tmp_path: Path) -> None:
    r = run("-k", "-j1", "echo {}", input=f"one\n{LONG}\nthree\n", cwd=tmp_path)
    assert r.returncode == 1  # one failed job
    assert r.stdout == "one\nthree\n"
    assert "job 2 (input 'aaaa" in r.stderr and "MAX_ARG_STRLEN" in r.stderr
    assert "Errno" not in r.stderr


@linux_only
def test_values_travel_apart_so_each_may_be_near_the_limit(tmp_path: Path) -> None:
    # Each value is its own argument of the shell, not part of the script's text:
    # two values of 100 KB each run, although together they exceed 128 KiB.
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("x" * 100_000 + "\n")
    b.write_text("y" * 100_000 + "\n")
    r = run("printf '%s' {1} {2} | wc -c", "::::", str(a), "::::", str(b))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "200000"
