"""The dispatcher's record of one worker process: its state, what it holds, its channels.

Data flow (who touches a record)::

    dispatcher thread (owner)                  other threads (interrupt, terminate, stats, ...)
    -------------------------                  ------------------------------------------------
    every transition below, under the          under the lock: read state and holdings
    backend's lock (one critical section       (assigned_units), add to ``cancelled`` (interrupt);
    per transition)                            kill() a worker that is not DEAD
    its own fields (deadline, stream           plain numbers read whole, without the lock
    position, fn_keys, holds) without it       (tasks_run, busy, failures: Pool.stats)

The worker's life (:class:`State`) and its named transitions::

    STARTING --ready()--> IDLE --reserve()--> BUSY --finish()--> IDLE, or BUSY again when
                           |  ^               |  |               the batch sent ahead begins
                           |  +--unreserve()--+  +-- reserve_ahead(), begin(), send_ahead(),
                           |   (nothing sent)    |   unreserve(ahead=True)
                        retire()                 |
                           v                     v
                        RETIRING -----------> DEAD  (die(): its sentinel fired, or the pool
                                                     finished; from any state)

A batch is *reserved* (picked under the lock, in ``ProcessBackend._take_batches``) before it is
sent (outside it: the sinks' ``starting`` and the pickling run there), so the units are among the
holdings from the moment they leave the queue.

The lock rule (kept by every write in this module; the callers hold the lock):

* ``state``, ``batch``, ``ahead`` and ``cancelled`` change only under the backend's lock, and a
  transition is one critical section. Another thread holding the lock therefore sees a worker
  before or after a transition, never half-way: a unit that a worker may be running is always
  among its :meth:`WorkerRecord.assigned_units` (the race this rule closes: ``interrupt()`` ran
  between "the batch is done" and "the batch sent ahead begins", saw nothing, and missed a
  worker running the interrupted job's chunk; ``tests/test_worker_holdings.py``).
* The dispatcher is the only writer of ``state``, ``batch`` and ``ahead``, so it reads them
  without the lock; any other thread reads them only under it. ``cancelled`` is written by
  ``interrupt()`` (under the lock) and read by the dispatcher under the lock when it settles.
* Every other field is the dispatcher's alone, except the counters ``Pool.stats()`` reads as
  single numbers (each read is whole).
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sys
import threading
from collections import OrderedDict
from multiprocessing.connection import Connection, Pipe
from multiprocessing.process import BaseProcess

from ... import _shm
from ..._envmark import kill_marked, new_token
from ..._work import Unit
from .protocol import Mark
from .spawning import start_worker
from .worker import worker_main

TYPE_CHECKING = False  # typing is for type checkers only: a cold map must not pay its import
if TYPE_CHECKING:
    from typing import Any

    from .settlement import Position
    from .worker_logging import Levels

__all__ = [
    "State",
    "WorkerPlan",
    "WorkerRecord",
    "close_handles",
    "kill_group",
    "launch",
    "parent_fds",
    "register",
]

_worker_numbers = itertools.count(1)


class State:
    """Where a worker is in its life (see the module's diagram): one of these strings, compared
    with ``is``. (Not an ``enum.Enum``: making its class costs ~0.25 ms of a cold map.)"""

    STARTING = "STARTING"  # started; not READY yet (its initializer runs): given no work
    IDLE = "IDLE"  # READY and holds nothing
    BUSY = "BUSY"  # holds a batch (reserved or running), and maybe one sent ahead
    RETIRING = "RETIRING"  # asked to exit (STOP sent); its replacement is already started
    DEAD = "DEAD"  # its sentinel fired: being reaped and settled, then forgotten


# Our ends of the pipes and sockets of every worker of every pool in this process. A worker
# started by ``fork`` inherits all of them, among them the write end of its own lifeline, which
# would keep it alive after our death; it closes them first thing (see worker_main). The lock is
# held from registering to the fork, and from unregistering to closing, so a number in the set
# is always one of ours and never an unrelated file that reused it.
parent_fds: set[int] = set()
parent_fds_lock = threading.Lock()


def register(*handles: Connection | socket.socket | None) -> None:
    """Note our ends of the pool's pipes and sockets (a worker forked later closes them)."""
    with parent_fds_lock:
        parent_fds.update(h.fileno() for h in handles if h is not None)


def close_handles(*handles: Connection | socket.socket | None) -> None:
    """Close our ends of pipes and sockets, forgetting their numbers first."""
    with parent_fds_lock:
        for handle in handles:
            if handle is None:
                continue
            try:
                fd = handle.fileno()
            except (OSError, ValueError):
                continue  # closed already
            if fd >= 0:
                parent_fds.discard(fd)
                handle.close()


def kill_group(pid: int | None, process: BaseProcess | None) -> None:
    """SIGKILL the process group led by ``pid`` (or, where groups are not, the process)."""
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


class WorkerRecord:
    """The dispatcher's record of one worker process (see the module's lock rule)."""

    def __init__(
        self,
        process: BaseProcess,
        conn: Connection,
        lifeline: Connection,
        fd_sock: socket.socket | None,
        mark: Mark,
        token: str,
    ):
        self.process = process
        self.token = token  # in its environment and its programs' (see conveyor._envmark)
        self.conn = conn
        self.lifeline = lifeline  # never written; closing it (or our death) tells the worker to go
        self.fd_sock = fd_sock  # descriptors of shared-memory segments travel here
        self.mark = mark  # shared with the worker: where it is in its batch (see protocol.py)
        self._pid: int | None = None  # (see pid)
        self._pid_read = False
        self.sentinel = process.sentinel
        # it has the caller's __main__ as it was at the zygote's birth (see
        # packing.FunctionCache.seed): a fork of the zygote (ProcessBackend also marks the
        # workers it forked itself in the call that bore the zygote)
        self.has_birth_main: bool = getattr(getattr(process, "_popen", None), "from_zygote", False)
        # -- state and holdings: written under the backend's lock (the lock rule)
        self.state: str = State.STARTING
        self.batch: list[Unit] | None = None  # the batch it runs (or is reserved for it)
        # a batch sent ahead, run when the current one is done: (units, exact, number); the
        # number is -1 while it is only reserved (picked, not sent yet)
        self.ahead: tuple[list[Unit], list[bool], int] | None = None
        self.cancelled: tuple[object, ...] = ()  # owners whose work it was killed to stop
        # -- the dispatcher's alone
        self.said_ready = False  # it said READY (its initializer ran)
        self.fn_keys: OrderedDict[int, None] = OrderedDict()
        self.seq = 0  # the running batch's number (see protocol.py, the mark)
        self.sent = 0  # batches sent so far
        self.stream = False
        self.exact: list[bool] = []  # per unit of the batch: sent exact (each item marked)
        self.unit_index = 0  # streamed batch: the first unit and item not yet delivered
        self.item_index = 0
        self.deadline: float | None = None
        self.timed_out_at: Position | None = None  # killed for this item's timeout
        self.holds: dict[int, list[_shm.Hold]] = {}  # pooled segments it may still view
        self.mapped: set[int] = set()  # pooled segments it keeps mapped
        self.to_forget: list[int] = []  # closed pooled segments it must unmap
        # -- counters (Pool.stats reads them whole, without the lock)
        self.tasks_run = 0
        self.busy = 0.0  # seconds its items ran, as it measured them (for Pool.stats)
        self.failures = 0  # items that raised in it (each attempt)
        self.ready_at = 0.0  # time.monotonic() when it said READY
        self.reaped = threading.Event()

    def __repr__(self) -> str:
        return f"<WorkerRecord pid={self.pid} {self.state}>"

    @property
    def pid(self) -> int | None:
        """Its pid, read from its process handle when first asked (a zygote's first worker's
        comes from the zygote then) and kept (the handle is closed once it is reaped)."""
        if not self._pid_read:
            self._pid, self._pid_read = self.process.pid, True
        return self._pid

    # ----------------------------------------------------------- reads (see the lock rule)

    def assigned_units(self) -> list[Unit]:
        """Every unit it holds: the running (or reserved) batch, then the one sent ahead."""
        batch, ahead = self.batch, self.ahead  # each read once (a free-threaded build)
        return (batch or []) + (ahead[0] if ahead is not None else [])

    def holds_work_of(self, owner: object) -> bool:
        """Whether a unit it holds belongs to ``owner`` (under the lock)."""
        return any(u.sink.owner is owner for u in self.assigned_units())

    # ----------------------------------------------- transitions (dispatcher, under the lock)

    def ready(self, now: float) -> None:
        """STARTING -> IDLE: its initializer ran; it may be given work."""
        self.said_ready = True
        self.ready_at = now
        if self.state is State.STARTING:
            self.state = State.IDLE

    def reserve(self, units: list[Unit]) -> None:
        """IDLE -> BUSY: ``units`` are picked for it (sent by :meth:`begin`, or dropped)."""
        assert self.state is State.IDLE and self.batch is None, self
        self.state = State.BUSY
        self.batch = units

    def reserve_ahead(self, units: list[Unit]) -> None:
        """BUSY: ``units`` are picked to be sent ahead of the end of its batch."""
        assert self.state is State.BUSY and self.ahead is None, self
        self.ahead = (units, [], -1)

    def begin(self, units: list[Unit], exact: list[bool], seq: int, stream: bool) -> None:
        """BUSY: ``units`` (of its reservation) are sent as batch ``seq`` and run now."""
        assert self.state is State.BUSY, self
        self.batch = units
        self.seq = seq
        self.stream = stream
        self.exact = exact
        self.unit_index = self.item_index = 0

    def send_ahead(self, units: list[Unit], exact: list[bool], seq: int) -> None:
        """BUSY: ``units`` (of its reservation ahead) are sent as batch ``seq``."""
        assert self.state is State.BUSY and self.batch is not None, self
        self.ahead = (units, exact, seq)

    def unreserve(self, ahead: bool) -> None:
        """Nothing of a reservation was sent (cancelled, unpicklable, too large to go ahead).

        The reservation ahead of a batch that came to nothing becomes the batch (BUSY, still
        reserved: sending it is up to the caller); with nothing left it goes back to IDLE.
        """
        if ahead:
            self.ahead = None
            return
        self.batch = None
        if self.ahead is not None:
            self.batch, self.ahead = self.ahead[0], None
        else:
            self.state = State.IDLE

    def finish(self) -> list[Unit]:
        """BUSY -> IDLE, or BUSY with the batch sent ahead running: the batch is done.

        Returns the finished batch.
        """
        assert self.state is State.BUSY, self
        done = self.batch or []
        self.tasks_run += sum(len(u.items) for u in done)
        self.batch = None
        ahead, self.ahead = self.ahead, None
        if ahead is not None:  # it goes straight on with the batch sent ahead
            self.begin(ahead[0], ahead[1], ahead[2], stream=False)
        else:
            self.state = State.IDLE
        return done

    def retire(self) -> None:
        """IDLE -> RETIRING: it is asked to exit (its replacement starts now)."""
        assert self.state is State.IDLE, self
        self.state = State.RETIRING

    def die(self) -> None:
        """Any -> DEAD: its sentinel fired (it keeps its holdings until :meth:`take_holdings`)."""
        self.state = State.DEAD

    def take_holdings(self) -> tuple[list[Unit], list[Unit]]:
        """(running batch, batch sent ahead), now held by the caller."""
        batch, ahead = self.batch or [], self.ahead[0] if self.ahead is not None else []
        self.batch = self.ahead = None
        return batch, ahead

    # ----------------------------------------------------------------- process and channels

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
        close_handles(self.conn, self.lifeline, self.fd_sock)
        self._pid = self.pid  # read before the handle, which knows it, is closed
        try:
            self.process.close()
        except ValueError:
            pass  # not reaped (join timed out): the handle is closed when it is collected

    def kill(self) -> None:
        """SIGKILL the worker's process group (itself and what its tasks started), then the
        programs its tasks started that left the group."""
        kill_group(self.pid, self.process)
        kill_marked(self.token)


class WorkerPlan:
    """A worker's pipe, lifeline, fd socket, mark and token, made before its process starts.

    ``forked``: the worker will be a fork of this process, or of a zygote born after the plan
    (its mark is then memory it inherits, see :class:`.protocol.Mark`).

    Our ends are registered in ``parent_fds`` here (a worker forked later closes them). A plan
    is started once: by :func:`launch` (a fork of this process or a zygote's child asked for
    now), or, for the first workers of the pool that bears the zygote, by the zygote itself at
    its birth (see :mod:`.zygote`, "First workers": :attr:`first`), and then taken over
    (``ProcessBackend._adopt``).
    """

    __slots__ = (
        "args",
        "child_conn",
        "conn",
        "fd_child",
        "fd_sock",
        "first",
        "lifeline",
        "lifeline_r",
        "mark",
        "name",
        "token",
    )

    def __init__(self, init_blob: bytes | None, report_memory: bool, forked: bool) -> None:
        self.conn, self.child_conn = Pipe(duplex=True)
        self.lifeline_r, self.lifeline = Pipe(duplex=False)
        self.fd_sock: socket.socket | None = None
        self.fd_child: socket.socket | None = None
        if _shm.AVAILABLE:
            self.fd_sock, self.fd_child = socket.socketpair()
        # shared memory the worker writes its position into (inherited, for a forked worker)
        self.mark = Mark(forked=forked)
        self.token = new_token()
        #: worker_main's arguments but close_fds (known at the fork only)
        self.args = (
            self.child_conn,
            self.lifeline_r,
            self.fd_child,
            init_blob,
            report_memory,
            self.mark,
            self.token,
        )
        self.name = f"conveyor-worker-{next(_worker_numbers)}"
        self.first: Any = None  # its zygote.FirstWorker, if a zygote born now is to fork it
        register(self.conn, self.lifeline, self.fd_sock)

    def worker_args(self, close_fds: tuple[int, ...], pull_probe: Any) -> tuple[Any, ...]:
        """``worker_main``'s arguments, for a worker that closes ``close_fds`` first."""
        return (*self.args, close_fds, pull_probe, _log_levels())

    def child_fds(self) -> list[int]:
        """The worker's ends, which only the worker may keep once it runs."""
        handles = (self.child_conn, self.lifeline_r, self.fd_child)
        return [h.fileno() for h in handles if h is not None]

    def close_child_ends(self) -> None:
        """Close our copies of the worker's ends (once it has its own)."""
        for handle in (self.child_conn, self.lifeline_r, self.fd_child):
            if handle is not None:
                handle.close()

    def make_first_worker(self, pull_probe: tuple[int, int, bytes] | None) -> None:
        """Make :attr:`first`, the :class:`.zygote.FirstWorker` of this plan, for a zygote born
        now to fork. Its ``close_fds`` are none: the zygote closes ``parent_fds`` at its birth.
        Its parent sentinel is the lifeline, which ends with the caller."""
        from .zygote import FirstWorker

        args = self.worker_args((), pull_probe)
        fds = self.child_fds()
        self.first = FirstWorker(worker_main, args, self.name, fds, self.lifeline_r.fileno())

    def record(self, process: BaseProcess) -> WorkerRecord:
        """The record of the worker started from this plan."""
        return WorkerRecord(process, self.conn, self.lifeline, self.fd_sock, self.mark, self.token)

    def abandon(self) -> None:
        """The worker could not be started, or is not to be: close everything."""
        if self.first is not None:
            self.first.discard()
        self.close_child_ends()
        close_handles(self.conn, self.lifeline, self.fd_sock)


def _log_levels() -> Levels | None:
    """The caller's logging levels for a new worker, or None when this process has not
    imported ``logging``: then nothing set them, and a cold map imports neither it nor
    worker_logging (the worker ships its records once it has logging itself:
    ``worker._logs_waiting``)."""
    if "logging" not in sys.modules:
        return None
    from . import worker_logging

    return worker_logging.levels()


def launch(
    ctx: Any,
    init_blob: bytes | None,
    report_memory: bool,
    pull_probe: tuple[int, int, bytes] | None,
) -> WorkerRecord:
    """Start a worker process (see :func:`.worker.worker_main`) and make its record (STARTING).

    Its pipe, its lifeline and its fd socket are made here (:class:`WorkerPlan`); our ends are
    registered (a worker forked later closes them, see ``parent_fds``) before the fork.
    """
    forked = ctx.get_start_method() == "fork"
    plan = WorkerPlan(init_blob, report_memory, forked)
    try:
        with parent_fds_lock:
            close_fds = tuple(parent_fds) if forked else ()
            process = start_worker(
                ctx, worker_main, plan.worker_args(close_fds, pull_probe), plan.name
            )
    except BaseException:
        plan.abandon()
        raise
    plan.close_child_ends()
    return plan.record(process)
