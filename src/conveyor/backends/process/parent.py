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

Guarantees, and where they are kept:

* **A death costs one task.** The dispatcher knows exactly which units each worker holds (one
  batch in flight per worker, see :mod:`.protocol`), and the worker's *mark* says which unit it
  was loading or running, and for an *exact* unit which item. An item known to have been running
  gets :class:`~conveyor.WorkerCrashed` (its sink may retry it); everything else the worker held
  is re-queued at the front, not blamed (items that had finished run again: a chunk's results
  are sent when the chunk ends). A unit of several items that died at an unknown item is sent
  back once, exact, so the item that kills again is named and the others succeed; a random kill
  therefore costs an ordinary chunk nothing. Timed units are streamed and always exact. See
  :meth:`ProcessBackend._settle_lost_batch`.
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
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from ... import _pull, _shm
from ..._envmark import kill_marked, new_token
from ..._errors import PoolClosed, TaskTimeout, WorkerCrashed, WorkerInitError
from ..._serialize import Payload, callable_payload, dumps_callable, items_payload
from ..._shm import Segment
from ..._stats import RESTART_CAUSES, PoolStats, WorkerStats
from ..._work import Loader, Outcomes, Unit, errors_of
from ..base import Backend, copied_bytes
from ..queue import JobTicket, WorkQueue
from . import worker_logging
from .protocol import (
    DONE,
    FN_CACHE_SIZE,
    IDLE,
    INIT_FAILED,
    ITEM,
    LOG,
    PREFETCH_BYTES,
    READY,
    RUN,
    STOP,
    WirePayload,
    decode_outcomes,
    encode,
    read_mark,
    to_wire,
)
from .spawning import get_context, start_worker
from .worker import worker_main

__all__ = ["ProcessBackend"]

#: small units (by their estimate) may share one message up to this much expected work
COALESCE_SECONDS = 0.005
#: a batch is sent ahead only to a worker whose current batch is expected to take at most this
PREFETCH_SECONDS = 0.02
#: a batch never holds more units than this
MAX_BATCH_UNITS = 256
#: consecutive deaths of workers before READY after which the pool gives up
MAX_STARTUP_DEATHS = 5
#: how long a stopping worker gets to exit by itself before it is killed
STOP_GRACE = 5.0

_worker_numbers = itertools.count(1)

# Our ends of the pipes and sockets of every worker of every pool in this process. A worker
# started by ``fork`` inherits all of them, among them the write end of its own lifeline, which
# would keep it alive after our death; it closes them first thing (see worker_main). The lock is
# held from registering to the fork, and from unregistering to closing, so a number in the set
# is always one of ours and never an unrelated file that reused it.
_parent_fds: set[int] = set()
_parent_fds_lock = threading.Lock()


def _register(*handles: Connection | socket.socket | None) -> None:
    with _parent_fds_lock:
        _parent_fds.update(h.fileno() for h in handles if h is not None)


def _close(*handles: Connection | socket.socket | None) -> None:
    with _parent_fds_lock:
        for handle in handles:
            if handle is None:
                continue
            try:
                fd = handle.fileno()
            except (OSError, ValueError):
                continue  # closed already
            if fd >= 0:
                _parent_fds.discard(fd)
                handle.close()


#: a position in a batch: (unit index, item index)
_Position = tuple[int, int]


def hard_deadline_grace(timeout: float) -> float:
    """Extra time the parent allows past ``timeout`` before it kills a worker."""
    return max(0.5, min(5.0, 0.2 * timeout))


@dataclass(eq=False)
class _Wire:
    """A unit's pickled form, made once: in the caller's thread for an eager unit (a
    ``submit``), by the dispatcher just before sending for a map's chunks and for pieces.

    Large buffers of the function (cached, so once per pool) and of the items sit in
    shared-memory segments (see :mod:`conveyor._shm`); the item segment's descriptor is closed
    when the unit is dropped, the function's when the function leaves the cache.
    """

    fn_key: int
    fn: Payload
    items: Payload


