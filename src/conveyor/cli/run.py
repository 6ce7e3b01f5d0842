"""``conveyor run``: run one shell command per input on conveyor's thread pool.

Data flow::

    main thread            dispatcher thread       executor threads: -j worker loops
    -----------            -----------------       (conveyor.Pool, thread backend)
    parse, read inputs,
    skip resumed, shuffle
    start dispatcher ----> submit one loop per  --> loop n (= job slot n), until no job:
                           slot, wait for them        source.take(): next job, its order
    wait (poll on a                                   number, --delay; none after a halt
    pipe + signal wakeup)                             (stdin: via an input thread+queue)
      Ctrl-C/TERM/HUP:                                render the command ({%} = n)
      stop.set() --------------------------------->   attempts: process.run_command
                                                      counters, --halt: stop / no_new
    <---- done: exit status                           joblog.record (commit per job)
                                                      output.finish (grouped / ordered)

Why worker loops on the executor: a loop's thread blocks only in ``poll()`` on its
job's pipes and pidfd, so -j threads cost little, and the loop that finishes a job takes
the next one itself -- no hand-off through a dispatcher per job, which measured ~80 us
of CPU a job more (one executor task per job, ~0.35 ms parent CPU a job, against ~0.27
now; the child ``sh`` itself costs ~0.6 ms). Spawning dominates what is left, so an
event loop would not be faster. Measured against ``xargs -P`` on 2 cores with 1,000
``true`` jobs (``benchmarks/bench_cli.py``), the whole run including the interpreter's
start-up takes 0.9-1.2x xargs' time (the spread is the machine's load), and 4-6x less
than GNU parallel's. A COMMAND of plain words whose program is not a shell builtin is
exec'ed directly (``Template.direct_argv``: the argv the shell would have built), which
saves the shell's own exec; builtins (``true`` too) stay in the shell, where they need
no exec at all (spawned one after another, ``sh -c true`` measured ~0.74 ms a job,
coreutils' ``true`` ~0.91 ms: it loads libc and the locale). A job's values travel as
arguments of that shell, never inside its script (``templates``), and its argument
vector is checked against the system's limits before it is spawned (``limits``): before
any job starts when the inputs are known. The script also exports ``$PARALLEL_SEQ`` and
``$PARALLEL_JOBSLOT`` from its arguments (a new environment per job measured ~40 us of
the runner's CPU a job); a program exec'ed directly gets them in its environment.

Guarantees, and where they are kept:

* At most ``-j`` jobs run at once: there are at most -j worker loops, each running one
  job at a time (``_dispatch``).
* Each job is taken once, orders have no gaps, --delay spaces starts (``_JobSource``).
* ``--halt now`` and Ctrl-C set the StopSignal, which every running job polls on, so
  each stops its own process group (by ``--termseq``); no new job starts once
  ``no_new`` is set (checked by ``_JobSource.take`` and again by the job before every
  attempt).
* Signals are handled in the main thread, which holds none of our locks (it only waits
  for the dispatcher), so an interrupt can never leave a lock held.
* Counters and the halt decision change only under ``self._lock``.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import functools
import math
import os
import queue
import random
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.cli import guardian
from conveyor.cli.errors import CliError
from conveyor.cli.inputs import Inputs, batched, column_splitter, csv_splitter, open_inputs
from conveyor.cli.limits import too_long
from conveyor.cli.multi import MultiTemplate, batches, flatten, per_job_limit
from conveyor.cli.options import RunConfig, UsageError, parse_run_args
from conveyor.cli.output import Chunk, LineSink, Output, tag_pieces
from conveyor.cli.pipe import pipe_inputs, stdin_of
from conveyor.cli.process import Captured, Completed, StopSignal, run_command
from conveyor.cli.resources import ResourceMonitor
from conveyor.cli.results import Results
from conveyor.cli.templates import (
    TagString,
    Template,
    UnsafeValue,
    compile_template,
    name_columns,
)

if TYPE_CHECKING:
    from conveyor.cli.cluster import ClusterRunner
    from conveyor.cli.joblog import JobLog

__all__ = ["main", "run"]

AnyTemplate = Template | MultiTemplate

EXIT_FAILED_CAP = 101
EXIT_ERROR = 255


def _make_executor(workers: int) -> Executor:
    """The pool that runs the jobs: conveyor's own, on its thread backend, used only
    through the plain ``concurrent.futures.Executor`` interface (submit, shutdown)."""
    from conveyor import Pool  # already imported with the package; no extra start-up

    return Pool(workers=workers, backend="thread")


class _JobSource:
    """Hands out the jobs to the worker loops, one at a time, in order (any thread).

    Guarantees, kept under ``self._lock``: each job is taken exactly once; ``order``
    numbers the taken jobs 0, 1, 2, ... with no gap (what --keep-order relies on); with
    --delay, consecutive starts are at least ``delay`` apart (a taker waits holding the
    lock); nothing is taken once ``no_new`` is set.
    """

    def __init__(
        self, jobs: Iterable[tuple[int, tuple[str, ...]]], delay: float, no_new: threading.Event
    ) -> None:
        self._jobs = iter(jobs)
        self._delay = delay
        self._no_new = no_new
        self._lock = threading.Lock()
        self._order = 0
        self._last_start: float | None = None

    def take(self) -> tuple[int, int, tuple[str, ...]] | None:
        """The next job as (order, seq, args), or None when there is none to start."""
        with self._lock:
            if self._no_new.is_set():
                return None
            item = next(self._jobs, None)
            if item is None or self._no_new.is_set():
                return None
            if self._delay and self._last_start is not None:
                pause = self._last_start + self._delay - time.monotonic()
                if pause > 0 and self._no_new.wait(pause):
                    return None
            self._last_start = time.monotonic()
            order = self._order
            self._order += 1
            return (order, *item)


class _ReadAhead:
    """Pull a blocking iterator (lazy stdin) on a daemon thread, so that the worker
    loops wait on a queue they can be woken from (``--halt now`` while stdin is still
    open) instead of in a read.

    Guarantee: at most ``size`` items are read ahead. The thread reads with ``os.read``
    (no interpreter-level lock held while blocked), so abandoning it at exit is safe.
    """

    _END = object()

    def __init__(self, items: Iterable[Any], size: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(size)
        self._error: BaseException | None = None
        threading.Thread(
            target=self._pump, args=(items,), name="conveyor-run-input", daemon=True
        ).start()

    def _pump(self, items: Iterable[Any]) -> None:
        try:
            for item in items:
                self._queue.put(item)
        except BaseException as e:  # re-raised by __iter__ in the consuming thread
            self._error = e
        finally:
            self._queue.put(self._END)

    def interrupt(self) -> None:
        """End the iteration early (any thread). If the queue is full, the consumer is
        not blocked and checks its own stop flag before using the next item."""
        try:
            self._queue.put_nowait(self._END)
        except queue.Full:
            pass

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is self._END:
                if self._error is not None:
                    raise self._error
                return
            yield item


class _SignalWakeup:
    """Wait for a file descriptor in the main thread, woken by any signal.

    ``signal.set_wakeup_fd`` makes the interpreter's C-level handler write to a pipe
    whichever thread the kernel delivered the signal to; select() on that pipe returns,
    and the Python-level handler then runs in the main thread.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous: int | None = None
        try:
            self._previous = signal.set_wakeup_fd(self._write)
        except ValueError:  # not the main thread: signals are not ours to handle
            pass

    def wait_readable(self, fd: int) -> None:
        """Block until ``fd`` is readable; signal handlers run (and may raise) meanwhile."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._read, select.POLLIN)
        while True:
            ready = {ready_fd for ready_fd, _ in poller.poll()}
            if self._read in ready:
                os.read(self._read, 4096)  # the signal's handler runs right after this
            if fd in ready:
                return

    def close(self) -> None:
        """Restore the previous wakeup fd and close the pipe."""
        if self._previous is not None:
            signal.set_wakeup_fd(self._previous)
        os.close(self._read)
        os.close(self._write)


@dataclass
class _Job:
    seq: int
    args: tuple[str, ...]
    order: int
    slot: int
    argv: list[str]
    executable: str | None = None  # set: argv is the program's own, no shell


class JobCannotRun(CliError):
    """A job whose command line cannot be built or executed (named in the message)."""


def _job_argv(
    template: AnyTemplate, seq: int, args: tuple[str, ...], slot: int
) -> tuple[list[str], str | None]:
    """What job ``seq`` executes: (argv, None) for the shell, or (the program's argv,
    its path) when the shell is not needed (``Template.direct_argv``);
    :class:`JobCannotRun` if its value cannot be substituted or its command line is
    over the system's limit."""
    try:
        direct = template.direct_argv(args, seq, slot)
        if direct is not None:
            argv, executable = direct, template.executable
        else:
            argv, executable = template.argv(args, seq, slot), None
    except UnsafeValue as e:
        reason = str(e)
    else:
        problem = too_long(argv)
        if problem is None:
            return argv, executable
        reason = f"command line too long: {problem}"
    shown = " ".join(args)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise JobCannotRun(f"job {seq} (input {shown!r}): {reason}")


