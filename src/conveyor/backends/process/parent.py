"""The process backend: conveyor's own worker pool, one pipe per worker, one dispatcher thread.

Data flow::

    caller threads              dispatcher thread (one per pool)               worker processes (N)
    --------------              --------------------------------               --------------------
    submit(units): pickle  -->  pending deque + held heap (retries)
    fn (once); items of a       for each idle worker, then ahead for each   -- pipe -> run the
    submit (a map's chunks:     busy one: take a batch, pickle what is not      batch
    by the dispatcher), wake    yet pickled (a map's chunks)                    (worker.py)
    the dispatcher              waits on: every worker's pipe and sentinel,
                                the wakeup pipe, the nearest deadline     <-- DONE / ITEM
    sinks (map jobs, futures)   delivers outcomes to each unit's sink
    <-- outcomes  -------------  on a death: reads the worker's mark    <-- mark (shared memory:
                                (which unit / item it was on),               the unit / item
                                attributes it, re-queues, replaces           running now)
                                past a hard deadline: kills the worker's process group
    caller's logging  <-------  re-emits workers' log records            <-- LOG (worker_logging)

The package, one job per module: this one is the dispatcher (the front any thread calls, the
loop, sending, receiving, deaths and deadlines); :mod:`.workers` the worker's record, its states
and transitions, and starting its process; :mod:`.batching` what one batch is;
:mod:`.settlement` what a death costs; :mod:`.packing` pickling for the wire; :mod:`.protocol`
the messages; :mod:`.worker` the worker process itself; :mod:`.zygote` where workers fork from
(the pool whose start bears it has its first workers forked at its birth: :func:`_begin`).

Who may touch what (the lock rule, stated in full in :mod:`.workers`): the dispatcher thread
owns the workers. Every change of a worker's state or holdings (its batch, the one sent ahead)
and of the set of workers is made by the dispatcher under ``_lock``, one critical section per
transition; other threads only read them under ``_lock``, or *request*: ``interrupt()`` notes
the owner on the worker (under ``_lock``) and kills it, and the dispatcher settles the death;
``terminate()`` sets ``_stop_now`` and kills; ``submit``/``cancel`` change only the queue,
under ``_lock``. So a unit that a worker may be running is always visible to ``interrupt()``:
among that worker's holdings, or back in the queue, never in between.

Guarantees, and where they are kept:

* **A death costs one task.** The dispatcher knows exactly which units each worker holds (one
  batch in flight per worker, see :mod:`.protocol`), and the worker's *mark* says which unit it
  was loading or running, and for an *exact* unit which item. An item known to have been running
  gets :class:`~conveyor.WorkerCrashed` (its sink may retry it); everything else the worker held
  is re-queued at the front, not blamed (items that had finished run again: a chunk's results
  are sent when the chunk ends). A unit of several items that died at an unknown item is sent
  back once, exact, so the item that kills again is named and the others succeed; a random kill
  therefore costs an ordinary chunk nothing. Timed units are streamed and always exact. See
  :mod:`.settlement` (a pure function, tested case by case) and :meth:`ProcessBackend._on_death`.
* **Timeouts in two tiers.** In the worker a SIGALRM timer raises TaskTimeout inside the item
  and the worker lives on. Here, a hard deadline (timeout + grace, from when the item started as
  far as the parent can see) kills a worker that did not come back (C code, blocked signals);
  its item gets TaskTimeout and the worker is replaced. An item that finished just as the
  deadline passed is not blamed for the kill. See :meth:`ProcessBackend._enforce_deadlines`.
* **Nothing outlives the pool.** Workers lead their own process groups; every kill is a kill of
  the group, so children started by a task die too. Terminate kills, then reaps.
* **Never broken.** A new worker replaces every dead or retired one (exactly one: a retired
  worker is replaced when it is asked to go, not again when it exits). Work goes only to workers
  that said READY, so a slow initializer never counts against a task's deadline. Only an
  initializer that fails (or workers that die before READY five times in a row) stops the pool,
  with an error naming the cause, and even then every owed item gets that error.
* **A map's first chunks go out at once.** Its chunks are pickled here, by the dispatcher, as
  each is sent, not by the caller in ``submit``: a caller pickling eight chunks in a row holds
  the GIL for a millisecond or more, and the dispatcher, woken by the first, could send nothing
  until the caller blocked (measured: first chunk sent at 1.8 ms instead of 0.4 ms of a 10 ms
  map). The function is still pickled in ``submit``, so an unpicklable function raises there;
  an item that cannot be pickled fails its unit with :class:`~conveyor._errors.Unsendable`,
  which the map raises whatever ``on_error`` says. A ``submit`` is pickled by its caller: its
  error belongs in that call, and one small task costs little GIL time.
* **No worker idles while work is queued.** The dispatcher waits without a deadline only after
  a pass in which every batch it took was sent: a batch that came to nothing (its futures were
  cancelled, its items could not be pickled) leaves its worker idle, so it takes batches again
  at once (:meth:`ProcessBackend._assign_work`). A worker at its ``max_tasks_per_worker`` is
  replaced also while the pool shuts down, as long as work is left for it.
* **A shutdown finishes what was submitted**, and the maps that have started (see
  :mod:`..queue`, the job tickets): the dispatcher stops the workers only when nothing is
  queued, held or expected. ``shutdown(wait=True)`` on the dispatcher thread (a done-callback)
  would wait for itself: it raises RuntimeError instead, as ``ProcessPoolExecutor`` does.
* **A forked child disowns the pool.** The child has no dispatcher thread, and the workers are
  its parent's: it closes its copies of the pool's pipes (a copy of a worker's lifeline would
  keep that worker alive after the parent's death), forgets the workers without touching them,
  and refuses all use with PoolClosed; its exit does not wait for anything.
* **Wakeups are never lost.** A caller sets ``_wake_pending`` and writes to the wakeup pipe only
  when it was clear; the dispatcher drains the pipe, clears the flag under the lock and only then
  takes work, so work queued after the clear is seen now or wakes the next wait.
* **An event loop is woken once per pass, never held off while the dispatcher sleeps or
  starts a worker.** Assigning work, and reading the messages ``wait`` found, each run inside
  ``deferred_wakeups`` (conveyor._work): the awaited calls settled there are queued for their
  loop at once, and the loop is woken when the block ends, before anything that may block.
"""

