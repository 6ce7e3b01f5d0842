"""Per-task timeouts: the in-worker alarm (soft tier, the worker lives on), the parent's hard
deadline (the worker is killed and replaced), on every call that takes ``task_timeout=``, and the
thread backend, which can only abandon a task."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor._errors import PoolClosed
from conveyor.backends.process.parent import hard_deadline_grace

import faults

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 0.3
HANG = 30.0
HARD = TIMEOUT + hard_deadline_grace(TIMEOUT)  # when the parent kills
SLACK = 2.5  # scheduling slack on a loaded 2-core machine (under pytest -n 2)
ITEMS = [0.01, HANG, 0.02, 0.03]  # distinct values, so unordered results can be matched


def run(api: str, pool: conveyor.Pool | None, ignore_alarm: bool) -> list[Any]:
    """Outcomes of ITEMS through ``api`` (a Pool method, or the one-shot call when ``pool`` is
    None), in input order: the value, or the exception of a Failure / a failed future."""
    args = [(s, ignore_alarm) for s in ITEMS]
    opts: dict[str, Any] = dict(task_timeout=TIMEOUT, chunksize=1, on_error="return")
    one_shot = dict(opts, workers=2, backend="process")
    if api == "submit":
        assert pool is not None
        futures = [pool.options(task_timeout=TIMEOUT).submit(faults.nap, *a) for a in args]
        return [f.exception(timeout=30) or f.result() for f in futures]
    if api == "map" and pool is not None:
        # Executor.map: the item's TaskTimeout is raised when iteration reaches it (and ends it)
        task = faults.nap if not ignore_alarm else faults.sleep_ignoring_alarm
        results = pool.map(task, ITEMS, task_timeout=TIMEOUT)
        out = [next(results)]
        with pytest.raises(conveyor.TaskTimeout) as raised:
            next(results)
        out.append(raised.value)
        out += list(pool.map(task, ITEMS[2:], task_timeout=TIMEOUT))
        return out
    if api == "starmap":
        out = (
            pool.starmap(faults.nap, args, **opts)
            if pool
            else conveyor.starmap(faults.nap, args, **one_shot)
        )
    else:
        task = faults.nap if not ignore_alarm else faults.sleep_ignoring_alarm
        call = getattr(pool, api) if pool else getattr(conveyor, api)
        out = list(call(task, ITEMS, **(opts if pool else one_shot)))
    if api == "imap_unordered":
        by_item = {(o.item if isinstance(o, conveyor.Failure) else o): o for o in out}
        assert len(by_item) == len(ITEMS)
        out = [by_item[s] for s in ITEMS]
    return [o.exception if isinstance(o, conveyor.Failure) else o for o in out]


APIS = ["map", "imap", "imap_unordered", "starmap", "submit"]


@pytest.mark.parametrize("tier", ["soft", "hard"])
@pytest.mark.parametrize("api", APIS)
def test_timeout_on_every_pool_call(api: str, tier: str) -> None:
    with faults.no_leftovers(), conveyor.Pool(workers=2) as pool:
        started = time.monotonic()
        outcomes = run(api, pool, ignore_alarm=tier == "hard")
        elapsed = time.monotonic() - started
        assert outcomes[0] == ITEMS[0] and outcomes[2:] == ITEMS[2:]
        error = outcomes[1]
        assert isinstance(error, conveyor.TaskTimeout)
        assert error.timeout == TIMEOUT
        assert ("worker process was killed" in str(error)) == (tier == "hard")
        assert elapsed < (HARD if tier == "hard" else TIMEOUT) + SLACK
        # The pool goes on at full width.
        assert len(set(list(pool.imap(faults.pid_after, [0.2] * 4, chunksize=1)))) == 2


@pytest.mark.parametrize("tier", ["soft", "hard"])
@pytest.mark.parametrize("api", ["map", "imap", "imap_unordered", "starmap"])
def test_timeout_on_every_one_shot_call(api: str, tier: str) -> None:
    with faults.no_leftovers():
        outcomes = run(api, None, ignore_alarm=tier == "hard")
    assert outcomes[0] == ITEMS[0] and outcomes[2:] == ITEMS[2:]
    assert isinstance(outcomes[1], conveyor.TaskTimeout)


def test_soft_timeout_keeps_the_worker() -> None:
    with conveyor.Pool(workers=1) as pool:
        (pid,) = pool._backend.worker_pids()
        started = time.monotonic()
        out = list(
            pool.imap(
                faults.pid_after,
                [0.01, HANG, 0.01],
                task_timeout=TIMEOUT,
                chunksize=1,
                on_error="return",
            )
        )
        elapsed = time.monotonic() - started
        assert out[0] == out[2] == pid  # the same process ran the items before and after
        failure = out[1]
        assert isinstance(failure.exception, conveyor.TaskTimeout)
        assert failure.item == HANG and failure.attempts == 1
        # The alarm interrupted the function itself: its traceback names it and the line.
        assert "in pid_after" in failure.traceback and "time.sleep(seconds)" in failure.traceback
        assert elapsed < TIMEOUT + SLACK
        assert pool._backend.worker_pids() == [pid]


def test_hard_timeout_kills_and_replaces_the_worker() -> None:
    with faults.no_leftovers(), conveyor.Pool(workers=1) as pool:
        (pid,) = pool._backend.worker_pids()
        future = pool.options(task_timeout=TIMEOUT).submit(faults.sleep_ignoring_alarm, HANG)
        started = time.monotonic()
        error = future.exception(timeout=30)
        elapsed = time.monotonic() - started
        assert isinstance(error, conveyor.TaskTimeout)
        assert "did not respond to the in-process alarm" in str(error)
        assert HARD - 0.05 <= elapsed < HARD + SLACK
        faults.wait_gone([pid], what="the killed worker")
        new_pid = pool.submit(faults.pid_of).result(timeout=30)
        assert new_pid != pid
        assert pool._backend.worker_pids() == [new_pid]


def test_a_task_that_swallows_the_alarm() -> None:
    with conveyor.Pool(workers=1) as pool:
        (pid,) = pool._backend.worker_pids()
        # It catches the TaskTimeout and returns before the hard deadline: still a timeout,
        # and the worker lives on.
        late = pool.options(task_timeout=TIMEOUT).submit(faults.swallow_timeouts, TIMEOUT + 0.2)
        error = late.exception(timeout=30)
        assert isinstance(error, conveyor.TaskTimeout) and "caught" in str(error)
        assert pool._backend.worker_pids() == [pid]
        # It never returns: the hard deadline kills it.
        stuck = pool.options(task_timeout=TIMEOUT).submit(faults.swallow_timeouts, HANG)
        error = stuck.exception(timeout=30)
        assert isinstance(error, conveyor.TaskTimeout) and "was killed" in str(error)
        faults.wait_gone([pid], what="the killed worker")


def test_timeouts_with_retries_and_a_chunk_of_timed_items() -> None:
    with conveyor.Pool(workers=2) as pool:
        items = [0.01] * 5 + [HANG] + [0.02] * 5
        out = list(
            pool.imap(
                faults.nap, items, task_timeout=TIMEOUT, chunksize=11, retries=1, on_error="return"
            )
        )
        assert out[:5] == [0.01] * 5 and out[6:] == [0.02] * 5
        assert isinstance(out[5].exception, conveyor.TaskTimeout)
        assert out[5].attempts == 2


def test_shutdown_and_gc_never_hang_after_faults() -> None:
    with faults.no_leftovers():
        pool = conveyor.Pool(workers=2)
        futures = [
            pool.options(task_timeout=TIMEOUT).submit(faults.sleep_ignoring_alarm, HANG),
            pool.submit(faults.sigkill_self),
            pool.submit(faults.segfault),
            pool.submit(abs, -1),
        ]
        pids = set(pool._backend.worker_pids())
        assert [type(f.exception(timeout=30)) for f in futures[:3]] == [
            conveyor.TaskTimeout,
            conveyor.WorkerCrashed,
            conveyor.WorkerCrashed,
        ]
        assert futures[3].result() == 1
        pids |= set(pool._backend.worker_pids())
        started = time.monotonic()
        pool.shutdown()
        assert time.monotonic() - started < 5
        faults.wait_gone(pids)

        # A pool dropped without shutdown, with a task still running, is cleaned up by GC.
        pool = conveyor.Pool(workers=2)
        pool.submit(faults.pid_after, 0.2)
        pids = set(pool._backend.worker_pids())
        del pool
        gc.collect()
        faults.wait_gone(pids, what="the workers of a collected pool")


# ---------------------------------------------------------------------- thread backend


def test_thread_backend_abandons_a_timed_out_task_on_time(tmp_path: Path) -> None:
    go = tmp_path / "go"
    with conveyor.Pool(workers=2, backend="thread") as pool:
        threads_before = set(threading.enumerate())
        started = time.monotonic()
        stuck = [
            pool.options(task_timeout=TIMEOUT).submit(
                faults.touch_and_wait, str(tmp_path), i, str(go)
            )
            for i in range(2)
        ]
        for future in stuck:
            assert isinstance(future.exception(timeout=30), conveyor.TaskTimeout)
        assert time.monotonic() - started < TIMEOUT + SLACK
        # Both threads were replaced: two tasks that must run at the same time still can.
        barrier = threading.Barrier(2)
        both = [pool.submit(barrier.wait, 10) for _ in range(2)]
        assert sorted(f.result(timeout=30) for f in both) == [0, 1]
        # The abandoned threads got an asynchronous TaskTimeout: they end on their own.
        faults.wait_until(
            lambda: not _abandoned(pool, threads_before), 10, "the abandoned threads to end"
        )
        go.touch()


def _abandoned(pool: conveyor.Pool, before: set[threading.Thread]) -> list[threading.Thread]:
    """Worker threads that are no longer the pool's and still run."""
    workers = {s.thread for s in pool._backend._states}
    return [
        t
        for t in set(threading.enumerate()) - before
        if t.name.startswith("conveyor-thread-") and t.name[-1].isdigit() and t not in workers
    ]


