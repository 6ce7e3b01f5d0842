"""The Dask backend: each unit (a map's chunk, a submit) becomes one Dask task on a cluster.

Data flow::

    caller threads                  Dask client (its own event loop thread)   Dask workers
    --------------                  ---------------------------------------   ------------
    submit(units) --> queue (ready deque, retries in backoff)
      while fewer than ``limit``    client.submit(run_unit, fn_ref, items,  -> task.run_unit:
      tasks are out: starting(),      pure=False): one task per unit           fn by value,
      client.submit (in the caller                                             items, per-item
      thread: unpicklable items                                                timeout (task.py)
      raise there)                  done callback (Dask's callback thread)
                                    puts the finished future on ``events``
    dispatcher thread (one per pool) <-- events; or the next retry's backoff ends
      gathers finished results in one round trip, delivers outcomes to sinks,
      KilledWorker -> the unit's items again in pieces (one item alone -> WorkerCrashed),
      a task stuck past its timeout -> restart that Dask worker; sends queued units

Guarantees, and where they are kept:

* **Every call runs**: tasks are submitted with ``pure=False`` under keys of our own, so two
  chunks with equal items are two tasks, never merged.
* **Bounded work in flight**: at most ``limit`` tasks are on the cluster at a time (a map job
  bounds its own chunks further); the rest wait here, where ``cancel`` drops them cheaply.
* **The function is pickled once and unpickled once per worker**: by value (cloudpickle), once
  per pool and function, under a token by which each Dask worker process keeps it unpickled
  (:func:`.task.load_function`). Small pickles ride inside each task; a large one (captured
  data) is the result of a task of its own, replicated to every worker once (see
  :meth:`DaskBackend._function_ref`).
* **A lost worker costs only its items**: a task whose worker died fails with ``KilledWorker``
  (at once on the pool's own LocalCluster: ``allowed_failures=0``; after Dask's own re-runs on
  another cluster); its items run again in smaller pieces, and a single item whose worker died
  twice under it gets :class:`~conveyor.WorkerCrashed` (which ``retries`` may retry). (Twice:
  Dask also fails the tasks that were only queued on the dead worker; and a struck item runs
  again only while no other struck item is on the cluster, so two items that shared a dead
  worker are not struck together again.)
* **A unit's outcomes are delivered once**: a task's entry leaves ``_running`` under the lock
  exactly once, by whoever takes it first: the dispatcher (its outcome), ``cancel`` (dropped)
  or ``terminate`` (PoolClosed). A future finishing after that finds no entry and is ignored.
* **A restart blames nobody**: restarting a worker (one stuck past a timeout) kills the other
  tasks it ran; their KilledWorker names an address in ``_restarted`` and they run again whole.
* **Keys are made before submitting**, and the entry is in ``_running`` before the task exists,
  so a done callback can never arrive for a task the dispatcher does not know.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ..._errors import PoolClosed, Unsendable, attach_remote_traceback
from ..._executor_errors import WorkerCrashed
from ..._serialize import _unsendable, dumps_callable
from ..._work import MODE_CALL, Unit, errors_of, outcomes_of
from ..base import Backend, fail_units
from ..queue import JobTicket, WorkQueue
from .cluster import CONNECT_TIMEOUT, Connection, connect
from .task import TaskResult, run_unit

__all__ = ["DaskBackend"]

#: seconds of work per Dask task: a task costs about a millisecond of scheduler time
CHUNK_SECONDS = 0.1
#: tasks on the cluster per worker thread: enough that no thread waits for its next task
TASKS_PER_THREAD = 2
#: a unit whose worker died is sent again cut into at most this many pieces
CRASH_PIECES = 8
#: functions (and their pickles) kept per pool
FUNCTION_CACHE_SIZE = 64
#: a function pickled to at most this many bytes travels inside each task
INLINE_FUNCTION_BYTES = 64 * 1024
#: seconds a worker restart (of a worker stuck past a timeout) may take
RESTART_TIMEOUT = 30.0

_WAKE = object()
_STOP = object()


class _Task:
    """One unit on the cluster: its key, and the Dask future once submitted."""

    __slots__ = ("future", "key", "unit")

    def __init__(self, unit: Unit, key: str):
        self.unit = unit
        self.key = key
        self.future: Any = None


class DaskBackend(Backend):
    """Runs units as Dask tasks on a cluster (see the module docstring).

    ``cluster``: an address, a ``distributed.Client`` (left open), or None for a LocalCluster
    of ``workers`` processes on 127.0.0.1, owned and closed by the backend.

    Example::

        >>> from conveyor.backends.dask import DaskBackend
        >>> backend = DaskBackend(workers=1)
        >>> backend.workers
        1
        >>> backend.shutdown()
    """

    name = "dask"
    stops_timed_out_tasks = True
    chunk_seconds = CHUNK_SECONDS

    def __init__(
        self,
        workers: int | None = None,
        cluster: Any = None,
        security: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
    ):
        # The initializer runs once in each Dask worker process, before the pool's first
        # task there (task.ensure_initialized); it travels by value inside every task.
        self._init_ref: tuple[str, bytes] | None = None
        if initializer is not None:
            self._init_ref = (
                f"conveyor-init-{uuid.uuid4().hex}",
                dumps_callable((initializer, tuple(initargs)), "initializer"),
            )
        self._connection: Connection = connect(cluster, workers, security)
        self._client = self._connection.client
        try:
            threads = self._cluster_threads()
        except BaseException:
            self._connection.close()
            raise
        # ``workers`` on someone else's cluster caps how many of its threads a pool keeps busy.
        super().__init__(min(workers, threads) if workers and cluster is not None else threads)
        self._limit = max(4, TASKS_PER_THREAD * self.workers)
        self._lock = threading.Lock()
        self._queue = WorkQueue()
        self._running: dict[str, _Task] = {}
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._functions: OrderedDict[int, tuple[Callable[..., Any], tuple[str, Any]]] = (
            OrderedDict()
        )
        self._functions_lock = threading.Lock()
        self._restarting: dict[str, threading.Thread] = {}
        self._restarted: set[str] = set()
        self._struck: set[int] = set()  # ids of single-item units whose worker died once
        self._suspect_key: str | None = None  # the one struck unit on the cluster, if any
        self._closing = False
        self._terminated = False
        self._closed_connection = False
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="conveyor-dask-dispatcher", daemon=True
        )
        self._dispatcher.start()

    def _cluster_threads(self) -> int:
        """Threads of the cluster's workers, waiting a little for a first worker to join."""
        threads = sum(self._client.nthreads().values())
        if threads:
            return int(threads)
        try:
            self._client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except TimeoutError:
            raise ConnectionError(
                f"the Dask cluster at {self._client.scheduler.address} has no workers "
                f"(none joined within {CONNECT_TIMEOUT:g} s)"
            ) from None
        return max(1, int(sum(self._client.nthreads().values())))

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` the backend submits through."""
        return self._client

    # ----------------------------------------------------------------- front (any thread)

    def submit(self, units: Sequence[Unit], ticket: JobTicket | None = None) -> None:
        # A map or retry begun before a shutdown (``ticket``) is not waited for on Dask yet:
        # once shut down, the backend refuses every unit (the map then raises PoolClosed).
        with self._lock:
            if self._closing or self._terminated:
                raise PoolClosed("cannot submit to a pool that was shut down")
            self._queue.add(units, time.monotonic())
            tasks = self._take_sendable()
            backoff = self._queue.has_backoff
        own = {id(unit) for unit in units}
        error = None
        for task in tasks:
            try:
                self._send(task, raise_unsendable=id(task.unit) in own and task.unit.eager)
            except Exception as exc:  # the others still go out
                error = error or exc
        if backoff:
            self._events.put(_WAKE)
        if error is not None:
            raise error

    def cancel(self, owner: object) -> None:
        with self._lock:
            self._queue.cancel(owner)
            keys = [k for k, t in self._running.items() if t.unit.sink.owner is owner]
            futures = [self._running.pop(key).future for key in keys]
        self._cancel_futures(futures)
        if keys:
            self._events.put(_WAKE)  # slots came free

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
        self._cancel_futures([task.future for task in running])
        fail_units(dropped, PoolClosed("the pool was terminated before the task started"))
        fail_units([task.unit for task in running], PoolClosed("the pool was terminated"))
        self._events.put(_STOP)
        self._close_connection()

    @property
    def alive(self) -> bool:
        return not (self._closing or self._terminated)

    # ----------------------------------------------------------------- sending

    def _take_sendable(self) -> list[_Task]:
        """Take ready units while the cluster has room; call holding the lock.

        Each gets its key and its entry in ``_running`` now, before it is submitted.
        """
        self._queue.release_due(time.monotonic())
        tasks = []
        held_back: list[Unit] = []
        while self._queue.ready and len(self._running) < self._limit:
            unit = self._queue.ready.popleft()
            suspect = unit.id in self._struck
            if suspect and self._suspect_key in self._running:
                held_back.append(unit)  # one suspect on the cluster at a time (see _on_error)
                continue
            task = _Task(unit, f"conveyor-{uuid.uuid4().hex}")
            self._running[task.key] = task
            tasks.append(task)
            if suspect:
                self._suspect_key = task.key
        self._queue.ready.extendleft(reversed(held_back))
        return tasks

    def _send(self, task: _Task, raise_unsendable: bool = False) -> None:
        unit = task.unit
        if not unit.sink.starting(unit):
            self._forget(task)
            return
        try:
            fn_ref = self._function_ref(unit.fn)
            future = self._client.submit(
                run_unit,
                fn_ref,
                unit.mode,
                unit.items,
                unit.timeout,
                self._init_ref,
                key=task.key,
                pure=False,
            )
        except Exception as exc:
            self._forget(task)
            error: Exception = exc
            if isinstance(exc, TypeError) and not isinstance(exc, Unsendable):
                error = _unsendable(unit.items, unit.mode, _first_tag(unit), exc)
            if raise_unsendable:
                raise error from exc
            fail_units([unit], error)
            return
        with self._lock:
            known = task.key in self._running
            if known:
                task.future = future
        if not known:  # cancelled or terminated while we submitted it
            self._cancel_futures([future])
            return
        future.add_done_callback(self._events.put)

    def _forget(self, task: _Task) -> None:
        with self._lock:
            self._running.pop(task.key, None)
        self._events.put(_WAKE)

    def _function_ref(self, fn: Callable[..., Any]) -> tuple[str, Any]:
        """``(token, pickled function or a future of it)``, made once per pool and function.

        A small pickle travels inside each task: a dependency would make Dask place every task
        on the worker that holds it. A large one (captured data) becomes the result of a task
        of its own, copied to every worker once (a task's result, unlike scattered data, is
        computed again if the workers holding it are lost).
        """
        with self._functions_lock:
            entry = self._functions.get(id(fn))
            if entry is not None and entry[0] is fn:
                self._functions.move_to_end(id(fn))
                return entry[1]
        data = dumps_callable(fn)
        token = f"conveyor-fn-{uuid.uuid4().hex}"
        ref: tuple[str, Any] = (token, data)
        if len(data) > INLINE_FUNCTION_BYTES:
            future = self._client.submit(_same, data, key=token, pure=False)
            self._client.replicate([future])
            ref = (token, future)
        with self._functions_lock:
            self._functions[id(fn)] = (fn, ref)  # holding fn: its id cannot be reused meanwhile
            while len(self._functions) > FUNCTION_CACHE_SIZE:
                self._functions.popitem(last=False)
        return ref

    def _cancel_futures(self, futures: list[Any]) -> None:
        futures = [f for f in futures if f is not None]
        if futures:
            try:
                self._client.cancel(futures)
            except Exception:
                pass  # the client is closing: the tasks go with it

    # ----------------------------------------------------------------- dispatcher thread

    def _dispatch_loop(self) -> None:
        try:
            while self._dispatch_once():
                pass
        except BaseException as exc:  # never a silent hang: whatever is owed gets the error
            if not self._terminated:
                self._break(exc)

    def _break(self, error: BaseException) -> None:
        """The dispatcher failed: fail every owed unit with ``error`` and close."""
        with self._lock:
            self._closing = True
            dropped = self._queue.take_all()
            running = list(self._running.values())
            self._running.clear()
        self._cancel_futures([task.future for task in running])
        fail_units(dropped + [task.unit for task in running], error)
        self._close_connection()

    def _dispatch_once(self) -> bool:
        """Wait for finished tasks (or a retry's backoff to end), handle them; False to stop.

        One call per wakeup, so that no Dask future outlives it in a local variable while the
        thread blocks: a future held here would keep its result on the cluster.
        """
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
        finished = [e for e in events if e is not _WAKE]
        if finished:
            try:
                self._on_finished(finished)
            except Exception:
                if self._terminated:
                    return False
                raise
        with self._lock:
            tasks = self._take_sendable()
            drained = self._closing and not self._running and not self._queue
        for task in tasks:
            self._send(task)
        if drained:
            self._close_connection()
            return False
        return True

    def _on_finished(self, futures: list[Any]) -> None:
        done: list[tuple[_Task, Any]] = []
        for future in futures:
            with self._lock:
                task = self._running.pop(future.key, None)
            if task is None:
                continue  # cancelled, or terminated: settled already
            if future.status == "finished":
                done.append((task, future))
            elif future.status == "error":
                self._on_error(task.unit, future.exception())
            else:
                error = PoolClosed(f"the Dask cluster dropped the task ({future.status})")
                fail_units([task.unit], error)
        if not done:
            return
        try:
            results = self._client.gather([future for _, future in done])
        except Exception:
            results = [_result_or_error(future) for _, future in done]
        for (task, _), result in zip(done, results):
            if isinstance(result, BaseException):
                self._on_error(task.unit, result)
            else:
                self._on_result(task.unit, result)

    def _on_result(self, unit: Unit, result: TaskResult) -> None:
        values, wire_errors, elapsed, stuck = result
        errors = {pos: attach_remote_traceback(exc, tb) for pos, (exc, tb) in wire_errors.items()}
        if len(values) < len(unit.items):  # stopped at an item that would not stop
            with self._lock:
                self._queue.ready.appendleft(unit.piece(len(values)))
        unit.sink.deliver(unit, 0, outcomes_of(values, errors), elapsed)
        if stuck is not None:
            self._restart_worker(stuck)

    def _on_error(self, unit: Unit, error: BaseException) -> None:
        from distributed.scheduler import KilledWorker

        if not isinstance(error, KilledWorker):
            fail_units([unit], error)
            return
        address = getattr(error.last_worker, "address", None)
        if address in self._restarted:  # we restarted it (for another task): not this one's fault
            with self._lock:
                self._queue.ready.appendleft(unit)
            return
        count = len(unit.items)
        if count > 1:  # the worker died at an unknown item: run them again, in pieces
            size = -(-count // CRASH_PIECES)
            pieces = [unit.piece(i, i + size) for i in range(0, count, size)]
            with self._lock:
                self._queue.ready.extendleft(reversed(pieces))
            return
        # Dask fails every task assigned to a dead worker, also those still queued there: a
        # single item is blamed only when its worker dies under it a second time, and a struck
        # item (a suspect) runs again only while no other suspect is on the cluster, so an
        # innocent item queued behind the culprit on the same worker is not struck twice.
        if unit.id not in self._struck:
            with self._lock:
                self._struck.add(unit.id)
                self._queue.ready.appendleft(unit)
            return
        self._struck.discard(unit.id)
        crash = WorkerCrashed(f"the Dask worker running the task ({address}) died")
        unit.sink.deliver(unit, 0, errors_of(1, crash), 0.0)

    def _restart_worker(self, address: str) -> None:
        """Restart a Dask worker holding a thread stuck past its timeout (needs a Nanny)."""
        with self._lock:
            if address in self._restarting or self._closing:
                return
            thread = threading.Thread(
                target=self._restart, args=(address,), name="conveyor-dask-restart", daemon=True
            )
            self._restarting[address] = thread
            self._restarted.add(address)  # a restarted worker comes back at a new address
        thread.start()

    def _restart(self, address: str) -> None:
        try:
            self._client.restart_workers([address], timeout=RESTART_TIMEOUT, raise_for_error=False)
        except Exception:
            pass  # no Nanny to restart it, or the pool is closing
        finally:
            with self._lock:
                self._restarting.pop(address, None)

    def _close_connection(self) -> None:
        with self._lock:
            if self._closed_connection:
                return
            self._closed_connection = True
            self._functions.clear()
            restarts = list(self._restarting.values())
        for thread in restarts:  # closing under a restart makes Dask log a CancelledError
            thread.join(RESTART_TIMEOUT)
        self._connection.close()


def _same(data: bytes) -> bytes:
    return data


def _result_or_error(future: Any) -> Any:
    try:
        return future.result()
    except BaseException as exc:
        return exc


def _first_tag(unit: Unit) -> int:
    first = unit.tags[0] if len(unit.tags) and unit.mode != MODE_CALL else 0
    return first if isinstance(first, int) else 0
