"""Any ``concurrent.futures.Executor`` as a backend: ``conveyor.Pool(backend=executor)``.

For engines conveyor has no backend of its own for (mpi4py's ``MPIPoolExecutor``, executorlib,
parsl, loky's reusable executor, a ``ProcessPoolExecutor`` you already have), conveyor's maps,
retries, ``on_error``, ``progress`` and statistics run on top of the executor's ``submit``: each
unit (a map's chunk, a submit) becomes one call of :func:`conveyor.backends.dask.task.run_unit`
on the executor, with the function sent by value (cloudpickle bytes) so that lambdas and
functions typed into ``__main__`` work on executors that pickle by reference.

Data flow::

    caller threads                      dispatcher thread              the user's executor
    --------------                      -----------------              -------------------
    submit(units) -> queue (ready,        waits on ``events``          its workers run
      retries held until due)             (a finished future, or a     run_unit(fn bytes,
      while fewer than ``limit`` are      wake-up, or the next held    mode, items, timeout,
      out: executor.submit(run_unit) ---> retry's time)           ---> initializer): outcomes
    future done callback (executor's <--  delivers outcomes to the
      thread): puts it on ``events``      unit's sink; sends more

Guarantees, and where they are kept:

* **Bounded work in flight**: at most ``limit`` calls are on the executor (``_take_sendable``);
  the rest wait here, where ``cancel`` drops them cheaply.
* **A unit's outcomes are delivered once**: its entry leaves ``_running`` under the lock exactly
  once, by whoever takes it first (the dispatcher, ``cancel``, ``terminate``); a future that
  finishes later finds no entry and is ignored.
* **The executor is the caller's**: shutting the pool down waits for (or drops) conveyor's
  calls, never shuts the executor down.

A documented subset of the other backends' guarantees (the executor decides the rest):
``task_timeout`` interrupts the item in the executor's worker as on threads (an item blocked in
C runs on, and gets TaskTimeout once its grace is over); a call that fails as a whole (the
executor's worker died, the executor broke) fails each of its items with
:class:`~conveyor.WorkerCrashed`, the executor's exception chained, and ``retries`` may run them
again; ``Pool.stop`` and the asyncio front's cancellation drop queued units and abandon running
ones (``Future.cancel`` on the executor's future); ``max_tasks_per_worker`` and the like belong
to the executor. conveyor must be installed where the executor runs its calls.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from .._chunking import TARGET_SECONDS
from .._cpus import usable_cpus
from .._errors import PoolClosed, attach_remote_traceback
from .._executor_errors import WorkerCrashed
from .._serialize import dumps_callable
from .._work import Unit, errors_of, outcomes_of
from .base import Backend, fail_units
from .queue import JobTicket, WorkQueue

__all__ = ["ExecutorBackend"]

#: calls on the executor per worker: enough that no worker waits for its next call
CALLS_PER_WORKER = 2

_WAKE = object()
_STOP = object()


class ExecutorBackend(Backend):
    """Runs units as calls on a ``concurrent.futures.Executor`` the caller owns.

    Example::

        >>> from concurrent.futures import ThreadPoolExecutor
        >>> import conveyor
        >>> with ThreadPoolExecutor(2) as executor:
        ...     with conveyor.Pool(backend=executor) as pool:
        ...         print(list(pool.imap(abs, [-1, -2, -3])), pool.submit(pow, 2, 5).result())
        [1, 2, 3] 32
    """

    name = "executor"
    chunk_seconds = TARGET_SECONDS

    def __init__(
        self,
        executor: Executor,
        workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
    ):
        if not isinstance(executor, Executor):
            raise TypeError(
                "backend must be a name or a concurrent.futures.Executor, got "
                f"{executor!r} (of type {type(executor).__name__})"
            )
        self.executor = executor
        guessed = getattr(executor, "_max_workers", None)
        super().__init__(workers or (guessed if isinstance(guessed, int) else usable_cpus()))
        self._limit = max(2, CALLS_PER_WORKER * self.workers)
        # Threads share the caller's memory: the function need not be pickled for them.
        self._by_value = not isinstance(executor, ThreadPoolExecutor)
        self._init_ref: tuple[str, bytes] | None = None
        if initializer is not None:
            self._init_ref = (
                f"conveyor-init-{uuid.uuid4().hex}",
                dumps_callable((initializer, tuple(initargs)), "initializer"),
            )
        self._lock = threading.Lock()
        self._queue = WorkQueue()
        self._running: dict[int, tuple[Unit, Future[Any] | None]] = {}
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._functions: dict[int, tuple[Callable[..., Any], tuple[str, bytes]]] = {}
        self._closing = False
        self._terminated = False
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="conveyor-executor-dispatcher", daemon=True
        )
        self._dispatcher.start()

    # ----------------------------------------------------------------- front (any thread)

    def submit(self, units: Sequence[Unit], ticket: JobTicket | None = None) -> None:
        with self._lock:
            if self._closing or self._terminated:
                raise PoolClosed("cannot submit to a pool that was shut down")
            self._queue.add(units, time.monotonic())
            sendable = self._take_sendable()
            held = self._queue.has_backoff
        own = {id(unit) for unit in units}
        error = None
        for unit in sendable:
            try:
                self._send(unit, raise_unsendable=id(unit) in own and unit.eager)
            except Exception as exc:  # the others still go out
                error = error or exc
        if held:  # a retry waits in its backoff: the dispatcher wakes for it
            self._events.put(_WAKE)
        if error is not None:
            raise error

    def cancel(self, owner: object) -> None:
        with self._lock:
            self._queue.cancel(owner)
            ids = [i for i, (unit, _) in self._running.items() if unit.sink.owner is owner]
            futures = [self._running.pop(i)[1] for i in ids]
        for future in futures:
            if future is not None:
                future.cancel()
        if ids:
            self._events.put(_WAKE)  # room came free

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        with self._lock:
            self._closing = True
            dropped = self._queue.take_all() if cancel_pending else []
        fail_units(dropped, PoolClosed("the pool was shut down before the task started"))
        self._events.put(_WAKE)
        if wait and threading.current_thread() is not self._dispatcher:
            self._dispatcher.join()

    def terminate(self) -> None:
        with self._lock:
            self._terminated = self._closing = True
            dropped = self._queue.take_all()
            running = list(self._running.values())
            self._running.clear()
        for _, future in running:
            if future is not None:
                future.cancel()
        fail_units(dropped, PoolClosed("the pool was terminated before the task started"))
        fail_units([unit for unit, _ in running], PoolClosed("the pool was terminated"))
        self._events.put(_STOP)

    @property
    def alive(self) -> bool:
        return not (self._closing or self._terminated)

    # ----------------------------------------------------------------- sending

    def _take_sendable(self) -> list[Unit]:
        """Take ready units while the executor has room; call holding the lock. Each gets its
        entry in ``_running`` now, before its call exists."""
        self._queue.release_due(time.monotonic())
        units = []
        while self._queue.ready and len(self._running) < self._limit:
            unit = self._queue.ready.popleft()
            self._running[unit.id] = (unit, None)
            units.append(unit)
        return units

    def _send(self, unit: Unit, raise_unsendable: bool = False) -> None:
        from .dask.task import run_loaded, run_unit

        if not unit.sink.starting(unit):
            self._forget(unit)
            return
        try:
            call: tuple[Any, ...] = (
                (run_unit, self._function_ref(unit.fn)) if self._by_value else (run_loaded, unit.fn)
            )
            runner, fn = call
            future = self.executor.submit(
                runner, fn, unit.mode, unit.items, unit.timeout, self._init_ref
            )
        except Exception as exc:  # an unpicklable item, or the executor is shut down/broken
            self._forget(unit)
            if raise_unsendable and isinstance(exc, TypeError):
                raise
            unit.sink.deliver(unit, 0, errors_of(len(unit.items), _as_crash(exc)), 0.0)
            return
        with self._lock:
            known = unit.id in self._running
            if known:
                self._running[unit.id] = (unit, future)
        if not known:  # cancelled or terminated while we submitted it
            future.cancel()
            return
        key = unit.id
        future.add_done_callback(lambda done: self._events.put((key, done)))

    def _forget(self, unit: Unit) -> None:
        with self._lock:
            self._running.pop(unit.id, None)
        self._events.put(_WAKE)

    def _function_ref(self, fn: Callable[..., Any]) -> tuple[str, Any]:
        """``(token, cloudpickle bytes)``, made once per pool and function (run_unit keeps it
        unpickled per worker process by its token)."""
        with self._lock:
            entry = self._functions.get(id(fn))
            if entry is not None and entry[0] is fn:
                return entry[1]
        ref = (f"conveyor-fn-{uuid.uuid4().hex}", dumps_callable(fn))
        with self._lock:
            self._functions[id(fn)] = (fn, ref)  # holding fn: its id cannot be reused meanwhile
            if len(self._functions) > 64:
                self._functions.pop(next(iter(self._functions)))
        return ref

    # ----------------------------------------------------------------- dispatcher thread

    def _dispatch_loop(self) -> None:
        try:
            while self._dispatch_once():
                pass
        except BaseException as exc:  # never a silent hang: whatever is owed gets the error
            with self._lock:
                self._closing = True
                dropped = self._queue.take_all()
                running = [unit for unit, _ in self._running.values()]
                self._running.clear()
            fail_units(dropped + running, exc)

    def _dispatch_once(self) -> bool:
        with self._lock:
            due = self._queue.next_due()
        wait = None if due is None else max(0.0, due - time.monotonic())
        try:
            events = [self._events.get(timeout=wait)]
        except queue.Empty:
            events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        if self._terminated or _STOP in events:
            return False
        for event in events:
            if event is not _WAKE:
                self._on_finished(*event)
        with self._lock:
            sendable = self._take_sendable()
            drained = self._closing and not self._running and not self._queue
        for unit in sendable:
            self._send(unit)
        if drained:
            with self._lock:
                self._functions.clear()
            return False
        return True

    def _on_finished(self, key: int, future: Future[Any]) -> None:
        with self._lock:
            entry = self._running.pop(key, None)
        if entry is None:
            return  # cancelled, or terminated: settled already
        unit = entry[0]
        try:
            values, wire_errors, elapsed, _stuck = future.result()
        except BaseException as exc:  # the call failed as a whole
            unit.sink.deliver(unit, 0, errors_of(len(unit.items), _as_crash(exc)), 0.0)
            return
        errors = {pos: attach_remote_traceback(exc, tb) for pos, (exc, tb) in wire_errors.items()}
        unit.sink.deliver(unit, 0, outcomes_of(values, errors), elapsed)


def _as_crash(exc: BaseException) -> BaseException:
    """What the items of a call that failed as a whole get."""
    if isinstance(exc, (TypeError, PoolClosed)):
        return exc  # a mistake in the call (unpicklable), or our own refusal
    crash = WorkerCrashed(
        f"the executor's call failed as a whole ({type(exc).__name__}: {exc}); its items did "
        "not run to the end"
    )
    crash.__cause__ = exc
    return crash
