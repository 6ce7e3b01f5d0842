"""``backend="auto"``: measure the first items, then choose inline, threads or processes.

Data flow::

    caller thread                                 (with a task_timeout: a thread of the pool)
    -------------                                 -------------------------------------------
    take the first PROBE_ITEMS items  --------->  probe: run item 0, timing wall and CPU time;
                                                  tiny: run more, up to PROBE_SECONDS;
                                                  CPU-bound and long enough: run items 1 and 2
                                                  at once in two threads (does it scale?)
    decide (below), then run the rest  <--------  outcomes of the items it ran + measurements
    on the chosen backend; the probed
    items' outcomes are kept, not re-run

The probe runs in the caller's process, in its thread (or, with a ``task_timeout``, in a thread
of the pool's, given up on after 3x the limit): no process is started to measure, none at all
unless processes are chosen, and when auto ends on threads or inline every item ran in the
caller's process, its side effects included. A function that crashes the interpreter while it
is being measured is the user's own hazard, as it is on threads. The rules, in order:

1. The function spends less than 30% of its wall time on the CPU (it waits: I/O, sleeps): threads.
2. Two items at once in two threads kept at least 1.25 CPUs busy (the work releases the GIL, as
   hashlib and much of numpy do): threads.
3. Its arguments are so large that copying them to a worker would cost more than running it in
   parallel saves (and there is no timeout): threads, which share them. The pair test may say
   "holds the GIL" only because the probing worker first touched freshly mapped memory (numpy's
   sum of a 50 MB array kept 0.9 CPUs busy there, yet runs 1.2x faster on two threads than alone
   in the caller); work that does hold the GIL runs on threads no slower than inline.
4. It is CPU work, there is no timeout nor initializer, and spreading the rest of the call over
   the workers would save less than :data:`INLINE_SAVING`, after paying
   :data:`DISPATCH_PER_ITEM` for each item sent: run it inline in the caller's thread.
5. The interpreter is free-threaded (``sys._is_gil_enabled()`` is false): threads.
6. Otherwise (Python code holding the GIL): processes.

A measurement is remembered per function (by its code object) for the rest of the program, so
later calls choose at once. Unpicklable functions or arguments go to threads; a probe that
runs past 3x its task_timeout chooses processes, which stop such work.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence

from ._errors import Unsendable
from ._job import MapJob, length_of
from ._options import JobOptions
from ._work import MODE_CALL, Outcomes, Unit, function_key, run_items
from .backends.base import Backend, rough_size

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import Future
    from typing import Any

__all__ = ["Choice", "Measurement", "Probe", "Router", "choose", "probe", "take_head"]

#: the probe takes up to this many items (tiny work needs many, to time it above the clocks'
#: own cost: a clock read is about a microsecond in a virtual machine) ...
PROBE_ITEMS = 1024
#: ... but stops taking more once they hold this many bytes (and it has 3, for the pair test):
#: every item it takes is copied to the probing worker.
PROBE_BYTES = 16 << 20
#: with a timeout, few: the probe enforces one deadline for all its items (3x the timeout), not
#: one per item as the chosen backend will
PROBE_ITEMS_TIMED = 16
PROBE_SECONDS = 0.005
#: a first item that took this long and mostly waited is known to wait (rule 1): no more probing
WAITING_EVIDENCE = 0.0005
INLINE_SAVING = 0.025
#: what sending one item to a process and its result back costs the caller's side (pickling,
#: unpickling, the dispatcher), measured on the 2-core development machine: 100,000 x*x took
#: 9-10 ms on 2 processes against 4.5 ms inline, so about 70 ns an item beyond the work
DISPATCH_PER_ITEM = 1.0e-7
CPU_BOUND_SHARE = 0.3
#: CPUs two threads must keep busy together to count as running in parallel. Threads holding
#: the GIL take turns and never exceed 1.0 whatever the machine's load; so a loaded machine can
#: only make GIL-releasing work look GIL-bound (processes: slower, still right), never the reverse.
SCALING_LIMIT = 1.25
#: bytes per second a process pool moves arguments at (one copy into shared memory, measured
#: on the 2-core development machine at 2.5-5 GB/s; taken low)
COPY_RATE = 2.0e9
#: items per chunk when auto runs a call inline: at least INLINE_CHUNK, the whole call when it
#: has at most INLINE_CHUNK_MAX items (one slice of the input, one list of results)
INLINE_CHUNK = 65536
INLINE_CHUNK_MAX = 1 << 20
#: below this per-item time the pair test says nothing useful
PAIR_MIN_SECONDS = 0.002

_measurements: OrderedDict[Any, Measurement] = OrderedDict()
_measurements_lock = threading.Lock()


class Measurement:
    """What the probe saw, per item: seconds of wall and CPU time; and for two items at once in
    two threads, their wall time and how many CPUs they kept busy (their CPU time over it).

    ``bytes_per_item``: about how many bytes of arguments each item carries (what sending it
    to a process would copy). (A plain class, not a dataclass: ``dataclasses`` imports
    ``inspect``, which a short script's first call must not pay for.)

    Example::

        >>> Measurement(1e-6, 1e-6).describe()
        '1.0 us per item, CPU 100% of that'
    """

    __slots__ = ("bytes_per_item", "cpu", "pair_parallelism", "pair_wall", "wall")

    def __init__(
        self,
        wall: float,
        cpu: float,
        pair_wall: float | None = None,
        pair_parallelism: float | None = None,
        bytes_per_item: float = 0.0,
    ):
        self.wall = wall
        self.cpu = cpu
        self.pair_wall = pair_wall
        self.pair_parallelism = pair_parallelism
        self.bytes_per_item = bytes_per_item

    def with_bytes(self, bytes_per_item: float) -> Measurement:
        return Measurement(
            self.wall, self.cpu, self.pair_wall, self.pair_parallelism, bytes_per_item
        )

    def describe(self) -> str:
        share = min(100.0, 100 * self.cpu / max(self.wall, 1e-9))
        text = f"{_seconds(self.wall)} per item, CPU {share:.0f}% of that"
        if self.bytes_per_item >= 1 << 20:
            text += f"; {self.bytes_per_item / (1 << 20):.0f} MB of arguments per item"
        if self.pair_wall is not None and self.pair_parallelism is not None:
            text += (
                f"; two at once in threads took {_seconds(self.pair_wall)} and kept "
                f"{self.pair_parallelism:.1f} CPUs busy"
            )
        return text


class Choice:
    """The backend chosen (``"inline"``, ``"thread"`` or ``"process"``) and why.

    Example::

        >>> Choice("thread", "it waits").backend
        'thread'
    """

    __slots__ = ("backend", "measurement", "reason")

    def __init__(self, backend: str, reason: str, measurement: Measurement | None = None):
        self.backend = backend
        self.reason = reason
        self.measurement = measurement

    def explain(self, fn: Callable[..., Any]) -> str:
        name = getattr(fn, "__qualname__", type(fn).__name__)
        measured = f" (measured: {self.measurement.describe()})" if self.measurement else ""
        return (
            f"conveyor: backend='auto' chose {self.backend!r} for {name}: {self.reason}{measured}"
        )


def remembered(fn: Callable[..., Any], mode: int) -> Measurement | None:
    with _measurements_lock:
        return _measurements.get((function_key(fn), mode))


def remember(fn: Callable[..., Any], mode: int, measurement: Measurement) -> None:
    with _measurements_lock:
        _measurements[(function_key(fn), mode)] = measurement
        while len(_measurements) > 256:
            _measurements.popitem(last=False)


def take_head(items: Iterator[Any], timed: bool = False) -> list[Any]:
    """The first items of a call, for the probe: at most PROBE_ITEMS (PROBE_ITEMS_TIMED with a
    timeout), and, past the third, no more than about PROBE_BYTES of them (a rough, shallow
    measure of their size).

    Example::

        >>> len(take_head(iter(range(5000))))
        1024
        >>> len(take_head(iter([bytes(20 << 20)] * 10)))
        3
    """
    head: list[Any] = []
    size = 0
    limit = PROBE_ITEMS_TIMED if timed else PROBE_ITEMS
    for item in items:
        head.append(item)
        size += rough_size(item)
        if len(head) >= limit or (len(head) >= 3 and size >= PROBE_BYTES):
            break
    return head


def probe(fn: Callable[..., Any], mode: int, items: list[Any]) -> tuple[int, Outcomes, Measurement]:
    """Run in a worker: measure ``fn`` on the first items.

    Returns how many items it ran, their outcomes, and the measurement.
    """
    started, cpu_started = time.perf_counter(), time.thread_time()
    values, errors = run_items(fn, mode, items[:1])
    wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    done = 1
    if wall >= WAITING_EVIDENCE and cpu < CPU_BOUND_SHARE * wall:
        # It waits (rule 1) and the clocks are sure of it: probing on would only run one by
        # one items that threads overlap (ten 1 ms sleeps took 14 ms here before this).
        return done, (values, errors), Measurement(wall, cpu)
    if wall < PROBE_SECONDS:
        # Tiny: time runs of the next items, in growing batches, and take the fastest rate of a
        # batch: the first item's cold start (caches, lazy imports) and each batch's fixed cost
        # made x*x look ten times slower than it is (0.5 us against 0.05 us an item), and auto
        # then sent tiny work to processes.
        batch = 8
        rates: list[tuple[float, float]] = []
        while done < len(items) and time.perf_counter() - started < PROBE_SECONDS:
            batch_started, batch_cpu_started = time.perf_counter(), time.thread_time()
            more_values, more_errors = run_items(fn, mode, items[done : done + batch])
            count = len(more_values)
            rates.append(
                (
                    (time.perf_counter() - batch_started) / count,
                    (time.thread_time() - batch_cpu_started) / count,
                )
            )
            values.extend(more_values)
            for k, e in more_errors.items():
                errors[done + k] = e
            done += count
            batch *= 2
        if rates:
            wall, cpu = min(rates)
        return done, (values, errors), Measurement(wall, cpu)
    if len(items) >= 3 and cpu / wall >= CPU_BOUND_SHARE and wall >= PAIR_MIN_SECONDS:
        results: list[Outcomes] = [([], {}), ([], {})]
        cpu_used = [0.0, 0.0]

        def run(slot: int) -> None:
            started = time.thread_time()
            results[slot] = run_items(fn, mode, items[1 + slot : 2 + slot])
            cpu_used[slot] = time.thread_time() - started

        threads = [threading.Thread(target=run, args=(slot,)) for slot in (0, 1)]
        pair_started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pair_wall = time.perf_counter() - pair_started
        parallelism = sum(cpu_used) / max(pair_wall, 1e-9)
        for slot in (0, 1):
            values.extend(results[slot][0])
            errors.update({1 + slot + k: e for k, e in results[slot][1].items()})
        done = 3
        return done, (values, errors), Measurement(wall, cpu, pair_wall, parallelism)
    return done, (values, errors), Measurement(wall, cpu)


def choose(
    measurement: Measurement,
    remaining: int | None,
    timeout: float | None,
    workers: int,
    inline_ok: bool = True,
) -> Choice:
    """Apply the rules of the module docstring to a measurement.

    ``inline_ok`` is False when the pool has an initializer: the caller's thread never ran it.
    """
    if remaining == 0:
        return Choice("inline", "measuring it ran every item already", measurement)
    if measurement.cpu < CPU_BOUND_SHARE * measurement.wall:
        return Choice(
            "thread", "it mostly waits (I/O or sleep), so threads overlap well", measurement
        )
    if measurement.pair_parallelism is not None and measurement.pair_parallelism >= SCALING_LIMIT:
        return Choice(
            "thread", "it releases the GIL (two items ran in parallel in threads)", measurement
        )
    if timeout is None:
        # Processes pay for moving each item's arguments (one copy into shared memory): with
        # large arrays and short work that costs more than running it in parallel saves.
        per_item = measurement.wall / max(1, workers) + measurement.bytes_per_item / COPY_RATE
        if per_item >= measurement.wall:
            return Choice(
                "thread",
                "copying its arguments to processes would cost more than the parallel work "
                "saves; threads share them",
                measurement,
            )
    if inline_ok and timeout is None and remaining is not None:
        expected = measurement.wall * remaining
        saving = expected * (1 - 1 / max(1, workers)) - remaining * DISPATCH_PER_ITEM
        if saving <= INLINE_SAVING:
            return Choice(
                "inline",
                f"the rest of the call should take about {_seconds(expected)} in this thread; "
                f"spreading it over {workers} workers would save less than dispatching costs",
                measurement,
            )
    gil_enabled = getattr(sys, "_is_gil_enabled", lambda: True)()
    if not gil_enabled:
        return Choice(
            "thread",
            "this Python is free-threaded, so threads run CPU work in parallel",
            measurement,
        )
    return Choice(
        "process", "it is CPU-bound Python holding the GIL, so threads would not scale", measurement
    )


def report(choice: Choice, fn: Callable[..., Any], explain: bool) -> None:
    """Log the choice at INFO, and print it to stderr when ``explain`` is set."""
    text = choice.explain(fn)
    # Logged only where logging is imported: elsewhere nothing configured it, so an INFO record
    # would be dropped anyway (and a cold call must not import it: ~4 ms with what it imports).
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("conveyor").info(text)
    if explain:
        print(text, file=sys.stderr, flush=True)


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.1f} us"


class Probe:
    """What measuring a call's first items gave (see :meth:`Router.probe`).

    ``done`` items ran (the first ``done`` of the head), with ``outcomes``; ``measurement`` is
    what was seen, None when the probe failed in a way that forces the choice (``forced``).

    Example::

        >>> Probe(1, ([1], {}), Measurement(1e-6, 1e-6)).forced is None
        True
    """

    __slots__ = ("done", "forced", "measurement", "outcomes")

    def __init__(
        self,
        done: int,
        outcomes: Outcomes | None,
        measurement: Measurement | None,
        forced: Choice | None = None,
    ):
        self.done = done
        self.outcomes = outcomes
        self.measurement = measurement
        self.forced = forced


class _ProbeSink:
    """The sink of a timed probe's one unit (run on a thread of the pool's): settles
    ``future`` with the probe's result or its error."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        from concurrent.futures import Future  # (a probe with a task_timeout only)

        self.future: Future[Any] = Future()

    @property
    def owner(self) -> object:
        return self

    def starting(self, unit: Unit) -> bool:
        return not self.future.done()

    def deliver(self, unit: Unit, start: int, loader: Any, elapsed: float) -> None:
        values, errors = loader()
        if self.future.done():
            return
        error = errors.get(0)
        if error is None:
            self.future.set_result(values[0])
        else:
            self.future.set_exception(error)


