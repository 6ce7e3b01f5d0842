"""The unit of work every backend runs, and the interface through which results come back.

A :class:`Unit` is one function applied to a list of items (a chunk of a ``map``, or a single
``submit``). A backend runs units and hands their outcomes to the unit's :class:`Sink`; the sink
belongs to whoever made the unit (a map job, a future) and decides what an outcome means
(store it, retry it, fail the job). Backends know nothing about ordering, retries or futures.

Outcomes travel as a :data:`Loader`, a zero-argument callable returning one ``(ok, value)`` pair
per item. For the process backend the loader unpickles; calling it is left to the sink, so a map
job unpickles its results in the caller's thread, not in the pool's dispatcher thread.

A backend thread that delivers many outcomes in a row (the process backend's dispatcher, reading
a batch's results) wraps them in :class:`deferred_wakeups`: a sink that wakes another thread for
each outcome (an event loop, through its self-pipe) asks :func:`wake_soon` instead, and that
thread is woken once, when the burst ends, for all of them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

__all__ = [
    "MODE_CALL",
    "MODE_MAP",
    "MODE_STAR",
    "Abandoned",
    "Loader",
    "Outcome",
    "Outcomes",
    "RunsItems",
    "Sink",
    "Unit",
    "call_item",
    "deferred_wakeups",
    "errors_of",
    "function_key",
    "outcomes_of",
    "run_items",
    "wake_soon",
]

#: ``fn(*args, **kwargs)``, item = ``(args, kwargs)`` (``submit``)
MODE_CALL = 0
#: ``fn(item)`` (``map``)
MODE_MAP = 1
#: ``fn(*item)`` (``starmap``)
MODE_STAR = 2

# Type aliases, for type checkers (at run time only their names exist: typing is not loaded).
if TYPE_CHECKING:
    #: ``(True, result)`` or ``(False, exception)``
    Outcome = tuple[bool, Any]
    #: The outcomes of consecutive items: one value per item (None where it failed), and the
    #: exceptions of the failed ones by position. Lists of values rather than pairs keep a
    #: chunk of 10,000 tiny results cheap to pickle and to unpack.
    Outcomes = tuple[list[Any], dict[int, BaseException]]
    #: A zero-argument callable giving the outcomes of consecutive items of a unit.
    Loader = Callable[[], Outcomes]
else:
    Outcome = Outcomes = Loader = tuple

_unit_ids = itertools.count()


def call_item(fn: Callable[..., Any], mode: int, item: Any) -> Any:
    """Apply ``fn`` to one item as ``mode`` says."""
    if mode == MODE_MAP:
        return fn(item)
    if mode == MODE_STAR:
        return fn(*item)
    args, kwargs = item
    return fn(*args, **kwargs)


def function_key(fn: Callable[..., Any]) -> Any:
    """What identifies "the same function" across calls: its code object where it has one."""
    inner = getattr(fn, "func", fn)  # functools.partial
    inner = getattr(inner, "__func__", inner)  # bound methods
    return getattr(inner, "__code__", None) or type(inner)


class Abandoned(BaseException):
    """Raised asynchronously in a worker thread whose task was given up on (its timeout passed,
    or its pool was terminated): :func:`run_items` lets it through instead of recording it as
    the item's failure, so the thread stops instead of running the rest of its chunk."""


class RunsItems:
    """A task function that runs a whole list of items itself (:func:`run_items` hands it the
    chunk): an ``async def`` function, whose items run concurrently on the worker's event
    loop (see conveyor._coroutines)."""

    def run_items(self, mode: int, items: list[Any]) -> Outcomes:
        """The outcomes of ``items``, as :func:`run_items` gives them."""
        raise NotImplementedError


