"""A pool's life: cancelling, shutting down from anywhere, forking; every future must end.

Each test here is the regression test of a defect found by adversarial testing (issue 16): it
failed before the fix. Nothing waits by sleeping: tasks wait for files the test writes, and
every wait has a deadline, so a regression fails instead of hanging.
"""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import conveyor
from conveyor._errors import PoolClosed

import faults
import tasks

#: generous for a loaded 2-core machine; a hang fails the test after this long instead
DEADLINE = 60.0


def _in_thread(target, *args):
    """Run ``target(*args)`` in a thread; returns (thread, outcome dict filled when it ends)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = target(*args)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# ----------------------------------------------------------------- 1. cancelled queued future


def test_cancelled_queued_future_does_not_stall_a_one_worker_process_pool(tmp_path) -> None:
    with faults.no_leftovers(), conveyor.Pool(workers=1, backend="process") as pool:
        go = tmp_path / "go"
        busy = pool.submit(faults.wait_for_path, str(go))
        a = pool.submit(abs, -1)
        b = pool.submit(abs, -2)
        assert a.cancel()
        go.write_text("")
        assert busy.result(timeout=DEADLINE)
        assert b.result(timeout=DEADLINE) == 2


def test_cancelled_future_on_a_fresh_pool_does_not_stall_it(tmp_path: Path) -> None:
    # cancelled before the worker said READY (its initializer waits for the go-ahead, so a
    # quickly started worker cannot have run them): the dispatcher met it with nothing else to do
    go = tmp_path / "go"
    with (
        faults.no_leftovers(),
        conveyor.Pool(
            workers=1, backend="process", initializer=faults.wait_for_path, initargs=(str(go),)
        ) as pool,
    ):
        futures = [pool.submit(abs, -i) for i in range(6)]
        for future in futures[::2]:
            assert future.cancel()
        go.touch()
        assert [f.result(timeout=DEADLINE) for f in futures[1::2]] == [1, 3, 5]


def test_shutdown_with_queued_work_and_a_worker_at_its_task_limit_finishes() -> None:
    # max_tasks_per_worker=1: each worker is replaced after one task, also while shutting down
    pool = conveyor.Pool(workers=1, backend="process", max_tasks_per_worker=1)
    try:
        futures = [pool.submit(abs, -i) for i in range(4)]
        thread, _ = _in_thread(pool.shutdown)
        thread.join(DEADLINE)
        assert not thread.is_alive(), "shutdown(wait=True) hung with work queued"
        assert [f.result(timeout=0) for f in futures] == [0, 1, 2, 3]
    finally:
        pool.terminate()


def test_thread_timeout_while_shutting_down_still_runs_the_queued_work(tmp_path) -> None:
    # one thread, abandoned by its timeout after shutdown began: a fresh one must run the rest
    pool = conveyor.Pool(workers=1, backend="thread")
    try:
        stuck = pool.options(task_timeout=0.5).submit(
            faults.wait_for_path, str(tmp_path / "never"), 5
        )
        queued = pool.submit(abs, -7)
        pool.shutdown(wait=False)
        assert queued.result(timeout=DEADLINE) == 7
        with pytest.raises(conveyor.TaskTimeout):
            stuck.result(timeout=DEADLINE)
    finally:
        (tmp_path / "never").write_text("")
        pool.terminate()


# ----------------------------------------------------------------- 2. shutdown from a worker


def _shut(pool: conveyor.Pool, gate: threading.Barrier) -> str:
    gate.wait(DEADLINE)
    pool.shutdown(wait=True)
    return "returned"


def test_shutdown_wait_from_two_worker_threads_raises_instead_of_deadlocking() -> None:
    pool = conveyor.Pool(workers=2, backend="thread")
    gate = threading.Barrier(2)
    futures = [pool.submit(_shut, pool, gate) for _ in range(2)]
    thread, _ = _in_thread(pool.shutdown)
    thread.join(DEADLINE)
    assert not thread.is_alive(), "the caller's shutdown(wait=True) deadlocked"
    for future in futures:
        with pytest.raises(RuntimeError, match="cannot join current thread"):
            future.result(timeout=DEADLINE)


def test_shutdown_wait_from_a_done_callback_does_not_deadlock(backend: str, tmp_path: Path) -> None:
    pool = conveyor.Pool(workers=2, backend=backend)
    called = threading.Event()
    errors: list[BaseException] = []

    def callback(_: cf.Future[int]) -> None:
        try:
            pool.shutdown(wait=True)
        except BaseException as exc:
            errors.append(exc)
        called.set()

    go = tmp_path / "go"
    slow = pool.submit(tasks.slow_identity, 0.2)
    # The callback is attached while its task waits for "go": it runs in the pool's thread
    # when the task ends, never in this one (as it would if the task were already done).
    gated = pool.submit(faults.touch_and_wait, str(tmp_path), 1, str(go))
    gated.add_done_callback(callback)
    go.write_text("")
    assert called.wait(DEADLINE)
    thread, _ = _in_thread(pool.shutdown)
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert slow.result(timeout=0) == 0.2
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "cannot join current thread" in str(errors[0])


# ----------------------------------------------------------------- 3. maps outlive shutdown


@pytest.mark.parametrize("call", ["map", "imap", "imap_unordered"])
def test_a_running_map_finishes_when_another_thread_shuts_the_pool_down(
    backend: str, call: str, tmp_path
) -> None:
    pool = conveyor.Pool(workers=2, backend=backend)
    go = str(tmp_path / "go")
    items = list(range(40))

    def run() -> list[object]:
        # chunksize=1 and many items: the map must submit more chunks after the shutdown
        result = getattr(pool, call)(
            faults.touch_and_wait, [str(tmp_path)] * 40, items, [go] * 40, chunksize=1
        )
        return sorted(result)  # type: ignore[type-var]

    try:
        thread, outcome = _in_thread(run)
        faults.wait_until(lambda: faults.read_pids(tmp_path, "started"), DEADLINE, "a start")
        closer, _ = _in_thread(pool.shutdown)
        # the shutdown is in progress (the pool refuses new work) before the tasks may end
        faults.wait_until(lambda: not pool._backend.alive, DEADLINE, "shutdown to begin")
        Path(go).write_text("")
        thread.join(DEADLINE)
        closer.join(DEADLINE)
        assert not thread.is_alive() and not closer.is_alive()
        assert outcome.get("value") == items, outcome.get("error")
        with pytest.raises(PoolClosed):
            pool.map(abs, [1])
    finally:
        Path(go).write_text("")
        pool.terminate()


def test_a_retry_after_shutdown_began_still_runs(backend: str, tmp_path) -> None:
    pool = conveyor.Pool(workers=1, backend=backend)
    try:
        go = tmp_path / "go"
        blocker = pool.submit(faults.wait_for_path, str(go))
        future = pool.options(retries=2).submit(faults.fail_times, str(tmp_path), 1, 1)
        pool.shutdown(wait=False)
        go.write_text("")
        assert blocker.result(timeout=DEADLINE)
        assert future.result(timeout=DEADLINE) == 1
    finally:
        pool.terminate()


def test_an_imap_goes_on_while_another_thread_waits_in_shutdown(backend: str) -> None:
    pool = conveyor.Pool(workers=2, backend=backend)
    results = pool.imap(abs, range(-1000, 0), chunksize=1)
    assert next(results) == 1000
    done = threading.Event()

    def shut_here() -> None:
        # the imap above is driven by the main thread, which is not the one waiting here
        pool.shutdown(wait=True)
        done.set()

    closer, _ = _in_thread(shut_here)
    # the main thread keeps consuming: the map it started finishes
    assert list(results) == list(range(999, 0, -1))
    closer.join(DEADLINE)
    assert done.is_set()
    pool.terminate()


def test_shutdown_from_the_thread_holding_a_suspended_imap_returns(backend: str) -> None:
    pool = conveyor.Pool(workers=2, backend=backend)
    results = pool.imap(abs, range(-1000, 0), chunksize=1)
    assert next(results) == 1000
    started = time.monotonic()
    pool.shutdown(wait=True)  # that imap cannot go on while we wait: it is not waited for
    assert time.monotonic() - started < DEADLINE
    with pytest.raises(PoolClosed):
        list(results)
    pool.terminate()


# ----------------------------------------------------------------- 4. fork

_FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import conveyor
    from conveyor._errors import PoolClosed

    pool = conveyor.Pool(workers=1, backend=sys.argv[1])
    assert pool.submit(abs, -1).result(timeout=60) == 1
    assert conveyor.map(abs, [-2], backend="process") == [2]
    pid = os.fork()
    if pid == 0:
        try:
            pool.submit(abs, -3)
        except PoolClosed as exc:
            assert "parent" in str(exc), exc
            print("child refused:", exc, flush=True)
        else:
            print("child: submit was accepted", flush=True)
            os._exit(3)
        assert "shut down" in repr(pool) or "forked" in repr(pool), repr(pool)
        # default pools of conveyor.map start afresh in the child
        assert conveyor.map(abs, [-4], backend="process") == [4]
        started = time.monotonic()
        sys.exit(0)
    started = time.monotonic()
    _, status = os.waitpid(pid, 0)
    took = time.monotonic() - started
    assert os.waitstatus_to_exitcode(status) == 0, status
    # the parent's pool was not touched by the child
    assert pool.submit(abs, -5).result(timeout=60) == 5
    pool.shutdown()
    print(f"child exited after {took:.1f} s", flush=True)
    """
)


