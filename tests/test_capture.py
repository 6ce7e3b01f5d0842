"""``capture_output=True``: each item's prints stay with the item, on threads and processes.

A failed item's stdout/stderr are on its Failure (and, on Python 3.11+, notes of its
exception); a successful item's output is written whole when it ends, so items running at the
same time never interleave their lines.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import conveyor

pytestmark = pytest.mark.timeout(120)


def chatty(x: int) -> int:
    for line in range(3):
        print(f"item {x} line {line}")
    print(f"item {x} warns", file=sys.stderr)
    if x % 2:
        raise ValueError(x)
    return x


async def coroutine(x: int) -> int:
    return x


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_failure_carries_its_own_output(backend: str) -> None:
    results = conveyor.map(
        chatty, range(8), backend=backend, chunksize=1, on_error="return", capture_output=True
    )
    for x, result in enumerate(results):
        if x % 2:
            assert isinstance(result, conveyor.Failure)
            assert result.stdout == "".join(f"item {x} line {n}\n" for n in range(3))
            assert result.stderr == f"item {x} warns\n"
        else:
            assert result == x


SCRIPT = """
import conveyor, test_capture
with conveyor.Pool(workers=4, backend=BACKEND) as pool:
    results = list(pool.imap(test_capture.chatty, range(0, 40, 2), chunksize=1,
                             capture_output=True))
assert results == list(range(0, 40, 2)), results
"""


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_successful_output_is_written_whole(backend: str) -> None:
    # In a child interpreter: its workers' stdout is the pipe read here (a fork server started
    # by an earlier test would have kept the test runner's own stdout).
    script = SCRIPT.replace("BACKEND", repr(backend))
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=os.path.dirname(__file__),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 60
    for start in range(0, 60, 3):  # each item's three lines together, in order
        x = lines[start].split()[1]
        assert lines[start : start + 3] == [f"item {x} line {n}" for n in range(3)]
    assert sorted(done.stderr.splitlines()) == sorted(f"item {x} warns" for x in range(0, 40, 2))


def test_raised_exception_keeps_the_output() -> None:
    with pytest.raises(ValueError) as caught:
        conveyor.map(chatty, [1], backend="thread", capture_output=True)
    failure = conveyor.Failure(1, caught.value)
    assert failure.stdout.startswith("item 1 line 0")
    if sys.version_info >= (3, 11):
        assert any("captured stdout" in note for note in caught.value.__notes__)


def test_without_capture_failures_have_no_output() -> None:
    (result,) = conveyor.map(int, ["x"], backend="thread", on_error="return")
    assert result.stdout == "" and result.stderr == ""


def test_async_functions_are_refused() -> None:
    with pytest.raises(TypeError, match="capture_output=True is for plain functions"):
        conveyor.map(coroutine, [1], backend="thread", capture_output=True)


def test_bad_value_names_the_option() -> None:
    with pytest.raises(TypeError, match="capture_output must be True or False"):
        conveyor.map(abs, [1], capture_output="yes")  # type: ignore[arg-type]
