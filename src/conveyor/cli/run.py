"""``conveyor run``: schedule one shell command per input on conveyor's thread pool.

Data flow::

    main thread                              executor threads (conveyor.Pool, thread backend)
    -----------                              ------------------------------------------------
    inputs -> skip resumed -> (shuffle)
    for each job:
      slot = slots.acquire()  <-------------------------------------- slots.release(slot)
      (--delay since the last start)                                          ^
      command = template.render(args, seq, slot)                              |
      executor.submit(_run_job) --------> attempts: process.run_command ------+
                                          counters, --halt: stop / no_new
                                          joblog.record (one commit per job)
                                          output.finish (grouped / ordered)
    slots.wait_idle(); executor.shutdown()

Why an executor thread per running job: a job's thread only blocks in ``poll()`` on the
job's pipes and pidfd, so N threads for ``-j N`` cost little, and the same
``Executor.submit`` interface runs on conveyor's own pool. Measured on 2 cores with
1,000 ``true`` jobs, this design is within a few percent of ``xargs -P`` (see
``benchmarks/bench_cli.py``); spawning the shell dominates, so a hand-written event loop
would not be faster. For the same reason every job runs under ``/bin/sh -c`` (exec'ing
simple commands directly measured only ~10% faster and is not equivalent for shell
builtins such as ``echo``).

Guarantees, and where they are kept:

* At most ``-j`` jobs run at once: a job is only submitted holding a slot, and its
  thread releases the slot as its very last step (``_run_job``'s ``finally``).
* ``--halt now`` and Ctrl-C set the StopSignal, which every running job polls on, so
  each kills its own process group; no new job starts once it is set (checked before
  every submit and again by the job before every attempt).
* Counters and the halt decision change only under ``self._lock``.
"""

from __future__ import annotations

import importlib
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from conveyor.cli.inputs import InputError, open_inputs
from conveyor.cli.joblog import JobLog, JobLogError, JobRow, input_text
from conveyor.cli.options import RunConfig, UsageError, parse_run_args
from conveyor.cli.output import LineSink, Output, tag_lines
from conveyor.cli.process import Completed, StopSignal, run_command
from conveyor.cli.templates import Template, TemplateError, compile_template

__all__ = ["main", "run"]

EXIT_FAILED_CAP = 101
EXIT_ERROR = 255


def _make_executor(workers: int) -> Executor:
    """The pool that runs the jobs: ``conveyor.Pool(backend="thread")`` when available."""
    pool_class = getattr(importlib.import_module("conveyor"), "Pool", None)
    if pool_class is None:  # the engine is not there yet: the standard thread pool
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="conveyor-run")
    executor: Executor = pool_class(workers=workers, backend="thread")
    return executor


