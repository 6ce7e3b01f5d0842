"""One run of a pipeline: the stage threads, the bounded buffers between them, the one stop path.

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

One stop path (:meth:`Run.stop`) serves an error in any stage or the source, ``break`` (the
iterator is closed or collected), ``close()``, Ctrl-C in the caller and interpreter exit: it
stops every feed (each blocked thread raises :class:`~conveyor._feed.Stopped` and leaves),
terminates the thread pools the run made (running thread tasks are abandoned, as
``Pool.terminate`` does) and interrupts every job on a shared process pool (the workers running
its tasks are killed, reaped and replaced; the pool serves on, as after Ctrl-C in ``map``).

Races, and what settles them:

* **Error vs. error, error vs. close.** ``Run._lock`` guards ``error`` and ``_stopping``: the
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

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ._chain import failed_step, item_repr
from ._errors import Failure
from ._feed import Feed, Stopped
from ._job import MapJob
from ._pipeline_stats import PipelineStats, StageStats
from ._pool import PoolCore
from ._progress import Progress
from ._stages import FUNCTION_KINDS, _engine_options, _Group, _plan, _Stage

__all__ = ["Run"]

#: how long closing a stopped run waits for its stage threads to leave
STOP_JOIN_SECONDS = 5.0


class Run:
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
        self.pools: dict[int, PoolCore] = {}  # the pool of each function stage
        self.own: list[PoolCore] = []  # the pools this run made (and ends)
        try:
            for group in self.groups:
                if group.first.kind in FUNCTION_KINDS and self._owns_pool(group.first):
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
            self.threads.append(threading.Thread(target=self._stage, args=(group,), daemon=True))
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

    def _own_pool(self, stage: _Stage) -> PoolCore:
        pool = PoolCore(
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

    def _stage(self, group: _Group) -> None:
        """The thread of one stage: its body runs until its input ends; an error stops the
        run (named by ``where``, which a body may narrow to the item it was on), and Stopped
        (the run is stopping) just leaves."""
        kind = group.first.kind
        body = self._batch if kind == "batch" else self._unbatch if kind == "unbatch" else self._map
        inbox, outbox = self.feeds[group.position], self.feeds[group.position + 1]
        bar = self.bars[group.position]
        where = [group.label()]
        try:
            body(group, inbox, outbox, bar, where)
            outbox.end()
        except Stopped:
            pass
        except BaseException as exc:
            self._fail(exc, where[0])
        finally:
            bar.close()

    def _map(
        self, group: _Group, inbox: Feed, outbox: Feed, bar: Progress, where: list[str]
    ) -> None:
        fn, mode = group.function()
        pool = self.pools.get(group.position)
        if pool is None:
            from ._api import _default_pool

            pool = _default_pool(group.first.backend, group.first.workers, None)
            self.pools[group.position] = pool
        job = pool._job(fn, inbox, _engine_options(group, mode, self.ordered))
        self.jobs[group.position] = job
        inbox.wake = job.events.put
        if self._stopping:  # stop() ran before the job was published: it missed it
            self._interrupt(job)
            raise Stopped
        batches = job.batches()
        try:
            for values in batches:
                out = self._settle(group, values)
                bar.update(len(values))
                outbox.put(out)
        finally:
            batches.close()  # type: ignore[attr-defined]

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

    def _batch(
        self, group: _Group, inbox: Feed, outbox: Feed, bar: Progress, where: list[str]
    ) -> None:
        size, max_wait = group.first.size, group.first.max_wait
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

    def _unbatch(
        self, group: _Group, inbox: Feed, outbox: Feed, bar: Progress, where: list[str]
    ) -> None:
        while (got := inbox.take_wait(1 << 16)) is not None:
            out: list[Any] = []
            for item in got:
                if type(item) is Failure:
                    out.append(item)
                    continue
                try:
                    out.extend(item)
                except Exception:
                    where[0] = f"{group.label()} failed on item {item_repr(item)}"
                    raise
            bar.update(len(got))
            outbox.put(out)

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
        """Stop a job's running tasks: kill and replace the process workers they are assigned to."""
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


def _add_note(exc: BaseException, note: str) -> None:
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # the attribute 3.11 reads; 3.10 keeps it but does not print it
        try:
            exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]
        except Exception:
            pass


def _bar_options(progress: bool | dict[str, Any], position: int) -> bool | dict[str, Any]:
    if not progress:
        return False
    options: dict[str, Any] = {"position": position, "leave": True}
    if isinstance(progress, dict):
        options.update(progress)
    return options
