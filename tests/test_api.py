"""The public API on both backends: results, ordering, laziness, executors, errors."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import subprocess
import sys
import textwrap
import traceback
from concurrent.futures import Executor, Future

import pytest

import conveyor
from conveyor._cpus import usable_cpus
from conveyor._job import MAX_CHUNKS_PER_MESSAGE, ORDERED_CHUNKS_PER_WORKER

import faults
import tasks


def test_public_names_are_exactly_the_designed_ones() -> None:
    assert sorted(conveyor.__all__) == sorted(
        [
            "map",
            "imap",
            "imap_unordered",
            "starmap",
            "Pool",
            "as_completed",
            "Failure",
            "TaskTimeout",
            "WorkerCrashed",
            # every exception a user can meet (issue 8)
            "PoolClosed",
            "RemoteTraceback",
            "TaskStopped",
            "Unsendable",
            "WorkerInitError",
            # checkpointed maps (issue 14)
            "Checkpoint",
            "CheckpointError",
            "CheckpointInUse",
            "CheckpointMismatch",
            # pipelines (issue 11)
            "pipeline",
            # asyncio (issue 12)
            "acall",
            "amap",
            "amap_unordered",
            "astarmap",
            # statistics (issue 14): what map calls fill in, what Pool.stats() returns
            "MapStats",
            "PoolStats",
            "WorkerStats",
        ]
    )


# ---------------------------------------------------------------------- one-shot calls


def test_map_keeps_input_order(backend: str) -> None:
    assert conveyor.map(tasks.square, range(1000), backend=backend, workers=2) == [
        x * x for x in range(1000)
    ]


def test_map_of_empty_input(backend: str) -> None:
    assert conveyor.map(tasks.square, [], backend=backend, workers=2) == []


def test_starmap(backend: str) -> None:
    pairs = [(i, i + 1) for i in range(100)]
    assert conveyor.starmap(tasks.add, pairs, backend=backend, workers=2) == [
        a + b for a, b in pairs
    ]


def test_imap_is_ordered_and_lazy(backend: str) -> None:
    results = conveyor.imap(tasks.square, range(50), backend=backend, workers=2)
    assert next(results) == 0
    assert list(results) == [x * x for x in range(1, 50)]


def test_imap_unordered_gives_every_result(backend: str) -> None:
    results = conveyor.imap_unordered(tasks.square, range(300), backend=backend, workers=2)
    assert sorted(results) == [x * x for x in range(300)]


def test_unordered_map_returns_completion_order(backend: str) -> None:
    # the long first item finishes last
    delays = [0.5] + [0.0] * 20
    out = conveyor.map(
        tasks.slow_identity, delays, backend=backend, workers=2, ordered=False, chunksize=1
    )
    assert sorted(out) == sorted(delays)
    assert out[-1] == 0.5


def test_imap_over_an_infinite_generator_takes_input_only_as_needed(backend: str) -> None:
    taken = []

    def numbers():
        for i in itertools.count():
            taken.append(i)
            yield i

    for result in conveyor.imap(tasks.square, numbers(), backend=backend, workers=2, chunksize=10):
        if result >= 100 * 100:
            break
    # bounded look-ahead: a few chunks per worker, not the whole (infinite) input (chunks this
    # short go several to a message to a worker process: a few such messages per worker)
    per_worker = ORDERED_CHUNKS_PER_WORKER * (MAX_CHUNKS_PER_MESSAGE if backend == "process" else 1)
    assert len(taken) <= 101 + 10 * per_worker * 2


def test_breaking_out_of_imap_leaves_the_pool_usable(pool: conveyor.Pool) -> None:
    for result in pool.imap(tasks.slow_identity, [0.0] * 5 + [0.2] * 50, chunksize=1):
        if result == 0.2:
            break
    assert list(pool.imap(tasks.square, range(10))) == [x * x for x in range(10)]


def test_input_iterator_errors_surface_in_the_caller(backend: str) -> None:
    def broken():
        yield 1
        raise RuntimeError("input broke")

    with pytest.raises(RuntimeError, match="input broke"):
        conveyor.map(tasks.square, broken(), backend=backend, workers=2)


def test_default_pool_is_reused_across_calls() -> None:
    first = set(conveyor.map(tasks.where, range(20), backend="process", workers=2, chunksize=1))
    second = set(conveyor.map(tasks.where, range(20), backend="process", workers=2, chunksize=1))
    assert {pid for pid, _ in first} & {pid for pid, _ in second}


def test_workers_none_uses_the_usable_cpus() -> None:
    with conveyor.Pool(backend="process") as pool:
        assert pool.workers == usable_cpus()
    if hasattr(os, "sched_getaffinity"):
        assert usable_cpus() <= len(os.sched_getaffinity(0))


# ---------------------------------------------------------------------- any callable


def test_lambdas_closures_and_partials_run_in_processes() -> None:
    offset = 10
    with conveyor.Pool(workers=2, backend="process") as pool:
        assert list(pool.imap(lambda x: x + offset, range(3))) == [10, 11, 12]
        assert list(pool.imap(functools.partial(tasks.add, b=5), range(3))) == [5, 6, 7]
        assert pool.submit(lambda: os.getpid()).result() != os.getpid()


def test_functions_from_an_unguarded_main_script(tmp_path) -> None:
    # A script with no `if __name__ == "__main__":` guard, defining its function in __main__:
    # the classic spawn pitfall. conveyor's workers never re-run the script.
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent("""
        import conveyor
        print("script body ran")
        def cube(x):
            return x ** 3
        print(conveyor.map(cube, range(5), backend="process", workers=2))
    """)
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["script body ran", "[0, 1, 8, 27, 64]"]


def test_functions_typed_into_an_interactive_session() -> None:
    session = (
        "import conveyor\ndef f(x): return -x\n\n"
        "print(conveyor.map(f, [1, 2], backend='process'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-i", "-q"], input=session, capture_output=True, text=True, timeout=120
    )
    assert "[-1, -2]" in out.stdout, out.stderr


def test_a_function_is_sent_once_per_worker() -> None:
    counted = tasks.Counted(b"x" * 1000)
    with conveyor.Pool(workers=2, backend="process") as pool:
        loads = list(pool.imap(counted, range(40), chunksize=1))
        loads += [pool.submit(counted, 0).result() for _ in range(10)]
    assert set(loads) == {1}


# ---------------------------------------------------------------------- errors


def test_remote_exception_carries_the_worker_traceback() -> None:
    with pytest.raises(ValueError, match="bad item 3") as info:
        conveyor.map(tasks.fail_on, range(10), backend="process", workers=2)
    text = "".join(traceback.format_exception(info.value))
    assert "fail_on" in text
    assert 'raise ValueError(f"bad item {x}")' in text


def test_thread_exception_is_the_original(backend: str) -> None:
    with pytest.raises(ValueError, match="bad item 3"):
        conveyor.map(tasks.fail_on, range(10), backend=backend, workers=2)


def test_unpicklable_argument_is_named_before_anything_runs(tmp_path) -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(TypeError) as info:
        conveyor.map(tasks.add, [lock], backend="process", workers=2)
    message = str(info.value)
    assert "lock" in message and 'backend="thread"' in message
    with (
        conveyor.Pool(workers=2, backend="process") as pool,
        pytest.raises(TypeError, match="keyword argument 'b'"),
    ):
        pool.submit(tasks.add, 1, b=lock)
    # the same works on threads
    assert conveyor.map(lambda lk: lk.locked(), [lock], backend="thread") == [False]


@pytest.mark.parametrize("on_error", ["raise", "return", "skip"])
def test_an_unpicklable_item_later_in_a_map_is_raised_whatever_on_error(on_error: str) -> None:
    # Not a failure of the task (nothing ran it): a mistake in the call, so never a Failure.
    import threading

    items: list[object] = list(range(50))
    items[37] = threading.Lock()
    with conveyor.Pool(workers=2, backend="process") as pool:
        with pytest.raises(TypeError, match="item 37"):
            list(pool.imap(tasks.square, items, chunksize=4, on_error=on_error, retries=2))
        assert list(pool.imap(tasks.square, range(10))) == [x * x for x in range(10)]


def test_unpicklable_function_is_named() -> None:
    import threading

    lock = threading.Lock()

    def uses_lock(x):
        with lock:
            return x

    with pytest.raises(TypeError, match="uses_lock"):
        conveyor.map(uses_lock, [1], backend="process", workers=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": "two"}, "workers"),
        ({"backend": "gpu"}, "backend"),
        ({"chunksize": 0}, "chunksize"),
        ({"task_timeout": -1}, "task_timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"on_error": "ignore"}, "on_error"),
        ({"ordered": "yes"}, "ordered"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_options_are_named(kwargs, message) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        list(conveyor.imap(tasks.square, [1], **kwargs))


def test_non_callable_is_refused(backend: str) -> None:
    with pytest.raises(TypeError, match="must be callable"):
        conveyor.map(42, [1], backend=backend)  # type: ignore[arg-type]
    with conveyor.Pool(workers=1, backend=backend) as pool, pytest.raises(TypeError):
        pool.submit(42)  # type: ignore[arg-type]


def test_non_iterable_is_refused() -> None:
    with pytest.raises(TypeError, match="iterable"):
        conveyor.map(tasks.square, 5)  # type: ignore[arg-type]


def test_bad_start_method_is_named() -> None:
    with pytest.raises(ValueError, match="start_method"):
        conveyor.Pool(backend="process", start_method="teleport")


# ---------------------------------------------------------------------- the executor


def test_pool_is_an_executor(pool: conveyor.Pool) -> None:
    assert isinstance(pool, Executor)
    future = pool.submit(tasks.add, 2, b=3)
    assert isinstance(future, Future)
    assert future.result(timeout=60) == 5


def test_many_submits_and_as_completed(pool: conveyor.Pool) -> None:
    futures = [pool.submit(tasks.square, i) for i in range(2000)]
    done = [f.result() for f in conveyor.as_completed(futures, timeout=120)]
    assert sorted(done) == sorted(i * i for i in range(2000))


def test_submit_exception_has_remote_traceback(pool: conveyor.Pool) -> None:
    future = pool.submit(tasks.fail_on, 3)
    with pytest.raises(ValueError, match="bad item 3"):
        future.result(timeout=60)


def test_pool_map_zips_several_iterables(pool: conveyor.Pool) -> None:
    assert list(pool.imap(pow, [2, 3, 4], [5, 2])) == [32, 9]


def test_pool_imap_and_starmap(pool: conveyor.Pool) -> None:
    assert list(pool.imap(tasks.square, range(5))) == [0, 1, 4, 9, 16]
    assert sorted(pool.imap_unordered(tasks.square, range(5))) == [0, 1, 4, 9, 16]
    assert pool.starmap(tasks.add, [(1, 2), (3, 4)]) == [3, 7]


def test_shutdown_then_submit_is_refused(backend: str) -> None:
    pool = conveyor.Pool(workers=1, backend=backend)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(tasks.square, 2)
    with pytest.raises(RuntimeError, match="shut down"):
        list(pool.imap(tasks.square, [2]))


def test_shutdown_waits_for_submitted_work(backend: str) -> None:
    pool = conveyor.Pool(workers=2, backend=backend)
    futures = [pool.submit(tasks.slow_identity, 0.05) for _ in range(6)]
    pool.shutdown(wait=True)
    assert all(f.done() and f.result() == 0.05 for f in futures)


def test_shutdown_cancel_futures_cancels_what_has_not_started(backend: str) -> None:
    pool = conveyor.Pool(workers=1, backend=backend)
    futures = [pool.submit(tasks.slow_identity, 0.3) for _ in range(20)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert any(f.cancelled() for f in futures)
    assert all(f.done() for f in futures)


def test_cancelled_future_never_runs(tmp_path) -> None:
    marker = tmp_path / "ran"
    with conveyor.Pool(workers=1, backend="process") as pool:
        blocker = pool.submit(faults.wait_for_path, str(tmp_path / "go"))
        victim = pool.submit(lambda: marker.write_text("ran"))
        assert victim.cancel()
        (tmp_path / "go").write_text("")
        assert blocker.result(timeout=60)
    assert not marker.exists()


def test_run_in_executor_from_asyncio(pool: conveyor.Pool) -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(*(loop.run_in_executor(pool, tasks.square, i) for i in range(10)))
        )

    assert asyncio.run(main()) == [i * i for i in range(10)]


def test_initializer_runs_once_per_worker(backend: str, tmp_path) -> None:
    log = tmp_path / "init.log"
    with conveyor.Pool(
        workers=2, backend=backend, initializer=_append_line, initargs=(str(log),)
    ) as pool:
        list(pool.imap(tasks.square, range(200), chunksize=1))
    assert len(log.read_text().splitlines()) == 2


def test_one_shot_initializer(tmp_path) -> None:
    log = tmp_path / "init.log"
    out = conveyor.map(
        tasks.square,
        range(10),
        backend="process",
        workers=2,
        initializer=_append_line,
        initargs=(str(log),),
    )
    assert out == [x * x for x in range(10)]
    assert len(log.read_text().splitlines()) == 2


def test_failing_initializer_is_reported_not_hung(backend: str) -> None:
    with (
        conveyor.Pool(workers=2, backend=backend, initializer=int, initargs=("x",)) as pool,
        pytest.raises(RuntimeError, match="initializer"),
    ):
        pool.submit(tasks.square, 2).result(timeout=60)


def _append_line(path: str) -> None:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


# ---------------------------------------------------------------------- chunking and progress


def test_auto_chunks_grow_for_tiny_items_and_stay_small_for_long_ones() -> None:
    from conveyor._chunking import Chunker

    tiny = Chunker("auto", workers=2, total=1_000_000)
    tiny.observe(1000, 0.0002)
    assert tiny.next_size() > 1000
    slow = Chunker("auto", workers=2, total=1_000)
    slow.observe(4, 0.4)
    assert slow.next_size() == 1


def test_progress_bar_counts_every_item(capsys, backend: str) -> None:
    conveyor.map(tasks.square, range(50), backend=backend, workers=2, progress=True)
    err = capsys.readouterr().err
    assert "50/50" in err