class _Worker:
    """The dispatcher's record of one worker process. Touched only by the dispatcher thread
    (``interrupt`` reads ``batch`` and sets ``cancelled_owner`` under the backend's lock)."""

    def __init__(
        self,
        process: BaseProcess,
        conn: Connection,
        lifeline: Connection,
        fd_sock: socket.socket | None,
        mark: Any,
        token: str,
    ):
        self.process = process
        self.token = token  # in its environment and its programs' (see conveyor._envmark)
        self.conn = conn
        self.lifeline = lifeline  # never written; closing it (or our death) tells the worker to go
        self.fd_sock = fd_sock  # descriptors of shared-memory segments travel here
        self.mark = mark  # shared with the worker: where it is in its batch (see protocol.py)
        self.pid = process.pid
        self.sentinel = process.sentinel
        self.fn_keys: OrderedDict[int, None] = OrderedDict()
        self.batch: list[Unit] | None = None  # the batch it runs (or was last sent, idle before)
        self.seq = 0  # that batch's number (see protocol.py, the mark)
        self.sent = 0  # batches sent so far
        # a batch sent ahead, run when the current one is done: (units, exact, number)
        self.queued: tuple[list[Unit], list[bool], int] | None = None
        self.stream = False
        self.exact: list[bool] = []  # per unit of the batch: sent exact (each item marked)
        self.unit_index = 0  # streamed batch: the first unit and item not yet delivered
        self.item_index = 0
        self.deadline: float | None = None
        self.tasks_run = 0
        self.busy = 0.0  # seconds its items ran, as it measured them (for Pool.stats)
        self.failures = 0  # items that raised in it (each attempt)
        self.ready_at = 0.0  # time.monotonic() when it said READY
        self.ready = False  # said READY: its initializer ran, it may be given work
        self.retiring = False
        self.killed_for_timeout = False
        self.timed_out_at: _Position | None = None  # what was running when we killed it
        self.cancelled_owner: object | None = None
        self.holds: dict[int, list[_shm.Hold]] = {}  # pooled segments it may still view
        self.mapped: set[int] = set()  # pooled segments it keeps mapped
        self.to_forget: list[int] = []  # closed pooled segments it must unmap
        self.reaped = threading.Event()

    def held_units(self) -> list[Unit]:
        """Every unit it holds: the running batch, then the one sent ahead."""
        return (self.batch or []) + (self.queued[0] if self.queued else [])

    def release_holds(self, pool_ids: list[int] | None = None) -> None:
        """Release its holds on pooled segments it reported free (all of them: it died)."""
        for pool_id in list(self.holds) if pool_ids is None else pool_ids:
            holds = self.holds.get(pool_id)
            if holds:
                holds.pop().release()
                if not holds:
                    del self.holds[pool_id]

    def close_channels(self) -> None:
        """Close our ends of the pipe, the lifeline and the fd socket, and the process handle
        once it is reaped."""
        _close(self.conn, self.lifeline, self.fd_sock)
        try:
            self.process.close()
        except ValueError:
            pass  # not reaped (join timed out): the handle is closed when it is collected

    def kill(self) -> None:
        """SIGKILL the worker's process group (itself and what its tasks started), then the
        programs its tasks started that left the group."""
        _kill_group(self.pid, self.process)
        kill_marked(self.token)