class Router:
    """``Pool(backend="auto")``'s routing: measure, choose, and run a map on the choice.

    Data flow::

        Pool._job (caller thread) -> Router.job: the input's head -> probe (this thread, or
        a thread of the pool's with a task_timeout) -> choose -> MapJob on the chosen backend,
        with the probed items' outcomes settled first (never run twice)

    The pool owns its process backend (``process()`` starts it on first use) and hands the
    router a maker of its thread backend; the router keeps the thread and inline backends it
    made (``threads``, ``inline``) for the pool to shut down. ``payload_size(items)`` is the
    process backend's hook (:meth:`~conveyor.backends.base.Backend.payload_size`): how many
    bytes sending those items to a worker copies. ``inline_ok`` is False when the pool has an
    initializer (the caller's thread never ran it).
    """

    def __init__(
        self,
        process: Callable[[], Backend],
        make_threads: Callable[[], Backend],
        payload_size: Callable[[Sequence[Any]], int],
        workers: int,
        inline_ok: bool,
        item_times: Any = None,
    ):
        self._process = process
        self._make_threads = make_threads
        self._payload_size = payload_size
        self.workers = workers
        self.inline_ok = inline_ok
        self.item_times = item_times
        self.threads: Backend | None = None
        self.inline: Backend | None = None

    def backend(self, name: str) -> Backend:
        """The backend called ``name`` ("process", "thread" or "inline"), made on first use."""
        if name == "process":
            return self._process()
        if name == "inline":
            if self.inline is None:
                from .backends.inline import InlineBackend

                self.inline = InlineBackend()
            return self.inline
        if self.threads is None:
            self.threads = self._make_threads()
        return self.threads

    def job(self, fn: Callable[..., Any], iterable: Iterable[Any], options: JobOptions) -> MapJob:
        """The map job of ``fn`` over ``iterable``: measured, routed, its head settled."""
        mode, task_timeout = options.mode, options.task_timeout
        total = length_of(iterable)
        # a deadline must be able to stop the work: never inline with a timeout
        inline_ok = self.inline_ok and options.timeout is None
        rest = iter(iterable)
        head: list[Any] = []
        found = Probe(0, None, remembered(fn, mode))
        if found.measurement is not None:
            remaining = total
        else:
            head = take_head(rest, timed=task_timeout is not None)
            if not head:  # nothing to measure, nothing to run
                return MapJob(self.backend("inline"), fn, head, options)
            found = self.probe(fn, mode, head, task_timeout)
            if found.measurement is not None:
                remember(fn, mode, found.measurement)
            remaining = None if total is None else total - found.done
        if found.measurement is not None:
            choice = choose(found.measurement, remaining, task_timeout, self.workers, inline_ok)
        else:
            assert found.forced is not None
            choice = found.forced
        if choice.backend == "process" and not _sendable(fn, mode, head):
            choice = Choice(
                "thread",
                "the function or its arguments cannot be pickled, and threads need no pickling",
            )
        report(choice, fn, options.explain)
        backend = self.backend(choice.backend)
        if choice.backend == "inline" and options.chunksize == "auto":
            # Nothing to balance: few, large chunks; a call auto runs inline is expected to
            # take a few ms, so up to INLINE_CHUNK_MAX items go as one (a slice, no more copies).
            size = (
                INLINE_CHUNK if total is None else min(INLINE_CHUNK_MAX, max(INLINE_CHUNK, total))
            )
            options = options.replace(chunksize=size)
        done = found.done
        # A list, tuple or range goes whole (MapJob slices it, skipping the probed items).
        if type(iterable) in (list, tuple, range):
            source: Iterable[Any] = iterable
        elif hasattr(rest, "with_head"):  # a pipeline's buffer (_feed.Feed) stays itself
            source = rest.with_head(head[done:])
        else:
            source = itertools.chain(head[done:], rest)
        settled = (head[:done], found.outcomes) if found.outcomes is not None else None
        return MapJob(
            backend, fn, source, options, total=total, head=settled, item_times=self.item_times
        )

    def probe(
        self, fn: Callable[..., Any], mode: int, head: list[Any], task_timeout: float | None
    ) -> Probe:
        """Measure ``fn`` on the first items, in this process: no process is started to
        measure, and every item the probe runs has its side effects here.

        Without a ``task_timeout`` the probe runs in the caller's thread; with one, in a thread
        of the pool's, waited for at most 3x the limit (past it: processes, which can stop
        such work).
        """
        bytes_per_item = self._payload_size(head) / len(head)
        if task_timeout is None:
            done, outcomes, measurement = probe(fn, mode, head)
            return Probe(done, outcomes, measurement.with_bytes(bytes_per_item))
        sink = _ProbeSink()
        unit = Unit(
            fn=probe,
            items=[((fn, mode, head), {})],
            mode=MODE_CALL,
            sink=sink,
            tags=[0],
            timeout=3 * task_timeout,
        )
        self.backend("thread").submit([unit])
        from ._executor_errors import TaskTimeout

        try:
            done, outcomes, measurement = sink.future.result()
        except TaskTimeout:
            choice = Choice(
                "process", "measuring it ran past its task_timeout; processes can stop such tasks"
            )
            return Probe(0, None, None, choice)
        return Probe(done, outcomes, measurement.with_bytes(bytes_per_item))


def _sendable(fn: Callable[..., Any], mode: int, head: list[Any]) -> bool:
    """Whether the function and a first item can be pickled for a worker process (checked
    before any process is started for them)."""
    from ._serialize import callable_payload, items_payload

    try:
        callable_payload(fn).release()
        if head:
            items_payload(head[:1], mode).release()
    except Unsendable:
        return False
    return True