from __future__ import annotations

import itertools
import math
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from ... import _pull, _shm
from ..._envmark import kill_marked
from ..._errors import PoolClosed
from ..._serialize import by_name, cloudpickle_module, dumps_callable, names_main
from ..._shm import Segment
from ..._tally import RESTART_CAUSES
from ..._work import Loader, Outcomes, Unit, deferred_wakeups, errors_of
from ..base import Backend, copied_bytes, fail_units
from ..queue import JobTicket, WorkQueue
from . import workers as records_module
from .batching import is_short, pick_batch
from .packing import Packer, release
from .protocol import (
    PREFETCH_BYTES,
    Done,
    InitFailed,
    Item,
    Log,
    Probed,
    Ready,
    Run,
    Stop,
    WirePayload,
    decode,
    decode_outcomes,
    encode,
)
from .spawning import fork_context, get_context, single_threaded, zygote_pid
from .workers import State, WorkerRecord, close_handles, kill_group, launch

TYPE_CHECKING = False  # typing is for type checkers only: a cold map must not pay its import
if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from typing import Any

    from ..._stats import PoolStats
    from .settlement import Lost, Settlement

__all__ = ["ProcessBackend"]

#: consecutive deaths of workers before READY after which the pool gives up
MAX_STARTUP_DEATHS = 5
#: how long a stopping worker gets to exit by itself before it is killed
STOP_GRACE = 5.0


def hard_deadline_grace(timeout: float) -> float:
    """Extra time the parent allows past ``timeout`` before it kills a worker."""
    return max(0.5, min(5.0, 0.2 * timeout))


class _Start:
    """What :func:`_begin` did for a pool: its context, its pickled initializer, its first
    function pickled by name for the zygote's copy of ``__main__`` (see FunctionCache.seed),
    and the plans of the first workers a zygote born for it forked."""

    def __init__(
        self,
        ctx: BaseContext,
        seed: bytes | None,
        init_blob: bytes | None,
        born_here: bool,
        plans: list[records_module.WorkerPlan],
    ) -> None:
        self.ctx = ctx
        self.seed = seed
        self.init_blob = init_blob
        # A zygote was born in this start (a process has one at most, and a birth needs a
        # single thread: the caller's), after the first function was pickled.
        self.born_here = born_here
        self.plans = plans  # each with its zygote.FirstWorker (plan.first)

    def abandon(self, start: int = 0) -> None:
        """The pool's start failed: close what its first workers from ``start`` on still have
        (one the zygote started sees its lifeline close, and exits)."""
        _abandon(self.plans[start:])


def _begin(
    workers: int,
    start_method: str | None,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    report_memory: bool,
    first_function: Callable[..., Any] | None,
) -> _Start:
    """What a pool does before it is registered (see ``ProcessBackend.__init__``): pickle its
    first function and initializer, then find its start method, which bears the zygote if none
    runs and this process has a single thread; that zygote forks the pool's first workers."""
    # first_function pickled by name now can go to the workers of a zygote born just after
    # without cloudpickle (see FunctionCache.seed). Otherwise cloudpickle is imported now,
    # before a zygote is born, so that its workers have it too.
    by_name_first = by_name(first_function) if first_function is not None else None
    if by_name_first is None:
        cloudpickle_module()
    had_zygote = zygote_pid() is not None
    # (before the workers' pipes are made: an initializer's pickling runs the user's code)
    init_blob = dumps_callable((initializer, initargs), "initializer") if initializer else None
    # The first workers of the pool whose start bears the zygote are forked by the zygote at
    # its birth (zygote.py, "First workers"), their pipes made here before it. A fork costs the
    # forking process ~0.3 ms and the copy-on-write faults after it more: this process forks
    # once however many workers there are, and the zygote forks them on another core meanwhile.
    # (Forking the first of them from here too was measured: no sooner a first result, the two
    # forks slowing this process's own start.)
    plans: list[records_module.WorkerPlan] = []
    try:
        if workers and not had_zygote and start_method in (None, "zygote") and single_threaded():
            pull_probe = _pull_probe()
            for _ in range(workers):
                plans.append(records_module.WorkerPlan(init_blob, report_memory, forked=True))
                plans[-1].make_first_worker(pull_probe)
        ctx = get_context(start_method, [plan.first for plan in plans])
    except BaseException:
        _abandon(plans)
        raise
    born_here = not had_zygote and ctx.get_start_method() == "zygote" and zygote_pid() is not None
    if not born_here:  # (a zygote that died is not made again: these plans are for none)
        _abandon(plans)
        plans = []
    seed = by_name_first if born_here and by_name_first and names_main(by_name_first) else None
    return _Start(ctx, seed, init_blob, born_here, plans)


def _abandon(plans: list[records_module.WorkerPlan]) -> None:
    for plan in plans:
        plan.abandon()