def run_items(fn: Callable[..., Any], mode: int, items: list[Any]) -> Outcomes:
    """Apply ``fn`` to each item; an exception settles that item and the loop goes on.

    The happy path is one tight loop per mode (no per-item call of :func:`call_item`), which
    matters for chunks of thousands of tiny items.
    """
    if isinstance(fn, RunsItems):
        return fn.run_items(mode, items)
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    append = values.append
    rest = items
    while True:
        try:
            # extend() over a lazy map: the loop runs in C, and when fn raises, the list
            # already holds every value computed before (CPython appends as it iterates), so
            # the failed item's position is len(values).
            if mode == MODE_MAP:
                values.extend(map(fn, rest))
            elif mode == MODE_STAR:
                values.extend(itertools.starmap(fn, rest))
            else:
                for args, kwargs in rest:
                    append(fn(*args, **kwargs))
            return values, errors
        except Abandoned:
            raise
        except BaseException as exc:  # a task's SystemExit is its failure, not the worker's
            errors[len(values)] = exc
            append(None)
            rest = items[len(values) :]


if TYPE_CHECKING:

    class Sink(Protocol):
        """Who receives a unit's outcomes. Both methods may be called from any thread.

        ``owner`` groups sinks for cancelling: a map job gives all its chunks' sinks itself as
        owner.
        """

        @property
        def owner(self) -> object:
            """The object whose units can be cancelled together."""
            ...

        def starting(self, unit: Unit) -> bool:
            """Called once just before a unit (or a piece of it) is run; False drops it unrun."""
            ...

        def deliver(self, unit: Unit, start: int, loader: Loader, elapsed: float) -> None:
            """Outcomes for ``unit.items[start:start + len(loader())]``, which took ``elapsed``
            seconds."""
            ...

else:
    Sink = object  # a protocol for type checkers only (typing is not imported at run time)


def estimate_of(unit: Unit) -> float:
    """``unit``'s expected run time: its ``estimate``, or while that is 0 (unknown when the unit
    was made), what its ``estimator`` has learned since, kept as its estimate from then on.
    (Called by the process backend's dispatcher, the only thread that reads it once queued.)

    Example::

        >>> class Learned:
        ...     estimate = 0.001
        >>> unit = Unit(abs, [1], MODE_CALL, None, [0], estimator=Learned())
        >>> estimate_of(unit), unit.estimate
        (0.001, 0.001)
    """
    if unit.estimate or unit.estimator is None:
        return unit.estimate
    unit.estimate = estimate = unit.estimator.estimate
    return estimate


class Unit:
    """One function applied to a list of items, with the options that govern running it.

    ``tags`` has one entry per item and means something only to the sink (a map job puts the
    item's input position there). ``not_before`` ends a retry's backoff (a monotonic time).
    ``estimate`` is the expected run time in seconds (0 = unknown); the process backend uses it,
    for units marked ``coalesce``, to decide which small units may share one message to a worker.
    ``estimator``: where a better estimate may be learned after the unit was made (an object
    with an ``estimate``: a pool's moving average of its submits); read while ``estimate`` is 0
    (see :func:`estimate_of`), so a burst of submits made before the first of them came back is
    not sent one message each.
    A map job marks its chunks that a small given chunksize made too short for a message of
    their own (conveyor's own sizes are long enough). ``wire`` is what
    the backend made of the unit to send it (the process backend's pickled form); an ``eager``
    unit is pickled by the caller's thread in ``submit``, any other by the process backend's
    dispatcher when it sends it (a map's chunks: see the process backend's module docstring).
    (A plain class with slots, not a dataclass: it is made once per chunk and per submit.)
    """

    __slots__ = (
        "__weakref__",
        "coalesce",
        "eager",
        "estimate",
        "estimator",
        "fn",
        "id",
        "items",
        "mode",
        "not_before",
        "sink",
        "tags",
        "timeout",
        "wire",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        items: list[Any],
        mode: int,
        sink: Sink,
        tags: Sequence[Any],
        timeout: float | None = None,
        not_before: float = 0.0,
        estimate: float = 0.0,
        coalesce: bool = False,
        eager: bool = True,
        estimator: Any = None,
    ):
        self.fn = fn
        self.items = items
        self.mode = mode
        self.sink = sink
        self.tags = tags
        self.timeout = timeout
        self.not_before = not_before
        self.estimate = estimate
        self.estimator = estimator
        self.coalesce = coalesce
        self.eager = eager
        self.wire: Any = None
        self.id = next(_unit_ids)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"<Unit {self.id}: {len(self.items)} items of {name}>"

    def piece(self, start: int, stop: int | None = None) -> Unit:
        """A new unit for ``items[start:stop]``, same function, sink and options."""
        return Unit(
            fn=self.fn,
            items=self.items[start:stop],
            mode=self.mode,
            sink=self.sink,
            tags=self.tags[start:stop],
            timeout=self.timeout,
            estimate=self.estimate * (len(self.items[start:stop]) / max(1, len(self.items))),
            coalesce=self.coalesce,
            eager=self.eager,
            estimator=self.estimator,
        )

    def singles(self) -> list[Unit]:
        """The unit split into one unit per item."""
        return [self.piece(i, i + 1) for i in range(len(self.items))]

    def ready(self, now: float | None = None) -> bool:
        """Whether the unit's backoff (a retry's) is over."""
        return self.not_before <= (time.monotonic() if now is None else now)


