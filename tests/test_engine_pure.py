"""The engine's pure logic that only the process tests used to reach: batching, the work queue,
the mark encoding and the wire messages (no process, no thread)."""

from __future__ import annotations

import sys
import threading
from collections import deque
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor._work import MODE_MAP, Loader, Unit
from conveyor.backends.process import protocol as wire
from conveyor.backends.process.batching import (
    COALESCE_SECONDS,
    MAX_BATCH_UNITS,
    PREFETCH_SECONDS,
    is_short,
    pick_batch,
)
from conveyor.backends.process.protocol import IDLE, SEQ_STRIDE, loading, read_mark, running
from conveyor.backends.queue import JobTicket, WorkQueue


class Sink:
    def __init__(self) -> None:
        self.owner = self

    def starting(self, unit: Unit) -> bool:
        return True

    def deliver(self, unit: Unit, start: int, loader: Loader, elapsed: float) -> None:
        raise AssertionError("not delivered here")


_SINK = Sink()


def unit(
    count: int = 1,
    estimate: float = 0.001,
    coalesce: bool = True,
    timeout: float | None = None,
    sink: Sink = _SINK,
    not_before: float = 0.0,
) -> Unit:
    items = list(range(count))
    return Unit(
        abs,
        items,
        MODE_MAP,
        sink,
        items,
        timeout=timeout,
        estimate=estimate,
        coalesce=coalesce,
        not_before=not_before,
    )


# ----------------------------------------------------------------------------- batching


def test_small_units_share_a_batch_up_to_the_coalescing_budget() -> None:
    per = COALESCE_SECONDS / 4
    queue = deque(unit(estimate=per) for _ in range(10))
    assert len(pick_batch(queue, workers=1)) == 4
    assert len(queue) == 6


def test_a_batch_takes_at_most_its_share_of_the_queue() -> None:
    queue = deque(unit(estimate=1e-6) for _ in range(10))
    assert len(pick_batch(queue, workers=4)) == 3  # ceil(10 / 4)


def test_a_batch_never_holds_more_than_max_batch_units() -> None:
    queue = deque(unit(estimate=1e-9) for _ in range(MAX_BATCH_UNITS + 10))
    assert len(pick_batch(queue, workers=1)) == MAX_BATCH_UNITS


@pytest.mark.parametrize(
    "first, second",
    [
        (unit(estimate=0.0), unit()),  # unknown run time: never coalesced
        (unit(coalesce=False), unit()),  # a map's chunk
        (unit(), unit(coalesce=False)),
        (unit(), unit(timeout=1.0)),  # timed and untimed never share a batch
        (unit(timeout=1.0), unit()),
    ],
)
def test_units_that_do_not_coalesce_go_alone(first: Unit, second: Unit) -> None:
    queue = deque([first, second])
    assert pick_batch(queue, workers=1) == [first]
    assert list(queue) == [second]


def test_units_made_before_their_run_time_was_known_learn_it_from_their_estimator() -> None:
    """A burst of submits made before the first came back (estimate 0 when made) coalesces once
    the pool's moving average knows them short: not one message per submit (it took 5k
    submits 0.3-0.6 s instead of 0.05 s on a fresh pool)."""

    class Average:
        estimate = 0.0

    average = Average()
    queue = deque(unit(estimate=0.0) for _ in range(8))
    for queued in queue:
        queued.estimator = average
    assert len(pick_batch(queue, workers=1)) == 1  # nothing known yet: alone
    average.estimate = COALESCE_SECONDS / 4
    assert len(pick_batch(queue, workers=1)) == 4


def test_timed_units_coalesce_with_timed_ones() -> None:
    queue = deque([unit(timeout=1.0), unit(timeout=2.0)])
    assert len(pick_batch(queue, workers=1)) == 2


def test_a_quota_splits_a_large_unit_and_keeps_the_rest_in_front() -> None:
    big, after = unit(10), unit(1)
    queue = deque([big, after])
    batch = pick_batch(queue, workers=1, quota=3)
    assert [u.items for u in batch] == [[0, 1, 2]]
    assert [u.items for u in queue] == [[3, 4, 5, 6, 7, 8, 9], [0]]


