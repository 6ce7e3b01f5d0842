"""One map call: lazy input -> chunks -> a backend -> results, in order or as they finish.

Data flow::

    caller thread (MapJob)                         backend (threads or dispatcher)
    ----------------------                         -------------------------------
    pull input lazily, cut chunks (Chunker) -----> submit(units)
    wait on the job's queue  <-------------------  _Chunk.deliver(): (chunk, start, loader)
    unpickle outcomes (loader), store them,
    retry / fail / skip per item,
    emit finished chunks (in input order, or at once)

Guarantees, and where they are kept:

* **Bounded memory.** At most a few chunks per worker are taken from the input and not yet
  handed to the caller (:meth:`MapJob._has_room`), so ``imap`` over an infinite generator is
  fine, and an ordered ``imap`` whose first item is slow does not buffer the rest of the input.
  Chunks measured to run for less than :data:`SHORT_CHUNK_SECONDS` (a small chunksize given
  for tiny items) travel several to a message on the process backend; for them the bound is
  up to :data:`MAX_CHUNKS_PER_MESSAGE` times as many chunks, still a fixed number.
* **Input is read in the caller's thread**, only ever by one thread, and an exception raised by
  the input iterator surfaces in the caller like any other.
* **Leaving early is clean.** Breaking out of ``imap`` (GeneratorExit), an error with
  ``on_error="raise"``, or Ctrl-C all close the job: queued chunks are cancelled, outcomes that
  still arrive are dropped by :meth:`_Chunk.deliver`, and the pool stays usable. On Ctrl-C the
  process backend also kills the workers running the job's chunks and waits until they are reaped.
* **A started map survives a shutdown.** The job takes a ticket from the backend when it is
  made (see backends/queue.py): a ``shutdown`` from another thread lets it send the rest of
  its input and waits for it, as ``Executor.map``'s submitted futures are waited for. The
  ticket is given back when the job closes, or when the job is dropped unused (a finalizer),
  so a forgotten ``imap`` never holds a shutdown up; a shutdown from the thread that drives
  the job does not wait for it (it cannot go on meanwhile) and its later input fails with
  PoolClosed.
* **Each item is settled exactly once**: a result, a retry (a new one-item unit, run after a
  small backoff), a Failure, a skip, or the error that is raised.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence

from ._chunking import Chunker, ItemTimes
from ._errors import Failure, Unsendable, traceback_text
from ._options import JobOptions
from ._progress import Progress
from ._retry import RetryPolicy
from ._tally import Tally
from ._work import Loader, Outcomes, Span, Unit
from .backends.base import Backend

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._stats import MapStats

__all__ = ["MapJob"]

#: what a backend thread puts on a job's queue: (chunk, unit, start, loader, elapsed)
Event = tuple["_Chunk", Unit, int, Loader, float] | BaseException | None

_DEFAULTS = JobOptions()
_SKIPPED = object()
_PENDING = object()
#: in-flight chunks per worker: enough to keep every worker busy while the caller catches up
CHUNKS_PER_WORKER = 2
ORDERED_CHUNKS_PER_WORKER = 4
#: A chunk of a given chunksize expected to run for less than this is too short to be worth a
#: message of its own (a message costs the parent and the worker some 0.1 ms): on a backend that
#: ``coalesces`` it is marked so, and several go to a worker in one message. Chunks that
#: conveyor sizes itself always go alone: they run longer, or were cut smaller on purpose, to
#: spread a short map over the workers.
SHORT_CHUNK_SECONDS = 0.0005
#: for such short chunks the job keeps up to this many times more chunks in flight, to fill
#: those messages
MAX_CHUNKS_PER_MESSAGE = 4


def _short(estimate: float) -> bool:
    """Whether a chunk expected to run ``estimate`` seconds (0: unknown) is a short one."""
    return 0.0 < estimate < SHORT_CHUNK_SECONDS


class _Raise:
    """Marks the item whose error is to be raised (on_error="raise")."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class _Chunk:
    """A run of consecutive input items, and the sink for every unit cut from it."""

    __slots__ = ("attempts", "flagged", "items", "job", "owner", "remaining", "start", "values")

    def __init__(self, job: MapJob, start: int, items: list[Any]):
        self.job = job
        self.owner = job
        self.start = start
        self.items = items
        self.values: list[Any] | None = None  # ordered: made when the first outcome arrives
        self.remaining = len(items)
        self.attempts: dict[int, int] = {}
        self.flagged = False  # holds a skip or an error marker: emit slowly

    # Sink protocol: called from backend threads.
    def starting(self, unit: Unit) -> bool:
        return not self.job.closed

    def deliver(self, unit: Unit, start: int, loader: Loader, elapsed: float) -> None:
        if not self.job.closed:
            self.job.events.put((self, unit, start, loader, elapsed))