class _Runner:
    """One ``conveyor run``: the state shared by the main and the executor threads."""

    def __init__(
        self,
        config: RunConfig,
        template: AnyTemplate,
        total: int | None,
        joblog: JobLog | None,
        cluster: ClusterRunner | None = None,
    ) -> None:
        self.config = config
        # Where one attempt runs: here, or on a Dask worker (--cluster).
        self.execute: Callable[..., Completed] = run_command if cluster is None else cluster.run
        self.template = template
        self.total = total
        self.joblog = joblog
        self.stop = StopSignal()  # kill running jobs, start no more
        self.no_new = threading.Event()  # start no more jobs (set along with stop too)
        self.read_ahead: _ReadAhead | None = None
        self.tagstring: TagString | None = None  # --tagstring, with --header's names
        self._lock = threading.Lock()
        self.succeeded = self.failed = 0
        self.halted_by: int | None = None  # the status of the job that made --halt stop
        # Set in every job: GNU parallel's $PARALLEL_PID (+ $PARALLEL_SEQ and
        # $PARALLEL_JOBSLOT per job, see _attempts).
        self.monitor: ResourceMonitor | None = None
        if config.resources.memfree is not None or config.resources.load is not None:
            self.monitor = ResourceMonitor(config.resources, self.no_new)
        self._run_times: list[float] = []  # of the jobs that succeeded, sorted (--timeout N%)
        self.running = 0  # jobs running now (for the --halt soon notice)
        self.results: Results | None = None
        self.errors: list[BaseException] = []
        self.progress: Any = None
        around: Callable[[], AbstractContextManager[object]] | None = None
        if config.progress:
            from tqdm import tqdm  # lazy: only --progress pays for it

            self.progress = tqdm(total=total, unit="job", file=sys.stderr, dynamic_ncols=True)

            def around() -> AbstractContextManager[object]:
                return tqdm.external_write_mode(file=sys.stderr)

        self.output = Output(
            sys.stdout.buffer,
            sys.stderr.buffer,
            keep_order=config.keep_order,
            around_write=around,
            on_broken=self._halt_now,
        )

    def _halt_now(self) -> None:
        self.stop.set()
        self._halt_soon()

    def _halt_soon(self) -> None:
        self.no_new.set()
        if self.read_ahead is not None:
            self.read_ahead.interrupt()

    def run(self, jobs: Iterable[tuple[int, tuple[str, ...]]]) -> None:
        """Run every job (call from the main thread); returns when all have ended.

        Raises KeyboardInterrupt after Ctrl-C (or SIGTERM/SIGHUP, see ``main``), once
        every running job has been killed.
        """
        # The main thread only waits for the dispatcher thread, in poll() on a pipe. A
        # signal handler that raises (KeyboardInterrupt) can then only interrupt that
        # wait, never code holding a lock (an exception raised inside a ``with lock:``
        # can leave the lock held and deadlock the shutdown). The kernel may deliver the
        # signal to any thread, which would not wake a blocked main thread: the wakeup
        # fd (written by the interpreter's C-level handler) makes the poll() return so
        # that the Python-level handler runs. Not Thread.join(): on Python 3.11 an
        # interrupted join() marks the thread as ended.
        guardian.start()  # before any job exists: see the race noted in guardian.py
        # $PARALLEL_PID for every job, as GNU parallel (restored at the end, for
        # callers of main() in-process); $PARALLEL_SEQ/$PARALLEL_JOBSLOT: see _attempts.
        pid_before = os.environ.get("PARALLEL_PID")
        os.environ["PARALLEL_PID"] = str(os.getpid())
        done_read, done_write = os.pipe()
        wakeup = _SignalWakeup()

        def dispatch() -> None:
            try:
                self._dispatch(jobs)
            finally:
                os.write(done_write, b"x")

        threading.Thread(target=dispatch, name="conveyor-run-dispatch").start()
        try:
            wakeup.wait_readable(done_read)
        except KeyboardInterrupt:
            # Guarantee: Ctrl-C kills every running job's group. stop wakes every job's
            # poll(); each job kills its own group (TERM, then KILL after GRACE).
            _ignore_interrupts()  # one Ctrl-C is enough; more must not cut this short
            self._halt_now()
            _uninterrupted(lambda: wakeup.wait_readable(done_read))
            raise
        finally:
            if pid_before is None:
                os.environ.pop("PARALLEL_PID", None)
            else:
                os.environ["PARALLEL_PID"] = pid_before
            wakeup.close()
            os.close(done_read)
            os.close(done_write)
            if self.progress is not None:
                self.progress.close()

    def _dispatch(self, jobs: Iterable[tuple[int, tuple[str, ...]]]) -> None:
        """Run one worker loop per job slot on the executor; return when all ended."""
        try:
            if self.total is None:  # input still arriving (stdin): read it on the side
                # --pipe: one block waiting is enough (each is ~1 MiB; see pipe.py)
                ahead = 1 if self.config.pipe is not None else self.config.jobs
                self.read_ahead = _ReadAhead(jobs, ahead)
                jobs = self.read_ahead
            source = _JobSource(jobs, self.config.delay, self.no_new)
            loops = self.config.jobs if self.total is None else min(self.config.jobs, self.total)
            executor = _make_executor(max(1, loops))
        except BaseException as e:
            self._fail(e)
            return
        try:
            # Guarantee: at most -j jobs at once -- there are -j loops (fewer if there
            # are fewer jobs), each running one job at a time; loop n is job slot n.
            futures = [executor.submit(self._worker, source, slot) for slot in range(1, loops + 1)]
            for future in futures:
                exc = future.exception()  # waits; _worker never raises but for bugs
                if exc is not None:
                    self._fail(exc)
        except BaseException as e:  # e.g. a failing submit: stop everything
            self._fail(e)
        finally:
            executor.shutdown(wait=True)

    def _worker(self, source: _JobSource, slot: int) -> None:
        """One job slot: take the next job, run it, repeat (an executor thread)."""
        try:
            while (self.monitor is None or self.monitor.wait_until_ok()) and (
                item := source.take()
            ) is not None:
                order, seq, args = item
                try:
                    argv, executable = _job_argv(self.template, seq, args, slot)
                except JobCannotRun as e:
                    self._cannot_run(_Job(seq, args, order, slot, []), e)
                    continue
                self._run_job(_Job(seq, args, order, slot, argv, executable))
        except BaseException as e:  # e.g. reading stdin failed
            self._fail(e)

    def _cannot_run(self, job: _Job, error: JobCannotRun) -> None:
        """A job that could not be started fails with status 255 and a message; the
        others go on (inputs known in advance are checked before any job starts)."""
        try:
            if self.results is not None:
                self.results.skip(job.order)
            self.output.finish(job.order, [(2, f"conveyor run: error: {error}\n".encode())])
            self._account(False, EXIT_ERROR)
            if self.joblog is not None:
                now = time.time()
                result = Completed(255, False, False, Captured(), Captured(), now, 0.0)
                self._record(job, result, 0)
        except BaseException as e:
            self._fail(e)

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            self.errors.append(error)
        self._halt_now()

    def _run_job(self, job: _Job) -> None:
        finished = saved = False
        with self._lock:
            self.running += 1
        try:
            result, attempts = self._attempts(job)
            if result is not None and not result.stopped:
                notice = self._account(result.returncode == 0, _job_status(result), job)
                if self.joblog is not None:
                    self._record(job, result, attempts)
                if self.results is not None:  # saved instead of printed, as GNU's
                    shown = self.template.display(job.args, job.seq, job.slot)
                    status = _job_status(result)
                    row = self.results.save(job.seq, job.args, shown, result, status, job.order)
                    saved = True
                    chunks: list[Chunk] = [(1, row)] if row else []
                else:
                    chunks = self._chunks(job, result)
                if result.timed_out:
                    shown = self.template.display(job.args, job.seq, job.slot)
                    notice = (
                        "conveyor run: Warning: This job was killed because it timed out:\n"
                        f"conveyor run: Warning: {shown}\n{notice or ''}"
                    )
                if notice:
                    chunks.append((2, os.fsencode(notice)))
                self.output.finish(job.order, chunks)
                finished = True
        except OSError as e:
            if e.errno != errno.E2BIG:
                self._fail(e)
            else:  # over a limit the check before the spawn did not foresee
                finished = True
                problem = f"command line too long: {e.strerror} (E2BIG)"
                self._cannot_run(job, JobCannotRun(f"job {job.seq}: {problem}"))
        except BaseException as e:
            self._fail(e)
        finally:
            # Guarantee: finish() exactly once per taken order number, or --keep-order
            # would wait forever.
            if not finished:
                self.output.finish(job.order, [])
            if self.results is not None and not saved:
                self.results.skip(job.order)
            with self._lock:
                self.running -= 1

    def _attempts(self, job: _Job) -> tuple[Completed | None, int]:
        result: Completed | None = None
        attempts = 0
        first_start, t0 = time.time(), time.monotonic()
        # The shell's script exports $PARALLEL_SEQ and $PARALLEL_JOBSLOT from its
        # arguments; a program exec'ed directly gets them in its environment.
        env: dict[str, str] | None = None
        if job.executable is not None or not self.template.exports_seq:
            env = dict(os.environ, PARALLEL_SEQ=str(job.seq), PARALLEL_JOBSLOT=str(job.slot))
        timeout: float | Callable[[], float | None] | None = self.config.timeout
        if self.config.timeout_percent is not None:
            timeout = self._relative_timeout
        while not self.stop.is_set():  # no (re)start once a stop was requested
            attempts += 1
            sink = (
                LineSink(self.output, job.order, self._tag(job))
                if self.config.line_buffer
                else None
            )
            raw = functools.partial(self.output.emit, job.order) if self.config.ungroup else None
            kill = self.monitor.job_started(job.seq) if self.monitor is not None else None
            try:
                result = self.execute(
                    job.argv,
                    timeout=timeout,
                    stop=self.stop,
                    sink=sink or raw,
                    env=env,
                    executable=job.executable,
                    termseq=self.config.resources.termseq,
                    kill=kill,
                    stdin=stdin_of(job.args),  # --pipe: the job's block
                )
            finally:
                if self.monitor is not None:
                    self.monitor.job_ended(job.seq)
            if kill is not None:
                kill.close()
                if kill.is_set() and not self.stop.is_set():
                    # --memfree killed it to free memory: run it again when there is
                    # enough (not a retry: it did not fail)
                    attempts -= 1
                    if not self.monitor or not self.monitor.wait_until_ok():
                        break
                    continue
            if attempts == 1:
                first_start = result.start
            if sink is not None:
                for stream, data in sink.rest():
                    self.output.emit(job.order, stream, data)
            if (
                result.stopped
                or result.returncode == 0
                or attempts > self.config.retries
                or self.no_new.is_set()
            ):
                break
        if result is not None:  # the job's row spans all its attempts
            if result.returncode == 0 and not result.stopped:
                with self._lock:
                    bisect.insort(self._run_times, result.duration)
            result.duration = time.monotonic() - t0
            result.start = first_start
        return result, attempts

    def _relative_timeout(self) -> float | None:
        """--timeout N%: N% of the median run time of the jobs that succeeded so far
        (no limit before the first succeeded)."""
        times = self._run_times
        if not times:
            return None
        n = len(times)
        median = times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) / 2
        assert self.config.timeout_percent is not None
        return median * self.config.timeout_percent / 100

    def _tag(self, job: _Job) -> bytes:
        if not self.config.tag:
            return b""
        if self.tagstring is not None:
            return os.fsencode(self.tagstring.render(job.args, job.seq, job.slot)) + b"\t"
        return os.fsencode(" ".join(job.args)) + b"\t"

    def _chunks(self, job: _Job, result: Completed) -> list[Chunk]:
        if self.config.line_buffer or self.config.ungroup:
            return []  # already written as it came
        tag = self._tag(job)
        chunks: list[Chunk] = []
        for stream, captured in ((1, result.stdout), (2, result.stderr)):
            if captured.size:
                pieces = captured.pieces()
                chunks.append((stream, tag_pieces(tag, pieces) if tag else pieces))
        return chunks

    def exit_status(self) -> int:
        """GNU parallel's EXIT STATUS rules: the number of failed jobs (at most 101);
        with --halt ...success=: 0 once it triggered; with --halt ...fail=1: the status
        of the job that triggered it; with a percentage: the percentage of all jobs
        that failed, rounded up."""
        halt = self.config.halt
        if self.halted_by is not None:
            if halt.what == "success":
                return 0
            if halt.what == "fail" and halt.percent is None and halt.count == 1:
                return self.halted_by
        if halt.percent is not None and self.total:
            return min(100, math.ceil(100 * self.failed / self.total))
        return min(self.failed, EXIT_FAILED_CAP)

    def _account(self, ok: bool, status: int, job: _Job | None = None) -> str | None:
        """Count a finished job and decide --halt; returns the notice to print on
        stderr when this job made --halt stop (GNU parallel's wording)."""
        halt = self.config.halt
        with self._lock:  # counters and the halt decision: one thread at a time
            if ok:
                self.succeeded += 1
            else:
                self.failed += 1
            if self.progress is not None:
                self.progress.update(1)
            if halt.when == "never":
                return None
            count = {
                "fail": self.failed,
                "success": self.succeeded,
                "done": self.failed + self.succeeded,
            }[halt.what]
            if count < halt.threshold(self.total) or self.halted_by is not None:
                return None
            self.halted_by = status
        if halt.when == "now":
            self._halt_now()
        else:
            self._halt_soon()
        notice = ""
        if job is not None:
            shown = self.template.display(job.args, job.seq, job.slot)
            notice = f"conveyor run: This job {'succeeded' if ok else 'failed'}:\n{shown}\n"
        if halt.when == "soon":
            others = max(0, self.running - 1)
            notice += f"conveyor run: Starting no more jobs. Waiting for {others} jobs to finish.\n"
        return notice

    def _record(self, job: _Job, result: Completed, attempts: int) -> None:
        from conveyor.cli.joblog import JobRow, input_text

        assert self.joblog is not None
        signum = -result.returncode if result.returncode < 0 else 0
        self.joblog.record(
            JobRow(
                seq=job.seq,
                input=input_text(job.args),
                command=self.template.display(job.args, job.seq, job.slot),
                start=result.start,
                duration=result.duration,
                exit_code=-1 if signum else result.returncode,
                signal=signum,
                attempts=attempts,
                timed_out=result.timed_out,
                received=result.received,
                host=result.host,
            )
        )


