"""The asyncio front: awaited calls and async maps, and that cancelling them stops the work.

Every test runs its own event loop (``asyncio.run``). A test that cancels a task first learns
for certain that the task runs (it writes a "started" file, see aio_tasks), then cancels, then
checks the worker process is gone (psutil) or the worker thread left its function.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import os
import resource
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

import conveyor
from conveyor._errors import RemoteTraceback
from conveyor._job import MAX_CHUNKS_PER_MESSAGE, ORDERED_CHUNKS_PER_WORKER

import aio_tasks
import faults
import tasks

pytestmark = pytest.mark.timeout(90)

needs_311 = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="asyncio.timeout and TaskGroup are Python 3.11+"
)


@pytest.fixture
def process_pool() -> Iterator[conveyor.Pool]:
    with faults.no_leftovers(), conveyor.Pool(workers=2, backend="process") as pool:
        yield pool


async def started(directory: Path, tag: object = 0) -> tuple[int, int]:
    """(pid, thread id) of the task that wrote its "started" file (waited for off the loop)."""
    path = directory / f"started.{tag}"
    await asyncio.to_thread(faults.wait_until, path.exists, 60, f"{path.name}")
    pid, ident = path.read_text().split()
    return int(pid), int(ident)


def assert_pool_serves(pool: conveyor.Pool, workers: int = 2) -> None:
    """The pool is back to its width and runs work."""
    faults.wait_until(lambda: len(pool._backend.worker_pids()) == workers, 10, "replacement")
    assert list(pool.imap(tasks.square, range(10))) == [i * i for i in range(10)]


# ---------------------------------------------------------------------- results


def test_awaited_calls_on_both_backends(pool: conveyor.Pool) -> None:
    async def main() -> list[Any]:
        return list(
            await asyncio.gather(
                pool.acall(tasks.add, 2, b=3),
                pool.acall(aio_tasks.async_square, 4),
                pool.options(retries=1).acall(divmod, 7, 2),
            )
        )

    assert asyncio.run(main()) == [5, 16, (3, 1)]


def test_maps_take_sync_and_async_input(pool: conveyor.Pool) -> None:
    async def numbers(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def main() -> tuple[list[int], ...]:
        ordered = [r async for r in pool.amap(tasks.square, numbers(50))]
        unordered = [r async for r in pool.amap_unordered(tasks.square, range(50))]
        star = [r async for r in pool.astarmap(tasks.add, ((i, i) for i in range(5)))]
        one_shot = [r async for r in conveyor.amap(abs, numbers(5), backend=pool.backend_name)]
        return ordered, sorted(unordered), star, one_shot

    ordered, unordered, star, one_shot = asyncio.run(main())
    assert ordered == unordered == [i * i for i in range(50)]
    assert star == [0, 2, 4, 6, 8]
    assert one_shot == [0, 1, 2, 3, 4]


def test_an_error_keeps_its_type_and_the_workers_traceback(pool: conveyor.Pool) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="bad item 3") as info:
            await pool.acall(tasks.fail_on, 3)
        if pool.backend_name == "process":
            assert isinstance(info.value.__cause__, RemoteTraceback)
            assert "fail_on" in str(info.value.__cause__)
        with pytest.raises(ValueError, match="bad item 3"):
            async for _ in pool.amap(tasks.fail_on, range(6), chunksize=1):
                pass
        with pytest.raises(KeyError, match="async item 2"):
            async for _ in pool.amap(aio_tasks.async_fail, range(4)):
                pass
        results = [r async for r in pool.amap(tasks.fail_on, range(5), on_error="return")]
        assert isinstance(results[3], conveyor.Failure)
        assert isinstance(results[3].exception, ValueError)
        assert "fail_on" in results[3].traceback

    asyncio.run(main())


def test_task_timeout_and_retries_as_in_map(pool: conveyor.Pool, tmp_path: Path) -> None:
    async def main() -> tuple[list[Any], list[Any], list[Any]]:
        timed = [
            r
            async for r in pool.amap(
                faults.nap, [0.0, 30.0], task_timeout=0.5, on_error="return", chunksize=1
            )
        ]
        coroutines = [
            r
            async for r in pool.amap(
                aio_tasks.async_forever, [1], task_timeout=0.5, on_error="return"
            )
        ]
        retried = [
            r
            async for r in pool.astarmap(
                faults.fail_times, [(str(tmp_path), i, 1) for i in range(3)], retries=1
            )
        ]
        return timed, coroutines, retried

    timed, coroutines, retried = asyncio.run(main())
    assert timed[0] == 0.0
    assert isinstance(timed[1].exception, conveyor.TaskTimeout)
    assert isinstance(coroutines[0].exception, conveyor.TaskTimeout)
    assert retried == [0, 1, 2]


@pytest.mark.parametrize("retries", [0, 1])
def test_a_crash_fails_only_its_item(process_pool: conveyor.Pool, tmp_path: Path, retries: int):
    async def main() -> list[Any]:
        if retries:
            items = [(str(tmp_path), i, 1 if i == 3 else 0) for i in range(8)]
            fn: Callable[..., Any] = faults.crash_times
        else:
            items = [(i, 3, "exit") for i in range(8)]
            fn = faults.crash_on
        return [
            r
            async for r in process_pool.astarmap(
                fn, items, retries=retries, on_error="return", chunksize=2
            )
        ]

    results = asyncio.run(main())
    if retries:
        assert results == list(range(8))
    else:
        assert isinstance(results[3].exception, conveyor.WorkerCrashed)
        assert [r for i, r in enumerate(results) if i != 3] == [i * i for i in range(8) if i != 3]
    assert_pool_serves(process_pool)


def test_async_def_functions_run_concurrently_in_each_worker(backend: str) -> None:
    group = 4
    with conveyor.Pool(workers=2, backend=backend) as pool:

        async def main() -> list[int]:
            return [
                r
                async for r in pool.amap(
                    functools.partial(aio_tasks.meet, group=group),
                    range(4 * group),
                    concurrency=group,
                    task_timeout=60,
                )
            ]

        most = asyncio.run(main())
    # every coroutine met `group - 1` others on its worker's loop, and never more
    assert most == [group] * (4 * group)


def test_one_pool_serves_sync_and_async_callers_at_once(pool: conveyor.Pool) -> None:
    async def main() -> tuple[list[int], list[int]]:
        sync = asyncio.to_thread(lambda: list(pool.imap(tasks.square, range(200))))
        awaited = asyncio.gather(*(pool.acall(tasks.square, i) for i in range(200)))
        return tuple(await asyncio.gather(sync, awaited))  # type: ignore[return-value]

    sync, awaited = asyncio.run(main())
    assert sync == awaited == [i * i for i in range(200)]


def test_an_idle_await_costs_no_cpu(process_pool: conveyor.Pool) -> None:
    async def main() -> float:
        await process_pool.acall(abs, 1)  # workers up, function cached
        before = resource.getrusage(resource.RUSAGE_SELF)
        await process_pool.acall(faults.nap, 2.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    cpu = asyncio.run(main())
    assert cpu < 0.02, f"the parent used {cpu:.3f} s of CPU while awaiting for 2 s"


# ---------------------------------------------------------------------- cancellation


@pytest.mark.parametrize("task", [aio_tasks.spin, aio_tasks.block_in_c])
def test_cancelling_an_awaited_process_task_kills_its_worker(
    process_pool: conveyor.Pool, tmp_path: Path, task: Callable[..., Any]
) -> None:
    async def main() -> tuple[int, float]:
        call = asyncio.create_task(process_pool.acall(task, str(tmp_path)))
        pid, _ = await started(tmp_path)
        call.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert time.monotonic() - cancelled_at < 0.5  # the await returns at once
        return pid, cancelled_at

    pid, cancelled_at = asyncio.run(main())
    faults.wait_gone([pid], timeout=5)
    assert time.monotonic() - cancelled_at < 5
    assert_pool_serves(process_pool)


@needs_311
def test_asyncio_timeout_and_a_failing_taskgroup_stop_process_tasks(
    process_pool: conveyor.Pool, tmp_path: Path
) -> None:
    async def timeout_around_amap() -> int:
        async with asyncio.timeout(None) as deadline:  # type: ignore[attr-defined]

            async def expire_once_started() -> None:
                await started(tmp_path, "a")
                deadline.reschedule(asyncio.get_running_loop().time())

            watcher = asyncio.create_task(expire_once_started())
            async for _ in process_pool.astarmap(aio_tasks.spin, [(str(tmp_path), "a")]):
                pass
        raise AssertionError(f"not cancelled ({watcher})")

    async def taskgroup_sibling_fails() -> int:
        async def sibling() -> None:
            await started(tmp_path, "b")
            raise RuntimeError("sibling failed")

        async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined]
            group.create_task(process_pool.acall(aio_tasks.block_in_c, str(tmp_path), "b"))
            group.create_task(sibling())
        return 0

    with pytest.raises(TimeoutError):
        asyncio.run(timeout_around_amap())
    faults.wait_gone([int((tmp_path / "started.a").read_text().split()[0])], timeout=5)
    with pytest.raises(BaseExceptionGroup) as info:  # type: ignore[name-defined]  # noqa: F821
        asyncio.run(taskgroup_sibling_fails())
    assert info.group_contains(RuntimeError)  # type: ignore[attr-defined]
    faults.wait_gone([int((tmp_path / "started.b").read_text().split()[0])], timeout=5)
    assert_pool_serves(process_pool)


def test_cancelling_an_awaited_thread_task_stops_it(tmp_path: Path) -> None:
    key = f"{tmp_path.name}-thread"
    exited = aio_tasks.thread_exit_event(key)
    with conveyor.Pool(workers=1, backend="thread") as pool:

        async def main() -> None:
            call = asyncio.create_task(pool.acall(aio_tasks.spin_until_stopped, str(tmp_path), key))
            await started(tmp_path, key)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await asyncio.to_thread(exited.wait, 10), "the thread did not stop"
            # a fresh thread took its place: the one-thread pool still serves
            assert await pool.acall(tasks.square, 3) == 9

        asyncio.run(main())


def test_leaving_async_for_early_stops_what_it_started(
    process_pool: conveyor.Pool, tmp_path: Path
) -> None:
    directory = str(tmp_path)

    async def run() -> int:
        async for first in process_pool.amap_unordered(
            _bound_first_waits(directory), range(4), chunksize=1
        ):
            return int(first)
        raise AssertionError("no result")

    assert asyncio.run(run()) == 0
    pid = int((tmp_path / "started.1").read_text().split()[0])
    faults.wait_gone([pid], timeout=5)
    assert_pool_serves(process_pool)


def _bound_first_waits(directory: str) -> Callable[[int], int]:
    return functools.partial(aio_tasks.first_waits_for_second, directory)


def test_an_endless_async_generator_is_read_lazily(pool: conveyor.Pool) -> None:
    pulled = 0

    async def endless() -> AsyncIterator[int]:
        nonlocal pulled
        while True:
            pulled += 1
            yield pulled
            await asyncio.sleep(0)

    async def main() -> list[int]:
        got = []
        async for r in pool.amap(tasks.square, endless(), chunksize=1):
            got.append(r)
            if len(got) == 20:
                break
        return got

    assert asyncio.run(main()) == [i * i for i in range(1, 21)]
    # in flight: at most 4 chunks per worker (ordered), plus one buffered chunk; chunks this
    # short go several to a message to a worker process: a few such messages per worker
    per_worker = ORDERED_CHUNKS_PER_WORKER
    if pool.backend_name == "process":
        per_worker *= MAX_CHUNKS_PER_MESSAGE
    assert pulled <= 20 + per_worker * pool.workers + 2


def test_stop_on_cancel_false_lets_running_work_finish(tmp_path: Path) -> None:
    key = f"{tmp_path.name}-keep"
    exited = aio_tasks.thread_exit_event(key)
    with conveyor.Pool(workers=1, backend="thread") as pool:

        async def main() -> None:
            results = pool.amap(
                _bound_spin(str(tmp_path)), [key], stop_on_cancel=False, chunksize=1
            )
            consumer = asyncio.create_task(results.__anext__())
            await started(tmp_path, key)
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
            await results.aclose()
            # the running item was left alone
            assert not await asyncio.to_thread(exited.wait, 0.3)
            pool.terminate()  # now stop it (terminate asks the thread to stop)
            assert await asyncio.to_thread(exited.wait, 10)

        asyncio.run(main())


def _bound_spin(directory: str) -> Callable[[str], None]:
    return functools.partial(aio_tasks.spin_until_stopped, directory)


def test_bad_options_are_named() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="concurrency"):
            conveyor.amap(abs, [1], concurrency=4)
        with pytest.raises(ValueError, match="backend"):
            conveyor.amap(abs, [1], backend="auto")
        with pytest.raises(TypeError, match="iterable"):
            conveyor.amap(abs, 5)
        with pytest.raises(ValueError, match="timeout"):
            conveyor.amap(abs, [1], task_timeout=-1)
        with pytest.raises(TypeError, match="callable"):
            await conveyor.acall(5)

    asyncio.run(main())


def test_acall_without_a_running_loop_is_a_clear_error() -> None:
    coroutine = conveyor.acall(abs, 1)
    with pytest.raises(RuntimeError, match="no running event loop"):
        coroutine.send(None)
    coroutine.close()


def test_workers_survive_many_cancellations_in_a_row(process_pool: conveyor.Pool) -> None:
    async def main() -> None:
        for _ in range(3):
            calls = [asyncio.create_task(process_pool.acall(faults.nap, 30)) for _ in range(4)]
            await asyncio.sleep(0)  # let them submit
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        assert await process_pool.acall(os.getpid) > 0

    asyncio.run(main())
    assert_pool_serves(process_pool)


def test_cancelled_futures_at_the_head_of_the_queue_do_not_hold_up_the_rest(
    process_pool: conveyor.Pool, tmp_path: Path
) -> None:
    # Found by the cancellation tests: workers freed while only cancelled submits led the
    # queue took those, dropped them, and the live task behind them waited for another event.
    go = str(tmp_path / "go")
    blockers = [process_pool.submit(faults.touch_and_wait, str(tmp_path), i, go) for i in (0, 1)]
    faults.wait_until(lambda: len(faults.read_pids(tmp_path, "started")) == 2, 30, "blockers")
    cancelled = [process_pool.submit(abs, -1) for _ in range(2)]
    assert all(future.cancel() for future in cancelled)
    last = process_pool.submit(abs, -5)
    Path(go).touch()
    assert [b.result(timeout=30) for b in blockers] == [0, 1]
    assert last.result(timeout=30) == 5


def test_a_shutdown_that_cancels_pending_calls_ends_their_awaits(tmp_path: Path) -> None:
    # An awaited call settles through the loop's inbox, not a Future's callbacks: a call the
    # pool drops unstarted (shutdown(cancel_futures=True)) still ends its await, with the
    # CancelledError a submitted future gets, while the running one finishes.
    go = str(tmp_path / "go")
    with faults.no_leftovers():
        pool = conveyor.Pool(workers=1, backend="process")

        async def main() -> list[Any]:
            running = asyncio.create_task(pool.acall(faults.touch_and_wait, str(tmp_path), 0, go))
            await asyncio.to_thread(
                faults.wait_until, (tmp_path / "started.0").exists, 60, "running"
            )
            queued = [asyncio.create_task(pool.acall(abs, -i)) for i in range(3)]
            await asyncio.sleep(0)  # let them submit (nothing waits on timing here)
            pool.shutdown(wait=False, cancel_futures=True)
            Path(go).touch()
            return await asyncio.gather(running, *queued, return_exceptions=True)

        try:
            outcomes = asyncio.run(main())
        finally:
            pool.shutdown()
    assert outcomes[0] == 0
    assert all(type(o) is concurrent.futures.CancelledError for o in outcomes[1:]), outcomes


def test_a_finished_event_loop_is_not_kept_alive(process_pool: conveyor.Pool) -> None:
    # Each asyncio.run() makes a loop; awaiting a call on it must not pin it (and its tasks)
    # for the life of the process.
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def main() -> int:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return int(await process_pool.acall(abs, -3))

    assert [asyncio.run(main()) for _ in range(3)] == [3, 3, 3]
    gc.collect()
    assert [ref() for ref in loops] == [None, None, None]


# ---------------------------------------------------------------------- random cancel timings


@hypothesis.settings(
    max_examples=12, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
@hypothesis.given(
    calls=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.005, 0.02, 5.0]),  # how long the task runs
            st.sampled_from([0.0, 0.001, 0.01, 0.03]),  # when its await is cancelled
        ),
        min_size=1,
        max_size=5,
    ),
    break_after=st.integers(min_value=0, max_value=6),
)
def test_any_cancel_timing_leaves_a_whole_pool(
    calls: list[tuple[float, float]], break_after: int
) -> None:
    # Whenever the cancel lands (before the task is sent, while it runs, after it ended), the
    # await ends with the result or CancelledError, and the pool keeps its width and serves.
    with faults.no_leftovers(), conveyor.Pool(workers=2, backend="process") as pool:

        async def cancel_later(task: asyncio.Task[Any], delay: float) -> None:
            await asyncio.sleep(delay)  # the random timing under test, not synchronization
            task.cancel()

        async def main() -> None:
            tasks_ = [asyncio.create_task(pool.acall(faults.nap, run)) for run, _ in calls]
            await asyncio.gather(*(cancel_later(t, d) for t, (_, d) in zip(tasks_, calls)))
            outcomes = await asyncio.gather(*tasks_, return_exceptions=True)
            for (run, _), outcome in zip(calls, outcomes):
                assert outcome == run or isinstance(outcome, asyncio.CancelledError), outcome
            got = []
            async for value in pool.amap(tasks.square, range(10), chunksize=1):
                got.append(value)
                if len(got) > break_after:
                    break
            assert got == [i * i for i in range(len(got))]
            assert await pool.acall(tasks.square, 7) == 49

        asyncio.run(main())
        assert_pool_serves(pool)
