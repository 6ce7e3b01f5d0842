"""``conveyor.pipeline``: stages joined by bounded buffers, each stage a map job on its own pool.

A pipeline is not a new scheduler. Each function stage (map, starmap, filter, flat_map) is a
:class:`~conveyor._job.MapJob` on a pool of the stage's backend, fed from the bounded buffer
(:class:`~conveyor._feed.Feed`) the stage before fills; the job's own in-flight bound is the
backpressure ``imap`` already has, and a full buffer stops the stage before it. Adjacent process
stages with the same options are fused into one job whose function runs them in turn in the
worker (:class:`~conveyor._chain.Chain`), so an item crosses the pipe once.

Data flow (one thread per box on the left; ``feed`` = a bounded Feed)::

    source thread        stage threads (one per stage; fused stages share one)   caller
    -------------        ------------------------------------------------------   ------
    next(source)  feed   MapJob: take_now() -> chunks -> pool workers   feed   __next__():
    put([item]) ------>  (threads / processes) -> results in order  -------->  take_wait()
                         -> on_error per stage -> put(results)
                         batch / unbatch: take_wait() -> regroup -> put()
        ^ blocks while full                     ^ blocks while full

One stop path (:meth:`_Run.stop`) serves an error in any stage or the source, ``break`` (the
iterator is closed or collected), ``close()``, Ctrl-C in the caller and interpreter exit: it
stops every feed (each blocked thread raises :class:`~conveyor._feed.Stopped` and leaves),
terminates the thread pools the run made (running thread tasks are abandoned, as
``Pool.terminate`` does) and interrupts every job on a shared process pool (the workers running
its tasks are killed, reaped and replaced; the pool serves on, as after Ctrl-C in ``map``).

Races, and what settles them:

* **Error vs. error, error vs. close.** ``_Run._lock`` guards ``error`` and ``_stopping``: the
  first error recorded wins and later ones (often PoolClosed caused by the tear-down itself)
  are dropped; an error that arrives after a ``close()`` is dropped too.
* **A stop while a pool starts.** Every pool the run makes (and must terminate) is made in
  the caller's thread before any stage thread starts, so ``stop()`` always sees all of them;
  a shared pool, looked up in a stage thread, is never terminated (its job is interrupted).
* **A stop while a job starts.** A stage thread publishes its job in ``jobs`` and then reads
  ``_stopping``; ``stop()`` sets ``_stopping`` and then reads ``jobs``: whichever runs second
  interrupts the job, so a job that started during a stop never runs on unseen.
* **A stage thread blocked in its MapJob** (waiting for results of tasks whose workers were
  just killed, which will never come): stopping its input feed puts a Stopped on the job's
  event queue, raised in the stage thread; closing the job cancels what it had queued.
* **The source blocked in user code.** A thread cannot be interrupted: the source thread leaves
  at its next ``put`` (which raises Stopped) and closes a generator source there. It is a
  daemon thread, so a source blocked for ever does not keep the interpreter alive.
* **The caller's results vs. a late error.** Results already handed out stay handed out; once
  the error is recorded the buffers are dropped and the next ``__next__`` raises it.
"""

from __future__ import annotations

import numbers
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ._chain import FILTER, FLAT, MAP, STAR, Chain, failed_step, item_repr
from ._errors import Failure
from ._feed import Feed, Stopped
from ._job import MapJob
from ._options import check_backend, check_callable, check_options, check_workers
from ._pool import Pool
from ._progress import Progress
from ._work import MODE_MAP, MODE_STAR

__all__ = ["Pipeline", "PipelineStats", "StageStats", "pipeline"]

#: items each buffer between two stages holds before the stage feeding it waits
DEFAULT_BUFFER = 256
#: how long closing a stopped run waits for its stage threads to leave
STOP_JOIN_SECONDS = 5.0
_FUNCTION_KINDS = (MAP, STAR, FILTER, FLAT)
_STAGE_OPTIONS = (
    "backend",
    "workers",
    "task_timeout",
    "retries",
    "on_error",
    "initializer",
    "initargs",
    "chunksize",
    "name",
)


