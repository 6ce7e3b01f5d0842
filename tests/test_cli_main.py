"""The ``conveyor`` command itself: help texts, subcommand dispatch, ``conveyor demo``."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import conveyor
from conveyor.cli.__main__ import main

from cli_helpers import run, run_cli


def test_run_help_documents_quoting_and_examples() -> None:
    r = run("--help")
    assert r.returncode == 0
    for text in (
        "examples:",
        "quoting (exactly):",
        "never spliced into that shell code",
        "differences from GNU parallel",
        "command line limits",
        "replacement strings",
        "--halt",
        "--joblog",
        "--resume-failed",
        "--line-buffer",
        "exit status",
        "{/.}",
        "{%}",
        "-q, --quote",
        "::::",
    ):
        assert text in r.stdout, text


def test_top_level_help_and_errors() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    assert "run" in r.stdout and "demo" in r.stdout
    r = run_cli("bogus")
    assert r.returncode == 255
    assert "invalid choice" in r.stderr and "Traceback" not in r.stderr
    r = run_cli()
    assert r.returncode == 255 and "usage" in r.stderr


def test_version_is_the_installed_package_metadata() -> None:
    expected = importlib.metadata.version("conveyor")
    assert conveyor.__version__ == expected
    for flag in ("--version", "-V"):
        r = run_cli(flag)
        assert (r.returncode, r.stdout, r.stderr) == (0, f"conveyor {expected}\n", "")
    assert "--version" in run_cli("--help").stdout


def test_main_function_returns_the_exit_code(capsys: object) -> None:
    assert main(["run", "--dry-run", "echo", ":::", "x"]) == 0
    assert main(["run", "-j", "abc", "echo"]) == 255


def test_console_script_is_the_same_program() -> None:
    script = Path(sys.executable).with_name("conveyor")
    if not script.exists():
        found = shutil.which("conveyor")
        assert found, "the conveyor console script is not installed"
        script = Path(found)
    done = subprocess.run(
        [str(script), "run", "-k", "echo", ":::", "a", "b"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "a\nb\n")


def test_demo_counts_primes_three_ways() -> None:
    r = run_cli("demo", "--limit", "20000", "--blocks", "4", "--workers", "2", timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    rows = [line.split() for line in lines]
    table = {
        row[0]: row
        for row in rows
        if len(row) == 4 and row[0] in ("serial", "threads", "processes")
    }
    assert set(table) == {"serial", "threads", "processes"}
    assert {row[3] for row in table.values()} == {"2,262"}  # primes below 20,000
    assert all(row[2].endswith("x") for row in table.values())


def test_demo_bad_option() -> None:
    r = run_cli("demo", "--limit", "1")
    assert r.returncode == 255 and "--limit" in r.stderr
