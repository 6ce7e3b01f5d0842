"""conveyor.multiprocessing against multiprocessing.Pool and multiprocessing.pool.ThreadPool.

The same call sequences go to the drop-in and to the standard library's pool, and must give the
same results and the same exceptions (Hypothesis writes the sequences). Then what the standard
library cannot do: a worker killed under a task, Ctrl-C in a child interpreter, terminate().
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.pool
import operator
import os
import pickle
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor
import conveyor.multiprocessing as cmp
from conveyor._errors import PoolClosed

import faults
import tasks

KINDS = {
    "process": (cmp.Pool, multiprocessing.Pool),
    "thread": (cmp.ThreadPool, multiprocessing.pool.ThreadPool),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def pools(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    """(the drop-in, the standard library's pool), two workers each, for the whole module."""
    ours_type, theirs_type = KINDS[request.param]
    ours, theirs = ours_type(2), theirs_type(2)
    yield ours, theirs
    for pool in (ours, theirs):
        pool.terminate()
        pool.join()


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a call did, comparable across pools: its value or its exception's type and text."""
    try:
        return "value", call()
    except Exception as exc:
        return "raised", (type(exc), str(exc))


def each_item(iterator: Iterator[Any]) -> list[tuple[str, Any]]:
    """Every item an imap iterator yields or raises, until it stops."""
    seen = []
    while True:
        try:
            seen.append(("value", next(iterator)))
        except StopIteration:
            return seen
        except Exception as exc:
            seen.append(("raised", (type(exc), str(exc))))


# One call on a pool, described so that both pools can run it.
items = st.lists(st.integers(-5, 12), max_size=30)
chunksizes = st.one_of(st.none(), st.integers(1, 7))
calls = st.one_of(
    st.tuples(st.just("map"), items, chunksizes),
    st.tuples(st.just("map_async"), items, chunksizes),
    st.tuples(st.just("starmap"), items, chunksizes),
    st.tuples(st.just("starmap_async"), items, chunksizes),
    st.tuples(st.just("imap"), items, st.sampled_from([None, 1])),
    st.tuples(st.just("imap_unordered"), items, st.sampled_from([None, 1])),
    st.tuples(st.just("apply"), st.integers(-5, 12), st.none()),
    st.tuples(st.just("apply_async"), st.integers(-5, 12), st.none()),
)


def run_call(pool: Any, call: tuple[str, Any, Any]) -> Any:
    """Run one generated call; item 3 fails (ValueError), so some calls raise."""
    name, argument, chunksize = call
    size = {} if chunksize is None else {"chunksize": chunksize}
    if name == "map":
        return outcome(lambda: pool.map(tasks.fail_on, argument, **size))
    if name == "map_async":
        return outcome(lambda: pool.map_async(tasks.fail_on, argument, **size).get(60))
    if name == "apply":
        return outcome(lambda: pool.apply(tasks.fail_on, (argument,)))
    if name == "apply_async":
        return outcome(lambda: pool.apply_async(tasks.fail_on, (argument,)).get(60))
    pairs = [(x, 4) for x in argument]
    if name == "starmap":
        return outcome(lambda: pool.starmap(tasks.fail_on, pairs, **size))
    if name == "starmap_async":
        return outcome(lambda: pool.starmap_async(tasks.fail_on, pairs, **size).get(60))
    if name == "imap":
        return each_item(pool.imap(tasks.fail_on, argument, **size))
    return sorted(each_item(pool.imap_unordered(tasks.fail_on, argument, **size)), key=repr)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=st.lists(calls, min_size=1, max_size=4))