@dataclass(frozen=True)
class _Stage:
    """One stage as the user wrote it."""

    kind: str
    fn: Callable[..., Any] | None
    name: str
    backend: str = "thread"
    workers: int | None = None
    task_timeout: float | None = None
    retries: int = 0
    on_error: str = "raise"
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    chunksize: int | str = "auto"
    size: int = 0  # batch: items per batch
    max_wait: float | None = None  # batch: seconds a partial batch waits for more

    def pool_key(self) -> tuple[Any, ...]:
        return (
            self.workers,
            self.task_timeout,
            self.retries,
            self.on_error,
            self.initializer,
            self.initargs,
            self.chunksize,
        )

    def fuses_with(self, other: _Stage) -> bool:
        """Whether ``other``, right after this stage, can run in the same worker call."""
        return (
            self.kind in _FUNCTION_KINDS
            and other.kind in _FUNCTION_KINDS
            and self.backend == other.backend == "process"
            and self.pool_key() == other.pool_key()
        )


@dataclass
class _Group:
    """What runs as one job: a stage, or several fused process stages (numbered from 1)."""

    stages: list[_Stage]
    number: int  # the first stage's number in the pipeline
    position: int  # index among the groups: reads feeds[position], fills feeds[position + 1]
    passes_failures: bool = False  # an earlier stage may send a Failure down

    @property
    def first(self) -> _Stage:
        return self.stages[0]

    @property
    def name(self) -> str:
        return "+".join(stage.name for stage in self.stages)

    @property
    def kind(self) -> str:
        return "+".join(stage.kind for stage in self.stages)

    @property
    def direct(self) -> bool:
        """One map/starmap stage that sees no Failure: run its function itself, one value
        per item (no list per item to build and flatten)."""
        return len(self.stages) == 1 and self.first.kind in (MAP, STAR) and not self.passes_failures

    def function(self) -> tuple[Callable[..., Any], int]:
        if self.direct:
            assert self.first.fn is not None
            return self.first.fn, MODE_STAR if self.first.kind == STAR else MODE_MAP
        steps = [(stage.kind, stage.fn) for stage in self.stages]
        return Chain(steps), MODE_MAP  # type: ignore[arg-type]

    def label(self, step: int = 0) -> str:
        stage = self.stages[step]
        return (
            f"stage {self.number + step} {stage.name!r} ({stage.kind}, backend={stage.backend!r})"
        )


def _engine_options(group: _Group) -> dict[str, Any]:
    """The ONE place a stage's options become the engine's MapJob keywords.

    The engine still calls the per-item limit ``timeout`` (issue 8 renames it to
    ``task_timeout``). Fused stages share one worker call, so their limits add up. Failures come
    back as values (``on_error="return"``): the pipeline applies each stage's own ``on_error``.
    """
    limits = [stage.task_timeout for stage in group.stages]
    return dict(
        chunksize=group.first.chunksize,
        timeout=None if None in limits else sum(t or 0.0 for t in limits),
        retries=group.first.retries,
        on_error="return",
        progress=False,
    )


def _plan(stages: tuple[_Stage, ...]) -> list[_Group]:
    """Fuse adjacent compatible process stages into groups."""
    groups: list[_Group] = []
    returns = False
    for number, stage in enumerate(stages, start=1):
        if groups and groups[-1].stages[-1].fuses_with(stage):
            groups[-1].stages.append(stage)
        else:
            groups.append(_Group([stage], number, len(groups), passes_failures=returns))
        returns = returns or stage.on_error == "return"
    return groups


def _add_note(exc: BaseException, note: str) -> None:
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # the attribute 3.11 reads; 3.10 keeps it but does not print it
        try:
            exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]
        except Exception:
            pass


