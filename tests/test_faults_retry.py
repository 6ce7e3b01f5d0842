"""Retries and ``on_error``: exact outcomes per item, with the Failure record filled in."""

from __future__ import annotations

import functools
import inspect
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor._job import MAX_CHUNKS_PER_MESSAGE, ORDERED_CHUNKS_PER_WORKER

import faults

pytestmark = pytest.mark.timeout(60)


def raise_line(fn: Any, text: str) -> int:
    """The line number in faults.py of the line of ``fn`` containing ``text``."""
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


@pytest.fixture(params=["process", "thread"])
def pool(request: pytest.FixtureRequest):
    with conveyor.Pool(workers=2, backend=request.param) as p:
        yield p


def test_an_item_that_fails_twice_then_succeeds(pool: conveyor.Pool, tmp_path: Path) -> None:
    task = functools.partial(faults.fail_times, str(tmp_path), times=2)
    started = time.monotonic()
    assert list(pool.imap(task, range(10), retries=2)) == list(range(10))
    # every item was tried exactly three times, with a small backoff (50 ms, then 100 ms)
    assert [int((tmp_path / f"attempts.{i}").read_text()) for i in range(10)] == [3] * 10
    assert time.monotonic() - started >= 0.15


def test_retries_run_out_and_the_failure_says_everything(
    pool: conveyor.Pool, tmp_path: Path
) -> None:
    task = functools.partial(faults.fail_times, str(tmp_path), times=5)
    out = list(pool.imap(task, range(4), retries=1, on_error="return"))
    line = raise_line(faults.fail_times, "raise RuntimeError")
    for item, failure in enumerate(out):
        assert isinstance(failure, conveyor.Failure)
        assert failure.item == item
        assert failure.attempts == 2
        assert isinstance(failure.exception, RuntimeError)
        assert str(failure.exception) == f"attempt 2 at item {item} failed"
        # the traceback text names the function and the line that raised, in faults.py
        assert f'faults.py", line {line}, in fail_times' in failure.traceback
        assert 'raise RuntimeError(f"attempt {attempts}' in failure.traceback
        assert failure.traceback.rstrip().endswith(f"attempt 2 at item {item} failed")


def test_on_error_return_skip_and_raise(pool: conveyor.Pool) -> None:
    task = functools.partial(faults.fail_on, bad=3)
    out = list(pool.imap(task, range(8), on_error="return"))
    assert [o for i, o in enumerate(out) if i != 3] == [i * i for i in range(8) if i != 3]
    assert isinstance(out[3], conveyor.Failure) and out[3].item == 3 and out[3].attempts == 1
    assert "in fail_on" in out[3].traceback

    assert list(pool.imap(task, range(8), on_error="skip")) == [i * i for i in range(8) if i != 3]
    assert sorted(pool.imap_unordered(task, range(8), on_error="skip")) == sorted(
        i * i for i in range(8) if i != 3
    )

    with pytest.raises(ValueError, match="item 3 is bad"):
        list(pool.imap(task, range(8), on_error="raise"))
    assert list(pool.imap(faults.square, range(5))) == [0, 1, 4, 9, 16]  # still serves


def test_on_error_raise_stops_taking_input(pool: conveyor.Pool) -> None:
    taken = itertools.count()

    def endless():
        for i in itertools.count():
            next(taken)
            yield i

    task = functools.partial(faults.fail_on, bad=50)
    with pytest.raises(ValueError, match="item 50 is bad"):
        for _ in pool.imap(task, endless(), chunksize=10):
            pass
    # the rest was cancelled: only a bounded look-ahead of the endless input was ever taken
    # (chunks this short go several to a message to a worker process: a few such per worker)
    per_worker = ORDERED_CHUNKS_PER_WORKER
    if pool.backend_name == "process":
        per_worker *= MAX_CHUNKS_PER_MESSAGE
    assert next(taken) < 50 + 10 * per_worker * 2 * 2


def test_retries_on_submit(pool: conveyor.Pool, tmp_path: Path) -> None:
    ok = pool.options(retries=2).submit(faults.fail_times, str(tmp_path), 0, 2)
    assert ok.result(timeout=30) == 0
    not_enough = pool.options(retries=1).submit(faults.fail_times, str(tmp_path), 1, 2)
    error = not_enough.exception(timeout=30)
    assert isinstance(error, RuntimeError) and str(error) == "attempt 2 at item 1 failed"


def test_retries_after_crashes_and_timeouts(tmp_path: Path) -> None:
    with conveyor.Pool(workers=2) as pool:
        crash_twice = functools.partial(faults.crash_times, str(tmp_path), times=2)
        assert pool.options(retries=2).submit(crash_twice, 7).result(timeout=30) == 7
        (failure,) = pool.imap(crash_twice, [8], retries=1, on_error="return")
        assert isinstance(failure.exception, conveyor.WorkerCrashed)
        assert failure.attempts == 2 and failure.item == 8
        assert failure.exception.signal_name == "SIGKILL"