def test_thread_backend_map_with_timeout(tmp_path: Path) -> None:
    there, never = tmp_path / "there", tmp_path / "never"
    there.touch()
    with conveyor.Pool(workers=2, backend="thread") as pool:
        started = time.monotonic()
        out = list(
            pool.imap(
                faults.wait_for_path,
                [str(there), str(never), str(there)],
                task_timeout=TIMEOUT,
                chunksize=1,
                on_error="return",
            )
        )
        assert time.monotonic() - started < TIMEOUT + SLACK
        assert out[0] is True and out[2] is True
        assert isinstance(out[1].exception, conveyor.TaskTimeout)
        assert out[1].item == str(never)
        assert len(pool._backend._states) == 2
        backend = pool._backend
    # The watchdog thread ends with the pool.
    faults.wait_until(lambda: backend._watchdog is None, 10, "the watchdog thread to end")


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_terminate_fails_running_tasks_at_once(tmp_path: Path, backend: str) -> None:
    # Nobody may be left waiting on a future or a map that can no longer end: the running
    # tasks get PoolClosed at once (threads are abandoned and asked to stop, processes killed).
    go = str(tmp_path / "go")  # never created: the tasks would wait a minute
    pool = conveyor.Pool(workers=2, backend=backend)
    futures = [pool.submit(faults.touch_and_wait, str(tmp_path), i, go) for i in range(3)]

    def running() -> set[int]:  # tags of the tasks that said "started" (complete files only)
        return {int(p.suffix[1:]) for p in tmp_path.glob("started.*") if p.suffix[1:].isdigit()}

    faults.wait_until(lambda: len(running()) == 2, what="2 tasks running")
    started_tags = running()
    started = time.monotonic()
    pool.terminate()
    for tag, future in enumerate(futures):
        if tag in started_tags:
            with pytest.raises(PoolClosed):
                future.result(timeout=30)
        else:  # it never started: cancelled
            assert future.cancelled() or isinstance(future.exception(timeout=30), PoolClosed)
    assert time.monotonic() - started < 10
    with pytest.raises(PoolClosed):
        pool.submit(faults.square, 2)


