"""The thread backend: units run on a set of worker threads in this process.

Data flow::

    caller threads                 worker threads (N)                  watchdog thread (on demand)
    --------------                 ------------------                  ---------------------------
    submit(units) --> ready deque  take a unit, run fn on each item,   waits for the nearest task
                      backoff heap deliver outcomes to unit.sink       deadline; abandons a thread
                      (retries)    (per item when the unit has a       past it: TaskTimeout for the
                                   timeout, else once per unit)        item, the rest re-queued, a
                                                                       fresh thread in its place

Threads cannot be killed. A task past its timeout is *abandoned*: the caller gets
:class:`~conveyor.TaskTimeout` on time, a new thread takes the old one's place so the pool keeps
its size, and the old thread is asked to stop by an asynchronous exception
(``PyThreadState_SetAsyncExc``), which interrupts Python code at the next bytecode but not a call
blocked in C (``time.sleep``, a socket read); such a thread ends when the call returns and its
result is thrown away. A task that catches the exception and goes on runs to its end, unseen.
The process backend, in contrast, really stops the task (and keeps its worker when it can).
``terminate()`` abandons every running task the same way: each gets
:class:`~conveyor._errors.PoolClosed` at once (so nobody waits on a future or a map that can
no longer end), and its thread is asked to stop. ``interrupt(owner)`` (Ctrl-C in a map, a
cancelled ``await`` in the asyncio front) abandons just that owner's running tasks, delivers
nothing for them, and puts fresh threads in their places.

Races, and what settles them:

* an item finishing just as its deadline passes: ``_ThreadState.lock`` (below);
* the asynchronous exception must hit the abandoned thread, never another one: it is raised
  while the watchdog holds that lock, when the thread is certainly still inside the item (it
  cannot get past the lock), so the thread is alive and its id cannot have been reused;
* the watchdog reads each thread's ``current`` once per look (a worker may clear it meanwhile);
* the watchdog ends with the pool: closing and every worker thread's exit wake it up;
* ``terminate()`` against a task ending: the same lock, around ``unit``/``position`` (the
  items not yet delivered), which every worker thread keeps while it runs anything;
* the last thread leaving while work comes in (a retry, a job's chunk after ``shutdown``): a
  thread leaves only under ``_cv`` with nothing queued, in backoff or expected (no open ticket),
  and ``submit`` starts a thread under ``_cv`` when none is left; a thread abandoned while
  work is queued is always replaced, also during a shutdown;
* a worker thread takes a ready unit *without* ``_cv`` when it can (``WorkQueue.pop_ready``,
  one atomic ``popleft``; see backends/queue.py for why ``cancel`` and ``take_all`` cannot then
  put a unit in two places). Taking ``_cv`` for every unit made a lock convoy: once a forced GIL
  switch found one thread holding ``_cv``, the other blocked on it in the kernel, got it
  handed over on release and then waited for the GIL while holding it, so the first blocked
  next, and so on, two context switches a unit (``Pool.map`` of 100k tiny items on 2 threads:
  ~202,000 switches, 2.0 s, against 1.06 s for ``ThreadPoolExecutor``). The thread goes the
  locked way when the pool is ending, the thread is abandoned, retries wait in their backoff
  (they are released there) or nothing is ready (it waits there);
* ``terminate()`` against a unit taken but not yet marked running (``state.unit``): the thread
  marks it under ``state.lock`` only if ``_terminated`` is still false, and ``terminate`` sets
  that before it looks at any thread's unit under the same lock; so either ``terminate`` sees
  the unit and fails it as running, or the thread sees ``_terminated`` and fails it as not
  started (also between two items of a unit with a timeout);
* ``shutdown(wait=True)`` waits until no worker thread is left (not for abandoned ones: they
  may be stuck in C for good). Called on one of the pool's own threads (a task, a
  done-callback) it would wait for itself: it shuts the pool down and raises RuntimeError, as
  ``ThreadPoolExecutor`` does.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence

from .._errors import PoolClosed
from .._tally import RESTART_CAUSES
from .._work import Abandoned, Unit, errors_of, outcomes_of, run_items
from .base import Backend, fail_units
from .queue import JobTicket, WorkQueue

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .._stats import PoolStats

__all__ = ["ThreadBackend"]

#: what an item fails with when terminate() came before it started (queued, or just taken)
TERMINATED_BEFORE_START = "the pool was terminated before the task started"

_thread_names = itertools.count(1)


class _ThreadState:
    """What the watchdog needs to know about one worker thread.

    ``lock`` orders the race between a task finishing and the watchdog abandoning it: whichever
    takes the lock first wins; the loser sees ``current`` changed (watchdog) or ``abandoned`` set
    (worker) and backs off, so an item never gets both a result and a TaskTimeout.
    """

    __slots__ = (
        "abandoned",
        "busy",
        "current",
        "failures",
        "lock",
        "position",
        "started",
        "tasks",
        "thread",
        "unit",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # (unit, item position, deadline) while a timed item runs
        self.current: tuple[Unit, int, float] | None = None
        # the unit running, and its first item not delivered yet (for terminate)
        self.unit: Unit | None = None
        self.position = 0
        self.abandoned = False
        self.thread: threading.Thread | None = None
        # Pool.stats(): written by its own thread only, read by others as whole numbers
        self.tasks = 0
        self.failures = 0
        self.busy = 0.0
        self.started = time.monotonic()


class ThreadBackend(Backend):
    """Runs units on worker threads of this process.

    Example::

        >>> from conveyor.backends.thread import ThreadBackend
        >>> backend = ThreadBackend(workers=4)
        >>> backend.shutdown()
    """

    name = "thread"
    stops_timed_out_tasks = False

    def __init__(
        self,
        workers: int,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
    ):
        super().__init__(workers)
        self._initializer = initializer
        self._initargs = initargs
        lock = threading.RLock()
        self._cv = threading.Condition(lock)
        # A shutdown waits for the threads to leave on a condition of its own (same lock):
        # were it a waiter of _cv, submit's notify(n) could wake it instead of an idle thread,
        # which would then sleep on with the unit queued (found by the state-machine test).
        self._all_gone = threading.Condition(lock)
        self._queue = WorkQueue()
        self._states: set[_ThreadState] = set()
        self._exited: list[threading.Thread] = []  # threads that left, to join in shutdown
        self._closing = False
        self._terminated = False
        self._broken: BaseException | None = None
        self._watchdog: threading.Thread | None = None
        self._watch_cv = threading.Condition()
        self._gone_tasks = 0  # items run by threads that left (Pool.stats; under _cv)
        self._timeouts = 0  # threads abandoned at an item's deadline and replaced
        for _ in range(workers):
            self._start_thread()

    # ----------------------------------------------------------------- front (any thread)

    def stats(self) -> PoolStats:
        """Figures per live thread (see conveyor.Pool.stats); pid is this process's."""
        from .._stats import PoolStats, WorkerStats  # dataclasses: imported when asked for

        now, pid = time.monotonic(), os.getpid()
        with self._cv:
            states, gone, timeouts = list(self._states), self._gone_tasks, self._timeouts
        rows = [
            WorkerStats(
                name=s.thread.name if s.thread is not None else "",
                pid=pid,
                tasks=s.tasks,
                failures=s.failures,
                busy=s.busy,
                idle=max(0.0, now - s.started - s.busy),
            )
            for s in states
        ]
        restarts = dict.fromkeys(RESTART_CAUSES, 0)
        restarts["timeout"] = timeouts
        return PoolStats(rows, gone + sum(s.tasks for s in states), restarts)

    def submit(self, units: Sequence[Unit], ticket: JobTicket | None = None) -> None:
        with self._cv:
            if self._broken is not None:
                raise self._broken
            if self._terminated or (self._closing and not (ticket is not None and ticket.open)):
                raise PoolClosed("cannot submit to a pool that was shut down")
            self._queue.add(units, time.monotonic())
            if not self._states:  # every thread left (shutting down): one must run these
                self._start_thread()
            self._cv.notify(len(units))

    def begin_job(self) -> JobTicket:
        with self._cv:
            if self._broken is not None:
                raise self._broken
            if self._closing or self._terminated:
                raise PoolClosed("cannot submit to a pool that was shut down")
            return self._queue.open_job()

    def end_job(self, ticket: JobTicket | None) -> None:
        if ticket is None:
            return
        with self._cv:
            self._queue.close_jobs([ticket])
            self._cv.notify_all()  # threads waiting for it may leave now

    def cancel(self, owner: object) -> None:
        with self._cv:
            self._queue.cancel(owner)

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        current = threading.current_thread()
        with self._cv:
            self._closing = True
            dropped = []
            if cancel_pending:
                dropped = self._take_all_queued()
                self._queue.close_jobs()
            elif wait:
                self._queue.close_jobs(self._queue.jobs_driven_by(current))
            self._cv.notify_all()
            own = current is self._watchdog or any(s.thread is current for s in self._states)
        fail_units(dropped, PoolClosed("the pool was shut down before the task started"))
        self._poke_watchdog()
        if not wait:
            return
        if own:
            raise RuntimeError(
                "cannot join current thread: shutdown(wait=True) was called on one of the "
                "pool's own threads (by a task or a done-callback), which it would wait for; "
                "the pool is shutting down. Use shutdown(wait=False) there"
            )
        with self._cv:
            while self._states:
                self._all_gone.wait()
            exited, self._exited = self._exited, []
        for thread in exited:
            thread.join()

    def terminate(self) -> None:
        with self._cv:
            self._terminated = self._closing = True
            dropped = self._take_all_queued()
            self._queue.close_jobs()
            self._cv.notify_all()
            states = list(self._states)
        fail_units(dropped, PoolClosed(TERMINATED_BEFORE_START))
        with self._watch_cv:
            self._watch_cv.notify_all()
        for state in states:
            with state.lock:
                unit, position = state.unit, state.position
                if unit is None or state.abandoned:
                    continue
                state.abandoned = True
                state.unit = state.current = None
                _stop_thread(state)
            with self._cv:
                self._states.discard(state)  # a shutdown(wait=True) must not wait for it
                self._all_gone.notify_all()
            error = PoolClosed("the pool was terminated while the task ran")
            unit.sink.deliver(unit, position, errors_of(len(unit.items) - position, error), 0.0)

    def interrupt(self, owner: object, wait: bool = True) -> None:
        """Cancel ``owner``'s queued units and abandon its running ones as :meth:`terminate`
        does: each such thread is asked to stop (an asynchronous exception, which a call
        blocked in C sees only when it returns) and a fresh thread takes its place at once.
        Nothing is delivered for the abandoned units; ``wait`` changes nothing (there is
        nothing to reap)."""
        with self._cv:
            self._queue.cancel(owner)
            states = list(self._states)
        for state in states:
            with state.lock:
                unit = state.unit
                if unit is None or state.abandoned or unit.sink.owner is not owner:
                    continue
                state.abandoned = True
                state.unit = state.current = None
                _stop_thread(state)
            with self._cv:
                self._states.discard(state)
                if not (self._closing or self._terminated):
                    self._start_thread()
                self._cv.notify()

    @property
    def alive(self) -> bool:
        return not (self._closing or self._terminated)

    def forget_after_fork(self) -> None:
        # This child has none of the threads; locks may have been held by them at the fork.
        lock = threading.RLock()
        self._cv = threading.Condition(lock)
        self._all_gone = threading.Condition(lock)
        self._watch_cv = threading.Condition()
        self._queue = WorkQueue()
        self._states = set()
        self._exited = []
        self._watchdog = None
        self._closing = self._terminated = True
        self._broken = PoolClosed(self.fork_error())

    # ----------------------------------------------------------------- worker threads

    def _start_thread(self) -> None:
        state = _ThreadState()
        thread = threading.Thread(
            target=self._thread_main,
            args=(state,),
            name=f"conveyor-thread-{next(_thread_names)}",
            daemon=True,
        )
        state.thread = thread
        self._states.add(state)
        thread.start()

    def _take_all_queued(self) -> list[Unit]:
        return self._queue.take_all()

    def _next_unit(self, state: _ThreadState) -> Unit | None:
        """Block until there is a unit to run; None when this thread should end."""
        queue = self._queue
        if not (
            self._terminated or state.abandoned or self._broken is not None or queue.has_backoff
        ):
            unit = queue.pop_ready()  # without _cv (see the module docstring)
            if unit is not None:
                return unit
        with self._cv:
            while True:
                if self._terminated or state.abandoned or self._broken is not None:
                    self._leave(state)
                    return None
                now = time.monotonic()
                self._queue.release_due(now)
                if self._queue.ready:
                    return self._queue.ready.popleft()
                if self._closing and not self._queue.has_backoff and not self._queue.jobs:
                    self._leave(state)
                    self._poke_watchdog()  # the last thread out lets the watchdog end too
                    return None
                due = self._queue.next_due()
                wait = None if due is None else due - now
                self._cv.wait(wait)

    def _leave(self, state: _ThreadState) -> None:
        """The thread of ``state`` ends (call holding ``_cv``)."""
        if state not in self._states:
            return
        self._states.discard(state)
        self._gone_tasks += state.tasks
        if state.thread is not None and not state.abandoned:
            self._exited.append(state.thread)
        self._all_gone.notify_all()
        self._cv.notify_all()

    def _thread_main(self, state: _ThreadState) -> None:
        try:
            if self._initializer is not None:
                try:
                    self._initializer(*self._initargs)
                except BaseException as exc:
                    self._break(exc)
                    return
            while True:
                unit = self._next_unit(state)
                if unit is None:
                    return
                if unit.sink.starting(unit):
                    self._run_unit(state, unit)
                # Let go of the unit (its function, items and sink) before waiting for the next:
                # a finished task must not be kept alive by an idle thread.
                unit = None
                if state.abandoned:
                    return
        except BaseException:
            # Only an abandoned thread gets here: the watchdog's asynchronous exception arrived
            # after the task had ended. The item was settled by the watchdog already.
            if not state.abandoned:
                raise
        finally:
            with self._cv:
                self._leave(state)  # however it ends, a shutdown must not wait for it

    def _run_unit(self, state: _ThreadState, unit: Unit) -> None:
        timeout = unit.timeout
        if timeout is None:
            if not self._mark_running(state, unit, 0, None):
                return
            started = time.perf_counter()
            values, errors = run_items(unit.fn, unit.mode, unit.items)
            with state.lock:
                if state.abandoned:
                    return  # terminate() settled its items
                state.unit = None
            elapsed = time.perf_counter() - started
            state.tasks += len(values)
            state.failures += len(errors)
            state.busy += elapsed
            unit.sink.deliver(unit, 0, outcomes_of(values, errors), elapsed)
            return
        for position, item in enumerate(unit.items):
            started = time.perf_counter()
            if not self._mark_running(state, unit, position, timeout):
                return
            self._wake_watchdog()
            values, errors = run_items(unit.fn, unit.mode, [item])
            with state.lock:
                if state.abandoned:
                    return  # TaskTimeout (watchdog) or PoolClosed (terminate) was delivered
                state.current = state.unit = None
            elapsed = time.perf_counter() - started
            state.tasks += 1
            state.failures += len(errors)
            state.busy += elapsed
            unit.sink.deliver(unit, position, outcomes_of(values, errors), elapsed)

    def _mark_running(
        self, state: _ThreadState, unit: Unit, position: int, timeout: float | None
    ) -> bool:
        """Mark ``unit``'s items from ``position`` as this thread's running work (with the
        deadline of ``timeout``, if any); False when they must not run: the thread was
        abandoned (its items are settled already) or the pool was terminated (they are failed
        here: see the module docstring, terminate() against a unit taken)."""
        with state.lock:
            if state.abandoned:
                return False
            terminated = self._terminated
            if not terminated:
                if timeout is not None:
                    state.current = (unit, position, time.monotonic() + timeout)
                state.unit, state.position = unit, position
        if terminated:
            error = PoolClosed(TERMINATED_BEFORE_START)
            unit.sink.deliver(unit, position, errors_of(len(unit.items) - position, error), 0.0)
        return not terminated

    def _break(self, exc: BaseException) -> None:
        from .._executor_errors import WorkerInitError  # (a failure: see that module)

        error = WorkerInitError(
            f"the pool's initializer {_describe(self._initializer)} failed in a worker thread: "
            f"{type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        with self._cv:
            self._broken = error
            dropped = self._take_all_queued()
            self._cv.notify_all()
        fail_units(dropped, error)

    # ----------------------------------------------------------------- watchdog

    def _wake_watchdog(self) -> None:
        with self._watch_cv:
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watchdog_main, name="conveyor-thread-watchdog", daemon=True
                )
                self._watchdog.start()
            self._watch_cv.notify()

    def _poke_watchdog(self) -> None:
        """Wake the watchdog (if there is one) to look again, at the pool's state too."""
        with self._watch_cv:
            self._watch_cv.notify_all()

    def _watchdog_main(self) -> None:
        while True:
            with self._watch_cv:
                if self._terminated or (self._closing and not self._states):
                    self._watchdog = None
                    return
                # One read of each `current`: a worker may set it to None at any moment.
                running = [s.current for s in list(self._states)]
                nearest = min((c[2] for c in running if c is not None), default=None)
                now = time.monotonic()
                if nearest is None or nearest > now:
                    self._watch_cv.wait(None if nearest is None else nearest - now)
                    continue
            for state in list(self._states):
                self._abandon_if_late(state)

    def _abandon_if_late(self, state: _ThreadState) -> None:
        with state.lock:
            current = state.current
            if current is None or current[2] > time.monotonic():
                return
            state.abandoned = True
            state.current = state.unit = None
            _stop_thread(state)
        unit, position, _ = current
        timeout = unit.timeout
        with self._cv:
            self._states.discard(state)
            self._gone_tasks += state.tasks
            self._timeouts += 1
            self._all_gone.notify_all()
            rest = unit.piece(position + 1) if position + 1 < len(unit.items) else None
            if rest is not None:
                self._queue.ready.appendleft(rest)
            if not self._terminated and (not self._closing or self._queue or self._queue.jobs):
                self._start_thread()
            self._cv.notify()
        from .._executor_errors import TaskTimeout  # (a failure: see that module)

        error = TaskTimeout(f"task ran past its timeout of {timeout:g} s", timeout)
        unit.sink.deliver(unit, position, errors_of(1, error), timeout or 0.0)


def _stop_thread(state: _ThreadState) -> None:
    """Ask an abandoned thread to stop (call holding ``state.lock``).

    While the lock is held the thread is inside its item (it takes the lock right after), so it
    is alive and its ident is its own: the exception cannot hit a new thread that reused the
    ident. It takes effect at the thread's next bytecode; run_items lets it through.
    """
    if state.thread is not None and state.thread.ident is not None:
        _raise_in_thread(state.thread.ident, Abandoned)


def _describe(fn: Callable[..., Any] | None) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def _raise_in_thread(ident: int, exc_type: type[BaseException]) -> None:
    """Ask a thread to raise ``exc_type`` at its next bytecode (CPython only; a no-op elsewhere)."""
    if sys.implementation.name != "cpython":
        return
    import ctypes  # only here: a thread pool that never abandons a task does not load it

    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