def _pull_probe() -> tuple[int, int, bytes] | None:
    """What a new worker needs to probe whether it may read our memory (see conveyor._pull)."""
    return _pull.probe_args() if _shm.AVAILABLE and _pull.AVAILABLE else None


class ProcessBackend(Backend):
    """Runs units on worker processes that this pool starts, watches and replaces.

    ``first_function``: the function the pool is started for (``conveyor.Pool`` starts its
    processes at the first call that needs them and passes that call's function), sent to
    its first workers without cloudpickle where it can be (see ``FunctionCache.seed``).

    Example::

        >>> from conveyor.backends.process.parent import ProcessBackend
        >>> backend = ProcessBackend(workers=2)
        >>> backend.shutdown()
    """

    name = "process"
    stops_timed_out_tasks = True
    coalesces = True

    def __init__(
        self,
        workers: int,
        start_method: str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        first_function: Callable[..., Any] | None = None,
    ):
        # Before the backend is registered (super().__init__): a zygote born in _begin is a
        # fork of this process, in which the at-fork hooks must not meet a half-made backend.
        start = _begin(
            workers,
            start_method,
            initializer,
            initargs,
            max_memory_per_worker is not None,
            first_function,
        )
        started = 0  # of the first workers the zygote was born with, those taken over
        try:
            self._ctx = start.ctx
            self._init_blob = start.init_blob
            self._init_name = getattr(initializer, "__qualname__", repr(initializer))
            self._max_tasks = max_tasks_per_worker
            self._max_memory = max_memory_per_worker
            super().__init__(workers)
            self.start_method = self._ctx.get_start_method()
            self._segments = _shm.SegmentPool() if _shm.AVAILABLE else None
            self._packer = Packer(self._segments)
            if start.seed is not None and first_function is not None:
                self._packer.functions.seed(first_function, start.seed)

            self._lock = threading.Lock()
            self._queue = WorkQueue()
            self._closing = False
            self._stop_now = False
            self._broken: BaseException | None = None
            self._wake_pending = False
            self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
            records_module.register(self._wake_r, self._wake_w)
            os.set_blocking(self._wake_r.fileno(), False)  # drained by one read (_drain_wakeups)
            # by sentinel; changed by the dispatcher only, under the lock (see workers.py)
            self._workers: dict[Any, WorkerRecord] = {}
            self._roster = 0  # counts changes of _workers (the dispatcher's poller follows it)
            self._startup_deaths = 0
            # Pool.stats(): replacements by cause, and the items run by workers no longer here
            # (written by the dispatcher; read under the lock, or as a snapshot of plain numbers)
            self._restarts = dict.fromkeys(RESTART_CAUSES, 0)
            self._gone_tasks = 0
            self._finished = threading.Event()
            self._forked = False  # set in a forked child (see forget_after_fork)

            # While this process still has a single thread (the dispatcher is not started
            # yet), the workers not forked by a zygote born now are forked from it directly, as
            # safe then as the zygote's own birth: no lock can be held by another thread. That
            # spares each the zygote's round trip (a request, its fork, the pid back, the
            # pickled Process to the new worker): ~2 ms a worker. Replacements come from the
            # zygote. In the call that bore the zygote these workers have the caller's __main__
            # as the zygote does (FunctionCache.seed).
            direct = self.start_method == "zygote" and single_threaded()
            for plan in start.plans:
                self._adopt(plan)
                started += 1
            while len(self._workers) < workers:
                self._start_worker(direct)
            for worker in self._workers.values():
                worker.has_birth_main = worker.has_birth_main or (direct and start.born_here)
        except BaseException:
            for worker in getattr(self, "_workers", {}).values():
                worker.kill()
            start.abandon(started)
            raise
        self._thread = threading.Thread(
            target=self._dispatch, name="conveyor-dispatcher", daemon=True
        )
        self._thread.start()

    # ================================================================= front (any thread)

    def submit(self, units: Sequence[Unit], ticket: JobTicket | None = None) -> None:
        if self._broken is not None:
            raise self._broken  # before any lock: in a forked child it may be held for good
        for unit in units:
            if unit.wire is None:
                if unit.eager:
                    self._packer.wire_of(unit)
                else:
                    self._packer.functions.get(unit.fn)  # the function is checked (and cached) now
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._stop_now or (self._closing and not (ticket is not None and ticket.open)):
                raise PoolClosed("cannot submit to a pool that was shut down")
            self._queue.add(units, time.monotonic())
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()

    def begin_job(self) -> JobTicket:
        if self._broken is not None:
            raise self._broken
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._closing:
                raise PoolClosed("cannot submit to a pool that was shut down")
            return self._queue.open_job()

    def end_job(self, ticket: JobTicket | None) -> None:
        if ticket is None or self._broken is not None:
            return
        with self._lock:
            self._queue.close_jobs([ticket])
            closing = self._closing
        if closing:
            self._wake()  # the dispatcher may be waiting for this job alone

    def cancel(self, owner: object) -> None:
        with self._lock:
            self._queue.cancel(owner)

    def interrupt(self, owner: object, wait: bool = True) -> None:
        """Kill the workers running units of ``owner`` (Ctrl-C, a cancelled await) and, with
        ``wait``, wait until they are reaped.

        Other units those workers held are re-queued, not failed; the workers are replaced.
        """
        with self._lock:
            # One critical section for the queue and the workers: by the lock rule (workers.py)
            # each of the owner's units is in the queue (dropped here) or among the holdings of
            # a worker (marked here; a dead one keeps them until it is settled under this lock,
            # and its settlement drops them), never in between.
            self._queue.cancel(owner)
            victims = [w for w in self._workers.values() if w.holds_work_of(owner)]
            for worker in victims:
                worker.cancelled += (owner,)
            # A DEAD worker is not killed: it may be reaped already, its pid reused.
            to_kill = [w for w in victims if w.state is not State.DEAD]
        for worker in to_kill:
            worker.kill()
        if wait:
            for worker in victims:
                worker.reaped.wait(10.0)

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        if self._forked:
            return
        current = threading.current_thread()
        with self._lock:
            self._closing = True
            dropped = []
            if cancel_pending:
                dropped = self._take_queued()
                self._queue.close_jobs()
            elif wait:
                self._queue.close_jobs(self._queue.jobs_driven_by(current))
        fail_units(dropped, PoolClosed("the pool was shut down before the task started"))
        self._wake()
        if not wait:
            return
        if current is self._thread:
            raise RuntimeError(
                "cannot join current thread: shutdown(wait=True) was called on the pool's "
                "dispatcher thread (by a done-callback), which it would wait for; the pool is "
                "shutting down. Use shutdown(wait=False) there"
            )
        self._finished.wait()

    def terminate(self) -> None:
        if self._forked:
            return
        with self._lock:
            self._closing = self._stop_now = True
            self._queue.close_jobs()
            alive = [w for w in self._workers.values() if w.state is not State.DEAD]
        for worker in alive:
            worker.kill()
        self._wake()
        if threading.current_thread() is not self._thread:
            self._finished.wait(30.0)

    def forget_after_fork(self) -> None:
        # The child has no dispatcher, and any lock may have been held by a thread at the fork.
        records_module.parent_fds_lock = threading.Lock()
        self._lock = threading.Lock()
        self._forked = True
        self._broken = PoolClosed(self.fork_error())
        self._closing = self._stop_now = True
        self._queue = WorkQueue()
        records, self._workers = list(self._workers.values()), {}
        for worker in records:
            # Our copies only: closing them does nothing to the parent's; the workers are not
            # ours to kill, join or reap.
            close_handles(worker.conn, worker.lifeline, worker.fd_sock)
            _forget_child(worker.process)
        close_handles(self._wake_r, self._wake_w)
        self._finished.set()

    @property
    def alive(self) -> bool:
        return not self._closing

    def worker_pids(self) -> list[int]:
        """The pids of the current worker processes (for tests and diagnostics)."""
        with self._lock:
            return [w.pid for w in self._workers.values() if w.pid is not None]

    def stats(self) -> PoolStats:
        """Figures per live worker and restarts by cause (see conveyor.Pool.stats).

        Another thread's view of the dispatcher's counters: each number is read whole (the
        GIL), the set of workers under the lock; a batch in flight counts when it is done.
        """
        from ..._stats import PoolStats, WorkerStats  # dataclasses: imported when asked for

        now = time.monotonic()
        with self._lock:
            records = list(self._workers.values())
            gone, restarts = self._gone_tasks, dict(self._restarts)
        rows = [
            WorkerStats(
                name=w.process.name,
                pid=w.pid or 0,
                tasks=w.tasks_run,
                failures=w.failures,
                busy=w.busy,
                idle=max(0.0, now - w.ready_at - w.busy) if w.said_ready else 0.0,
            )
            for w in records
        ]
        return PoolStats(rows, gone + sum(w.tasks_run for w in records), restarts)

    @property
    def _pull_ok(self) -> bool | None:
        """Whether workers may read a map's large arguments out of our memory (None: unknown
        until the first worker says READY; see packing.Packer)."""
        return self._packer.pull_ok

    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"")
        except OSError:
            pass  # the dispatcher has finished and closed the pipe

    def _take_queued(self) -> list[Unit]:
        return self._queue.take_all()

    # ================================================================= dispatcher thread

    def _dispatch(self) -> None:
        # Give the GIL back at once: the thread that started us waits in Thread.start() until
        # we run, and would otherwise wait until we first block (a cold map's first worker
        # is READY by now: ~2 ms of messages before the caller could even queue its work).
        time.sleep(0)
        try:
            self._dispatch_loop()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            self._broken = RuntimeError(f"conveyor's dispatcher thread failed: {exc!r}")
            self._broken.__cause__ = exc
            raise
        finally:
            self._finish()

    def _dispatch_loop(self) -> None:
        poller = _Poller()
        while True:
            with deferred_wakeups():  # (see _on_ready)
                if not self._assign_work():
                    return
            if self._closing and self._drained():
                self._stop_workers()
                return
            if poller.roster != self._roster:
                poller.watch(self._wake_r, self._workers.values(), self._roster)
            self._on_ready(poller.wait(self._next_wakeup()))

    def _on_ready(self, ready: list[WorkerRecord | _Death | None]) -> None:
        """Handle what the poller found ready: wakeups, messages, then deaths and deadlines.

        Pipes before sentinels: a worker's last messages count before its death does. A pipe
        gives one message per wait: the next wait returns at once if more are there (no second
        poll of the pipe for the common case of one DONE). The messages are read inside
        ``deferred_wakeups`` (conveyor._work): a sink that wakes an event loop per outcome (an
        awaited call) wakes it once, when they are read, for every outcome they delivered (a
        batch of coalesced calls), not once per outcome while the loop's thread and this one
        take the GIL from each other. Deaths come after that block: starting a replacement
        must not hold those wakeups back.
        """
        dead = []
        with deferred_wakeups():
            for worker in ready:
                if worker is None:
                    self._drain_wakeups()
                elif isinstance(worker, _Death):
                    dead.append(worker.worker)
                else:
                    self._on_messages(worker, drain=False)
        for worker in dead:
            if self._workers.get(worker.sentinel) is worker:
                self._on_death(worker)
        self._enforce_deadlines()

    def _assign_work(self) -> bool:
        """Send batches to idle workers; False when the pool must stop now.

        Repeats while a batch came to nothing (cancelled, unpicklable) and work is queued:
        its worker is idle again, and nothing else may wake the dispatcher for it.
        A method of its own so that no local variable of the loop keeps a unit (and its
        shared-memory segment) alive while the dispatcher waits.
        """
        if self._segments is not None:
            for pool_id in self._segments.forgotten():
                for worker in self._workers.values():
                    if pool_id in worker.mapped:
                        worker.mapped.discard(pool_id)
                        worker.to_forget.append(pool_id)
        while True:
            with self._lock:
                if self._stop_now:
                    return False
                self._release_held()
                batches = self._take_batches()
            wasted = False
            for worker, units, ahead in batches:
                self._send(worker, units, ahead)
                wasted = wasted or worker.state is State.IDLE
            if not wasted:
                return True

    def _next_wakeup(self) -> float | None:
        times = [w.deadline for w in self._workers.values() if w.deadline is not None]
        with self._lock:
            due = self._queue.next_due()
            if due is not None:
                times.append(due)
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    def _drain_wakeups(self) -> None:
        # One read empties the pipe (it is non-blocking; the bytes themselves mean nothing):
        # every system call here hands the GIL to a caller's thread and waits to get it back.
        fd = self._wake_r.fileno()
        try:
            while len(os.read(fd, 65536)) == 65536:
                pass
        except BlockingIOError:
            pass
        with self._lock:
            self._wake_pending = False

    def _release_held(self) -> None:
        self._queue.release_due(time.monotonic())

    def _drained(self) -> bool:
        with self._lock:
            queued = bool(self._queue) or bool(self._queue.jobs)
        return not queued and all(not w.assigned_units() for w in self._workers.values())

    # ----------------------------------------------------------------- sending work

    def _take_batches(self) -> list[tuple[WorkerRecord, list[Unit], bool]]:
        """Pair workers with batches from the pending queue (under the lock), reserving each
        batch for its worker (see batching.py for what a batch is).

        Idle workers first; then workers running untimed work get their next untimed batch
        ahead (prefetch, see protocol.py), so they never wait a round trip between batches.
        Returns (worker, units, sent ahead).
        """
        if not self._queue.ready or self._broken is not None:
            return []
        records = list(self._workers.values())
        batches = []
        # Busy workers are picked after the idle ones got their batches, so a worker that just
        # got one is sent its next at once too (nothing to wait for between its batches).
        pairs = list(
            itertools.chain(
                ((w, False) for w in records if w.state is State.IDLE),
                ((w, True) for w in records if w.state is State.BUSY and w.ahead is None),
            )
        )
        for index, (worker, ahead) in enumerate(pairs):
            ready = self._queue.ready
            if not ready:
                break
            if ahead and (ready[0].timeout is not None or not is_short(worker.batch)):
                continue  # timed work waits for an idle worker: its deadline starts on sending
            quota = None
            if self._max_tasks:
                held = sum(len(u.items) for u in worker.assigned_units())
                quota = self._max_tasks - worker.tasks_run - held
                if quota <= 0:
                    continue
            # Its share of the queue among the workers that may still take a batch in this
            # pass, not among all of them: those holding two batches take none now, and
            # halving the queue for each pass left trails of one-unit batches (measured:
            # 10,000 awaited calls went out in 1,111 batches instead of about 500).
            units = pick_batch(ready, len(pairs) - index, quota)
            # reserved until _send: it drops units whose sink says no
            if ahead:
                worker.reserve_ahead(units)
            else:
                worker.reserve(units)
            batches.append((worker, units, ahead))
        return batches

    def _send(self, worker: WorkerRecord, units: list[Unit], ahead: bool = False) -> None:
        """Send ``units``, reserved for ``worker``, to it; those whose sink says no, or that
        cannot be pickled, are dropped (their sinks are told)."""
        if ahead and worker.batch is units:
            # The batch picked for it just before came to nothing (its units were cancelled or
            # could not be pickled): this one is not ahead of anything, it runs now.
            ahead = False
        units = self._packer.with_wires([u for u in units if u.sink.starting(u)])
        if ahead and units and self._packer.message_size(worker, units) > PREFETCH_BYTES:
            # Too large to send ahead without risking a blocked write: wait until it is idle.
            with self._lock:
                self._queue.ready.extendleft(reversed(units))
                worker.unreserve(ahead)
            return
        if not units:
            with self._lock:
                worker.unreserve(ahead)
            return
        stream = units[0].timeout is not None
        fds: list[int] = []
        wire_units, exacts = self._packer.wire_units(worker, units, stream, fds)
        forget, worker.to_forget = worker.to_forget, []
        worker.sent += 1
        with self._lock:
            if ahead:
                worker.send_ahead(units, exacts, worker.sent)
            else:
                worker.begin(units, exacts, worker.sent, stream)
        if not ahead:
            worker.deadline = self._deadline_for(units[0]) if stream else None
        try:
            if fds:
                assert worker.fd_sock is not None
                _shm.send_fds(worker.fd_sock, fds)
            message = Run(len(fds), stream, wire_units, forget, worker.sent)
            worker.conn.send_bytes(encode(message))
        except OSError:
            pass  # it died; its sentinel will say so and _on_death re-queues the batch

    @staticmethod
    def _deadline_for(unit: Unit) -> float | None:
        if unit.timeout is None:
            return None
        return time.monotonic() + unit.timeout + hard_deadline_grace(unit.timeout)

    # ----------------------------------------------------------------- receiving outcomes

    def _on_messages(self, worker: WorkerRecord, drain: bool = True) -> None:
        """Handle the messages waiting in ``worker``'s pipe: all of them, or (``drain`` False,
        the pipe is known to be readable) the first one."""
        conn = worker.conn
        try:
            while not drain or conn.poll():
                drain = True
                message = decode(conn.recv_bytes())
                segments = _receive_segments(worker, message.nfds)
                if isinstance(message, Done):
                    worker.release_holds(message.released)
                    self._on_done(worker, segments, message)
                elif isinstance(message, Item):
                    worker.release_holds(message.released)
                    worker.failures += message.failed
                    self._on_item(worker, segments, message)
                elif isinstance(message, Log):
                    _reemit(message.record)
                elif isinstance(message, Ready):
                    with self._lock:
                        worker.ready(time.monotonic())
                    self._startup_deaths = 0
                elif isinstance(message, Probed):
                    # Every worker of a pool runs where the first did: its answer stands for
                    # all, but one that could not read our memory turns pulling off for good.
                    if self._packer.pull_ok is None or not message.pull_ok:
                        self._packer.pull_ok = bool(message.pull_ok)
                elif isinstance(message, InitFailed):
                    self._on_init_failed(message.traceback)
        except (EOFError, OSError):
            pass  # it died; the sentinel says so

    def _on_done(
        self,
        worker: WorkerRecord,
        segments: list[Segment],
        message: Done,
    ) -> None:
        batch = worker.batch or []
        rows = zip(batch, message.unit_ids, message.payloads, message.elapsed, message.failed)
        for unit, unit_id, payload, elapsed, failed in rows:
            assert unit.id == unit_id, "a worker answered for a unit it was not sent"
            worker.busy += elapsed
            worker.failures += failed
            release(unit)
            _deliver(unit, 0, len(unit.items), payload, segments, elapsed)
        self._batch_finished(worker, message.rss)

    def _on_item(
        self,
        worker: WorkerRecord,
        segments: list[Segment],
        message: Item,
    ) -> None:
        batch = worker.batch or []
        unit = batch[worker.unit_index]
        position, rss = message.position, message.rss
        assert unit.id == message.unit_id and position == worker.item_index
        if position + 1 == len(unit.items):
            release(unit)
        worker.busy += message.elapsed
        _deliver(unit, position, 1, message.payload, segments, message.elapsed)
        worker.item_index += 1
        if worker.item_index == len(unit.items):
            worker.unit_index += 1
            worker.item_index = 0
        if worker.unit_index == len(batch):
            self._batch_finished(worker, rss)
        else:
            worker.deadline = self._deadline_for(batch[worker.unit_index])

    def _batch_finished(self, worker: WorkerRecord, rss: int) -> None:
        with self._lock:  # one transition: the batch sent ahead begins as this one ends
            done = worker.finish()
        worker.deadline = None
        suspects = self._packer.suspects
        if suspects:  # (empty unless a worker died: no look-ups per unit then)
            for unit in done:
                suspects.discard(unit)
        if worker.state is not State.IDLE:  # it went straight on with the batch sent ahead
            return
        too_many = self._max_tasks is not None and worker.tasks_run >= self._max_tasks
        too_big = self._max_memory is not None and rss > self._max_memory
        if (too_many or too_big) and not (self._closing and self._drained()):
            self._retire(worker)

    def _retire(self, worker: WorkerRecord) -> None:
        """Ask an idle worker to exit, and start its replacement now (not when it exits)."""
        with self._lock:
            worker.retire()
        self._restarts["recycle"] += 1
        try:
            worker.conn.send_bytes(encode(Stop()))
        except OSError:
            pass
        self._start_worker()

    def _on_init_failed(self, tb: str) -> None:
        from ..._executor_errors import WorkerInitError  # (a failure: see that module)

        error = WorkerInitError(
            f"the pool's initializer {self._init_name} failed in a worker process:\n{tb}"
        )
        self._break(error)

    def _break(self, error: BaseException) -> None:
        """Stop the pool for good: fail everything queued or held, kill the workers."""
        with self._lock:
            self._broken = error
            self._closing = self._stop_now = True
            dropped = self._take_queued()
            for worker in self._workers.values():
                batch, ahead = worker.take_holdings()
                dropped += batch + ahead
        for worker in self._workers.values():
            worker.kill()
        fail_units(dropped, error)

    # ----------------------------------------------------------------- deaths and deadlines

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if worker.deadline is None or now < worker.deadline:
                continue
            # Its answer may be waiting in the pipe: read it first, so that an item that made it
            # in time is not killed.
            self._on_messages(worker)
            if worker.deadline is None or now < worker.deadline or worker.batch is None:
                continue
            worker.deadline = None
            worker.timed_out_at = (worker.unit_index, worker.item_index)
            worker.kill()

    def _on_death(self, worker: WorkerRecord) -> None:
        """A worker's sentinel fired: reap it, replace it, settle what it held.

        Races kept out, under the lock (workers.py): from ``die()`` on no other thread kills
        it (once reaped, its pid may be reused); its holdings stay visible to ``interrupt()``
        until the critical section that removes it also re-queues them (where an interrupt's
        ``cancel`` finds them), so an interrupt sees the units in one place or the other.
        """
        from .settlement import settle  # (only here: a cold map never needs it)

        self._on_messages(worker)  # anything it managed to send first
        with self._lock:
            retiring = worker.state is State.RETIRING
            worker.die()
        exitcode = _reap(worker)
        with self._lock:
            batch, ahead = worker.take_holdings()
            stopped = self._stop_now
            settlement = None if stopped else settle(self._lost(worker, batch, ahead, exitcode))
            if settlement is not None:
                self._queue.ready.extendleft(reversed(settlement.requeue))
            # Before its sentinel is closed: a new worker's may then reuse the number (the key).
            del self._workers[worker.sentinel]
            self._roster += 1
            self._gone_tasks += worker.tasks_run
            if not retiring and not stopped:
                self._restarts[_death_cause(worker)] += 1
        worker.close_channels()
        worker.release_holds()  # its mappings died with it
        # Replace before the outcomes go out, settle last, so nothing here still holds the lost
        # units (and their shared memory) once their outcomes are out. A retired worker's
        # replacement was started when it was asked to go.
        if not retiring and not stopped and (not self._closing or batch or not self._drained()):
            self._start_worker()
        if settlement is None:
            # terminate() killed it (or it died as terminate() began): what it held was stopped
            # by the pool, not by a crash of its own; it fails as terminate() says, PoolClosed,
            # like every other unfinished task (a race: the death is seen before _finish runs).
            fail_units(batch + ahead, self._unfinished_error())
        else:
            self._settled(settlement, batch + ahead)
        if not batch and not worker.said_ready and not self._closing and not stopped:
            self._on_startup_death(worker.pid, exitcode)
        worker.reaped.set()

    def _on_startup_death(self, pid: int | None, exitcode: int | None) -> None:
        """A worker died before READY (it is never given work before): a broken environment or
        a crashing initializer must not make the pool restart workers forever."""
        self._startup_deaths += 1
        if self._startup_deaths >= MAX_STARTUP_DEATHS:
            from ..._executor_errors import WorkerCrashed  # (a failure: see that module)

            self._break(
                WorkerCrashed(
                    f"worker processes keep dying at start-up "
                    f"({WorkerCrashed.for_exit(pid, exitcode)})",
                    exitcode,
                )
            )

    @staticmethod
    def _lost(
        worker: WorkerRecord, batch: list[Unit], ahead: list[Unit], exitcode: int | None
    ) -> Lost:
        """What the dispatcher knew of ``worker`` when it died (under the lock: ``cancelled``)."""
        from .settlement import Lost

        return Lost(
            batch=batch,
            exact=worker.exact,
            seq=worker.seq,
            delivered=(worker.unit_index, worker.item_index) if worker.stream else (0, 0),
            mark=(int(worker.mark[0]), int(worker.mark[1])),
            ahead=ahead,
            timed_out_at=worker.timed_out_at,
            cancelled=worker.cancelled,
            pid=worker.pid,
            exitcode=exitcode,
        )

    def _settled(self, settlement: Settlement, lost: list[Unit]) -> None:
        """The rest of a settlement, once its units are re-queued: release the shared memory
        of the lost units not re-queued whole, then fail the blamed item (last, see _on_death)."""
        for unit in lost:
            self._packer.suspects.discard(unit)
        if settlement.suspect is not None:
            self._packer.suspects.add(settlement.suspect)
        kept = {id(u) for u in settlement.requeue}
        for unit in lost:
            if id(unit) not in kept:
                release(unit)
        if settlement.blame is not None:
            (index, item), error = settlement.blame
            unit = lost[index]
            unit.sink.deliver(unit, item, errors_of(1, error), 0.0)

    def _requeue(self, units: list[Unit]) -> None:
        """Put units back at the front of the queue, in order (pieces are pickled when sent)."""
        with self._lock:
            self._queue.ready.extendleft(reversed(units))

    # ----------------------------------------------------------------- workers

    def _start_worker(self, direct: bool = False) -> WorkerRecord:
        """Start a worker (``direct``: forked from this process, see ``__init__``)."""
        ctx = fork_context() if direct else self._ctx
        return self._add_worker(
            launch(ctx, self._init_blob, self._max_memory is not None, _pull_probe())
        )

    def _adopt(self, plan: records_module.WorkerPlan) -> WorkerRecord:
        """Take over the worker the zygote forked for ``plan`` at its birth (see _begin)."""
        process = plan.first.adopt()
        assert process is not None  # (_begin keeps only plans a zygote was born with)
        plan.close_child_ends()
        return self._add_worker(plan.record(process))

    def _add_worker(self, worker: WorkerRecord) -> WorkerRecord:
        with self._lock:
            self._workers[worker.sentinel] = worker
            self._roster += 1
        return worker

    def _stop_workers(self) -> None:
        """Graceful end: ask every worker to exit, wait a while, kill what is left."""
        for worker in self._workers.values():
            try:
                worker.conn.send_bytes(encode(Stop()))
            except OSError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        for worker in list(self._workers.values()):
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                worker.kill()

    def _unfinished_error(self) -> BaseException:
        """What a task gets that the pool stopped before it finished."""
        return self._broken or PoolClosed("the pool was terminated before the task finished")

    def _finish(self) -> None:
        """Last act of the dispatcher: no worker left, nothing owed left unsaid."""
        with self._lock:
            self._closing = True
            dropped = self._take_queued()
            records = list(self._workers.values())
            self._workers.clear()
            for worker in records:
                batch, ahead = worker.take_holdings()
                dropped += batch + ahead
                worker.die()
        for worker in records:
            worker.kill()
        for worker in records:
            worker.process.join(5.0)
            kill_group(worker.pid, None)
            worker.close_channels()
            worker.reaped.set()
        fail_units(dropped, self._unfinished_error())
        for worker in records:
            worker.release_holds()
        self._packer.close()
        self._finished.set()
        close_handles(self._wake_r, self._wake_w)

    def payload_size(self, items: Sequence[Any]) -> int:
        """About how many bytes sending ``items`` to a worker copies (see Backend)."""
        return copied_bytes(items)