def test_a_quota_stops_coalescing() -> None:
    queue = deque(unit(2, estimate=1e-6) for _ in range(5))
    assert sum(len(u.items) for u in pick_batch(queue, workers=1, quota=5)) == 4


@given(
    st.lists(
        st.tuples(st.integers(1, 4), st.sampled_from([0.0, 1e-4, 0.003]), st.booleans()),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 8),
    st.one_of(st.none(), st.integers(1, 6)),
)
def test_batching_keeps_every_item_once_and_in_order(
    specs: list[tuple[int, float, bool]], workers: int, quota: int | None
) -> None:
    units = [unit(count, estimate, coalesce) for count, estimate, coalesce in specs]
    order = [(u.tags, u.id) for u in units]
    queue = deque(units)
    picked: list[Unit] = []
    while queue:
        batch = pick_batch(queue, workers, quota)
        assert batch
        head = batch[0]
        assert len(batch) == 1 or (head.estimate > 0 and all(u.coalesce for u in batch))
        if quota is not None:
            assert sum(len(u.items) for u in batch) <= quota
        assert sum(u.estimate for u in batch[1:]) <= COALESCE_SECONDS
        picked += batch
    flat = [item for u in picked for item in u.tags]
    assert flat == [item for tags, _ in order for item in tags]


def test_only_a_short_untimed_batch_gets_one_sent_ahead() -> None:
    assert is_short([unit(estimate=PREFETCH_SECONDS / 2)])
    assert not is_short([unit(estimate=PREFETCH_SECONDS * 2)])
    assert not is_short([unit(estimate=0.0)])  # unknown
    assert not is_short([unit(timeout=1.0)])  # streamed
    assert not is_short(None)
    assert not is_short([])


# ----------------------------------------------------------------------------- the work queue


def test_the_queue_keeps_order_and_holds_retries_until_their_time() -> None:
    queue = WorkQueue()
    a, b, late = unit(), unit(), unit(not_before=10.0)
    queue.add([a, late, b], now=0.0)
    assert list(queue.ready) == [a, b]
    assert queue.has_backoff and queue.next_due() == 10.0
    queue.release_due(9.9)
    assert list(queue.ready) == [a, b]
    queue.release_due(10.0)
    assert list(queue.ready) == [a, b, late]
    assert not queue.has_backoff and queue.next_due() is None


def test_held_retries_come_out_in_time_order_and_ties_in_arrival_order() -> None:
    queue = WorkQueue()
    units = [unit(not_before=t) for t in (3.0, 1.0, 2.0, 1.0)]
    queue.add(units, now=0.0)
    queue.release_due(5.0)
    assert list(queue.ready) == [units[1], units[3], units[2], units[0]]


def test_cancel_drops_an_owners_units_ready_or_held() -> None:
    mine, theirs = Sink(), Sink()
    queue = WorkQueue()
    keep = [unit(sink=theirs), unit(sink=theirs, not_before=5.0)]
    queue.add([unit(sink=mine), keep[0], unit(sink=mine, not_before=5.0), keep[1]], now=0.0)
    queue.cancel(mine)
    assert list(queue.ready) == [keep[0]]
    assert queue.take_all() == keep
    assert not queue


def test_job_tickets_open_close_and_belong_to_their_thread() -> None:
    queue = WorkQueue()
    mine = queue.open_job()
    other: list[JobTicket] = []
    thread = threading.Thread(target=lambda: other.append(queue.open_job()))
    thread.start()
    thread.join()
    assert queue.jobs == {mine, other[0]}
    assert queue.jobs_driven_by(threading.current_thread()) == [mine]
    queue.close_jobs([mine])
    assert not mine.open and queue.jobs == {other[0]}
    queue.close_jobs()
    assert not other[0].open and not queue.jobs


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 10)), max_size=40), st.floats(0, 10))
def test_the_queue_loses_nothing(specs: list[tuple[bool, float]], now: float) -> None:
    queue = WorkQueue()
    units = [unit(not_before=t if held else 0.0) for held, t in specs]
    queue.add(units, now=0.0)
    queue.release_due(now)
    assert all(u.not_before <= now for u in queue.ready)
    assert sorted(u.id for u in queue.take_all()) == sorted(u.id for u in units)


