"""How many items go into each chunk of a map: measured, not guessed.

``chunksize="auto"`` starts with chunks of one item until the first outcomes report how long an
item takes in the worker (pure run time, without transport), then sizes chunks so each runs
for about :data:`TARGET_SECONDS` (a backend may ask for more: a Dask task costs a millisecond
of scheduler time, so the Dask backend asks for 100 ms): long enough that sending a chunk costs
little against running it, short enough that the work still spreads over every worker and a
crash re-runs little. When the input's length is known, chunks are also kept small enough that
every worker gets several, so the last chunks do not leave workers idle.

A pool remembers the per-item time of each function (:class:`ItemTimes`), so the next call of
the same function starts with full-size chunks instead of measuring again: the slow start costs
a round trip, about a millisecond, which is a tenth of a call over 100,000 tiny items. If the
items of the new call are slower, the cap above still bounds the first chunks (the standard
library's own default, ``total / (4 * workers)``), and the first outcomes correct the size.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from ._work import function_key

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Chunker", "ItemTimes"]

TARGET_SECONDS = 0.02
MAX_CHUNK = 50_000
CHUNKS_PER_WORKER = 4


class Chunker:
    """Chooses the size of the next chunk from measured per-item time.

    Example::

        >>> chunker = Chunker("auto", workers=2, total=100_000)
        >>> chunker.next_size()
        1
        >>> chunker.observe(items=1000, elapsed=0.0001)   # 0.1 us an item
        >>> chunker.next_size()
        12500
    """

    def __init__(
        self,
        chunksize: int | str,
        workers: int,
        total: int | None,
        known: float | None = None,
        target: float = TARGET_SECONDS,
    ):
        self.target = target
        self.fixed = chunksize if isinstance(chunksize, int) else None
        #: seconds per item; ``known`` (remembered from an earlier call) seeds it
        self.per_item: float | None = known
        # Decaying sums of measured items and seconds: per_item is their ratio, so a chunk of
        # 10,000 items outweighs the one-item chunks measured first, and old samples fade. A
        # remembered time counts as one item: the first real chunk outweighs it.
        self._items = 1.0 if known is not None else 0.0
        self._seconds = known or 0.0
        self.observed = False  # whether a chunk of this call has been measured
        cap = MAX_CHUNK
        if total is not None:
            cap = min(cap, max(1, -(-total // (max(1, workers) * CHUNKS_PER_WORKER))))
        self._cap = cap

    def observe(self, items: int, elapsed: float) -> None:
        """Record that ``items`` items took ``elapsed`` seconds of run time in a worker."""
        if items <= 0 or elapsed < 0:
            return
        self.observed = True
        self._items = self._items * 0.5 + items
        self._seconds = self._seconds * 0.5 + elapsed
        self.per_item = self._seconds / self._items

    @property
    def measured(self) -> bool:
        """Whether sizes come from a measurement (or are fixed) rather than the first guess."""
        return self.fixed is not None or self.per_item is not None

    def next_size(self) -> int:
        """The size of the next chunk."""
        if self.fixed is not None:
            return self.fixed
        if self.per_item is None:
            return 1
        if self.per_item <= 0:
            return self._cap
        return max(1, min(self._cap, int(self.target / self.per_item)))

    def estimate(self, items: int) -> float:
        """Expected run time of ``items`` items, 0.0 while unknown."""
        return (self.per_item or 0.0) * items


class ItemTimes:
    """Per-item run times remembered per function (its code object), mode and backend.

    Example::

        >>> times = ItemTimes()
        >>> times.put(abs, 1, "process", 2e-6)
        >>> times.get(abs, 1, "process")
        2e-06
    """

    LIMIT = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: OrderedDict[Any, float] = OrderedDict()

    def get(self, fn: Callable[..., Any], mode: int, backend: str) -> float | None:
        with self._lock:
            return self._times.get((function_key(fn), mode, backend))

    def put(self, fn: Callable[..., Any], mode: int, backend: str, per_item: float) -> None:
        with self._lock:
            key = (function_key(fn), mode, backend)
            self._times[key] = per_item
            self._times.move_to_end(key)
            while len(self._times) > self.LIMIT:
                self._times.popitem(last=False)