def _kill_group(pid: int | None, process: BaseProcess | None) -> None:
    if pid is None:
        return
    if hasattr(os, "killpg"):
        try:
            os.killpg(pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            pass
    if process is not None:
        try:
            process.kill()
        except Exception:
            pass


class _FunctionCache:
    """Pickled functions, each pickled once per pool while it lives; never the function itself.

    An entry holds a weak reference to the function (and its pickled form), so the cache never
    keeps a user's callable (a bound method, a closure over a large array) alive: once the caller
    drops it, its entry goes (its shared-memory segment is closed when the last queued unit using
    it goes too). A callable that takes no weak reference (a C object such as
    ``operator.itemgetter``) is pickled on every use instead of being kept; its key is then its
    pickled bytes, so workers still load it once.

    Concurrency: ``get`` runs in callers' threads and in the dispatcher; a weak reference's
    callback may run in any thread, even inside ``get`` while the lock is held (a collection
    started there), so it only appends to ``_dead`` (atomic), and ``get`` purges under the lock.
    """

    def __init__(self, size: int = 256):
        self._size = size
        self._lock = threading.Lock()
        self._by_id: OrderedDict[int, tuple[weakref.ref[Any], int, Payload]] = OrderedDict()
        self._by_bytes: OrderedDict[bytes, int] = OrderedDict()
        self._dead: list[int] = []
        self._keys = itertools.count(1)

    def __len__(self) -> int:
        with self._lock:
            self._purge()
            return len(self._by_id)

    def clear(self) -> None:
        """Forget every function, giving up their shared-memory segments."""
        with self._lock:
            entries, self._by_id = list(self._by_id.values()), OrderedDict()
            self._by_bytes.clear()
        for _, _, payload in entries:
            payload.release()

    def _purge(self) -> None:
        while self._dead:
            fn_id = self._dead.pop()
            entry = self._by_id.get(fn_id)
            if entry is not None and entry[0]() is None:
                del self._by_id[fn_id]

    def get(self, fn: Callable[..., Any]) -> tuple[int, Payload]:
        fn_id = id(fn)
        with self._lock:
            self._purge()
            entry = self._by_id.get(fn_id)
            if entry is not None and entry[0]() is fn:
                self._by_id.move_to_end(fn_id)
                return entry[1], entry[2]
        blob = callable_payload(fn)
        try:
            ref: weakref.ref[Any] | None = weakref.ref(fn, _on_death_of(fn_id, self._dead))
        except TypeError:
            ref = None
        with self._lock:
            if ref is None and blob.segment is not None:
                return next(self._keys), blob  # equal bytes, yet maybe other buffers: new key
            if ref is None:  # remembered by its bytes only
                key = self._by_bytes.get(blob.data) or next(self._keys)
                self._by_bytes[blob.data] = key
                self._by_bytes.move_to_end(blob.data)
                while len(self._by_bytes) > self._size:
                    self._by_bytes.popitem(last=False)
                return key, blob
            key = next(self._keys)
            self._by_id[fn_id] = (ref, key, blob)
            while len(self._by_id) > self._size:
                # units still queued may share the payload: it closes when the last one goes
                self._by_id.popitem(last=False)
        return key, blob


def _on_death_of(fn_id: int, dead: list[int]) -> Callable[[weakref.ref[Any]], None]:
    """A weak reference callback noting that the function ``fn_id`` is gone (any thread)."""

    def callback(_: weakref.ref[Any]) -> None:
        dead.append(fn_id)

    return callback


class ProcessBackend(Backend):
    """Runs units on worker processes that this pool starts, watches and replaces.

    Example::

        >>> from conveyor.backends.process.parent import ProcessBackend
        >>> backend = ProcessBackend(workers=2)
        >>> backend.shutdown()
    """

    name = "process"
    stops_timed_out_tasks = True

    def __init__(
        self,
        workers: int,
        start_method: str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
    ):
        super().__init__(workers)
        self._ctx = get_context(start_method)
        self.start_method = self._ctx.get_start_method()
        self._init_blob = (
            dumps_callable((initializer, initargs), "initializer") if initializer else None
        )
        self._init_name = getattr(initializer, "__qualname__", repr(initializer))
        self._max_tasks = max_tasks_per_worker
        self._max_memory = max_memory_per_worker
        self._functions = _FunctionCache()
        self._segments = _shm.SegmentPool() if _shm.AVAILABLE else None
        #: whether workers may read a map's large arguments out of our memory (conveyor._pull):
        #: unknown until the first worker says READY
        self._pull_ok: bool | None = None

        self._lock = threading.Lock()
        self._queue = WorkQueue()
        self._closing = False
        self._stop_now = False
        self._broken: BaseException | None = None
        self._wake_pending = False
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        _register(self._wake_r, self._wake_w)
        self._workers: dict[Any, _Worker] = {}  # by sentinel; changed by the dispatcher only
        self._startup_deaths = 0
        # Pool.stats(): replacements by cause, and the items run by workers no longer here
        # (written by the dispatcher; read under the lock, or as a snapshot of plain numbers)
        self._restarts = dict.fromkeys(RESTART_CAUSES, 0)
        self._gone_tasks = 0
        # Units sent back exact after a death at an unknown item (dispatcher thread only).
        self._suspects: weakref.WeakSet[Unit] = weakref.WeakSet()
        self._finished = threading.Event()
        self._forked = False  # set in a forked child (see forget_after_fork)

        try:
            for _ in range(workers):
                self._start_worker()
        except BaseException:
            for worker in self._workers.values():
                worker.kill()
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
                    self._wire_of(unit)
                else:
                    self._functions.get(unit.fn)  # the function is checked (and cached) now
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
        self.cancel(owner)
        with self._lock:
            victims = [
                w
                for w in list(self._workers.values())
                if any(u.sink.owner is owner for u in w.held_units())
            ]
            for worker in victims:
                worker.cancelled_owner = owner
        for worker in victims:
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
        _fail(dropped, PoolClosed("the pool was shut down before the task started"))
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
            workers = list(self._workers.values())
        for worker in workers:
            worker.kill()
        self._wake()
        if threading.current_thread() is not self._thread:
            self._finished.wait(30.0)

    def forget_after_fork(self) -> None:
        global _parent_fds_lock
        # The child has no dispatcher, and any lock may have been held by a thread at the fork.
        _parent_fds_lock = threading.Lock()
        self._lock = threading.Lock()
        self._forked = True
        self._broken = PoolClosed(self.fork_error())
        self._closing = self._stop_now = True
        self._queue = WorkQueue()
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            # Our copies only: closing them does nothing to the parent's; the workers are not
            # ours to kill, join or reap.
            _close(worker.conn, worker.lifeline, worker.fd_sock)
            _forget_child(worker.process)
        _close(self._wake_r, self._wake_w)
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
        now = time.monotonic()
        with self._lock:
            workers = list(self._workers.values())
            gone, restarts = self._gone_tasks, dict(self._restarts)
        rows = [
            WorkerStats(
                name=w.process.name,
                pid=w.pid or 0,
                tasks=w.tasks_run,
                failures=w.failures,
                busy=w.busy,
                idle=max(0.0, now - w.ready_at - w.busy) if w.ready else 0.0,
            )
            for w in workers
        ]
        return PoolStats(rows, gone + sum(w.tasks_run for w in workers), restarts)

    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"")
        except OSError:
            pass  # the dispatcher has finished and closed the pipe

    def _take_queued(self) -> list[Unit]:
        return self._queue.take_all()

    # ================================================================= dispatcher thread

    def _dispatch(self) -> None:
        try:
            self._dispatch_loop()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            self._broken = RuntimeError(f"conveyor's dispatcher thread failed: {exc!r}")
            self._broken.__cause__ = exc
            raise
        finally:
            self._finish()

    def _dispatch_loop(self) -> None:
        while True:
            if not self._assign_work():
                return
            if self._closing and self._drained():
                self._stop_workers()
                return
            ready = wait(self._waitables(), self._next_wakeup())
            # Pipes before sentinels: a worker's last messages count before its death does.
            for obj in ready:
                if obj is self._wake_r:
                    self._drain_wakeups()
                elif isinstance(obj, Connection):
                    self._on_messages(self._worker_by_conn(obj))
            for obj in ready:
                worker = self._workers.get(obj) if not isinstance(obj, Connection) else None
                if worker is not None:
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
                wasted = wasted or (not ahead and worker.batch is None)
            if not wasted:
                return True

    def _waitables(self) -> list[Any]:
        objs: list[Any] = [self._wake_r]
        for worker in self._workers.values():
            objs.append(worker.conn)
            objs.append(worker.sentinel)
        return objs

    def _worker_by_conn(self, conn: Connection) -> _Worker:
        for worker in self._workers.values():
            if worker.conn is conn:
                return worker
        raise KeyError(conn)

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
        while self._wake_r.poll():
            self._wake_r.recv_bytes()
        with self._lock:
            self._wake_pending = False

    def _release_held(self) -> None:
        self._queue.release_due(time.monotonic())

    def _drained(self) -> bool:
        with self._lock:
            queued = bool(self._queue) or bool(self._queue.jobs)
        return not queued and all(not w.held_units() for w in self._workers.values())

    # ----------------------------------------------------------------- sending work

    def _take_batches(self) -> list[tuple[_Worker, list[Unit], bool]]:
        """Pair workers with batches from the pending queue (under the lock).

        Idle workers first; then workers running untimed work get their next untimed batch
        ahead (prefetch, see protocol.py), so they never wait a round trip between batches.
        A batch is one unit, plus more small ones while their estimates stay under
        COALESCE_SECONDS and the worker takes no more than its share of the queue, so a burst
        of ``submit`` calls costs a few messages, not one each. Timed units (streamed) and
        untimed ones never share a batch. Returns (worker, units, sent ahead).
        """
        if not self._queue.ready or self._broken is not None:
            return []
        usable = [w for w in self._workers.values() if w.ready and not w.retiring]
        idle = [w for w in usable if w.batch is None]
        batches = []
        # Busy workers are picked after the idle ones got their batches, so a worker that just
        # got one is sent its next at once too (nothing to wait for between its batches).
        pairs = itertools.chain(
            ((w, False) for w in idle),
            ((w, True) for w in usable if w.queued is None and _short(w)),
        )
        for worker, ahead in pairs:
            if not self._queue.ready:
                break
            if ahead and self._queue.ready[0].timeout is not None:
                continue  # timed work waits for an idle worker: its deadline starts on sending
            share = max(1, math.ceil(len(self._queue.ready) / max(1, self.workers)))
            held = sum(len(u.items) for u in worker.held_units())
            quota = (self._max_tasks - worker.tasks_run - held) if self._max_tasks else None
            if quota is not None and quota <= 0:
                continue
            first = self._queue.ready.popleft()
            if quota is not None and len(first.items) > quota:
                self._queue.ready.appendleft(first.piece(quota))
                first = first.piece(0, quota)
            units = [first]
            count, expected = len(first.items), first.estimate
            stream = first.timeout is not None
            # Unknown run times (estimate 0) are never coalesced: a burst of long tasks must
            # spread over the workers, and stay cancellable until each one starts.
            while (
                first.coalesce
                and first.estimate > 0
                and self._queue.ready
                and len(units) < min(share, MAX_BATCH_UNITS)
            ):
                nxt = self._queue.ready[0]
                if not nxt.coalesce or (nxt.timeout is not None) != stream:
                    break
                if expected + nxt.estimate > COALESCE_SECONDS:
                    break
                if quota is not None and count + len(nxt.items) > quota:
                    break
                units.append(self._queue.ready.popleft())
                count += len(nxt.items)
                expected += nxt.estimate
            # reserved until _send: it drops units whose sink says no
            if ahead:
                worker.queued = (units, [], -1)
            else:
                worker.batch = units
            batches.append((worker, units, ahead))
        return batches

    def _send(self, worker: _Worker, units: list[Unit], ahead: bool = False) -> bool:
        """Send ``units`` to ``worker``; True when some of them were dropped unsent (their
        sink said no, or they could not be pickled)."""
        if ahead and worker.batch is None:
            # The batch picked for it just before came to nothing (its units were cancelled or
            # could not be pickled): this one is not ahead of anything, it runs now.
            worker.queued = None
            ahead = False
        count = len(units)
        units = self._with_wires([u for u in units if u.sink.starting(u)])
        dropped = len(units) < count
        if ahead and units and self._message_size(worker, units) > PREFETCH_BYTES:
            # Too large to send ahead without risking a blocked write: wait until it is idle.
            with self._lock:
                self._queue.ready.extendleft(reversed(units))
            units = []
        if not units:
            if ahead:
                worker.queued = None
            else:
                worker.batch = None
            return dropped
        stream = units[0].timeout is not None
        wire_units = []
        fds: list[int] = []
        for unit in units:
            exact = stream or unit in self._suspects
            wire = self._wire_of(unit)
            fn_wire = None
            if wire.fn_key in worker.fn_keys:
                worker.fn_keys.move_to_end(wire.fn_key)
            else:
                fn_wire = to_wire(wire.fn, fds)
                worker.fn_keys[wire.fn_key] = None
                while len(worker.fn_keys) > FN_CACHE_SIZE:
                    worker.fn_keys.popitem(last=False)
            wire_units.append(
                (
                    unit.id,
                    wire.fn_key,
                    fn_wire,
                    unit.mode,
                    unit.timeout,
                    len(unit.items),
                    to_wire(wire.items, fds),
                    exact,
                )
            )
            pooled = wire.items.segment
            if isinstance(pooled, _shm.PooledSegment) and self._segments is not None:
                worker.holds.setdefault(pooled.pool_id, []).append(self._segments.hold(pooled))
                worker.mapped.add(pooled.pool_id)
        forget, worker.to_forget = worker.to_forget, []
        worker.sent += 1
        exacts = [w[-1] for w in wire_units]
        if ahead:
            worker.queued = (units, exacts, worker.sent)
        else:
            self._begin(worker, units, exacts, worker.sent, stream)
        try:
            if fds:
                assert worker.fd_sock is not None
                _shm.send_fds(worker.fd_sock, fds)
            message = (RUN, len(fds), stream, wire_units, forget, worker.sent)
            worker.conn.send_bytes(encode(message))
        except OSError:
            pass  # it died; its sentinel will say so and _on_death re-queues the batch
        return dropped

    def _begin(
        self, worker: _Worker, units: list[Unit], exact: list[bool], seq: int, stream: bool
    ) -> None:
        """Make ``units`` the batch the worker runs now (sent now, or promoted from ahead)."""
        worker.batch = units
        worker.seq = seq
        worker.stream = stream
        worker.exact = exact
        worker.unit_index = worker.item_index = 0
        worker.deadline = self._deadline_for(units[0]) if stream else None

    def _message_size(self, worker: _Worker, units: list[Unit]) -> int:
        """About how many bytes a RUN of ``units`` to ``worker`` would take."""
        size = 0
        for unit in units:
            wire = self._wire_of(unit)
            size += len(wire.items.data) + 64
            if wire.fn_key not in worker.fn_keys:
                size += len(wire.fn.data)
        return size

    @staticmethod
    def _deadline_for(unit: Unit) -> float | None:
        if unit.timeout is None:
            return None
        return time.monotonic() + unit.timeout + hard_deadline_grace(unit.timeout)

    # ----------------------------------------------------------------- receiving outcomes

    def _on_messages(self, worker: _Worker) -> None:
        conn = worker.conn
        try:
            while conn.poll():
                message = _decode_message(conn.recv_bytes())
                kind = message[0]
                if kind == READY:
                    worker.ready = True
                    worker.ready_at = time.monotonic()
                    # Every worker of a pool runs where the first did: its answer stands for
                    # all, but one that could not read our memory turns pulling off for good.
                    if self._pull_ok is None or not message[2]:
                        self._pull_ok = bool(message[2])
                    self._startup_deaths = 0
                    continue
                if kind == INIT_FAILED:
                    self._on_init_failed(message[1])
                    continue
                if kind == LOG:
                    _reemit(message[2])
                    continue
                segments = _receive_segments(worker, message[1])
                if kind == DONE:
                    worker.release_holds(message[4])
                    self._on_done(worker, segments, message[2], message[3])
                elif kind == ITEM:
                    worker.release_holds(message[7])
                    worker.failures += message[8]
                    self._on_item(worker, segments, *message[2:7])
        except (EOFError, OSError):
            pass  # it died; the sentinel says so

    def _on_done(
        self,
        worker: _Worker,
        segments: list[Segment],
        parts: list[tuple[int, WirePayload, float, int]],
        rss: int,
    ) -> None:
        batch = worker.batch or []
        for unit, (unit_id, payload, elapsed, failed) in zip(batch, parts):
            assert unit.id == unit_id, "a worker answered for a unit it was not sent"
            worker.busy += elapsed
            worker.failures += failed
            _release(unit)
            _deliver(unit, 0, len(unit.items), payload, segments, elapsed)
        self._batch_finished(worker, rss)

    def _on_item(
        self,
        worker: _Worker,
        segments: list[Segment],
        unit_id: int,
        position: int,
        payload: WirePayload,
        elapsed: float,
        rss: int,
    ) -> None:
        batch = worker.batch or []
        unit = batch[worker.unit_index]
        assert unit.id == unit_id and position == worker.item_index
        if position + 1 == len(unit.items):
            _release(unit)
        worker.busy += elapsed
        _deliver(unit, position, 1, payload, segments, elapsed)
        worker.item_index += 1
        if worker.item_index == len(unit.items):
            worker.unit_index += 1
            worker.item_index = 0
        if worker.unit_index == len(batch):
            self._batch_finished(worker, rss)
        else:
            worker.deadline = self._deadline_for(batch[worker.unit_index])

    def _batch_finished(self, worker: _Worker, rss: int) -> None:
        for unit in worker.batch or []:
            self._suspects.discard(unit)
        worker.tasks_run += sum(len(u.items) for u in worker.batch or [])
        worker.batch = None
        worker.deadline = None
        if worker.queued is not None:  # it goes straight on with the batch sent ahead
            units, exact, seq = worker.queued
            worker.queued = None
            self._begin(worker, units, exact, seq, stream=False)
            return
        too_many = self._max_tasks is not None and worker.tasks_run >= self._max_tasks
        too_big = self._max_memory is not None and rss > self._max_memory
        if (too_many or too_big) and not (self._closing and self._drained()):
            self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        """Ask an idle worker to exit, and start its replacement now (not when it exits)."""
        worker.retiring = True
        self._restarts["recycle"] += 1
        try:
            worker.conn.send_bytes(encode((STOP,)))
        except OSError:
            pass
        self._start_worker()

    def _on_init_failed(self, tb: str) -> None:
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
            dropped.extend(worker.held_units())
            worker.batch = worker.queued = None
            worker.kill()
        _fail(dropped, error)

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
            worker.killed_for_timeout = True
            worker.timed_out_at = (worker.unit_index, worker.item_index)
            worker.kill()

    def _on_death(self, worker: _Worker) -> None:
        """A worker's sentinel fired: settle what it held, reap it, replace it."""
        self._on_messages(worker)  # anything it managed to send first
        worker.process.join(5.0)
        exitcode = worker.process.exitcode
        _kill_group(worker.pid, None)  # children its task left behind
        if exitcode != 0:  # it did not end on its own: so did not its task's programs
            kill_marked(worker.token)
        with self._lock:
            del self._workers[worker.sentinel]
            self._gone_tasks += worker.tasks_run
        if not worker.retiring and not self._stop_now:
            self._restarts[_death_cause(worker)] += 1
        worker.close_channels()
        worker.release_holds()  # its mappings died with it
        # Replace first, so re-queued work finds a worker; settle last, so nothing here still
        # holds the lost units (and their shared memory) once their outcomes are out. A retired
        # worker's replacement was started when it was asked to go.
        if (
            not worker.retiring
            and not self._stop_now
            and (not self._closing or worker.batch or not self._drained())
        ):
            self._start_worker()
        if self._stop_now:
            # terminate() killed it (or it died as terminate() began): what it held was stopped
            # by the pool, not by a crash of its own; it fails as terminate() says, PoolClosed,
            # like every other unfinished task (a race: the death is seen before _finish runs).
            held = worker.held_units()
            worker.batch, worker.queued = None, None
            _fail(held, self._unfinished_error())
            worker.reaped.set()
            return
        queued, worker.queued = worker.queued, None
        if queued is not None:  # sent ahead, never started (see protocol.py): not to blame
            owner = worker.cancelled_owner
            self._requeue([u for u in queued[0] if owner is None or u.sink.owner is not owner])
        if worker.batch:
            self._settle_lost_batch(worker, exitcode)
        elif not worker.ready and not self._closing:
            # Died before READY (it is never given work before): a broken environment or a
            # crashing initializer must not make the pool restart workers forever.
            self._startup_deaths += 1
            if self._startup_deaths >= MAX_STARTUP_DEATHS:
                self._break(
                    WorkerCrashed(
                        f"worker processes keep dying at start-up "
                        f"({WorkerCrashed.for_exit(worker.pid, exitcode)})",
                        exitcode,
                    )
                )
        worker.reaped.set()

    def _settle_lost_batch(self, worker: _Worker, exitcode: int | None) -> None:
        """Settle the batch of a worker that died: blame the item it was running, if known.

        ``first`` is the first item not delivered yet (a streamed batch delivered the ones
        before); every item from there on is either blamed or re-queued, exactly once. Units
        re-queued whole keep their pickled form; the others' shared memory is released.
        """
        batch, worker.batch = worker.batch or [], None
        for unit in batch:
            self._suspects.discard(unit)
        first: _Position = (worker.unit_index, worker.item_index) if worker.stream else (0, 0)
        rest = _cut(batch, first, None)
        cancelled = worker.cancelled_owner
        if cancelled is not None:  # killed for Ctrl-C: the others were not to blame
            self._settle(batch, [u for u in rest if u.sink.owner is not cancelled])
            return
        state, item = int(worker.mark[0]), int(worker.mark[1])
        seq, index, is_running = read_mark(state) if state != IDLE else (-1, 0, False)
        if seq != worker.seq:  # died before it started on the batch (killed from outside)
            self._settle(batch, rest)
            return
        is_loading = not is_running
        unit = batch[index]
        if len(unit.items) == 1:
            position: _Position | None = (index, 0)
        elif is_loading or not worker.exact[index] or item < 0:
            position = None
        else:
            position = (index, item)
        if worker.killed_for_timeout:
            # Streamed, so the deadline was for worker.timed_out_at. Blame it only if that item
            # was still on (or its unit still loading) when the worker died.
            timed_out = worker.timed_out_at or first
            if position != timed_out and not (is_loading and timed_out == (index, 0)):
                self._settle(batch, rest)
                return
            timeout = batch[timed_out[0]].timeout or 0.0
            error: BaseException = TaskTimeout(
                f"task ran past its timeout of {timeout:g} s and its worker process was "
                f"killed (it did not respond to the in-process alarm)",
                timeout,
            )
            self._settle(batch, _all_but(batch, first, timed_out), (timed_out, error))
            return
        if position is not None:
            if position < first:  # died between two items of a streamed batch
                self._settle(batch, rest)
                return
            crashed = WorkerCrashed.for_exit(worker.pid, exitcode)
            self._settle(batch, _all_but(batch, first, position), (position, crashed))
            return
        # Several items of one unit could be to blame.
        before = _cut(batch, first, (index, 0))
        after = _cut(batch, (index + 1, 0), None)
        if is_loading and worker.exact[index]:
            # Its items could not even be loaded, twice: load each alone to find the culprit.
            middle = unit.singles()
        else:
            # Send it back exact: if it kills again, the mark names the item.
            middle = [unit]
            self._suspects.add(unit)
        self._settle(batch, before + middle + after)

    def _settle(
        self,
        batch: list[Unit],
        requeue: list[Unit],
        blame: tuple[_Position, BaseException] | None = None,
    ) -> None:
        """Re-queue ``requeue`` at the front, release the shared memory of the batch's units
        that are not re-queued whole, then fail the blamed item (last, see _on_death)."""
        self._requeue(requeue)
        kept = {id(u) for u in requeue}
        for unit in batch:
            if id(unit) not in kept:
                _release(unit)
        if blame is not None:
            (index, item), error = blame
            unit = batch[index]
            unit.sink.deliver(unit, item, errors_of(1, error), 0.0)

    def _requeue(self, units: list[Unit]) -> None:
        """Put units back at the front of the queue, in order (pieces are pickled when sent)."""
        with self._lock:
            self._queue.ready.extendleft(reversed(units))

    def _wire_of(self, unit: Unit) -> _Wire:
        """The unit's pickled form, made now if it has none yet (any thread).

        Raises :class:`~conveyor._errors.Unsendable` naming the item that cannot be pickled.
        """
        if unit.wire is None:
            key, fn_payload = self._functions.get(unit.fn)
            first = unit.tags[0] if unit.tags and isinstance(unit.tags[0], int) else 0
            # A map's chunk (pickled here, as it is sent) lets the worker copy its large
            # buffers itself; a submit is copied by its caller now (see conveyor._pull).
            pull = not unit.eager and self._pull_ok is True
            items = items_payload(unit.items, unit.mode, first, self._segments, pull)
            unit.wire = _Wire(key, fn_payload, items)
        return unit.wire

    def _with_wires(self, units: list[Unit]) -> list[Unit]:
        """The units whose pickled form exists or can be made now; each other one is failed
        with the reason (a map's item that cannot be pickled, shared memory exhausted)."""
        sendable = []
        for unit in units:
            try:
                self._wire_of(unit)
            except Exception as exc:
                _fail([unit], exc)
                continue
            sendable.append(unit)
        return sendable

    # ----------------------------------------------------------------- workers

    def _start_worker(self) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        lifeline_r, lifeline_w = self._ctx.Pipe(duplex=False)
        fd_parent, fd_child = socket.socketpair() if _shm.AVAILABLE else (None, None)
        # Shared memory the worker writes its position into (multiprocessing's heap: a file
        # under /dev/shm that is unlinked as soon as it is made, so nothing can be left there).
        mark = self._ctx.RawArray("q", 2)
        mark[0] = mark[1] = IDLE
        token = new_token()
        try:
            with _parent_fds_lock:
                _parent_fds.update(
                    h.fileno() for h in (parent_conn, lifeline_w, fd_parent) if h is not None
                )
                close_fds = tuple(_parent_fds) if self.start_method == "fork" else ()
                process = start_worker(
                    self._ctx,
                    worker_main,
                    (
                        child_conn,
                        lifeline_r,
                        fd_child,
                        self._init_blob,
                        self._max_memory is not None,
                        mark,
                        token,
                        close_fds,
                        _pull.probe_args()
                        if self._segments is not None and _pull.AVAILABLE
                        else None,
                        worker_logging.levels(),
                    ),
                    f"conveyor-worker-{next(_worker_numbers)}",
                )
        except BaseException:
            _close(parent_conn, lifeline_w, fd_parent)
            raise
        finally:
            child_conn.close()
            lifeline_r.close()
            if fd_child is not None:
                fd_child.close()
        worker = _Worker(process, parent_conn, lifeline_w, fd_parent, mark, token)
        with self._lock:
            self._workers[worker.sentinel] = worker

    def _stop_workers(self) -> None:
        """Graceful end: ask every worker to exit, wait a while, kill what is left."""
        for worker in self._workers.values():
            try:
                worker.conn.send_bytes(encode((STOP,)))
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
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            dropped.extend(worker.held_units())
            worker.batch = worker.queued = None
            worker.kill()
        for worker in workers:
            worker.process.join(5.0)
            _kill_group(worker.pid, None)
            worker.close_channels()
            worker.reaped.set()
        _fail(dropped, self._unfinished_error())
        for worker in workers:
            worker.release_holds()
        if self._segments is not None:
            self._segments.close()
        self._functions.clear()  # a captured 1 GB array must not outlive the pool
        self._finished.set()
        _close(self._wake_r, self._wake_w)

    def payload_size(self, items: Sequence[Any]) -> int:
        """About how many bytes sending ``items`` to a worker copies (see Backend)."""
        return copied_bytes(items)


