"""Crash settlement, case by case, without processes: what runs again and what is blamed when a
worker dies (``conveyor.backends.process.settlement``); and the worker record's states and
transitions that decide what a worker holds (``conveyor.backends.process.workers``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from conveyor._executor_errors import TaskTimeout, WorkerCrashed
from conveyor._work import MODE_MAP, Loader, Unit
from conveyor.backends.process.protocol import IDLE, loading, running
from conveyor.backends.process.settlement import Lost, Position, Settlement, cut, settle
from conveyor.backends.process.workers import State, WorkerRecord

SEQ = 7  # the number of the batch the dispatcher counts as running


class Owner:
    """A sink that owns its units (as a map job does); it is never delivered to here."""

    @property
    def owner(self) -> object:
        return self

    def starting(self, unit: Unit) -> bool:
        return True

    def deliver(self, unit: Unit, start: int, loader: Loader, elapsed: float) -> None:
        raise AssertionError("settle() delivers nothing")


def unit(count: int, owner: Owner | None = None, first: int = 0, **options: Any) -> Unit:
    items = list(range(first, first + count))
    return Unit(abs, items, MODE_MAP, owner or Owner(), items, **options)


def lost(
    batch: list[Unit],
    mark: tuple[int, int],
    *,
    exact: list[bool] | None = None,
    delivered: Position = (0, 0),
    ahead: list[Unit] | None = None,
    timed_out_at: Position | None = None,
    cancelled: tuple[object, ...] = (),
) -> Lost:
    return Lost(
        batch=batch,
        exact=exact if exact is not None else [False] * len(batch),
        seq=SEQ,
        delivered=delivered,
        mark=mark,
        ahead=ahead or [],
        timed_out_at=timed_out_at,
        cancelled=cancelled,
        pid=1234,
        exitcode=3,
    )


def items_of(units: list[Unit]) -> list[Any]:
    return [item for u in units for item in u.items]


# ----------------------------------------------------------------------------- nothing started


def test_no_batch_requeues_what_was_sent_ahead() -> None:
    ahead = [unit(2)]
    assert settle(lost([], (IDLE, IDLE), ahead=ahead)) == Settlement(ahead)


def test_a_worker_that_never_started_the_batch_blames_nothing() -> None:
    batch = [unit(1), unit(3)]
    assert settle(lost(batch, (IDLE, IDLE))) == Settlement(batch)


def test_a_mark_of_the_batch_before_means_not_started() -> None:
    # killed from outside between two batches: its mark still names batch SEQ - 1
    batch, ahead = [unit(1)], [unit(2)]
    settlement = settle(lost(batch, (running(0, SEQ - 1), IDLE), ahead=ahead))
    assert settlement == Settlement(batch + ahead)


# ----------------------------------------------------------------------------- blame


def test_a_one_item_unit_that_was_running_is_blamed() -> None:
    batch = [unit(1, first=0), unit(1, first=1), unit(1, first=2)]
    settlement = settle(lost(batch, (running(1, SEQ), IDLE), ahead=[unit(1, first=9)]))
    assert settlement.blame is not None
    (position, error) = settlement.blame
    assert position == (1, 0)
    assert isinstance(error, WorkerCrashed) and error.exitcode == 3
    assert items_of(settlement.requeue) == [0, 2, 9]  # the others first, then the one ahead
    assert settlement.suspect is None


def test_a_one_item_unit_that_was_loading_is_blamed_too() -> None:
    batch = [unit(1)]
    settlement = settle(lost(batch, (loading(0, SEQ), IDLE)))
    assert settlement.blame is not None and settlement.blame[0] == (0, 0)
    assert settlement.requeue == []


def test_an_ordinary_chunk_dead_at_an_unknown_item_goes_back_whole_and_exact() -> None:
    chunk = unit(10)
    others = [unit(2, first=10), unit(2, first=12)]
    settlement = settle(lost([others[0], chunk, others[1]], (running(1, SEQ), IDLE)))
    assert settlement == Settlement([others[0], chunk, others[1]], None, chunk)
    assert settlement.requeue[1] is chunk  # whole: its pickled form is reused


def test_an_exact_chunk_names_the_item() -> None:
    chunk = unit(10)
    settlement = settle(lost([chunk], (running(0, SEQ), 4), exact=[True]))
    assert settlement.blame is not None and settlement.blame[0] == (0, 4)
    assert items_of(settlement.requeue) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert all(u is not chunk for u in settlement.requeue)  # pieces


def test_an_exact_chunk_that_died_before_its_first_item_goes_back_exact() -> None:
    chunk = unit(10)
    settlement = settle(lost([chunk], (running(0, SEQ), IDLE), exact=[True]))
    assert settlement == Settlement([chunk], None, chunk)


def test_an_exact_chunk_that_died_loading_is_split_into_singles() -> None:
    chunk = unit(3)
    settlement = settle(lost([chunk], (loading(0, SEQ), IDLE), exact=[True]))
    assert settlement.blame is None and settlement.suspect is None
    assert [u.items for u in settlement.requeue] == [[0], [1], [2]]


def test_an_ordinary_chunk_that_died_loading_goes_back_exact() -> None:
    chunk = unit(3)
    assert settle(lost([chunk], (loading(0, SEQ), IDLE))) == Settlement([chunk], None, chunk)


# ----------------------------------------------------------------------------- streamed batches


def test_a_streamed_batch_is_settled_from_the_first_item_not_delivered() -> None:
    batch = [unit(4, timeout=5.0), unit(4, first=4, timeout=5.0)]
    settlement = settle(lost(batch, (running(1, SEQ), 2), exact=[True, True], delivered=(0, 3)))
    assert settlement.blame is not None and settlement.blame[0] == (1, 2)
    assert items_of(settlement.requeue) == [3, 4, 5, 7]


def test_a_streamed_batch_dead_between_two_items_blames_nothing() -> None:
    # item (0, 1) was delivered; the worker died before it marked (0, 2)
    batch = [unit(4, timeout=5.0)]
    settlement = settle(lost(batch, (running(0, SEQ), 1), exact=[True], delivered=(0, 2)))
    assert settlement.blame is None and settlement.suspect is None
    assert items_of(settlement.requeue) == [2, 3]


# ----------------------------------------------------------------------------- timeouts


def test_killed_for_a_timeout_blames_the_item_with_task_timeout() -> None:
    batch = [unit(3, timeout=2.0)]
    settlement = settle(
        lost(batch, (running(0, SEQ), 1), exact=[True], delivered=(0, 1), timed_out_at=(0, 1))
    )
    assert settlement.blame is not None
    position, error = settlement.blame
    assert position == (0, 1)
    assert isinstance(error, TaskTimeout) and error.timeout == 2.0
    assert items_of(settlement.requeue) == [2]


def test_an_item_that_finished_as_the_deadline_passed_is_not_blamed() -> None:
    # the kill was for (0, 1), but the worker had moved on to (0, 2) when it died
    batch = [unit(3, timeout=2.0)]
    settlement = settle(
        lost(batch, (running(0, SEQ), 2), exact=[True], delivered=(0, 2), timed_out_at=(0, 1))
    )
    assert settlement.blame is None and settlement.suspect is None
    assert items_of(settlement.requeue) == [2]


def test_a_unit_past_its_deadline_while_loading_is_blamed() -> None:
    batch = [unit(3, timeout=2.0)]
    settlement = settle(lost(batch, (loading(0, SEQ), IDLE), exact=[True], timed_out_at=(0, 0)))
    assert settlement.blame is not None and settlement.blame[0] == (0, 0)
    assert isinstance(settlement.blame[1], TaskTimeout)
    assert items_of(settlement.requeue) == [1, 2]


# ----------------------------------------------------------------------------- interrupts


def test_an_interrupted_owner_loses_its_units_and_nobody_is_blamed() -> None:
    owner, other = Owner(), Owner()
    batch = [unit(1, owner), unit(1, other, first=1), unit(2, owner, first=2)]
    ahead = [unit(1, other, first=4), unit(1, owner, first=5)]
    settlement = settle(lost(batch, (running(0, SEQ), IDLE), ahead=ahead, cancelled=(owner,)))
    assert settlement == Settlement([batch[1], ahead[0]])


def test_two_interrupts_on_one_worker_drop_both_owners_units() -> None:
    first, second, bystander = Owner(), Owner(), Owner()
    batch = [unit(1, first), unit(1, second, first=1), unit(1, bystander, first=2)]
    settlement = settle(lost(batch, (running(0, SEQ), IDLE), cancelled=(first, second)))
    assert settlement == Settlement([batch[2]])


def test_the_interrupt_race_a_batch_sent_ahead_that_has_just_begun() -> None:
    # The race of issue 9: the worker finished batch SEQ - 1 and began the owner's batch sent
    # ahead (SEQ). The dispatcher's record shows that batch as running in the same critical
    # section (WorkerRecord.finish), so interrupt() found the worker and killed it, whether its
    # mark already named the new batch or still the one before. Either way the owner's units
    # are dropped, nothing is blamed, and what others had sent ahead runs again.
    owner, other = Owner(), Owner()
    batch = [unit(4, owner)]
    ahead = [unit(1, other, first=4)]
    for mark in [(running(0, SEQ - 1), IDLE), (loading(0, SEQ), IDLE), (running(0, SEQ), 2)]:
        settlement = settle(lost(batch, mark, ahead=ahead, cancelled=(owner,)))
        assert settlement == Settlement(ahead), mark


# ----------------------------------------------------------------------------- all cases at once


@st.composite
def deaths(draw: st.DrawFn) -> Lost:
    """A death in any state the worker can leave its mark in."""
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    stream = draw(st.booleans())
    batch, first = [], 0
    for size in sizes:
        batch.append(unit(size, first=first, timeout=1.0 if stream else None))
        first += size
    if not draw(st.integers(0, 4)):  # not started: an earlier batch's mark, or none
        state = draw(st.sampled_from([IDLE, running(0, SEQ - 1), loading(2, SEQ - 1)]))
        return lost(batch, (state, IDLE), exact=[stream] * len(batch))
    if not stream:
        exact = draw(st.lists(st.booleans(), min_size=len(batch), max_size=len(batch)))
        index = draw(st.integers(0, len(batch) - 1))
        if draw(st.booleans()):
            return lost(batch, (loading(index, SEQ), IDLE), exact=exact)
        item = draw(st.integers(-1, len(batch[index].items) - 1)) if exact[index] else IDLE
        return lost(batch, (running(index, SEQ), item), exact=exact)
    # Streamed: every item before ``delivered`` was delivered (the parent reads the pipe before
    # it settles), so the worker was on the unit of ``delivered``, at its item or the one before.
    index = draw(st.integers(0, len(batch) - 1))
    done = draw(st.integers(0, len(batch[index].items) - 1))
    choices = [(running(index, SEQ), done)]
    if done:
        choices.append((running(index, SEQ), done - 1))
    else:
        choices += [(loading(index, SEQ), IDLE), (running(index, SEQ), IDLE)]
    mark = draw(st.sampled_from(choices))
    timed_out_at = (index, done) if draw(st.booleans()) else None
    return lost(
        batch,
        mark,
        exact=[True] * len(batch),
        delivered=(index, done),
        timed_out_at=timed_out_at,
    )


@given(deaths())
def test_every_item_not_delivered_is_requeued_or_blamed_exactly_once(death: Lost) -> None:
    settlement = settle(death)
    owed = items_of(cut(death.batch, death.delivered, None))
    again = items_of(settlement.requeue)
    blamed = []
    if settlement.blame is not None:
        (index, item), _ = settlement.blame
        blamed = [death.batch[index].items[item]]
    assert sorted(again + blamed) == owed
    assert settlement.suspect is None or settlement.suspect in settlement.requeue


# ----------------------------------------------------------------------------- worker states


class _FakeProcess:
    pid = 4242
    sentinel = 99


def record() -> WorkerRecord:
    return WorkerRecord(_FakeProcess(), None, None, None, [IDLE, IDLE], "token")  # type: ignore[arg-type]


def test_a_worker_goes_through_its_states_and_its_holdings_follow() -> None:
    worker = record()
    assert worker.state is State.STARTING and worker.assigned_units() == []
    worker.ready(now=1.0)
    assert worker.state is State.IDLE and worker.said_ready
    first, second = [unit(2)], [unit(1)]
    worker.reserve(first)
    assert worker.state is State.BUSY and worker.assigned_units() == first
    worker.begin(first, [False], seq=1, stream=False)
    worker.reserve_ahead(second)
    assert worker.assigned_units() == first + second
    worker.send_ahead(second, [False], seq=2)
    # the batch ends and the one sent ahead begins in one transition: never empty between
    assert worker.finish() == first
    assert worker.state is State.BUSY and worker.assigned_units() == second and worker.seq == 2
    assert worker.finish() == second
    assert worker.state is State.IDLE and worker.assigned_units() == [] and worker.tasks_run == 3
    worker.retire()
    assert worker.state is State.RETIRING
    worker.die()
    assert worker.state is State.DEAD


def test_a_reservation_that_came_to_nothing_hands_over_to_the_one_ahead() -> None:
    worker = record()
    worker.ready(now=0.0)
    first, second = [unit(1)], [unit(1)]
    worker.reserve(first)
    worker.reserve_ahead(second)
    worker.unreserve(ahead=False)  # nothing of ``first`` was sent
    assert worker.state is State.BUSY and worker.batch is second and worker.ahead is None
    worker.unreserve(ahead=False)  # nor of ``second``
    assert worker.state is State.IDLE and worker.assigned_units() == []


def test_a_dead_worker_keeps_its_holdings_until_they_are_taken() -> None:
    worker = record()
    worker.ready(now=0.0)
    batch, ahead = [unit(1)], [unit(1)]
    worker.reserve(batch)
    worker.begin(batch, [False], seq=1, stream=False)
    worker.reserve_ahead(ahead)
    worker.die()
    assert worker.assigned_units() == batch + ahead  # interrupt() still finds them
    assert worker.take_holdings() == (batch, ahead)
    assert worker.assigned_units() == []