class MapJob:
    """Runs ``fn`` over ``iterable`` on ``backend``; iterate it for the results.

    Example::

        >>> from conveyor._options import JobOptions
        >>> from conveyor.backends.thread import ThreadBackend
        >>> backend = ThreadBackend(2)
        >>> list(MapJob(backend, abs, [-1, -2], JobOptions(retries=1)))
        [1, 2]
        >>> backend.shutdown()
    """

    def __init__(
        self,
        backend: Backend,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        options: JobOptions = _DEFAULTS,
        *,
        on_interrupt: Callable[[], None] | None = None,
        head: tuple[list[Any], Outcomes] | None = None,
        total: int | None = None,
        item_times: ItemTimes | None = None,
    ):
        self.backend = backend
        self.options = options
        #: counts and times of this call (filled here, in the thread that drives the job)
        self.stats: MapStats | Tally = options.stats if options.stats is not None else Tally()
        self.fn = fn
        self.mode = options.mode
        self.ordered = ordered = options.ordered
        self.task_timeout = options.task_timeout
        # timeout: a deadline for the whole call, from now (see _wait)
        timeout = self.timeout = options.timeout
        self._end_time = None if timeout is None else time.monotonic() + timeout
        self._end_time = getattr(timeout, "end", self._end_time)  # a Deadline started earlier
        self._retry_policy = RetryPolicy.of(options.retries)
        self.on_error = options.on_error
        self.closed = False
        #: items settled as a Failure so far (on_error="return"): while it is 0, no result
        #: handed out is a Failure, and a caller need not look through them for one
        self.failures = 0
        # Pipeline hook: None is a wake-up (a pipeline's buffer got input, see _take below); an
        # exception is raised in the job's thread (the pipeline is stopping). The asyncio front
        # gives a queue that also wakes its event loop (_new_events).
        self.events: queue.SimpleQueue[Event] = self._new_events()
        #: worker-seconds spent running this job's units (a pipeline stage's busy time)
        self.busy_seconds = 0.0
        if total is None:
            total = length_of(iterable)
        self._input: Iterator[Any] | None = iter(iterable)
        # Engine hook for pipelines (_feed.Feed): an input that never blocks. ``take_now(n,
        # idle)`` returns up to n items it holds now, [] when it has none yet (it then puts a
        # None wake-up on ``events`` when some arrive), or None once it has ended.
        self._take_now: Callable[[int, bool], list[Any] | None] | None = getattr(
            iterable, "take_now", None
        )
        # A list, tuple or range is cut by slicing: one C-level copy per chunk, not an item-by-
        # item walk. Its length is read again for every chunk, so items appended while the
        # call runs are seen, as iterating would see them. With ``head``, a sequence holds the
        # head's items too (they are skipped by index); any other iterable starts after them.
        # (exact types: a subclass may iterate differently from how it slices)
        sequence: Sequence[Any] | None = None
        if type(iterable) in (list, tuple, range):
            sequence = iterable  # type: ignore[assignment]
        self._sequence = sequence
        self._inline = backend.name == "inline"
        self._next_index = 0
        self._item_times = item_times
        known = item_times.get(fn, self.mode, backend.name) if item_times is not None else None
        self._chunker = Chunker(
            options.chunksize, backend.workers, total, known, backend.chunk_seconds
        )
        max_chunk = getattr(iterable, "max_chunk", None)  # a pipeline's buffer bounds chunks
        if max_chunk is not None:
            self._chunker._cap = min(self._chunker._cap, max_chunk)
        per_worker = ORDERED_CHUNKS_PER_WORKER if ordered else CHUNKS_PER_WORKER
        self._chunks_in_flight = max(2, per_worker * backend.workers)
        self._coalesce = backend.coalesces and self._chunker.fixed is not None
        self._unemitted = 0  # items taken from the input and not yet handed to the caller
        self._finished: dict[int, _Chunk] = {}  # ordered: finished chunks by start index
        self._emit_from = 0  # ordered: the start index of the next chunk to hand out
        self._ready: list[list[Any]] = []  # value lists ready to hand out
        self._raise: BaseException | None = None
        self._progress = Progress(options.progress, total, getattr(fn, "__name__", "conveyor"))
        self._on_interrupt = on_interrupt
        self._ticket = backend.begin_job()
        self._end_job = weakref.finalize(self, backend.end_job, self._ticket)
        if head is not None and head[0]:
            self._settle_head(*head)

    def _settle_head(self, items: list[Any], outcomes: Outcomes) -> None:
        """Take outcomes already known for the first items (backend="auto" measured them)."""
        chunk = _Chunk(self, 0, items)
        self._next_index = len(items)
        self._unemitted = len(items)
        unit = Unit(fn=self.fn, items=items, mode=self.mode, sink=chunk, tags=range(len(items)))
        self.events.put((chunk, unit, 0, lambda: outcomes, 0.0))

    # ----------------------------------------------------------------- consuming

    def __iter__(self) -> Iterator[Any]:
        for values in self.batches():
            yield from values

    def collect(self) -> list[Any]:
        """All results as one list (what ``map`` returns)."""
        out: list[Any] = []
        for values in self.batches():
            out.extend(values)
        return out

    def batches(self) -> Iterator[list[Any]]:
        """Lists of results, as they become ready to hand out."""
        ticket = self._ticket
        try:
            while True:
                if ticket is not None:
                    ticket.thread = threading.current_thread()  # who drives it (see above)
                ready = self._step()
                if ready is None:
                    return
                if not ready:
                    self._wait()
                yield from ready
        except KeyboardInterrupt:
            self._close(interrupt=True)
            raise
        finally:
            self._close(interrupt=False)

    def _step(self) -> list[list[Any]] | None:
        """Take input, then hand out what is ready: lists of results, [] when there is nothing
        to hand out until more outcomes arrive, None when the job is over; raises its error.

        One step of :meth:`batches`, which blocks between steps; the asyncio front
        (conveyor._aio) awaits between them instead.
        """
        self._top_up()
        if self._ready:
            ready, self._ready = self._ready, []
            for values in ready:
                self._unemitted -= len(values)
            return ready
        if self._raise is not None:
            raise self._raise
        if self._input is None and self._unemitted == 0:
            return None
        return []

    # ----------------------------------------------------------------- feeding

    def _top_up(self) -> None:
        """Take input and submit chunks while fewer than the in-flight bound are out."""
        while self._input is not None and self._raise is None:
            size = self._chunker.next_size()
            if not self._has_room(size):
                return
            items, ended = self._take(size)
            if ended:
                self._input = None
            if not items:
                return
            chunk = _Chunk(self, self._next_index, items)
            self.stats.chunks += 1
            self.stats.chunk_sizes.add(len(items), 1)
            self._next_index += len(items)
            self._unemitted += len(items)
            estimate = self._chunker.estimate(len(items))
            unit = Unit(
                fn=self.fn,
                items=items,
                mode=self.mode,
                sink=chunk,
                tags=range(chunk.start, chunk.start + len(items)),
                timeout=self.task_timeout,
                estimate=estimate,
                eager=False,
                coalesce=self._coalesce and _short(estimate),
            )
            self.backend.submit([unit], self._ticket)

    def _has_room(self, size: int) -> bool:
        """Whether a chunk of ``size`` more items stays within the in-flight bound."""
        # Until the first measurement, one single-item chunk per worker: the measurement
        # arrives after one round trip and the next chunks are sized by it.
        limit = self._chunks_in_flight if self._chunker.measured else self.backend.workers
        if self._coalesce:
            estimate = self._chunker.estimate(size)
            if _short(estimate):
                limit *= min(MAX_CHUNKS_PER_MESSAGE, int(SHORT_CHUNK_SECONDS / estimate))
        return not (self._unemitted + size > size * limit and self._unemitted)

    def _take(self, size: int) -> tuple[list[Any], bool]:
        """Up to ``size`` items of input, and whether the input has ended."""
        if self._take_now is not None:  # a pipeline's buffer: what it has now, never blocking
            taken = self._take_now(size, self._unemitted == 0)
            return ([], True) if taken is None else (taken, False)
        if self._sequence is not None:
            index = self._next_index
            if self._inline and type(self._sequence) is not range:
                # run at once in this thread: a view of the input, not a copy (see Span)
                stop = max(index, min(index + size, len(self._sequence)))
                span: Any = Span(self._sequence, index, stop)
                return span, stop - index < size
            piece = self._sequence[index : index + size]
            # A range slice stays a range: a worker process is sent three numbers instead of
            # every item (and inline or on threads there is nothing to build). A tuple's slice
            # becomes a list, as the items of a unit are.
            items: list[Any] = (
                piece  # type: ignore[assignment]
                if type(piece) is not tuple or self._inline
                else list(piece)
            )
        else:
            assert self._input is not None
            items = list(itertools.islice(self._input, size))
        return items, len(items) < size

    def _new_events(self) -> queue.SimpleQueue[Event]:
        """The queue that backend threads put outcomes on (the asyncio front's also wakes its
        event loop)."""
        return queue.SimpleQueue()

    def _wait(self) -> None:
        if self._end_time is None:
            event = self.events.get()
        else:
            try:
                event = self.events.get(timeout=max(0.0, self._end_time - time.monotonic()))
            except queue.Empty:
                assert self.timeout is not None
                # Past the call's deadline: stop its work (the process backend kills the workers
                # running its chunks, as on Ctrl-C; threads cannot be stopped, their queued
                # chunks are dropped) and raise.
                self._close(interrupt=True)
                from ._executor_errors import missed_deadline  # (see that module)

                raise missed_deadline("the map call", self.timeout) from None
        self._event(event)
        self._drain()

    def _drain(self) -> None:
        """Handle the outcomes that arrived, without waiting for more."""
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self._event(event)

    def _event(self, event: Event) -> None:
        if isinstance(event, BaseException):  # a pipeline stopping: raised in the job's thread
            raise event
        if event is not None:  # None: a pipeline's wake-up; batches() tops up next
            self._handle(*event)

    # ----------------------------------------------------------------- outcomes

    def _handle(
        self, chunk: _Chunk, unit: Unit, start: int, loader: Loader, elapsed: float
    ) -> None:
        values, errors = loader()
        self.busy_seconds += elapsed
        count = len(values)
        first = unit.tags[start] - chunk.start
        stats = self.stats
        if elapsed > 0.0:  # (0.0: settled without running, by a death or a known head)
            stats.task_times.add(elapsed / count, count)
        if not errors:
            stats.tasks += count
            self._chunker.observe(count, elapsed)
            self._progress.update(count)
            if self.ordered:
                if first == 0 and count == len(chunk.items):
                    chunk.values = values  # the whole chunk at once: no copy
                else:
                    if chunk.values is None:
                        chunk.values = [_PENDING] * len(chunk.items)
                    chunk.values[first : first + count] = values
            else:
                self._emit(values, flagged=False)
            chunk.remaining -= count
        else:
            settled: list[Any] = []
            for position, value in enumerate(values):
                error = errors.get(position)
                if error is not None:
                    value = self._settle_error(chunk, first + position, error)
                    if value is _PENDING:
                        continue  # retried: settled later
                if self.ordered:
                    if chunk.values is None:
                        chunk.values = [_PENDING] * len(chunk.items)
                    chunk.values[first + position] = value
                settled.append(value)
            stats.tasks += len(settled)
            self._progress.update(len(settled))
            self._progress.note(stats.failures, stats.retries)
            chunk.remaining -= len(settled)
            if not self.ordered:
                self._emit(settled, flagged=True)
        if self.ordered and chunk.remaining == 0:
            self._finished[chunk.start] = chunk
            while self._emit_from in self._finished:
                done = self._finished.pop(self._emit_from)
                self._emit_from += len(done.items)
                self._emit(done.values or [], done.flagged)

    def _settle_error(self, chunk: _Chunk, offset: int, error: BaseException) -> Any:
        """Schedule a retry of the item (returns _PENDING) or say what stands in its place."""
        attempts = chunk.attempts.get(offset, 0) + 1
        chunk.attempts[offset] = attempts
        if isinstance(error, Unsendable):  # a mistake in the call: raised whatever on_error says
            chunk.flagged = True
            self._input = None
            return _Raise(error)
        delay = self._retry_policy.delay(attempts, error)
        if delay is not None and not self.closed:
            retry = Unit(
                fn=self.fn,
                items=[chunk.items[offset]],
                mode=self.mode,
                sink=chunk,
                tags=range(chunk.start + offset, chunk.start + offset + 1),
                timeout=self.task_timeout,
                not_before=time.monotonic() + delay,
                estimate=self._chunker.estimate(1),
            )
            self.backend.submit([retry], self._ticket)
            self.stats.retries += 1
            return _PENDING
        chunk.flagged = True
        self.stats.failures += 1
        if self.on_error == "return":
            self.failures += 1
            return Failure(chunk.items[offset], error, traceback_text(error), attempts)
        if self.on_error == "skip":
            return _SKIPPED
        self._input = None  # take no more input; what is out finishes, then we raise
        return _Raise(error)

    def _emit(self, values: list[Any], flagged: bool) -> None:
        if not flagged:
            self._ready.append(values)
            return
        kept: list[Any] = []
        dropped = 0
        for value in values:
            if value is _SKIPPED:
                dropped += 1
            elif isinstance(value, _Raise):
                if self._raise is None:
                    self._raise = value.error
                dropped += 1
            elif self._raise is None:
                kept.append(value)
            else:
                dropped += 1
        self._unemitted -= dropped
        self._ready.append(kept)

    # ----------------------------------------------------------------- closing

    def _close(self, interrupt: bool, wait: bool = True) -> None:
        """Close the job; ``interrupt`` also stops its running units (``wait``: until their
        workers are reaped)."""
        if self.closed:
            return
        self.closed = True
        self._input = None
        chunker = self._chunker
        if self._item_times is not None and chunker.observed and chunker.per_item is not None:
            self._item_times.put(self.fn, self.mode, self.backend.name, chunker.per_item)
        self._progress.close()
        if interrupt:
            self.backend.interrupt(self, wait=wait)
            if self._on_interrupt is not None:
                self._on_interrupt()
        else:
            self.backend.cancel(self)
        self._end_job()
        # Chunks point back at the job: break the cycle now, so results (and the shared
        # memory they may view) go when the caller drops them, not when the collector runs.
        self._finished.clear()
        self._ready = []
        while True:
            try:
                self.events.get_nowait()
            except queue.Empty:
                break


def length_of(iterable: Iterable[Any]) -> int | None:
    """``len(iterable)``, or None for an input without one (a generator).

    Example::

        >>> length_of([1, 2]), length_of(iter([1, 2]))
        (2, None)
    """
    try:
        return len(iterable)  # type: ignore[arg-type]
    except Exception:
        return None