def _cut(batch: list[Unit], start: _Position, stop: _Position | None) -> list[Unit]:
    """Units for the items of ``batch`` from ``start`` up to ``stop`` (exclusive; None: the end).

    Whole units are reused as they are (their pickled form too); parts become pieces.
    """
    stop = stop if stop is not None else (len(batch), 0)
    units = []
    for index in range(start[0], min(stop[0] + 1, len(batch))):
        unit = batch[index]
        lo = start[1] if index == start[0] else 0
        hi = stop[1] if index == stop[0] else len(unit.items)
        if lo >= hi:
            continue
        units.append(unit if lo == 0 and hi == len(unit.items) else unit.piece(lo, hi))
    return units


def _all_but(batch: list[Unit], first: _Position, position: _Position) -> list[Unit]:
    """The items of ``batch`` from ``first`` on, without the one at ``position``."""
    index, item = position
    return _cut(batch, first, position) + _cut(batch, (index, item + 1), None)


def _forget_child(process: BaseProcess) -> None:
    """Make multiprocessing forget a worker that this (forked) process did not start, so that
    its exit handler does not try to join it."""
    from multiprocessing import process as mp_process

    mp_process._children.discard(process)  # type: ignore[attr-defined]


def _decode_message(data: bytes) -> tuple[Any, ...]:
    from .protocol import decode

    return decode(data)


