"""Settling what a dead worker held: which items run again, which one item is to blame.

A pure function of what the dispatcher knew when the worker died (:class:`Lost`): the batch it
ran and the one sent ahead, how far a streamed batch was delivered, the worker's *mark* (read
after the death, so without a race; see :mod:`.protocol`), whether the parent killed it for a
timeout and at which item, and whether it was killed to stop one owner's work (an interrupt).
It returns a :class:`Settlement`: the units to put back at the front of the queue, in order, the
one item to fail and with what, and the unit to send back *exact* (each item marked) so that a
second death names its item. The dispatcher applies it (``ProcessBackend._on_death``); this
module starts no process and takes no lock, so every case is tested alone
(``tests/test_settlement.py``).

Guarantees (each is kept by the branch of :func:`settle` that names it):

* every item from the first one not yet delivered is either re-queued or blamed, exactly once;
  items the worker had delivered (a streamed batch) are neither;
* only an item known to have been running is blamed: a one-item unit, or an exact unit whose
  mark names the item; a death at an unknown item of a larger unit blames nothing and sends the
  unit back exact (or, if it died *loading* an exact unit, one unit per item);
* a worker killed for a timeout blames the timed-out item only if that item was still on when
  it died; otherwise (it finished just as the deadline passed) nothing is blamed;
* a worker killed to stop an owner's work (``cancelled``) blames nothing; the owner's units are
  dropped, every other unit is re-queued;
* a mark naming an earlier batch than the one counted as running means the worker had not
  started it (killed from outside between two batches): everything is re-queued;
* the batch sent ahead never started (the worker starts it only after the DONE of the batch
  before, which the dispatcher reads before it settles a death): it is re-queued, after the rest.
"""

from __future__ import annotations

from ..._executor_errors import TaskTimeout, WorkerCrashed
from ..._work import Unit
from .protocol import IDLE, read_mark, running  # noqa: F401 (running: the example)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    from ..._records import NamedTuple

__all__ = ["Lost", "Position", "Settlement", "cut", "settle"]

#: a position in a batch: (unit index, item index)
Position = tuple[int, int]


class Lost(NamedTuple):
    """What the dispatcher knew of a worker that died."""

    batch: list[Unit]  # the batch it ran (empty: none)
    exact: list[bool]  # per unit of the batch: sent exact (each item marked)
    seq: int  # the batch's number (see protocol.py, the mark)
    delivered: Position  # the first item not delivered yet ((0, 0) unless streamed)
    mark: tuple[int, int]  # mark[0], mark[1] as the worker left them
    ahead: list[Unit]  # the batch sent ahead, not started
    timed_out_at: Position | None  # the parent killed it for this item's timeout
    cancelled: tuple[object, ...]  # the owners whose work it was killed to stop
    pid: int | None = None
    exitcode: int | None = None


class Settlement(NamedTuple):
    """What to do about a lost batch."""

    requeue: list[Unit]  # to put back at the front of the queue, in this order
    blame: tuple[Position, BaseException] | None = None  # the one item that fails, and why
    suspect: Unit | None = None  # re-queued exact: a second death will name its item


def settle(lost: Lost) -> Settlement:
    """Settle the batch of a worker that died (see the module's guarantees).

    Example::

        >>> from conveyor._work import MODE_MAP, Unit
        >>> unit = Unit(abs, [1, 2, 3], MODE_MAP, sink=None, tags=[0, 1, 2])
        >>> # died while running it, at an unknown item: sent back whole, exact
        >>> lost = Lost([unit], [False], 1, (0, 0), (running(0, 1), IDLE), [], None, ())
        >>> settle(lost) == Settlement([unit], None, unit)
        True
    """
    cancelled = lost.cancelled
    ahead = _not_of(lost.ahead, cancelled)
    batch, first = lost.batch, lost.delivered
    rest = cut(batch, first, None)
    if not batch:
        return Settlement(ahead)
    if cancelled:  # killed to stop an owner's work: the others were not to blame
        return Settlement(_not_of(rest, cancelled) + ahead)
    state, item = lost.mark
    seq, index, is_running = read_mark(state) if state != IDLE else (-1, 0, False)
    if seq != lost.seq:  # died before it started on the batch (killed from outside)
        return Settlement(rest + ahead)
    is_loading = not is_running
    unit = batch[index]
    position: Position | None
    if len(unit.items) == 1:
        position = (index, 0)
    elif is_loading or not lost.exact[index] or item < 0:
        position = None
    else:
        position = (index, item)
    if lost.timed_out_at is not None:
        # Streamed, so the deadline was for that item. Blame it only if it was still on (or
        # its unit still loading) when the worker died.
        timed_out = lost.timed_out_at
        if position != timed_out and not (is_loading and timed_out == (index, 0)):
            return Settlement(rest + ahead)
        timeout = batch[timed_out[0]].timeout or 0.0
        error: BaseException = TaskTimeout(
            f"task ran past its timeout of {timeout:g} s and its worker process was "
            f"killed (it did not respond to the in-process alarm)",
            timeout,
        )
        return Settlement(_all_but(batch, first, timed_out) + ahead, (timed_out, error))
    if position is not None:
        if position < first:  # died between two items of a streamed batch
            return Settlement(rest + ahead)
        crashed = WorkerCrashed.for_exit(lost.pid, lost.exitcode)
        return Settlement(_all_but(batch, first, position) + ahead, (position, crashed))
    # Several items of one unit could be to blame.
    before = cut(batch, first, (index, 0))
    after = cut(batch, (index + 1, 0), None)
    if is_loading and lost.exact[index]:
        # Its items could not even be loaded, twice: load each alone to find the culprit.
        return Settlement(before + unit.singles() + after + ahead)
    # Send it back exact: if it kills again, the mark names the item.
    return Settlement([*before, unit, *after, *ahead], None, unit)


def cut(batch: list[Unit], start: Position, stop: Position | None) -> list[Unit]:
    """Units for the items of ``batch`` from ``start`` up to ``stop`` (exclusive; None: the end).

    Whole units are reused as they are (their pickled form too); parts become pieces.
    """
    stop = stop if stop is not None else (len(batch), 0)
    units = []
    for index in range(start[0], min(stop[0] + 1, len(batch))):
        unit = batch[index]
        lo = start[1] if index == start[0] else 0
        hi = stop[1] if index == stop[0] else len(unit.items)
        if lo >= hi:
            continue
        units.append(unit if lo == 0 and hi == len(unit.items) else unit.piece(lo, hi))
    return units


def _not_of(units: list[Unit], owners: tuple[object, ...]) -> list[Unit]:
    """``units`` without those of ``owners``."""
    if not owners:
        return units
    return [u for u in units if not any(u.sink.owner is owner for owner in owners)]


def _all_but(batch: list[Unit], first: Position, position: Position) -> list[Unit]:
    """The items of ``batch`` from ``first`` on, without the one at ``position``."""
    index, item = position
    return cut(batch, first, position) + cut(batch, (index, item + 1), None)
