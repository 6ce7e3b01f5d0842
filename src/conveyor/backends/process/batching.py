"""Which queued units go to a worker together: one batch, one message (pure; no threads).

The dispatcher pairs workers with batches (``ProcessBackend._take_batches``, under its lock);
this module decides what one batch is. A batch is one unit, plus more small ones while their
estimates stay under :data:`COALESCE_SECONDS` and the worker takes no more than its share of
the queue, so a burst of ``submit`` calls (or of a map's chunks that a small ``chunksize`` made
short) costs a few messages, not one each. A unit of unknown run time (estimate 0) takes no
others along: a burst of long tasks must spread over the workers, and stay cancellable until
each one starts. Timed units (streamed item by item) and
untimed ones never share a batch. With ``max_tasks_per_worker`` a worker is given no more
items than it has left (``quota``): a larger unit is split, its rest stays at the front of
the queue.
"""

from __future__ import annotations

import math
from collections import deque

from ..._work import Unit, estimate_of

__all__ = ["COALESCE_SECONDS", "MAX_BATCH_UNITS", "PREFETCH_SECONDS", "is_short", "pick_batch"]

#: small units (by their estimate) may share one message up to this much expected work
COALESCE_SECONDS = 0.005
#: a batch is sent ahead only to a worker whose current batch is expected to take at most this
PREFETCH_SECONDS = 0.02
#: a batch never holds more units than this
MAX_BATCH_UNITS = 256


def pick_batch(ready: deque[Unit], workers: int, quota: int | None = None) -> list[Unit]:
    """Take the next batch for one worker off the front of ``ready`` (which must not be empty).

    ``workers``: how many share the queue (a batch takes at most its share of the units);
    ``quota``: how many items the worker may still run (None: no limit; must be positive).

    Example::

        >>> from conveyor._work import MODE_MAP, Unit
        >>> small = [Unit(abs, [i], MODE_MAP, None, [i], estimate=0.001, coalesce=True)
        ...          for i in range(4)]
        >>> queue = deque(small)
        >>> [len(pick_batch(queue, workers=2)), len(queue)]
        [2, 2]
    """
    share = max(1, math.ceil(len(ready) / max(1, workers)))
    first = ready.popleft()
    if quota is not None and len(first.items) > quota:
        ready.appendleft(first.piece(quota))
        first = first.piece(0, quota)
    units = [first]
    count, expected = len(first.items), estimate_of(first)
    stream = first.timeout is not None
    while first.coalesce and expected > 0 and ready and len(units) < min(share, MAX_BATCH_UNITS):
        nxt = ready[0]
        if not nxt.coalesce or (nxt.timeout is not None) != stream:
            break
        if expected + estimate_of(nxt) > COALESCE_SECONDS:
            break
        if quota is not None and count + len(nxt.items) > quota:
            break
        units.append(ready.popleft())
        count += len(nxt.items)
        expected += nxt.estimate
    return units


def is_short(batch: list[Unit] | None) -> bool:
    """Whether a worker running ``batch`` may be sent its next batch ahead: an untimed batch
    (timed ones are streamed) expected to end soon, so a batch never waits long behind a slow
    one while another worker is free.

    Example::

        >>> from conveyor._work import MODE_MAP, Unit
        >>> is_short([Unit(abs, [1], MODE_MAP, None, [0], estimate=0.001)])
        True
        >>> is_short([Unit(abs, [1], MODE_MAP, None, [0], estimate=0.0)])
        False
    """
    if not batch or batch[0].timeout is not None:
        return False
    estimates = [estimate_of(u) for u in batch]
    return all(e > 0 for e in estimates) and sum(estimates) <= PREFETCH_SECONDS