def _short(worker: _Worker) -> bool:
    """Whether the worker runs an untimed batch expected to end soon: only then is another
    sent ahead, so a batch never waits long behind a slow one while another worker is free."""
    if worker.batch is None or worker.stream:
        return False
    expected = sum(u.estimate for u in worker.batch)
    return all(u.estimate > 0 for u in worker.batch) and expected <= PREFETCH_SECONDS


def _release(unit: Unit) -> None:
    """Close our descriptor of a settled unit's item segment (retries are pickled anew)."""
    wire: _Wire | None = unit.wire
    if wire is not None:
        wire.items.release()


def _receive_segments(worker: _Worker, count: int) -> list[Segment]:
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


def _death_cause(worker: _Worker) -> str:
    """Why a worker that the pool did not stop is gone (a key of PoolStats.restarts)."""
    if worker.killed_for_timeout:
        return "timeout"
    if worker.cancelled_owner is not None:
        return "stopped"
    return "crash"


def _reemit(record: dict[str, Any]) -> None:
    """Hand a worker's log record to the caller's logging; a failing handler must not end the
    dispatcher thread (logging reports its own handlers' errors; this is for the rest)."""
    try:
        worker_logging.reemit(record)
    except Exception:
        pass


def _fail(units: list[Unit], error: BaseException) -> None:
    for unit in units:
        unit.sink.deliver(unit, 0, errors_of(len(unit.items), error), 0.0)