@dataclass
class StageStats:
    """What one stage did (fused process stages count as one row, their names joined by +).

    * ``items_in``/``items_out``: items taken from the buffer before / put into the one after
      (a filter's out is smaller, a flat_map's or unbatch's larger, a batch's counts batches);
    * ``failures``: items whose function failed for good (after retries), whatever on_error;
    * ``busy_seconds``: worker-seconds spent running the stage's function; ``utilization`` is
      that over ``workers`` x the run's wall time: near 1.0 means this stage is the bottleneck;
    * ``waited_input``: seconds the stage had nothing to do because its input buffer was empty
      (the stages before it are slower); ``waited_output``: seconds it could not hand results on
      because the buffer after it was full (a stage after it is slower).
    """

    name: str
    kind: str
    backend: str
    workers: int
    items_in: int = 0
    items_out: int = 0
    failures: int = 0
    busy_seconds: float = 0.0
    utilization: float = 0.0
    waited_input: float = 0.0
    waited_output: float = 0.0


@dataclass
class PipelineStats:
    """Statistics of a pipeline run: what :meth:`Pipeline.run` returns.

    ``stages`` has one :class:`StageStats` per stage; ``source_waited`` is how long reading the
    source waited for room (the pipeline is slower than the source), ``consumer_waited`` how
    long the caller waited for results. ``str()`` gives a table.

    Example::

        >>> import conveyor
        >>> stats = conveyor.pipeline(range(10)).map(abs).filter(bool).run()
        >>> [(s.name, s.items_in, s.items_out) for s in stats.stages]
        [('abs', 10, 10), ('bool', 10, 9)]
    """

    stages: list[StageStats]
    seconds: float
    items: int
    source_items: int
    source_waited: float
    consumer_waited: float
    #: whether the run went to the end (False while it runs, and after an error or a stop)
    finished: bool = True

    def bottleneck(self) -> StageStats | None:
        """The stage with the highest utilization (the one to give more workers), or None."""
        busy = [s for s in self.stages if s.busy_seconds > 0]
        return max(busy, key=lambda s: s.utilization) if busy else None

    def __str__(self) -> str:
        head = (
            f"{'stage':<24} {'backend':<8} {'workers':>7} {'in':>8} {'out':>8} {'failed':>6} "
            f"{'busy s':>8} {'util':>5} {'wait in':>8} {'wait out':>8}"
        )
        lines = [
            f"pipeline: {self.items} results in {self.seconds:.2f} s "
            f"(source: {self.source_items} items, waited {self.source_waited:.2f} s for room)",
            head,
        ]
        for s in self.stages:
            lines.append(
                f"{s.name[:24]:<24} {s.backend:<8} {s.workers:>7} {s.items_in:>8} "
                f"{s.items_out:>8} {s.failures:>6} {s.busy_seconds:>8.2f} "
                f"{s.utilization:>5.0%} {s.waited_input:>8.2f} {s.waited_output:>8.2f}"
            )
        return "\n".join(lines)