def _job_status(result: Completed) -> int:
    """A job's status as GNU parallel reports it: its exit code, 128 + the signal that
    killed it, 255 after a timeout."""
    if result.timed_out:
        return EXIT_ERROR
    if result.returncode < 0:
        return 128 - result.returncode
    return result.returncode


def _uninterrupted(wait: Callable[[], object]) -> None:
    """Run a wait to its end even through further Ctrl-C presses (jobs are being
    killed already, with SIGKILL at most ``process.GRACE`` seconds later)."""
    while True:
        try:
            wait()
            return
        except KeyboardInterrupt:
            continue


def _job_list(
    config: RunConfig, inputs: Inputs, joblog: JobLog | None
) -> tuple[Iterator[tuple[int, tuple[str, ...]]], int | None]:
    """The jobs as (seq, args) -- less those the joblog says to skip -- and their
    number if known in advance."""
    jobs: Iterable[tuple[int, tuple[str, ...]]] = enumerate(inputs.jobs, 1)
    if joblog is not None:
        jobs = ((seq, args) for seq, args in jobs if not joblog.is_done(seq, args))
    if inputs.total is None:
        return iter(jobs), None
    listed = list(jobs)
    if config.shuf:
        random.shuffle(listed)
    return iter(listed), len(listed)


def _checked(
    template: AnyTemplate, jobs: Iterator[tuple[int, tuple[str, ...]]], slots: int
) -> Iterator[tuple[int, tuple[str, ...]]]:
    """Inputs known in advance: every job's command line is built once (with the
    widest slot number) before any job starts, so a job that could not run stops the
    whole run at once (:class:`JobCannotRun`) rather than after others ran."""
    listed = list(jobs)
    for seq, args in listed:
        _job_argv(template, seq, args, slots)
    return iter(listed)


