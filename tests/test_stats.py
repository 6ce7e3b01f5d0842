"""Statistics: a map's MapStats (stats=), a pool's stats(), the progress bar's failures/retries."""

from __future__ import annotations

import functools
import io
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conveyor
from conveyor._stats import Distribution

import faults


def fail_on_multiples_of_5(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(f"item {x}")
    return x


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_map_stats_count_tasks_failures_retries_and_chunks(backend: str) -> None:
    stats = conveyor.MapStats()
    with conveyor.Pool(workers=2, backend=backend) as pool:
        out = list(
            pool.imap(fail_on_multiples_of_5, range(50), retries=2, on_error="return", stats=stats)
        )
        per_worker = pool.stats().workers
    assert sum(w.failures for w in per_worker) == 30  # every attempt of the 10 bad items
    assert sum(w.tasks for w in per_worker) == 70
    assert len(out) == 50
    assert stats.tasks == 50
    assert stats.failures == 10  # items 0, 5, ..., 45, each after 1 + 2 attempts
    assert stats.retries == 20
    assert all(f.attempts == 3 for f in out if isinstance(f, conveyor.Failure))
    sizes = [size for size, _ in stats.chunk_sizes.values]
    assert stats.chunks == len(sizes) and sum(sizes) == 50  # the input, cut once, no retries
    assert 0 < stats.task_times.median <= stats.task_times.p95 <= stats.task_times.max


def test_map_stats_on_a_pools_imap_and_starmap_and_as_it_runs() -> None:
    stats = conveyor.MapStats()
    with conveyor.Pool(workers=2) as pool:
        results = pool.imap(abs, range(-20, 0), chunksize=4, stats=stats)
        first = next(results)
        assert first == 20 and 1 <= stats.tasks <= 20  # readable meanwhile
        assert len(list(results)) == 19
        assert stats.tasks == 20 and stats.chunks == 5 and stats.chunk_sizes.max == 4
        starred = conveyor.MapStats()
        assert list(pool.starmap(pow, [(2, 3), (3, 2)], stats=starred)) == [8, 9]
        assert starred.tasks == 2


def test_task_time_distribution_separates_a_slow_item() -> None:
    stats = conveyor.MapStats()
    times = [0.01] * 19 + [0.5]
    conveyor.map(faults.nap, times, backend="process", chunksize=1, stats=stats, workers=2)
    assert stats.task_times.count == 20
    assert 0.005 < stats.task_times.median < 0.4
    assert stats.task_times.max >= 0.5
    summary = stats.summary()
    assert summary["task_time_max"] == stats.task_times.max and summary["tasks"] == 20


def test_bad_stats_argument_is_named() -> None:
    with pytest.raises(TypeError, match=r"stats must be a conveyor\.MapStats"):
        conveyor.map(abs, [1], backend="thread", stats={})  # type: ignore[arg-type]


def test_pool_stats_busy_time_and_tasks_per_worker() -> None:
    with faults.no_leftovers(), conveyor.Pool(workers=2) as pool:
        list(pool.imap(faults.nap, [0.05] * 10, chunksize=1))
        stats = pool.stats()
    assert stats.tasks == 10
    assert len(stats.workers) == 2 and sum(w.tasks for w in stats.workers) == 10
    assert sum(w.busy for w in stats.workers) >= 0.45
    assert all(w.name.startswith("conveyor-worker-") and w.pid > 0 for w in stats.workers)
    assert all(w.idle >= 0 for w in stats.workers)
    assert stats.restarts == {"crash": 0, "timeout": 0, "recycle": 0, "stopped": 0}


def test_pool_stats_restarts_by_cause() -> None:
    with faults.no_leftovers(), conveyor.Pool(workers=1, max_tasks_per_worker=3) as pool:
        crashed = list(
            pool.imap(functools.partial(faults.crash_on, bad=1), range(3), on_error="return")
        )
        assert isinstance(crashed[1], conveyor.Failure)
        assert isinstance(crashed[1].exception, conveyor.WorkerCrashed)
        timed = list(
            pool.imap(faults.sleep_ignoring_alarm, [30], task_timeout=0.2, on_error="return")
        )
        assert isinstance(timed[0].exception, conveyor.TaskTimeout)
        assert list(pool.imap(abs, range(7), chunksize=1)) == list(range(7))
        stats = pool.stats()
    assert stats.restarts["crash"] == 1
    assert stats.restarts["timeout"] == 1
    assert stats.restarts["recycle"] >= 2  # 7 items at 3 per worker, after the fresh starts
    assert stats.restarts["stopped"] == 0
    assert stats.tasks == 2 + 7  # the crashed and the killed item never finished


def test_thread_pool_stats() -> None:
    with conveyor.Pool(workers=2, backend="thread") as pool:
        list(pool.imap(faults.nap, [0.05] * 6, chunksize=1))
        stats = pool.stats()
    assert stats.tasks == 6 and len(stats.workers) == 2
    assert sum(w.busy for w in stats.workers) >= 0.25


def test_progress_shows_failures_and_retries() -> None:
    out = io.StringIO()
    conveyor.map(
        fail_on_multiples_of_5,
        range(20),
        backend="thread",
        retries=1,
        on_error="return",
        progress={"file": out, "mininterval": 0},
    )
    final = out.getvalue().split("\r")[-1]
    assert "20/20" in final and "failed=4" in final and "retried=4" in final


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 100, allow_nan=False), st.integers(1, 5)), min_size=1, max_size=50
    ),
    st.floats(0.01, 1.0),
)
def test_distribution_quantile_matches_expanded_reference(
    pairs: list[tuple[float, int]], q: float
) -> None:
    d = Distribution()
    for value, weight in pairs:
        d.add(value, weight)
    expanded = sorted(v for v, w in pairs for _ in range(w))
    assert d.quantile(q) == expanded[max(0, math.ceil(q * len(expanded)) - 1)]
    assert d.max == expanded[-1] and d.count == len(expanded)