class Pipeline:
    """A chain of stages over a source; iterate it for the results, or call :meth:`run`.

    Made by :func:`conveyor.pipeline`. Each stage method returns a new Pipeline (the one it was
    called on is unchanged). Every function stage takes the options of :func:`conveyor.map`:
    ``backend`` (``"thread"`` by default here, ``"process"`` or ``"auto"``), ``workers``,
    ``task_timeout``, ``retries``, ``on_error``, ``initializer``, ``initargs``, ``chunksize``,
    and ``name`` (for errors, progress bars and stats; the function's name by default).

    Example::

        >>> import conveyor
        >>> list(conveyor.pipeline(range(6)).map(abs).filter(lambda x: x % 2).batch(2))
        [[1, 3], [5]]
    """

    def __init__(
        self,
        source: Iterable[Any],
        *,
        ordered: bool = True,
        buffer: int = DEFAULT_BUFFER,
        progress: bool | dict[str, Any] = False,
        _stages: tuple[_Stage, ...] = (),
    ):
        try:
            iter(source)
        except TypeError:
            raise TypeError(
                f"source must be iterable, got {source!r} (of type {type(source).__name__})"
            ) from None
        if not isinstance(ordered, bool):
            raise TypeError(f"ordered must be True or False, got {ordered!r}")
        if isinstance(buffer, bool) or not isinstance(buffer, numbers.Integral) or buffer < 1:
            raise ValueError(f"buffer must be a whole number of at least 1, got {buffer!r}")
        self._source: Iterable[Any] = source
        self._ordered: bool = ordered
        self._buffer: int = int(buffer)
        self._progress: bool | dict[str, Any] = progress
        self._stages: tuple[_Stage, ...] = _stages
        self._last: _Run | None = None

    # ----------------------------------------------------------------- building

    def _with(self, stage: _Stage) -> Pipeline:
        return Pipeline(
            self._source,
            ordered=self._ordered,
            buffer=self._buffer,
            progress=self._progress,
            _stages=(*self._stages, stage),
        )

    def _function_stage(
        self, kind: str, fn: Callable[..., Any], options: dict[str, Any]
    ) -> Pipeline:
        check_callable(fn)
        if "timeout" in options:
            raise TypeError(
                "unexpected option 'timeout'; the per-item limit of a stage is task_timeout"
            )
        unknown = sorted(set(options) - set(_STAGE_OPTIONS))
        if unknown:
            raise TypeError(
                f"unexpected option {unknown[0]!r} for {kind}(); the options are "
                f"{', '.join(_STAGE_OPTIONS)}"
            )
        backend = check_backend(options.get("backend", "thread"))
        workers = check_workers(options.get("workers"))
        task_timeout = options.get("task_timeout")
        if task_timeout is not None and (
            isinstance(task_timeout, bool)
            or not isinstance(task_timeout, numbers.Real)
            or not float(task_timeout) > 0
        ):
            raise ValueError(
                f"task_timeout must be a positive number of seconds or None, got {task_timeout!r}"
            )
        check_options(
            chunksize=options.get("chunksize", "auto"),
            retries=options.get("retries", 0),
            on_error=options.get("on_error", "raise"),
        )
        initializer = options.get("initializer")
        if initializer is not None:
            check_callable(initializer, "initializer")
        initargs = options.get("initargs", ())
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, got {type(initargs).__name__}")
        inner = getattr(fn, "func", fn)  # functools.partial: the function's own name
        name = options.get("name") or getattr(inner, "__name__", None) or type(fn).__name__
        return self._with(
            _Stage(
                kind,
                fn,
                str(name),
                backend=backend,
                workers=workers,
                task_timeout=None if task_timeout is None else float(task_timeout),
                retries=options.get("retries", 0),
                on_error=options.get("on_error", "raise"),
                initializer=initializer,
                initargs=initargs,
                chunksize=options.get("chunksize", "auto"),
            )
        )

    def map(self, fn: Callable[..., Any], **options: Any) -> Pipeline:
        """Each item becomes ``fn(item)``.

        Example::

            >>> import conveyor
            >>> list(conveyor.pipeline([1, 2]).map(lambda x: x * 10, backend="process"))
            [10, 20]
        """
        return self._function_stage(MAP, fn, options)

    def starmap(self, fn: Callable[..., Any], **options: Any) -> Pipeline:
        """Each item (a tuple) becomes ``fn(*item)``.

        Example::

            >>> import conveyor
            >>> list(conveyor.pipeline([(2, 3), (3, 2)]).starmap(pow))
            [8, 9]
        """
        return self._function_stage(STAR, fn, options)

    def filter(self, fn: Callable[..., Any], **options: Any) -> Pipeline:
        """Keep the items for which ``fn(item)`` is true.

        Example::

            >>> import conveyor
            >>> list(conveyor.pipeline(range(5)).filter(lambda x: x % 2))
            [1, 3]
        """
        return self._function_stage(FILTER, fn, options)

    def flat_map(self, fn: Callable[..., Any], **options: Any) -> Pipeline:
        """Each item becomes the items of the iterable ``fn(item)`` (none, one or many).

        Example::

            >>> import conveyor
            >>> list(conveyor.pipeline([1, 3]).flat_map(range))
            [0, 0, 1, 2]
        """
        return self._function_stage(FLAT, fn, options)

    def batch(self, size: int, max_wait: float | None = None) -> Pipeline:
        """Group items into lists of ``size`` (the last may be shorter).

        With ``max_wait`` (seconds), a batch that has waited that long since its first item is
        passed on as it is, so a slow trickle of input still moves. A Failure from an earlier
        ``on_error="return"`` stage is passed on by itself, not put into a batch.

        Example::

            >>> import conveyor
            >>> list(conveyor.pipeline(range(5)).batch(2))
            [[0, 1], [2, 3], [4]]
        """
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"batch size must be a whole number of at least 1, got {size!r}")
        if max_wait is not None and (
            isinstance(max_wait, bool) or not isinstance(max_wait, numbers.Real) or max_wait < 0
        ):
            raise ValueError(f"max_wait must be a number of seconds >= 0 or None, got {max_wait!r}")
        return self._with(
            _Stage(
                "batch",
                None,
                f"batch({size})",
                backend="-",
                size=int(size),
                max_wait=None if max_wait is None else float(max_wait),
            )
        )

    def unbatch(self) -> Pipeline:
        """Each item (an iterable, such as a batch) becomes its elements.

        Example::

            >>> import conveyor
            >>> list(conveyor.pipeline([[1, 2], [3]]).unbatch())
            [1, 2, 3]
        """
        return self._with(_Stage("unbatch", None, "unbatch", backend="-"))

    # ----------------------------------------------------------------- running

    def __iter__(self) -> PipelineRun:
        """Start a run and iterate its results (each ``iter()`` starts a new run)."""
        run = _Run(self._source, self._stages, self._ordered, self._buffer, self._progress)
        self._last = run
        return PipelineRun(run)

    def run(self) -> PipelineStats:
        """Run to the end, dropping the results; returns the run's :class:`PipelineStats`.

        Example::

            >>> import conveyor
            >>> conveyor.pipeline(range(3)).map(abs).run().items
            3
        """
        results = iter(self)
        for _ in results:
            pass
        return results.stats()

    def stats(self) -> PipelineStats | None:
        """Statistics of the latest run so far (None before the first).

        Example::

            >>> import conveyor
            >>> p = conveyor.pipeline(range(3)).map(abs)
            >>> sum(p), p.stats().stages[0].items_out
            (3, 3)
        """
        return None if self._last is None else self._last.stats()

    def close(self) -> None:
        """Stop the latest run: every stage stops, workers running its tasks are killed.

        Example::

            >>> import conveyor
            >>> p = conveyor.pipeline(range(3)).map(abs); results = iter(p); p.close()
        """
        if self._last is not None:
            self._last.close()

    def __repr__(self) -> str:
        stages = ".".join(f"{s.kind}({s.name})" for s in self._stages)
        return f"<conveyor.Pipeline {stages or '(no stages)'}>"