def run(config: RunConfig) -> int:
    """Run (or with --dry-run, print) every job; return the exit status."""
    splitter = (
        csv_splitter()
        if config.csv
        else column_splitter(config.colsep)
        if config.colsep is not None
        else None
    )
    per_job = splitter is not None or config.max_args is not None
    groups = None if per_job else len(config.groups) or 1
    template: AnyTemplate
    if config.multi is not None:
        template = MultiTemplate(
            config.command, mode=config.multi, quote=config.quote, shell=config.shell
        )
    elif not config.header:  # else once the header is read
        template = compile_template(
            config.command, groups=groups, quote=config.quote, shell=config.shell
        )
    # Input files are read before the joblog is opened (and, for a new run, emptied),
    # so that an unreadable input cannot destroy an old log.
    materialize = (
        config.shuf
        or config.eta
        or config.halt.percent is not None
        or config.multi is not None  # -X/-m spread all inputs evenly over the slots
    )
    if not config.groups and sys.stdin is not None and sys.stdin.isatty():
        print("conveyor run: reading inputs from the terminal (end with Ctrl-D)", file=sys.stderr)
    if config.pipe is not None:  # blocks of stdin or of -a FILE, not arguments
        assert isinstance(template, Template)  # -X/-m is refused with --pipe
        inputs = pipe_inputs(
            config.pipe, template.fields, [g.path for g in config.groups], config.jobs
        )
    else:
        inputs = open_inputs(
            config.groups,
            null=config.null,
            materialize=materialize,
            link=config.link,
            csv=config.csv,
            header=config.header,
        )
    names: Sequence[str] = ()
    if config.header:
        names = splitter(inputs.header) if splitter is not None else inputs.header
        command = name_columns(config.command, names)
        template = compile_template(command, groups=groups, quote=config.quote, shell=config.shell)
    if splitter is not None:
        inputs.jobs = map(splitter, inputs.jobs)
    if isinstance(template, MultiTemplate):  # -X / -m: as many inputs a job as fit
        values = flatten(inputs.jobs)
        if inputs.total is not None:
            listed = list(values)
            limit = per_job_limit(len(listed), config.jobs)
            formed = list(batches(iter(listed), template, limit))
            inputs.jobs, inputs.total = iter(formed), len(formed)
        else:
            inputs.jobs = batches(values, template)
    if config.max_args is not None:
        inputs.jobs = batched(inputs.jobs, config.max_args)
        if inputs.total is not None and config.max_args:
            inputs.total = -(-inputs.total // config.max_args)
    cluster: ClusterRunner | None = None
    if config.cluster is not None and not config.dry_run:
        from conveyor.cli.cluster import ClusterRunner  # lazy: only --cluster imports dask

        cluster = ClusterRunner(config.cluster)
        try:
            if not config.jobs_given:
                config = dataclasses.replace(config, jobs=cluster.slots())
        except BaseException:
            cluster.close()
            raise
    try:
        return _run_jobs(config, inputs, template, names, cluster)
    finally:
        if cluster is not None:
            cluster.close()


def _run_jobs(
    config: RunConfig,
    inputs: Inputs,
    template: AnyTemplate,
    names: Sequence[str],
    cluster: ClusterRunner | None,
) -> int:
    """Open the job log, then run (or print) the jobs; the exit status."""
    joblog: JobLog | None = None
    if config.joblog and not (config.dry_run and config.resume == "new"):
        from conveyor.cli.joblog import JobLog  # lazy: only --joblog pays for it

        joblog = JobLog(config.joblog, config.resume)
    try:
        jobs, total = _job_list(config, inputs, joblog)
        if total is not None and not config.dry_run:
            jobs = _checked(template, jobs, config.jobs)
        if config.dry_run:
            if template.unknown:
                braces = " ".join(dict.fromkeys(template.unknown))
                print(
                    f"conveyor run: note: {braces} in COMMAND is no replacement string and "
                    "stays as text (as in GNU parallel); known: {} {.} {/} {//} {/.} {#} {%} "
                    "{n}",
                    file=sys.stderr,
                )
            out = sys.stdout.buffer
            for order, (seq, args) in enumerate(jobs):
                slot = order % config.jobs + 1
                out.write(os.fsencode(template.display(args, seq, slot)) + b"\n")
            out.flush()
            return 0
        runner = _Runner(config, template, total, joblog, cluster)
        if config.resources.results is not None:
            runner.results = Results(config.resources.results, names, config.keep_order)
        if config.tagstring is not None:
            runner.tagstring = TagString(name_columns([config.tagstring], names)[0])
        try:
            runner.run(jobs)
        except KeyboardInterrupt:
            print("conveyor run: interrupted; running jobs were killed", file=sys.stderr)
            return EXIT_ERROR
        finally:
            runner.stop.close()
            if runner.monitor is not None:
                runner.monitor.close()
            if runner.results is not None:
                runner.results.close()
        if runner.errors:
            e = runner.errors[0]
            print(f"conveyor run: error: {type(e).__name__}: {e}", file=sys.stderr)
            return EXIT_ERROR
        if runner.output.broken:
            _silence_stdout()
            return EXIT_ERROR
        return runner.exit_status()
    finally:
        if joblog is not None:
            joblog.close()


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so that flushing at exit cannot fail on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


_INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _ignore_interrupts() -> None:
    """Ignore further interrupts while running jobs are being killed (main thread;
    ``main`` restores the handlers)."""
    if threading.current_thread() is threading.main_thread():
        for signum in _INTERRUPTS:
            signal.signal(signum, signal.SIG_IGN)


def main(argv: list[str]) -> int:
    """``conveyor run ARGS``: parse, run, and turn every error into exit status 255."""
    try:
        config = parse_run_args(argv)
    except UsageError as e:
        print(f"conveyor run: error: {e}\n(see conveyor run --help)", file=sys.stderr)
        return EXIT_ERROR
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in _INTERRUPTS:
            previous[signum] = signal.getsignal(signum)
        for signum in (signal.SIGTERM, signal.SIGHUP):  # SIGINT already raises
            if previous[signum] is not signal.SIG_IGN:  # e.g. nohup: stay ignored
                signal.signal(signum, _raise_interrupt)
    try:
        return run(config)
    except CliError as e:
        print(f"conveyor run: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # before any job started
        print("conveyor run: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # --dry-run into a closed pipe
        _silence_stdout()
        return EXIT_ERROR
    except Exception as e:  # a bug: one line, no traceback (CONVEYOR_DEBUG=1 shows it)
        if os.environ.get("CONVEYOR_DEBUG"):
            raise
        print(f"conveyor run: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: set outside Python, leave it
                signal.signal(signum, handler)