class Span:
    """``seq[start:stop]`` without the copy: what a map job run inline hands its backend (the
    unit runs at once, in the thread that cut it, so nothing can change ``seq`` in between but
    the function itself, and then it sees the change as ``map()`` over the list would).

    Iterating is C-level (``itertools.islice``); a slice of it is a list; its length is fixed.

    Example::

        >>> span = Span([0, 1, 2, 3, 4], 1, 4)
        >>> len(span), list(span), span[0], span[1:]
        (3, [1, 2, 3], 1, [2, 3])
    """

    __slots__ = ("seq", "start", "stop")

    def __init__(self, seq: Sequence[Any], start: int, stop: int):
        self.seq = seq
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(self.seq, self.start, self.stop)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            first, last, step = index.indices(self.stop - self.start)
            return list(self.seq[self.start + first : self.start + last : step])
        if not 0 <= index < self.stop - self.start:
            raise IndexError(index)
        return self.seq[self.start + index]


def outcomes_of(values: list[Any], errors: dict[int, BaseException] | None = None) -> Loader:
    """A loader for outcomes already at hand as objects."""
    result = (values, errors or {})
    return lambda: result


def errors_of(count: int, error: BaseException) -> Loader:
    """A loader saying that each of ``count`` consecutive items failed with ``error``."""
    return outcomes_of([None] * count, dict.fromkeys(range(count), error))


class _Burst(threading.local):
    """The wakeups deferred in this thread (None: no burst is open)."""

    pending: dict[object, Callable[[], None]] | None = None


_burst = _Burst()


class deferred_wakeups:
    """``with deferred_wakeups():`` around a backend thread's burst of deliveries: each
    wakeup asked for by :func:`wake_soon` during the block is made once, when it ends (also
    when it ends by an exception). Nested blocks make their wakeups at the outermost end.

    Guarantee: a wakeup is delayed by at most the rest of the burst, never lost; the thread
    to wake may not rely on being woken before the burst ends (it is not: a deferred sink
    queues its outcome first, and the wakeup only tells the other thread to look).

    Example::

        >>> woken = []
        >>> with deferred_wakeups():
        ...     wake_soon("loop", lambda: woken.append("once"))  # deferred: True
        ...     wake_soon("loop", lambda: woken.append("once"))  # the same key: made once
        ...     woken
        True
        True
        []
        >>> woken, wake_soon("loop", lambda: None)  # no block open: the caller wakes now
        (['once'], False)
    """

    __slots__ = ("outer",)

    def __enter__(self) -> None:
        self.outer = _burst.pending is None
        if self.outer:
            _burst.pending = {}

    def __exit__(self, *exc_info: object) -> None:
        if not self.outer:
            return
        pending, _burst.pending = _burst.pending, None
        for wake in (pending or {}).values():
            wake()


def wake_soon(key: object, wake: Callable[[], None]) -> bool:
    """Defer ``wake`` to the end of this thread's :class:`deferred_wakeups` block (one call per
    ``key``: the last one given); False when no block is open (then the caller wakes now)."""
    pending = _burst.pending
    if pending is None:
        return False
    pending[key] = wake
    return True