def test_call_sequences_match_the_standard_library(
    pools: tuple[Any, Any], sequence: list[tuple[str, Any, Any]]
) -> None:
    ours, theirs = pools
    for call in sequence:
        assert run_call(ours, call) == run_call(theirs, call), call


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_constructor_errors_match(kind: str) -> None:
    ours, theirs = KINDS[kind]
    bad: list[dict[str, Any]] = [{"processes": 0}, {"processes": -1}, {"initializer": 5}]
    if kind == "process":
        bad += [{"maxtasksperchild": 0}, {"maxtasksperchild": 1.5}]
    for kwargs in bad:
        assert outcome(functools.partial(ours, **kwargs)) == outcome(
            functools.partial(theirs, **kwargs)
        ), kwargs


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_lifecycle_errors_match(kind: str) -> None:
    """A closed pool refuses work, join() needs close() first, a pool does not pickle."""

    def script(pool_type: Any) -> list[Any]:
        seen = []
        pool = pool_type(1)
        seen.append(outcome(pool.join))  # still running
        seen.append(outcome(lambda: pickle.dumps(pool)))
        pool.close()
        for attempt in (
            lambda: pool.apply(abs, (1,)),
            lambda: pool.apply_async(abs, (1,)),
            lambda: pool.map(abs, [1]),
            lambda: pool.map_async(abs, [1]),
            lambda: pool.imap(abs, [1]),
            lambda: pool.imap_unordered(abs, [1]),
            lambda: pool.starmap(abs, [(1,)]),
            lambda: pool.__enter__(),
        ):
            seen.append(outcome(attempt))
        pool.join()
        pool.terminate()
        pool.join()
        return seen

    ours, theirs = KINDS[kind]
    assert script(ours) == script(theirs)


def test_imap_chunksize_below_one_is_refused_like_the_standard_library(
    pools: tuple[Any, Any],
) -> None:
    for pool in pools:
        with pytest.raises(ValueError, match="Chunksize must be 1\\+"):
            pool.imap(abs, [1, 2], chunksize=0)


def test_an_unfinished_result_behaves_like_the_standard_library(
    pools: tuple[Any, Any], tmp_path: Path
) -> None:
    """Not ready: ready() False, successful() ValueError, get(timeout) multiprocessing's
    TimeoutError, imap's next(timeout) too; then the value, and callbacks before ready()."""
    for number, pool in enumerate(pools):
        go = str(tmp_path / f"go{number}")
        called: list[Any] = []
        result = pool.apply_async(faults.wait_for_path, (go,), callback=called.append)
        stream = pool.imap(faults.wait_for_path, [go])
        assert not result.ready()
        with pytest.raises(ValueError, match="not ready"):
            result.successful()
        with pytest.raises(multiprocessing.TimeoutError):
            result.get(timeout=0.01)
        with pytest.raises(multiprocessing.TimeoutError):
            stream.next(timeout=0.01)
        assert result.wait(0.01) is None
        Path(go).touch()
        assert result.get(60) is True and stream.next(60) is True
        assert result.ready() and result.successful() and called == [True]
        with pytest.raises(StopIteration):
            stream.next(60)


def test_callbacks_match_the_standard_library(pools: tuple[Any, Any]) -> None:
    def script(pool: Any) -> list[Any]:
        seen: list[Any] = []
        record = seen.append
        results = [
            pool.apply_async(abs, (-3,), callback=record),
            pool.apply_async(int, ("x",), error_callback=lambda e: record(repr(e))),
            pool.map_async(abs, [-1, -2], callback=record),
            pool.map_async(tasks.fail_on, [1, 3], error_callback=lambda e: record(repr(e))),
            pool.starmap_async(operator.add, [(1, 2)], callback=record),
        ]
        for result in results:
            result.wait(60)
            seen.append(result.successful())
        return sorted(map(repr, seen))

    ours, theirs = pools
    assert script(ours) == script(theirs)


def test_lambdas_and_closures_work() -> None:
    offset = 10
    with cmp.Pool(2) as pool:
        assert pool.map(lambda x: x + offset, range(3)) == [10, 11, 12]
        assert pool.apply_async(lambda: offset * 2).get(60) == 20


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_a_worker_killed_under_apply_async_raises_worker_crashed(how: str) -> None:
    with faults.no_leftovers(), cmp.Pool(2) as pool:
        result = pool.apply_async(faults.crash_on, (1, 1, how))
        with pytest.raises(conveyor.WorkerCrashed):
            result.get(60)
        assert result.ready() and not result.successful()
        # the pool replaced the worker and goes on
        assert pool.apply(faults.square, (7,)) == 49
        assert pool.map(faults.square, range(10), chunksize=2) == [x * x for x in range(10)]