class _Slots:
    """Job slots 1..n for ``{%}``: the lowest free one is handed out first."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._free = list(range(1, n + 1))  # kept sorted, so _free[0] is the lowest
        self._cond = threading.Condition()

    def acquire(self, cancelled: Callable[[], bool]) -> int | None:
        """Block for a free slot; None once ``cancelled()`` is true (checked on wake)."""
        with self._cond:
            while not self._free and not cancelled():
                self._cond.wait()
            return None if cancelled() else self._free.pop(0)

    def release(self, slot: int) -> None:
        """Give a slot back (idempotent)."""
        with self._cond:
            if slot not in self._free:
                self._free.append(slot)
                self._free.sort()
            self._cond.notify_all()

    def wake(self) -> None:
        """Make a blocked :meth:`acquire` re-check its ``cancelled``."""
        with self._cond:
            self._cond.notify_all()

    def wait_idle(self) -> None:
        """Block until every slot is free, i.e. no job is running."""
        with self._cond:
            while len(self._free) < self._n:
                self._cond.wait()


@dataclass
class _Job:
    seq: int
    args: tuple[str, ...]
    order: int
    slot: int
    command: str


class _Runner:
    """One ``conveyor run``: the state shared by the main and the executor threads."""

    def __init__(self, config: RunConfig, template: Template, total: int | None,
                 joblog: JobLog | None) -> None:
        self.config = config
        self.template = template
        self.total = total
        self.joblog = joblog
        self.stop = StopSignal()  # kill running jobs, start no more
        self.no_new = threading.Event()  # start no more jobs (--halt soon)
        self.slots = _Slots(config.jobs)
        self._lock = threading.Lock()
        self.succeeded = self.failed = 0
        self.errors: list[BaseException] = []
        self.progress: Any = None
        around: Callable[[], AbstractContextManager[object]] | None = None
        if config.progress:
            from tqdm import tqdm  # lazy: only --progress pays for it

            self.progress = tqdm(total=total, unit="job", file=sys.stderr,
                                 dynamic_ncols=True)
            def around() -> AbstractContextManager[object]:
                return tqdm.external_write_mode(file=sys.stderr)  # type: ignore[no-any-return]
        self.output = Output(sys.stdout.buffer, sys.stderr.buffer,
                             keep_order=config.keep_order, around_write=around,
                             on_broken=self._halt_now)

    def _halt_now(self) -> None:
        self.stop.set()
        self.slots.wake()

    def _cancelled(self) -> bool:
        return self.stop.is_set() or self.no_new.is_set()

    def dispatch(self, jobs: Iterable[tuple[int, tuple[str, ...]]]) -> None:
        """Start the jobs as slots free up (main thread). Returns when all have ended."""
        executor = _make_executor(self.config.jobs)
        in_hand: int | None = None
        try:
            last_start = None
            for order, (seq, args) in enumerate(jobs):
                in_hand = self.slots.acquire(self._cancelled)
                if in_hand is None:
                    break
                if self.config.delay and last_start is not None:
                    pause = last_start + self.config.delay - time.monotonic()
                    if pause > 0 and self.stop.wait(pause):
                        break
                    if self._cancelled():
                        break
                last_start = time.monotonic()
                job = _Job(seq, args, order, in_hand,
                           self.template.render(args, seq, in_hand))
                future = executor.submit(self._run_job, job)
                in_hand = None
                future.add_done_callback(self._check_future)
            if in_hand is not None:
                self.slots.release(in_hand)
                in_hand = None
            self.slots.wait_idle()
        except KeyboardInterrupt:
            self._halt_now()
            if in_hand is not None:
                self.slots.release(in_hand)
            _uninterrupted(self.slots.wait_idle)
            raise
        finally:
            _uninterrupted(lambda: executor.shutdown(wait=True))
            if self.progress is not None:
                self.progress.close()

    def _check_future(self, future: Future[None]) -> None:
        exc = future.exception()
        if exc is not None:  # _run_job never raises; this is a bug, so stop everything
            with self._lock:
                self.errors.append(exc)
            self._halt_now()

    def _run_job(self, job: _Job) -> None:
        finished = False
        try:
            result, attempts = self._attempts(job)
            if result is not None and not result.stopped:
                self._account(result.returncode == 0)
                if self.joblog is not None:
                    self._record(job, result, attempts)
                self.output.finish(job.order, self._chunks(job, result))
                finished = True
        except BaseException as e:
            with self._lock:
                self.errors.append(e)
            self._halt_now()
        finally:
            if not finished:
                self.output.finish(job.order, [])
            self.slots.release(job.slot)

    def _attempts(self, job: _Job) -> tuple[Completed | None, int]:
        result: Completed | None = None
        attempts = 0
        first_start = time.time()
        while not self.stop.is_set():
            attempts += 1
            sink = LineSink(self.output, job.order, self._tag(job)) \
                if self.config.line_buffer else None
            result = run_command(job.command, timeout=self.config.timeout, stop=self.stop,
                                 sink=sink)
            if attempts == 1:
                first_start = result.start
            if sink is not None:
                for stream, data in sink.rest():
                    self.output.emit(job.order, stream, data)
            if (result.stopped or result.returncode == 0 or attempts > self.config.retries
                    or self.no_new.is_set()):
                break
        if result is not None:
            result.duration = time.time() - first_start
            result.start = first_start
        return result, attempts

    def _tag(self, job: _Job) -> bytes:
        return os.fsencode(" ".join(job.args)) + b"\t" if self.config.tag else b""

    def _chunks(self, job: _Job, result: Completed) -> list[tuple[int, bytes]]:
        if self.config.line_buffer:
            return []  # already written line by line
        tag = self._tag(job)
        return [(1, tag_lines(tag, result.stdout)), (2, tag_lines(tag, result.stderr))]

    def _account(self, ok: bool) -> None:
        halt = self.config.halt
        with self._lock:
            if ok:
                self.succeeded += 1
            else:
                self.failed += 1
            if self.progress is not None:
                self.progress.update(1)
            if halt.when == "never":
                return
            count = {"fail": self.failed, "success": self.succeeded,
                     "done": self.failed + self.succeeded}[halt.what]
            if count < halt.threshold(self.total):
                return
        if halt.when == "now":
            self._halt_now()
        else:
            self.no_new.set()
            self.slots.wake()

    def _record(self, job: _Job, result: Completed, attempts: int) -> None:
        assert self.joblog is not None
        signum = -result.returncode if result.returncode < 0 else 0
        self.joblog.record(JobRow(
            seq=job.seq, input=input_text(job.args), command=job.command, start=result.start,
            duration=result.duration, exit_code=-1 if signum else result.returncode,
            signal=signum, attempts=attempts, timed_out=result.timed_out))


def _uninterrupted(wait: Callable[[], None]) -> None:
    """Run a wait to its end even through further Ctrl-C presses (jobs are being
    killed already, with SIGKILL at most ``process.GRACE`` seconds later)."""
    while True:
        try:
            wait()
            return
        except KeyboardInterrupt:
            continue


def _job_list(config: RunConfig, joblog: JobLog | None) -> tuple[Iterator[tuple[int, tuple[str, ...]]], int, int | None]:
    """(jobs as (seq, args), number of input groups, number of jobs if known)."""
    materialize = config.shuf or config.halt.percent is not None
    inputs = open_inputs(config.groups, null=config.null, materialize=materialize)
    jobs: Iterable[tuple[int, tuple[str, ...]]] = enumerate(inputs.jobs, 1)
    if joblog is not None:
        jobs = ((seq, args) for seq, args in jobs if not joblog.is_done(seq, args))
    if inputs.total is None:
        return iter(jobs), inputs.groups, None
    listed = list(jobs)
    if config.shuf:
        random.shuffle(listed)
    return iter(listed), inputs.groups, len(listed)


def run(config: RunConfig) -> int:
    """Run (or with --dry-run, print) every job; return the exit status."""
    joblog: JobLog | None = None
    if config.joblog and not (config.dry_run and config.resume == "new"):
        joblog = JobLog(config.joblog, config.resume)
    try:
        jobs, groups, total = _job_list(config, joblog)
        template = compile_template(config.command, groups=groups, quote=config.quote)
        if config.dry_run:
            out = sys.stdout.buffer
            for order, (seq, args) in enumerate(jobs):
                slot = order % config.jobs + 1
                out.write(os.fsencode(template.render(args, seq, slot)) + b"\n")
            out.flush()
            return 0
        runner = _Runner(config, template, total, joblog)
        try:
            runner.dispatch(jobs)
        except KeyboardInterrupt:
            print("conveyor run: interrupted; running jobs were killed", file=sys.stderr)
            return EXIT_ERROR
        finally:
            runner.stop.close()
        if runner.errors:
            e = runner.errors[0]
            print(f"conveyor run: error: {type(e).__name__}: {e}", file=sys.stderr)
            return EXIT_ERROR
        if runner.output.broken:
            return EXIT_ERROR
        return min(runner.failed, EXIT_FAILED_CAP)
    finally:
        if joblog is not None:
            joblog.close()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    """``conveyor run ARGS``: parse, run, and turn every error into exit status 255."""
    try:
        config = parse_run_args(argv)
    except UsageError as e:
        print(f"conveyor run: error: {e}\n(see conveyor run --help)", file=sys.stderr)
        return EXIT_ERROR
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, _raise_interrupt)
    try:
        return run(config)
    except (InputError, TemplateError, JobLogError, UsageError) as e:
        print(f"conveyor run: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # before any job started
        print("conveyor run: interrupted", file=sys.stderr)
        return EXIT_ERROR
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
