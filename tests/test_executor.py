"""conveyor.Pool as a drop-in ``concurrent.futures.Executor`` (issue 8), on every Python.

Pool.map is checked against the standard library's executors (a differential test), and the
"nothing pinned" guarantee with weak references, as CPython's test_free_reference and
test_no_stale_references do.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import (
    BrokenExecutor,
    CancelledError,
    ThreadPoolExecutor,
)
from concurrent.futures import (
    TimeoutError as FuturesTimeout,
)
from typing import Any

import pytest

import conveyor

import faults
import tasks

BACKENDS = ["process", "thread"]


@pytest.fixture(params=BACKENDS)
def pool(request: pytest.FixtureRequest) -> Iterator[conveyor.Pool]:
    with faults.no_leftovers(), conveyor.Pool(workers=2, backend=request.param) as p:
        yield p


class Payload:
    """An object to hold weak references to."""

    def method(self) -> int:
        return 1


def make_payload(_: Any) -> Payload:
    return Payload()


def collected(ref: weakref.ref[Any], within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        gc.collect()
        if ref() is None:
            return True
        time.sleep(0.01)  # polling for the collector, not synchronizing with a worker
    return False


# ------------------------------------------------------------------ Executor.map's contract


def divide(a: int, b: int) -> float:
    return a / b


@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.parametrize("buffersize", [None, 2])
def test_map_matches_the_standard_library(
    pool: conveyor.Pool, chunksize: int, buffersize: int | None
) -> None:
    """Differential: the same values, and the same exception at the same item, as
    ThreadPoolExecutor.map."""

    def outcomes(results: Iterator[Any]) -> list[Any]:
        out: list[Any] = []
        try:
            for value in results:
                out.append(value)
        except Exception as exc:
            out.append(type(exc))
        return out

    a, b = [1, 2, 3, 4, 5, 6, 7], [1, 2, 4, 0, 5, 1, 1]
    with ThreadPoolExecutor(2) as reference:
        expected = outcomes(reference.map(divide, a, b))
    kwargs: dict[str, Any] = {"chunksize": chunksize}
    if buffersize is not None:
        kwargs["buffersize"] = buffersize
    assert outcomes(pool.map(divide, a, b, **kwargs)) == expected == [1, 1, 0.75, ZeroDivisionError]


def test_map_returns_at_once_and_submits_everything(pool: conveyor.Pool, tmp_path) -> None:
    go = tmp_path / "go"
    results = pool.map(faults.touch_and_wait, [str(tmp_path)] * 2, range(2), [str(go)] * 2)
    # Not iterated yet, every task runs (the standard library submits them in the call).
    faults.wait_until(lambda: len(list(tmp_path.glob("started.*"))) == 2, 60, "both started")
    go.write_text("")
    assert list(results) == [0, 1]


def test_map_timeout_is_a_deadline_for_the_whole_iteration(pool: conveyor.Pool) -> None:
    started = time.monotonic()
    results = pool.map(time.sleep, [0, 0, 3], timeout=1.5)
    got = []
    with pytest.raises(FuturesTimeout, match="task_timeout="):
        for value in results:
            got.append(value)
    assert got == [None, None]
    assert time.monotonic() - started < 20


def test_map_buffersize_bounds_the_tasks_in_flight(pool: conveyor.Pool) -> None:
    taken: list[int] = []

    def source() -> Iterator[int]:
        for i in range(100):
            taken.append(i)
            yield i

    results = pool.map(abs, source(), buffersize=3)
    assert len(taken) == 3  # read as results are taken, not in the call
    assert next(results) == 0
    assert len(taken) == 4
    assert list(results) == list(range(1, 100))


def test_map_bad_arguments_are_named(pool: conveyor.Pool) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(abs, [1], chunksize=0)
    with pytest.raises(ValueError, match="buffersize"):
        pool.map(abs, [1], buffersize=0)
    with pytest.raises(TypeError, match="buffersize"):
        pool.map(abs, [1], buffersize=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="task_timeout"):
        pool.options(timeout=5)  # type: ignore[arg-type]


def test_closing_the_map_cancels_what_has_not_started() -> None:
    runs: list[int] = []

    def record(x: int) -> int:
        runs.append(x)
        time.sleep(0.01)
        return x

    with conveyor.Pool(workers=1, backend="thread") as pool:
        results = pool.map(record, range(50))
        assert next(results) == 0
        results.close()
        assert pool.submit(abs, -1).result(timeout=60) == 1  # queued after all 50
        assert len(runs) < 10


def test_unpicklable_argument_fails_alone_in_map() -> None:
    with conveyor.Pool(workers=2) as pool:
        results = pool.map(tasks.add, [1, threading.Lock(), 3], [1, 1, 1])
        assert next(results) == 2
        with pytest.raises(conveyor.Unsendable):
            next(results)
        assert list(pool.map(abs, [-1, -2])) == [1, 2]  # the pool is not broken


# ------------------------------------------------------------------ one word, one meaning


def test_conveyor_map_timeout_is_a_deadline_that_stops_the_work() -> None:
    started = time.monotonic()
    with pytest.raises(FuturesTimeout, match="task_timeout="):
        conveyor.map(time.sleep, [30] * 4, backend="process", workers=2, timeout=1.0)
    assert time.monotonic() - started < 20
    # the workers that ran it were stopped: the next call is not queued behind 30 s sleeps
    assert conveyor.map(abs, [-1], backend="process", workers=2, timeout=60) == [1]
    assert time.monotonic() - started < 40


def test_imap_timeout_counts_from_the_call() -> None:
    results = conveyor.imap(time.sleep, [0.05] * 400, backend="thread", workers=1, timeout=1.0)
    with pytest.raises(FuturesTimeout):
        list(results)


# ------------------------------------------------------------------ nothing pinned


def test_submit_keeps_no_reference_to_the_callable(pool: conveyor.Pool) -> None:
    # CPython's test_no_stale_references: a bound method holds its object
    payload = Payload()
    ref = weakref.ref(payload)
    assert pool.submit(payload.method).result(timeout=60) == 1
    del payload
    assert collected(ref)


def test_submit_keeps_no_reference_to_arguments_or_result(pool: conveyor.Pool) -> None:
    argument = Payload()
    arg_ref = weakref.ref(argument)
    future = pool.submit(make_payload, argument)
    result_ref = weakref.ref(future.result(timeout=60))
    del argument, future
    assert collected(arg_ref)
    assert collected(result_ref)


def test_map_iterator_keeps_no_reference_to_results(pool: conveyor.Pool) -> None:
    # CPython's test_free_reference
    for obj in pool.map(make_payload, range(10), chunksize=3):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def _closure_over(payload: Payload) -> Any:
    def closure(x: int) -> int:
        return x + payload.method()

    return closure


def test_function_cache_keeps_no_closure_alive() -> None:
    with conveyor.Pool(workers=1) as pool:
        payload = Payload()
        ref = weakref.ref(payload)
        closure = _closure_over(payload)
        assert list(pool.imap(closure, range(5))) == [1, 2, 3, 4, 5]
        del closure, payload
        assert collected(ref)


# ------------------------------------------------------------------ Python 3.14's API, stop


@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers(how: str) -> None:
    with faults.no_leftovers():
        pool = conveyor.Pool(workers=2)
        running = pool.submit(time.sleep, 60)
        faults.wait_until(running.running, 60, "the task to start")
        getattr(pool, how)()
        with pytest.raises(conveyor.PoolClosed):
            running.result(timeout=60)
        with pytest.raises(RuntimeError):
            pool.submit(abs, 1)


def test_stop_one_running_task(pool: conveyor.Pool, tmp_path) -> None:
    go = tmp_path / "go"
    blocked = pool.submit(faults.touch_and_wait, str(tmp_path), 0, str(go))
    other = pool.submit(tasks.square, 3)
    faults.wait_until(lambda: (tmp_path / "started.0").exists(), 60, "the task to start")
    assert pool.stop(blocked)
    go.write_text("")  # a thread cannot be killed: let the abandoned one end
    with pytest.raises(CancelledError):
        blocked.result(timeout=60)
    assert isinstance(blocked.exception(), conveyor.TaskStopped)
    assert other.result(timeout=60) == 9
    assert pool.submit(tasks.square, 4).result(timeout=60) == 16
    assert not pool.stop(other)  # finished already


# ------------------------------------------------------------------ public exceptions


def test_every_exception_subclasses_the_standard_one() -> None:
    assert issubclass(conveyor.TaskTimeout, TimeoutError)
    assert issubclass(conveyor.TaskTimeout, FuturesTimeout)
    assert issubclass(conveyor.WorkerCrashed, BrokenExecutor)
    assert issubclass(conveyor.WorkerInitError, BrokenExecutor)
    assert issubclass(conveyor.TaskStopped, CancelledError)
    assert issubclass(conveyor.PoolClosed, RuntimeError)
    assert issubclass(conveyor.Unsendable, TypeError)
    for name in ("TaskTimeout", "WorkerCrashed", "PoolClosed", "Unsendable", "WorkerInitError"):
        assert getattr(conveyor, name).__module__ == "conveyor"


def test_failed_initializer_is_a_broken_executor() -> None:
    with conveyor.Pool(workers=1, initializer=int, initargs=("x",)) as pool:
        with pytest.raises(BrokenExecutor, match="initializer"):
            pool.submit(abs, 1).result(timeout=60)
        with pytest.raises(BrokenExecutor):
            pool.submit(abs, 1)
