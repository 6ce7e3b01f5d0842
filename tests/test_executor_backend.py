"""Any ``concurrent.futures.Executor`` as conveyor's backend (``backend=executor``): conveyor's
maps, ``on_error``, ``task_timeout`` and retries on the standard library's executors and on
loky's, with real faults (a worker that ``os._exit``\\ s), and the executor left to its owner."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import pytest

import conveyor

import faults

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["thread", "process"])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    made: Executor = ThreadPoolExecutor(2) if request.param == "thread" else ProcessPoolExecutor(2)
    with made:
        yield made


def test_maps_and_submit_on_any_executor(executor: Executor) -> None:
    offset = 3  # a lambda with a closure: sent by value even to an executor that pickles
    assert conveyor.map(lambda x: x + offset, range(50), backend=executor) == list(range(3, 53))
    assert sorted(conveyor.imap_unordered(faults.square, range(20), backend=executor)) == [
        x * x for x in range(20)
    ]
    assert conveyor.starmap(pow, [(2, 3), (3, 2)], backend=executor) == [8, 9]
    with conveyor.Pool(backend=executor) as pool:
        assert pool.submit(pow, 2, 10).result(timeout=60) == 1024
        assert list(pool.map(abs, [-1, -2])) == [1, 2]
        assert pool.workers == 2  # the executor's own width
    # the pool was the caller's view of the executor: shutting it down left the executor open
    assert executor.submit(abs, -5).result(timeout=60) == 5


def test_thread_executor_runs_the_callers_function_itself() -> None:
    seen: list[int] = []
    with ThreadPoolExecutor(2) as executor:
        conveyor.map(seen.append, range(100), backend=executor)
    assert sorted(seen) == list(range(100))  # not a copy's side effect


def test_failures_are_records_and_raise_their_own_type(executor: Executor) -> None:
    results = conveyor.map(int, ["1", "x", "3"], backend=executor, on_error="return")
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], conveyor.Failure)
    assert isinstance(results[1].exception, ValueError)
    with pytest.raises(ValueError, match="invalid literal"):
        conveyor.map(int, ["x"], backend=executor)


def test_task_timeout_stops_waiting_for_the_item(executor: Executor) -> None:
    started = time.monotonic()
    results = conveyor.map(
        faults.nap, [30, 0], backend=executor, task_timeout=0.5, chunksize=1, on_error="return"
    )
    assert isinstance(results[0], conveyor.Failure)
    assert isinstance(results[0].exception, conveyor.TaskTimeout)
    assert results[1] == 0
    assert time.monotonic() - started < 20


def test_a_dead_worker_fails_its_items_not_the_call() -> None:
    with ProcessPoolExecutor(2) as executor:
        results = conveyor.starmap(
            faults.crash_on, [(2, 2, "exit")], backend=executor, on_error="return"
        )
    assert isinstance(results[0], conveyor.Failure)
    assert isinstance(results[0].exception, conveyor.WorkerCrashed)
    assert "BrokenProcessPool" in str(results[0].exception)


def _set_env(name: str, value: str) -> None:
    os.environ[name] = value


def _get_env(name: str) -> str | None:
    return os.environ.get(name)


def test_initializer_runs_in_the_executors_workers() -> None:
    with (
        ProcessPoolExecutor(2) as executor,
        conveyor.Pool(
            backend=executor, initializer=_set_env, initargs=("CONVEYOR_T", "42")
        ) as pool,
    ):
        assert set(pool.imap(_get_env, ["CONVEYOR_T"] * 10, chunksize=1)) == {"42"}


def test_loky_executor() -> None:
    loky = pytest.importorskip("loky")
    executor = loky.get_reusable_executor(max_workers=2)
    assert conveyor.map(lambda x: -x, range(10), backend=executor) == [-x for x in range(10)]


def test_bad_backend_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"concurrent\.futures\.Executor, got 42"):
        conveyor.Pool(backend=42)  # type: ignore[arg-type]
    with ThreadPoolExecutor(1) as executor, pytest.raises(ValueError, match="max_tasks_per_worker"):
        conveyor.Pool(backend=executor, max_tasks_per_worker=3)
