"""Workers that die under a task (SIGKILL, os._exit, segfault): the task is lost, nothing else.

Also: a memory wall inside a task, a crashing initializer, and worker recycling
(``max_tasks_per_worker``, ``max_memory_per_worker``).
"""

from __future__ import annotations

import functools
import signal
from pathlib import Path
from typing import Any

import pytest

import conveyor

import faults

pytestmark = pytest.mark.timeout(60)

CRASHES = {
    # how: (exit code the parent sees, signal name)
    "sigkill": (-signal.SIGKILL, "SIGKILL"),
    "exit": (3, None),
    "segfault": (-signal.SIGSEGV, "SIGSEGV"),
}


def worker_count(pool: conveyor.Pool, expected: int) -> None:
    """Wait until the pool has ``expected`` workers again (replacements start at once)."""
    faults.wait_until(
        lambda: len(pool._backend.worker_pids()) == expected, 10, f"{expected} workers"
    )


@pytest.mark.parametrize("how", sorted(CRASHES))
@pytest.mark.parametrize("chunksize", [10, "auto", "10-timed"])
def test_a_crash_costs_exactly_the_culprit(how: str, chunksize: int | str) -> None:
    # "10-timed": chunks of 10 with a timeout, which the pool streams item by item
    exitcode, signal_name = CRASHES[how]
    task = functools.partial(faults.crash_on, bad=17, how=how)
    timeout = 60 if chunksize == "10-timed" else None
    chunksize = 10 if chunksize == "10-timed" else chunksize
    with faults.no_leftovers(), conveyor.Pool(workers=2) as pool:
        before = set(pool._backend.worker_pids())
        results = list(
            pool.imap(task, range(40), chunksize=chunksize, task_timeout=timeout, on_error="return")
        )

        assert [r for i, r in enumerate(results) if i != 17] == [
            i * i for i in range(40) if i != 17
        ]
        failure = results[17]
        assert isinstance(failure, conveyor.Failure)
        assert failure.item == 17
        assert failure.attempts == 1
        error = failure.exception
        assert isinstance(error, conveyor.WorkerCrashed)
        assert error.exitcode == exitcode
        assert error.signal_name == signal_name
        assert "WorkerCrashed" in failure.traceback

        # The dead worker was replaced, the pool still serves with its full width.
        worker_count(pool, 2)
        after = set(pool._backend.worker_pids())
        assert after != before
        faults.wait_gone(before - after, what="dead workers")
        assert list(pool.imap(faults.square, range(100))) == [i * i for i in range(100)]
        assert len(set(list(pool.imap(faults.pid_after, [0.2] * 4, chunksize=1)))) == 2


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_a_crash_in_a_batch_of_several_chunks_costs_exactly_the_culprit(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of a small given chunksize, once measured to be tiny, go several to a batch (one
    # message): the item that kills its worker there is still the only one lost.
    from conveyor.backends.process import parent

    batches: list[int] = []

    def recording_pick_batch(*args: Any, **kwargs: Any) -> list[Any]:
        batch = pick_batch(*args, **kwargs)
        batches.append(len(batch))
        return batch

    pick_batch = parent.pick_batch
    monkeypatch.setattr(parent, "pick_batch", recording_pick_batch)
    task = functools.partial(faults.crash_on, bad=517, how=how)
    with faults.no_leftovers(), conveyor.Pool(workers=2) as pool:
        results = list(pool.imap(task, range(800), chunksize=10, on_error="return"))

        assert max(batches) > 1  # chunks did share batches
        assert [r for i, r in enumerate(results) if i != 517] == [
            i * i for i in range(800) if i != 517
        ]
        failure = results[517]
        assert isinstance(failure, conveyor.Failure)
        assert isinstance(failure.exception, conveyor.WorkerCrashed)
        assert failure.attempts == 1
        worker_count(pool, 2)


@pytest.mark.parametrize("how", sorted(CRASHES))
def test_a_crash_raises_with_on_error_raise(how: str) -> None:
    task = functools.partial(faults.crash_on, bad=5, how=how)
    with conveyor.Pool(workers=2) as pool:
        with pytest.raises(conveyor.WorkerCrashed) as info:
            list(pool.imap(task, range(20), chunksize=4))
        assert info.value.exitcode == CRASHES[how][0]
        assert list(pool.imap(abs, [-1, -2])) == [1, 2]


def test_a_crash_on_starmap_and_imap_unordered() -> None:
    with conveyor.Pool(workers=2) as pool:
        out = pool.starmap(
            faults.crash_on, [(i, 7, "segfault") for i in range(20)], chunksize=5, on_error="return"
        )
        assert isinstance(out[7].exception, conveyor.WorkerCrashed)
        assert [o for i, o in enumerate(out) if i != 7] == [i * i for i in range(20) if i != 7]

        task = functools.partial(faults.crash_on, bad=3, how="exit")
        got = list(pool.imap_unordered(task, range(20), chunksize=5, on_error="skip"))
        assert sorted(got) == sorted(i * i for i in range(20) if i != 3)


def test_a_submitted_task_that_crashes_fails_its_future_only() -> None:
    with faults.no_leftovers(), conveyor.Pool(workers=2) as pool:
        futures = [pool.submit(faults.crash_on, i, 4, "sigkill") for i in range(10)]
        for i, future in enumerate(futures):
            if i == 4:
                error = future.exception(timeout=30)
                assert isinstance(error, conveyor.WorkerCrashed)
                assert error.signal_name == "SIGKILL"
            else:
                assert future.result(timeout=30) == i * i


def test_coalesced_submits_with_a_killer_among_them(tmp_path: Path) -> None:
    # Quick submits queued behind a busy worker travel to it in one message. The killer among
    # them must be found and failed alone, the others must all succeed (no endless re-runs).
    go = tmp_path / "go"
    with conveyor.Pool(workers=1) as pool:
        blocker = pool.submit(faults.touch_and_wait, str(tmp_path), "blocker", str(go))
        faults.wait_until(lambda: (tmp_path / "started.blocker").exists(), 30, "the blocker")
        futures = [pool.submit(faults.crash_on, i, 11, "segfault") for i in range(30)]
        go.touch()
        assert blocker.result(timeout=30) == "blocker"
        outcomes = [f.exception(timeout=30) or f.result() for f in futures]
        assert isinstance(outcomes[11], conveyor.WorkerCrashed)
        assert outcomes[11].signal_name == "SIGSEGV"
        assert [o for i, o in enumerate(outcomes) if i != 11] == [
            i * i for i in range(30) if i != 11
        ]


def test_two_killers_in_one_chunk_and_a_crash_with_retries(tmp_path: Path) -> None:
    def task(x: int) -> int:
        if x in (3, 8):
            faults.sigkill_self()
        return -x

    with conveyor.Pool(workers=2) as pool:
        out = list(pool.imap(task, range(12), chunksize=12, on_error="return"))
        assert [type(o.exception) for o in (out[3], out[8])] == [conveyor.WorkerCrashed] * 2
        assert [o for i, o in enumerate(out) if i not in (3, 8)] == [
            -i for i in range(12) if i not in (3, 8)
        ]
        # An item that kills its worker twice, then succeeds: retries=2 is enough.
        task2 = functools.partial(faults.crash_times, str(tmp_path), times=2)
        assert list(pool.imap(task2, range(6), chunksize=6, retries=2)) == list(range(6))


def test_an_item_that_kills_the_worker_as_it_is_unpickled() -> None:
    # The worker dies loading the chunk, before running any of it: the chunk is tried once
    # more, then item by item, and only the poisoned item fails.
    items = [faults.Poison(i) if i == 6 else i for i in range(20)]
    with faults.no_leftovers(), conveyor.Pool(workers=2) as pool:
        out = list(pool.imap(faults.value_of, items, chunksize=20, on_error="return"))
        assert [o for i, o in enumerate(out) if i != 6] == [i for i in range(20) if i != 6]
        assert isinstance(out[6].exception, conveyor.WorkerCrashed)
        assert out[6].exception.signal_name == "SIGSEGV"
        assert list(pool.imap(faults.square, range(4))) == [0, 1, 4, 9]


def test_a_sigint_sent_to_a_worker_ends_it_quietly(capfd: pytest.CaptureFixture[str]) -> None:
    # Workers are out of reach of the terminal's Ctrl-C (own process group); a SIGINT sent to
    # one on purpose ends it like any signal: a crash of its task, and no KeyboardInterrupt
    # traceback on stderr.
    with conveyor.Pool(workers=1) as pool:
        error = pool.submit(faults.sigint_self).exception(timeout=30)
        assert isinstance(error, conveyor.WorkerCrashed)
        assert error.signal_name == "SIGINT"
        assert pool.submit(faults.square, 3).result(timeout=30) == 9
    assert "KeyboardInterrupt" not in capfd.readouterr().err


def test_many_crashes_in_a_row_never_break_the_pool() -> None:
    with faults.no_leftovers(), conveyor.Pool(workers=2) as pool:
        for _ in range(10):
            with pytest.raises(conveyor.WorkerCrashed):
                pool.submit(faults.sigkill_self).result(timeout=30)
        assert list(pool.imap(faults.square, range(50))) == [i * i for i in range(50)]
        worker_count(pool, 2)


def test_a_memory_wall_is_an_ordinary_failure() -> None:
    with conveyor.Pool(workers=1) as pool:
        pid = pool.submit(faults.pid_of).result(timeout=30)
        error = pool.submit(faults.blow_memory).exception(timeout=30)
        assert isinstance(error, MemoryError)
        assert pool.submit(faults.pid_of).result(timeout=30) == pid  # the worker lived on


def test_an_initializer_that_crashes_stops_the_pool_with_an_error() -> None:
    with faults.no_leftovers(), conveyor.Pool(workers=2, initializer=faults.segfault) as pool:
        error = pool.submit(abs, -1).exception(timeout=30)
        assert isinstance(error, conveyor.WorkerCrashed)
        assert "start-up" in str(error)
        assert "SIGSEGV" in str(error)


# ---------------------------------------------------------------------- recycling


def test_max_tasks_per_worker_recycles_workers() -> None:
    with faults.no_leftovers(), conveyor.Pool(workers=1, max_tasks_per_worker=3) as pool:
        pids = [pool.submit(faults.pid_of).result(timeout=30) for _ in range(9)]
        assert [pids[0]] * 3 == pids[:3]
        assert [pids[3]] * 3 == pids[3:6]
        assert [pids[6]] * 3 == pids[6:]
        assert len(set(pids)) == 3
        faults.wait_gone(pids[:6], what="retired workers")
        worker_count(pool, 1)

    with conveyor.Pool(workers=2, max_tasks_per_worker=5) as pool:
        pids = list(pool.imap(faults.pid_of, range(60), chunksize=1))
        counts = {pid: pids.count(pid) for pid in pids}
        assert max(counts.values()) <= 5
        assert len(counts) >= 12
        worker_count(pool, 2)


def test_max_memory_per_worker_recycles_workers() -> None:
    limit = 200 * 1024 * 1024
    with faults.no_leftovers(), conveyor.Pool(workers=1, max_memory_per_worker=limit) as pool:
        first = pool.submit(faults.pid_of).result(timeout=30)
        assert pool.submit(faults.hold_memory, 8).result(timeout=30) == first
        assert pool.submit(faults.hold_memory, 300).result(timeout=30) == first
        second = pool.submit(faults.pid_of).result(timeout=30)
        assert second != first
        faults.wait_gone([first], what="the worker that grew too big")
        assert pool.submit(faults.pid_of).result(timeout=30) == second
        worker_count(pool, 1)