@pytest.mark.parametrize("round_", range(40))
def test_units_taken_without_the_lock_are_never_also_cancelled_or_dropped(round_: int) -> None:
    """The thread backend's workers pop_ready without the lock while cancel and take_all run
    under it: every unit ends in exactly one place (taken once, dropped once, or cancelled)."""
    mine, theirs = Sink(), Sink()
    units = [unit(sink=mine if i % 3 == 0 else theirs) for i in range(5000)]
    queue, lock = WorkQueue(), threading.Lock()
    queue.add(units, now=0.0)
    go, started, stop = threading.Barrier(3), threading.Event(), threading.Event()
    taken: list[list[Unit]] = [[], []]

    def take(into: list[Unit]) -> None:
        go.wait()
        while not stop.is_set():
            found = queue.pop_ready()
            if found is not None:
                into.append(found)
                if len(into) == 10:
                    started.set()
                sum(range(100))  # a task's worth of time: the queue must not empty at once

    takers = [threading.Thread(target=take, args=(into,)) for into in taken]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: in the middle of a call
    try:
        for thread in takers:
            thread.start()
        go.wait()
        assert started.wait(60)
        with lock:
            queue.cancel(mine)
        with lock:
            dropped = queue.take_all()
    finally:
        stop.set()
        for thread in takers:
            thread.join()
        sys.setswitchinterval(switch)
    everywhere = [u.id for u in taken[0] + taken[1] + dropped]
    assert len(everywhere) == len(set(everywhere)), "a unit is in two places"
    assert not [u for u in dropped if u.sink is mine], "a cancelled unit was dropped later"
    assert {u.id for u in units if u.sink is theirs} <= set(everywhere), "a unit was lost"
    assert not queue


# ----------------------------------------------------------------------------- the mark


@given(st.integers(0, 1 << 30), st.integers(0, SEQ_STRIDE // 2 - 1))
def test_the_mark_round_trips(seq: int, index: int) -> None:
    assert read_mark(loading(index, seq)) == (seq, index, False)
    assert read_mark(running(index, seq)) == (seq, index, True)
    assert loading(index, seq) != IDLE and running(index, seq) != IDLE


@given(st.integers(0, 1 << 30), st.integers(0, SEQ_STRIDE // 2 - 2))
def test_the_mark_orders_a_workers_progress(seq: int, index: int) -> None:
    # loading a unit < running it < loading the next < any mark of the next batch
    assert loading(index, seq) < running(index, seq) < loading(index + 1, seq)
    assert running(index, seq) < loading(0, seq + 1)


# ----------------------------------------------------------------------------- the messages

PAYLOAD = (b"data", -1, [], -1, None)

MESSAGES: list[wire.Message] = [
    wire.Run(1, False, [(5, 9, PAYLOAD, MODE_MAP, None, 3, PAYLOAD, False)], [4], 12),
    wire.Run(0, True, [(5, 9, None, MODE_MAP, 1.5, 1, PAYLOAD, True)] * 2, [], 1),
    wire.Stop(),
    wire.Done(2, [5, 6], [PAYLOAD, PAYLOAD], [0.25, 0.5], [1, 0], 1 << 30, [3]),
    wire.Item(0, 5, 2, PAYLOAD, 0.125, 0, [], 1),
    wire.Ready(0, True),
    wire.InitFailed(0, "Traceback ..."),
    wire.Log(0, {"msg": "hello", "levelno": 20}),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_with_its_type(message: wire.Message) -> None:
    back: Any = wire.decode(wire.encode(message))
    assert type(back) is type(message)
    assert back == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_one_framing_rule_kind_then_descriptor_count(message: wire.Message) -> None:
    import pickle

    fields = pickle.loads(wire.encode(message))
    assert type(fields) is tuple  # plain tuples on the wire, no class names
    assert isinstance(fields[0], int) and fields[1] == message.nfds
    assert b"conveyor" not in wire.encode(message)  # no class of ours on the wire