class PipelineRun(Iterator[Any]):
    """The iterator of one run of a pipeline: results, ``stats()`` and ``close()``.

    Dropping it (garbage collection), ``break`` in a ``for`` loop over the pipeline, or
    ``close()`` stops every stage.

    Example::

        >>> import conveyor
        >>> results = iter(conveyor.pipeline(range(100)).map(abs))
        >>> next(results), results.close()
        (0, None)
    """

    def __init__(self, run: _Run):
        self._run = run
        self._values: list[Any] = []
        self._next = 0
        # The stage threads hold the run, not this iterator: when it is dropped, stop the run.
        self._finalizer = weakref.finalize(self, run.stop)

    def __next__(self) -> Any:
        if self._next < len(self._values):
            value = self._values[self._next]
            self._next += 1
            return value
        self._values, self._next = self._run.next_values(), 1
        return self._values[0]

    def stats(self) -> PipelineStats:
        """Statistics of this run so far (see :class:`PipelineStats`)."""
        return self._run.stats()

    def close(self) -> None:
        """Stop every stage now (idempotent)."""
        self._values = []
        self._run.close()


class _Run:
    """One run of a pipeline: the feeds, the pools and the threads, and the one stop path."""

    def __init__(
        self,
        source: Iterable[Any],
        stages: tuple[_Stage, ...],
        ordered: bool,
        buffer: int,
        progress: bool | dict[str, Any],
    ):
        self.ordered = ordered
        self.groups = _plan(stages)
        self.feeds = [Feed(buffer) for _ in range(len(self.groups) + 1)]
        self.error: BaseException | None = None
        self.failures = [0] * len(self.groups)
        self.jobs: dict[int, MapJob] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._done = False
        self.completed = False  # every item went through to the end
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.pools: dict[int, Pool] = {}  # the pool of each function stage
        self.own: list[Pool] = []  # the pools this run made (and ends)
        try:
            for group in self.groups:
                if group.first.kind in _FUNCTION_KINDS and self._owns_pool(group.first):
                    self.pools[group.position] = self._own_pool(group.first)
        except BaseException:
            self.stop()
            raise
        self.bars = [
            Progress(_bar_options(progress, i), None, group.name)
            for i, group in enumerate(self.groups)
        ]
        self.threads = [threading.Thread(target=self._read_source, args=(source,), daemon=True)]
        for group in self.groups:
            kind = group.first.kind
            target = (
                self._batch
                if kind == "batch"
                else self._unbatch
                if kind == "unbatch"
                else self._map
            )
            self.threads.append(threading.Thread(target=target, args=(group,), daemon=True))
        for number, thread in enumerate(self.threads):
            thread.name = f"conveyor-pipeline-{'source' if number == 0 else number}"
            thread.start()

    @staticmethod
    def _owns_pool(stage: _Stage) -> bool:
        """A process (or auto) stage runs on conveyor's default pool for its backend and worker
        count, as ``conveyor.map`` does, so a second run pays no start-up; stopping the run kills
        the workers running its tasks (``interrupt``), and the pool lives on. (It is looked up
        in the stage's thread, so the first run's start of the pool overlaps the stages before
        it.) A thread stage gets threads of its own, so that stopping abandons its running tasks
        (``terminate``), and so does a stage with an initializer (as ``conveyor.map`` gives such
        a call its own pool).
        """
        return stage.backend == "thread" or stage.initializer is not None

    def _own_pool(self, stage: _Stage) -> Pool:
        pool = Pool(
            workers=stage.workers,
            backend=stage.backend,
            initializer=stage.initializer,
            initargs=stage.initargs,
        )
        self.own.append(pool)
        return pool

    # ----------------------------------------------------------------- stage threads

    def _read_source(self, source: Iterable[Any]) -> None:
        feed = self.feeds[0]
        iterator: Iterator[Any] | None = None
        try:
            iterator = iter(source)
            for item in iterator:
                feed.put([item])
            feed.end()
        except Stopped:
            pass
        except BaseException as exc:
            _add_note(exc, f"conveyor.pipeline: the source raised after {feed.put_count} items")
            self._fail(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()  # a generator source runs its finally blocks now
                except Exception:
                    pass

    def _map(self, group: _Group) -> None:
        inbox, outbox = self.feeds[group.position], self.feeds[group.position + 1]
        bar = self.bars[group.position]
        batches: Iterator[list[Any]] | None = None
        try:
            fn, mode = group.function()
            pool = self.pools.get(group.position)
            if pool is None:
                from ._api import _default_pool

                pool = _default_pool(group.first.backend, group.first.workers, None)
                self.pools[group.position] = pool
            job = pool._job(
                fn, inbox, (), mode=mode, ordered=self.ordered, **_engine_options(group)
            )
            self.jobs[group.position] = job
            inbox.wake = job.events.put
            if self._stopping:  # stop() ran before the job was published: it missed it
                self._interrupt(job)
                raise Stopped
            batches = job.batches()
            for values in batches:
                out = self._settle(group, values)
                bar.update(len(values))
                outbox.put(out)
            outbox.end()
        except Stopped:
            pass
        except BaseException as exc:
            self._fail(exc, group.label())
        finally:
            if batches is not None:
                batches.close()  # type: ignore[attr-defined]
            bar.close()

    def _settle(self, group: _Group, values: list[Any]) -> list[Any]:
        """Apply the stage's on_error to the failures among a job's results; flatten lists."""
        if group.direct:
            if not any(type(value) is Failure for value in values):
                return values
            return [out for value in values for out in self._failed(group, value)]
        out: list[Any] = []
        for value in values:
            if type(value) is list:
                out.extend(value)
            else:
                out.extend(self._failed(group, value))
        return out

    def _failed(self, group: _Group, value: Any) -> list[Any]:
        if type(value) is not Failure:
            return [value]
        self.failures[group.position] += 1
        on_error = group.first.on_error
        if on_error == "return":
            return [value]
        if on_error == "skip":
            return []
        step, item = failed_step(value.exception)
        label = group.label(step or 0)
        self._fail(value.exception, f"{label} failed on item {item or item_repr(value.item)}")
        raise Stopped

    def _batch(self, group: _Group) -> None:
        inbox, outbox = self.feeds[group.position], self.feeds[group.position + 1]
        size, max_wait = group.first.size, group.first.max_wait
        bar = self.bars[group.position]
        try:
            ended = False
            while not ended:
                batch: list[Any] = []
                deadline: float | None = None
                while len(batch) < size:
                    got = inbox.take_wait(size - len(batch), deadline)
                    if got is None:
                        ended = True
                        break
                    if not got:
                        break  # max_wait passed
                    if deadline is None and max_wait is not None:
                        deadline = time.monotonic() + max_wait
                    passed = [value for value in got if type(value) is Failure]
                    if passed:
                        outbox.put(passed)
                        got = [value for value in got if type(value) is not Failure]
                    batch.extend(got)
                    bar.update(len(got))
                if batch:
                    outbox.put([batch])
            outbox.end()
        except Stopped:
            pass
        except BaseException as exc:
            self._fail(exc, group.label())
        finally:
            bar.close()

    def _unbatch(self, group: _Group) -> None:
        inbox, outbox = self.feeds[group.position], self.feeds[group.position + 1]
        bar = self.bars[group.position]
        item: Any = None
        try:
            while (got := inbox.take_wait(1 << 16)) is not None:
                out: list[Any] = []
                for item in got:
                    if type(item) is Failure:
                        out.append(item)
                    else:
                        out.extend(item)
                bar.update(len(got))
                outbox.put(out)
            outbox.end()
        except Stopped:
            pass
        except BaseException as exc:
            self._fail(exc, f"{group.label()} failed on item {item_repr(item)}")
        finally:
            bar.close()

    # ----------------------------------------------------------------- the caller's side

    def next_values(self) -> list[Any]:
        """The next non-empty list of results; raises StopIteration at the end, or the error."""
        while True:
            try:
                got = self.feeds[-1].take_wait(1 << 16)
            except Stopped:
                got = None
            except BaseException:  # Ctrl-C (KeyboardInterrupt) while waiting
                self.close()
                raise
            if got:
                return got
            if got is None:
                self._finish()
                with self._lock:
                    error, self.error = self.error, None
                if error is not None:
                    raise error
                raise StopIteration

    def _finish(self) -> None:
        """The end was reached or the run stopped: shut the pools down, wait for the threads."""
        if self._done:
            return
        self._done = True
        if self._stopping:
            self._join(STOP_JOIN_SECONDS)
            return
        with self._lock:
            self._stopping = True  # nothing more can fail: a late close() has nothing to do
        for pool in self.own:
            pool.shutdown(wait=True)
        self.ended = time.perf_counter()
        self.completed = True
        self._join()

    def _join(self, budget: float | None = None) -> None:
        """Wait for the stage threads (not the source's: it may be blocked in user code).

        After a stop they leave at once (every feed raises Stopped in them); the budget only
        bounds the wait for one still inside something nobody can interrupt (a backend="auto"
        stage measuring its first items); it is a daemon thread and ends on its own.
        """
        deadline = None if budget is None else time.monotonic() + budget
        for thread in self.threads[1:]:
            if thread is not threading.current_thread():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self.stop()
        self._finish()

    def _fail(self, exc: BaseException, where: str | None = None) -> None:
        with self._lock:
            if self._stopping:
                return  # stopping already: this is a consequence, or comes after a close()
            if where is not None:
                _add_note(exc, f"conveyor.pipeline: {where}")
            self.error = exc
        self.stop()

    def stop(self) -> None:
        """The one stop path: every feed stops, every pool is terminated (idempotent)."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self.ended = time.perf_counter()
        for feed in self.feeds:
            feed.stop()  # wakes every stage thread, also one waiting in its MapJob
        for pool in self.own:
            try:
                pool.terminate()
            except Exception:
                pass
        for job in list(self.jobs.values()):  # a job published after this sees _stopping
            self._interrupt(job)

    @staticmethod
    def _interrupt(job: MapJob) -> None:
        """Stop a job's running tasks: kill and replace the process workers that hold them."""
        try:
            job.backend.interrupt(job)
        except Exception:
            pass

    # ----------------------------------------------------------------- statistics

    def stats(self) -> PipelineStats:
        now = self.ended if self.ended is not None else time.perf_counter()
        seconds = max(now - self.started, 1e-9)
        rows = []
        for group in self.groups:
            inbox, outbox = self.feeds[group.position], self.feeds[group.position + 1]
            job = self.jobs.get(group.position)
            pool = self.pools.get(group.position)
            workers = pool.workers if pool is not None else group.first.workers or 1
            busy = job.busy_seconds if job is not None else 0.0
            backend = group.first.backend
            if job is not None and backend == "auto":
                backend = f"auto:{job.backend.name}"
            rows.append(
                StageStats(
                    name=group.name,
                    kind=group.kind,
                    backend=backend,
                    workers=workers,
                    items_in=inbox.taken,
                    items_out=outbox.put_count,
                    failures=self.failures[group.position],
                    busy_seconds=busy,
                    utilization=min(1.0, busy / (workers * seconds)),
                    waited_input=inbox.empty_wait,
                    waited_output=outbox.full_wait,
                )
            )
        return PipelineStats(
            stages=rows,
            seconds=seconds,
            items=self.feeds[-1].taken,
            source_items=self.feeds[0].put_count,
            source_waited=self.feeds[0].full_wait,
            consumer_waited=self.feeds[-1].empty_wait,
            finished=self.completed,
        )


def _bar_options(progress: bool | dict[str, Any], position: int) -> bool | dict[str, Any]:
    if not progress:
        return False
    options: dict[str, Any] = {"position": position, "leave": True}
    if isinstance(progress, dict):
        options.update(progress)
    return options


def pipeline(
    source: Iterable[Any],
    *,
    ordered: bool = True,
    buffer: int = DEFAULT_BUFFER,
    progress: bool | dict[str, Any] = False,
) -> Pipeline:
    """Start a pipeline over ``source`` (any iterable, read lazily in a thread of its own).

    Add stages with ``.map``, ``.starmap``, ``.filter``, ``.flat_map`` (each on the backend and
    with the options it is given), ``.batch(n, max_wait=)`` and ``.unbatch()``; iterate the
    pipeline for the results, or call ``.run()`` for per-stage statistics.

    * Every stage runs at the same time as the others; each buffer between two stages holds at
      most about ``buffer`` items, and the source is read only as the stages make room, so an
      endless source runs in constant memory.
    * ``ordered=True``: results in the order of the source; ``False``: as they are ready.
    * An exception in any stage (``on_error="raise"``, the default) or in the source stops every
      stage (workers running its tasks are killed) and is raised to the caller with a note
      naming the stage and the item. ``on_error="return"`` passes a :class:`conveyor.Failure`
      on to the output in the item's place; ``"skip"`` drops the item.
    * Adjacent ``backend="process"`` stages with the same options run in one worker call.
    * ``progress=True``: one bar per stage.

    Example::

        >>> import conveyor
        >>> list(
        ...     conveyor.pipeline(range(10))
        ...     .map(lambda x: x * x, backend="process")
        ...     .filter(lambda x: x % 2, backend="process")
        ...     .batch(3)
        ... )
        [[1, 9, 25], [49, 81]]
    """
    return Pipeline(source, ordered=ordered, buffer=buffer, progress=progress)