def test_a_worker_killed_mid_map_async_fails_the_map_not_the_pool() -> None:
    with faults.no_leftovers(), cmp.Pool(2) as pool:
        # crash_on(x, bad): item 5 kills its worker
        result = pool.starmap_async(faults.crash_on, [(x, 5) for x in range(8)], chunksize=1)
        with pytest.raises(conveyor.WorkerCrashed):
            result.get(60)
        assert pool.map(faults.square, [3]) == [9]


def test_retries_let_a_map_survive_a_killed_worker(tmp_path: Path) -> None:
    with faults.no_leftovers(), cmp.Pool(2, retries=1) as pool:
        work = [(str(tmp_path), x, 1 if x == 2 else 0) for x in range(6)]
        assert pool.starmap_async(faults.crash_times, work).get(60) == list(range(6))


def test_task_timeout_stops_a_task() -> None:
    with cmp.Pool(1, task_timeout=0.5) as pool:
        with pytest.raises(conveyor.TaskTimeout):
            pool.apply(faults.nap, (30,))
        assert pool.apply(abs, (-1,)) == 1


def test_bad_task_timeout_is_named() -> None:
    with pytest.raises(ValueError, match="task_timeout"):
        cmp.Pool(1, task_timeout=-1)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_terminate_fails_unfinished_results_instead_of_hanging(kind: str, tmp_path: Path) -> None:
    go = str(tmp_path / "never")
    with faults.no_leftovers():
        pool = KINDS[kind][0](1)
        running = pool.apply_async(faults.wait_for_path, (go, 5.0))
        queued = pool.map_async(faults.wait_for_path, [go, go])
        stream = pool.imap(faults.wait_for_path, [go])
        pool.terminate()
        pool.join()
        for result in (queued, running):
            with pytest.raises(PoolClosed):
                result.get(60)
        with pytest.raises(PoolClosed):
            stream.next(60)


def test_close_then_join_finishes_everything_submitted(pools: tuple[Any, Any]) -> None:
    def script(pool_type: Any) -> list[Any]:
        pool = pool_type(2)
        results = [pool.apply_async(faults.square, (x,)) for x in range(5)]
        mapped = pool.map_async(faults.square, range(20), chunksize=3)
        stream = pool.imap_unordered(faults.square, range(7))
        pool.close()
        pool.join()
        assert all(r.ready() for r in [*results, mapped])
        return [[r.get(0) for r in results], mapped.get(0), sorted(stream)]

    for ours_type, theirs_type in KINDS.values():
        assert script(ours_type) == script(theirs_type)


def set_environment(name: str, value: str) -> None:
    os.environ[name] = value


def test_initializer_and_maxtasksperchild() -> None:
    with cmp.Pool(1, initializer=set_environment, initargs=("CONVEYOR_T", "set")) as pool:
        assert pool.apply(os.getenv, ("CONVEYOR_T",)) == "set"
    with cmp.Pool(1, maxtasksperchild=1) as pool:
        pids = {pool.apply(os.getpid) for _ in range(3)}
        assert len(pids) == 3
    with cmp.Pool(1, context=multiprocessing.get_context("spawn")) as pool:
        assert pool.apply(abs, (-2,)) == 2


def test_a_raising_callback_does_not_break_the_pool(capfd: pytest.CaptureFixture[str]) -> None:
    def broken(value: object) -> None:
        raise RuntimeError("a broken callback")

    with cmp.Pool(1) as pool:
        result = pool.apply_async(abs, (-1,), callback=broken)
        assert result.get(60) == 1
        assert pool.apply(abs, (-2,)) == 2
    assert "Exception in the callback" in capfd.readouterr().err