class _Death:
    """What the dispatcher's poller reports for a worker's sentinel (its pipe: the worker)."""

    __slots__ = ("worker",)

    def __init__(self, worker: WorkerRecord):
        self.worker = worker


class _Poller:
    """The dispatcher's wait on the wakeup pipe and every worker's pipe and sentinel.

    One ``select.poll`` kept from wait to wait, made again (:meth:`watch`) only when the set of
    workers has changed (``ProcessBackend._roster``), rather than a selector made, filled and
    closed for every wait as ``multiprocessing.connection.wait`` does: at a map's rate of one
    wait per message that was a good part of the dispatcher's time. Dispatcher thread only.
    A descriptor closed while registered (a dead worker's, by ``_on_death``) is never polled
    again: removing a worker changes the roster, so the next wait watches anew first.
    """

    def __init__(self) -> None:
        self.roster = -1  # the roster watched (none yet)
        self._poll: Any = None
        self._by_fd: dict[int, WorkerRecord | _Death | None] = {}
        self._by_object: dict[Any, WorkerRecord | _Death | None] = {}

    def watch(self, wake: Connection, workers: Iterable[WorkerRecord], roster: int) -> None:
        by_object: dict[Any, WorkerRecord | _Death | None] = {wake: None}
        for worker in workers:
            by_object[worker.conn] = worker
            by_object[worker.sentinel] = _Death(worker)
        self._by_object = by_object
        self.roster = roster
        if not hasattr(select, "poll"):  # (Windows) multiprocessing's wait, in wait()
            return
        self._by_fd = {
            obj if isinstance(obj, int) else obj.fileno(): value for obj, value in by_object.items()
        }
        self._poll = select.poll()
        for fd in self._by_fd:
            self._poll.register(fd, select.POLLIN)

    def wait(self, timeout: float | None) -> list[WorkerRecord | _Death | None]:
        """What is ready within ``timeout`` seconds (None: no limit): None for the wakeup pipe,
        a worker for its pipe (a message, or its end), a :class:`_Death` for its sentinel."""
        if self._poll is None:
            from multiprocessing.connection import wait

            by_object = self._by_object
            return [by_object[obj] for obj in wait(list(by_object), timeout)]
        # rounded up, as selectors do: a deadline 0.3 ms away must not become a busy loop
        ms = None if timeout is None else math.ceil(timeout * 1000)
        by_fd = self._by_fd
        return [by_fd[fd] for fd, _ in self._poll.poll(ms)]