@pytest.mark.parametrize("new_session", [False, True])
def test_a_timed_out_item_takes_its_programs_along(tmp_path: Path, new_session: bool) -> None:
    # The worker lives on after an in-worker timeout; the programs the item started must not
    # (in the worker's process group or not), while what an earlier item left running stays.
    with conveyor.Pool(workers=1) as pool:
        (pid,) = pool._backend.worker_pids()
        keeper = pool.submit(faults.spawn_child, str(tmp_path), "kept").result(timeout=60)
        out = list(
            pool.imap(
                faults.spawn_grandchild_and_hang,
                [str(tmp_path)],
                [0],
                [new_session],
                task_timeout=TIMEOUT,
                on_error="return",
            )
        )
        assert isinstance(out[0].exception, conveyor.TaskTimeout)
        (grandchild,) = faults.read_pids(tmp_path, "grandchild")
        faults.wait_gone([grandchild], what="the timed-out item's program")
        assert pool._backend.worker_pids() == [pid]
        assert faults.alive(keeper)
    faults.wait_gone([keeper], what="the earlier item's program, at shutdown")


def test_a_crashed_worker_takes_along_programs_in_their_own_sessions(tmp_path: Path) -> None:
    with conveyor.Pool(workers=2) as pool:
        future = pool.submit(
            faults.spawn_grandchild_and_hang, str(tmp_path), 0, new_session=True, then="sigkill"
        )
        assert isinstance(future.exception(timeout=60), conveyor.WorkerCrashed)
        faults.wait_gone(
            faults.read_pids(tmp_path, "grandchild"), what="the crashed task's program"
        )