CTRL_C = {
    "with-map": "with Pool(2) as pool:\n    pool.map(task, range(4), chunksize=1)",
    "apply_async-get": "pool = Pool(2)\n[r.get() for r in [pool.apply_async(task, (i,))"
    " for i in range(4)]]",
    "imap": "with Pool(2) as pool:\n    list(pool.imap(task, range(4)))",
    "map_async-get": "pool = Pool(2)\npool.map_async(task, range(4), chunksize=1).get()",
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("call", sorted(CTRL_C))
def test_ctrl_c_in_a_script_using_the_drop_in_is_clean(tmp_path: Path, call: str) -> None:
    from test_faults_interrupt import check_clean_interrupt, hanging_script

    shm_before = faults.shm_entries()
    script = "from conveyor.multiprocessing import Pool\n" + CTRL_C[call]
    child = faults.start_child(hanging_script(tmp_path, script), tmp_path)
    child.wait_ready()
    child.signal_and_time(signal.SIGINT)
    check_clean_interrupt(child, tmp_path, shm_before, f"conveyor.multiprocessing {call}")


@pytest.fixture(scope="module")
def iteration_reference() -> Iterator[multiprocessing.pool.ThreadPool]:
    """The standard library's ThreadPool: the reference for how an imap iterator is taken.

    ``Pool.imap`` and ``ThreadPool.imap`` return the same class (``multiprocessing.pool.
    IMapIterator``), so either is the reference for *iteration*; the process pool is not used
    for it because it can be very slow to deliver many small results: its worker-handler thread
    also waits on the result pipe (``Pool._get_sentinels``), so while results are pending it
    wakes at once, again and again (seen at ~93% of a core in ``Pool._handle_workers``), and
    contends for the GIL with the threads that deliver them. On 2 cores the 30 examples took
    from 4 s to over 120 s on Python 3.10 (a CI timeout).
    """
    with multiprocessing.pool.ThreadPool(2) as pool:
        yield pool


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    size=st.integers(0, 300),
    takes=st.lists(st.tuples(st.sampled_from(["next", "loop"]), st.integers(1, 40)), max_size=8),
)
def test_mixing_next_and_for_loops_over_imap_loses_nothing(
    pools: tuple[Any, Any],
    iteration_reference: multiprocessing.pool.ThreadPool,
    size: int,
    takes: list[tuple[str, int]],
) -> None:
    """next(), a for loop left by break, another loop: as with the standard library."""

    def consume(iterator: Any) -> list[Any]:
        seen: list[Any] = []
        for how, count in takes:
            if how == "next":
                for _ in range(count):
                    seen.append(outcome(lambda: iterator.next(60)))
            else:
                for taken, value in enumerate(iterator, 1):
                    seen.append(("loop", value))
                    if taken == count:
                        break
        seen.append(("rest", list(iterator)))
        return seen

    ours = pools[0]
    items = list(range(size))
    expected = consume(iteration_reference.imap(faults.square, items, chunksize=1))
    assert consume(ours.imap(faults.square, items, chunksize=1)) == expected
    assert consume(ours.imap(faults.square, items)) == expected


def failing_input(total: int, when: int) -> Iterator[int]:
    for i in range(total):
        if i == when:
            raise KeyError(f"input {i}")
        yield i


@pytest.mark.parametrize("when", [0, 3, 9])
def test_an_input_that_raises_is_seen_after_the_results_before_it(
    pools: tuple[Any, Any], when: int
) -> None:
    """imap hands out what the input gave before it raised, then raises, then stops."""
    ours, theirs = pools
    for method in ("imap", "imap_unordered"):

        def run(pool: Any, method: str = method) -> list[Any]:
            seen = each_item(getattr(pool, method)(faults.square, failing_input(10, when), 1))
            return sorted(seen, key=repr) if method == "imap_unordered" else seen

        assert run(ours) == run(theirs)
    assert outcome(lambda: ours.map(faults.square, failing_input(10, when))) == outcome(
        lambda: theirs.map(faults.square, failing_input(10, when))
    )