def _reap(worker: WorkerRecord) -> int | None:
    """Join a worker whose sentinel fired and kill what its tasks left behind; its exit code."""
    worker.process.join(5.0)
    exitcode = worker.process.exitcode
    kill_group(worker.pid, None)  # children its task left behind
    if exitcode != 0:  # it did not end on its own: so did not its task's programs
        kill_marked(worker.token)
    return exitcode


def _forget_child(process: BaseProcess) -> None:
    """Make multiprocessing forget a worker that this (forked) process did not start, so that
    its exit handler does not try to join it."""
    from multiprocessing import process as mp_process

    mp_process._children.discard(process)  # type: ignore[attr-defined]


def _receive_segments(worker: WorkerRecord, count: int) -> list[Segment]:
    """The shared-memory segments a worker sent ahead of its message."""
    if not count:
        return []
    assert worker.fd_sock is not None
    return [Segment.adopt(fd) for fd in _shm.recv_fds(worker.fd_sock, count)]


def _deliver(
    unit: Unit,
    start: int,
    count: int,
    payload: WirePayload,
    segments: list[Segment],
    elapsed: float,
) -> None:
    unit.sink.deliver(unit, start, _loader(payload, segments, count), elapsed)


def _loader(payload: WirePayload, segments: list[Segment], count: int) -> Loader:
    """Unpickle outcomes when the sink asks; an unpicklable payload fails each of its items.

    The segments are kept alive by this closure only: once the sink has loaded (or dropped)
    the outcomes, their descriptors close, and the memory lives on in the results' views.
    """

    def load() -> Outcomes:
        try:
            return decode_outcomes(payload, segments)
        except (Exception, SystemExit) as exc:  # a result whose unpickling calls sys.exit()
            # must fail its task, not end the dispatcher thread (CPython's test_deadlock)
            error = RuntimeError(f"the task's result could not be unpickled here: {exc!r}")
            error.__cause__ = exc
            return [None] * count, dict.fromkeys(range(count), error)

    return load


def _death_cause(worker: WorkerRecord) -> str:
    """Why a worker that the pool did not stop is gone (a key of PoolStats.restarts)."""
    if worker.timed_out_at is not None:
        return "timeout"
    if worker.cancelled:
        return "stopped"
    return "crash"


def _reemit(record: dict[str, Any]) -> None:
    """Hand a worker's log record to the caller's logging; a failing handler must not end the
    dispatcher thread (logging reports its own handlers' errors; this is for the rest)."""
    try:
        from . import worker_logging  # (not before a worker logs: a cold map needs no logging)

        worker_logging.reemit(record)
    except Exception:
        pass