def test_a_forked_child_refuses_the_parents_pool_and_exits_at_once(backend: str) -> None:
    with faults.no_leftovers():
        done = subprocess.run(
            [sys.executable, "-c", _FORK_SCRIPT, backend],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "child refused" in done.stdout
    took = float(done.stdout.split("child exited after ")[1].split()[0])
    assert took < 15, f"the child took {took} s to exit"  # was 31 s: waited for a dead thread


# ----------------------------------------------------------------- 5. cancel_futures


def test_futures_cancelled_by_shutdown_are_seen_by_wait_and_as_completed(
    backend: str, tmp_path
) -> None:
    pool = conveyor.Pool(workers=1, backend=backend)
    go = tmp_path / "go"
    try:
        running = pool.submit(faults.wait_for_path, str(go))
        queued = [pool.submit(abs, -i) for i in range(5)]
        faults.wait_until(running.running, DEADLINE, "the first task to start")
        pool.shutdown(wait=False, cancel_futures=True)
        _, not_done = cf.wait(queued, timeout=DEADLINE)
        assert not not_done and all(f.cancelled() for f in queued)
        assert set(cf.as_completed(queued, timeout=DEADLINE)) == set(queued)
        assert set(conveyor.as_completed(queued, timeout=DEADLINE)) == set(queued)
        go.write_text("")
        assert running.result(timeout=DEADLINE)
    finally:
        go.write_text("")
        pool.terminate()


def test_a_future_cancelled_by_its_caller_and_dropped_by_terminate_is_seen_by_wait(
    backend: str, tmp_path
) -> None:
    pool = conveyor.Pool(workers=1, backend=backend)
    go = tmp_path / "go"
    try:
        running = pool.submit(faults.wait_for_path, str(go))
        queued = pool.submit(abs, -1)
        assert queued.cancel()
        pool.terminate()
        done, _ = cf.wait([queued, running], timeout=DEADLINE)
        assert done == {queued, running}
    finally:
        go.write_text("")


def test_work_sent_while_a_shutdown_waits_still_wakes_an_idle_thread() -> None:
    # Found by the state-machine test: shutdown(wait=True) waited on the condition the idle
    # threads wait on, so the notify of a map's next chunk woke it instead of the thread that
    # had gone idle after it began waiting; that thread slept on, the map never ended, nor
    # did the shutdown.
    pool = conveyor.Pool(workers=1, backend="thread")
    backend = pool._backend
    running, finish = threading.Event(), threading.Event()
    gate = threading.Semaphore(0)

    def items():
        yield 0
        gate.acquire()  # the next chunk is sent only when the test says so
        yield 1

    def task(i: int) -> int:
        if i == 0:
            running.set()
            finish.wait(DEADLINE)
        return i

    try:
        consumer, outcome = _in_thread(list, pool.imap(task, items(), chunksize=1))
        assert running.wait(DEADLINE)
        closer, _ = _in_thread(pool.shutdown)  # waits first: the thread is busy
        faults.wait_until(lambda: _waiting(backend) == 1, DEADLINE, "the shutdown to wait")
        finish.set()  # the thread goes idle, and waits after the shutdown
        faults.wait_until(lambda: _waiting(backend) == 2, DEADLINE, "the thread to wait")
        gate.release()  # chunk 1 is sent now
        consumer.join(DEADLINE)
        closer.join(DEADLINE)
        assert not consumer.is_alive() and not closer.is_alive(), "the map was never run"
        assert outcome["value"] == [0, 1]
    finally:
        finish.set()
        gate.release()
        pool.terminate()


def _waiting(backend: object) -> int:
    """How many threads wait on the thread backend's conditions (before the fix: one)."""
    conditions = {id(c): c for c in (backend._cv, getattr(backend, "_all_gone", backend._cv))}
    return sum(len(c._waiters) for c in conditions.values())
