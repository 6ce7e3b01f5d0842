"""``multiprocessing.Pool`` and ``multiprocessing.pool.ThreadPool``, on conveyor's engine.

Change one import and keep the code::

    from conveyor.multiprocessing import Pool      # was: from multiprocessing import Pool

The API is the standard library's (``apply``, ``apply_async``, ``map``, ``map_async``,
``starmap``, ``starmap_async``, ``imap``, ``imap_unordered``, ``close``, ``terminate``, ``join``,
the context manager, ``AsyncResult.get/wait/ready/successful``), with the same results and the
same exceptions (``ValueError`` for a closed pool or an unready ``successful()``,
``multiprocessing.TimeoutError`` from ``get(timeout)``). What conveyor adds:

* a task whose worker dies (SIGKILL, ``os._exit``, a segfault, the OOM killer) fails with
  :class:`conveyor.WorkerCrashed` instead of hanging the pool forever (cpython gh-66587); the
  pool replaces the worker and stays usable;
* lambdas, closures and functions defined in ``__main__`` or a notebook work (cloudpickle);
* one Ctrl-C stops everything: no hung interpreter, no orphan workers;
* per-task limits as keyword-only constructor options: ``Pool(task_timeout=60, retries=2)``.

Where it deliberately differs from the standard library:

* ``terminate()`` (and so leaving a ``with Pool()`` block) fails every unfinished result with
  :class:`conveyor.PoolClosed`; the standard library leaves them unset, so a later ``get()``
  without a timeout hangs forever.
* ``imap``/``imap_unordered`` read their input as workers need it (a bounded number of chunks in
  flight) instead of the whole input at once, so an endless generator is fine; results are
  kept until taken, as in the standard library.
* ``chunksize`` left out (``None``) lets conveyor size chunks from measured item times, for
  ``imap`` too (the standard library's ``imap`` defaults to 1). A given ``chunksize`` is used.
* With ``chunksize > 1``, a failing item costs only its own result: ``imap`` raises its
  exception in its place and goes on. The standard library raises once for the whole chunk and
  drops the chunk's other results. ``map`` raises the first failure by input position (the
  standard library: the first to arrive).
* A ``callback`` that raises is reported on stderr and the result is still settled; in the
  standard library it kills the pool's result thread and every later ``get()`` hangs.
* ``context`` only chooses the start method (``context.get_start_method()``); workers are
  conveyor's own processes, not ``context.Process``.

Data flow::

    caller thread                      driver thread (one per *_async/imap call)  conveyor.Pool
    -------------                      ----------------------------------------   ------------
    apply_async ------------------------------------------------------------->   submit -> Future
         AsyncResult: no callbacks -> reads the Future itself (done = ready)
                      callbacks    -> _settle <--- Future done callback (backend thread)
    map_async/imap -> start driver --> MapJob(on_error="return").batches() --->   chunks
                                       MapResult._settle / _Stream.put_batch
    map/starmap: the MapJob runs in the caller's thread (Ctrl-C handled by the engine)

    a result with a callback:  _settle -> _Callbacks queue -> callback thread:
                               callback(value), then the result becomes ready

Guarantees:

* **Ready means settled and called back.** ``ready()`` turns true (and ``get()`` returns) only
  after the result's callback has run, as in the standard library; callbacks run one at a time,
  in the order results settle, in one thread per pool (never in the caller's thread, never in
  the engine's dispatcher, which a slow callback would stall).
* **join() waits for everything submitted**: every driver thread ends, then the engine finishes
  its queued tasks and stops its workers, then the callback thread drains.
* **Nothing hangs on a dead pool**: a result that cannot finish (a crashed worker, a terminated
  pool) is settled with the error.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future
from multiprocessing import TimeoutError
from typing import Any

from ._cpus import usable_cpus
from ._errors import Failure, PoolClosed
from ._executor_errors import WorkerCrashed
from ._job import MapJob
from ._options import JobOptions, engine_limits
from ._pool import PoolCore as _EnginePool
from ._work import MODE_MAP, MODE_STAR

__all__ = [
    "ApplyResult",
    "AsyncResult",
    "IMapIterator",
    "MapResult",
    "Pool",
    "ThreadPool",
    "TimeoutError",
    "WorkerCrashed",
]

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"


class _Callbacks:
    """The pool's callback thread: runs callbacks in settle order, then marks results ready."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[AsyncResult | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="conveyor-mp-callbacks", daemon=True)
        self._thread.start()

    def put(self, result: AsyncResult) -> None:
        self._queue.put(result)

    def _run(self) -> None:
        while (result := self._queue.get()) is not None:
            result._call_back()

    def stop(self, wait: bool) -> None:
        self._queue.put(None)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()


class AsyncResult:
    """The result of ``apply_async`` (the standard library's ``ApplyResult``).

    Example::

        >>> with Pool(2) as pool:
        ...     result = pool.apply_async(divmod, (7, 2))
        ...     result.get(timeout=60), result.ready(), result.successful()
        ((3, 1), True, True)
    """

    def __init__(
        self,
        pool: Pool,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        future: Future[Any] | None = None,
    ):
        self._pool: Pool | None = pool
        self._callback = callback
        self._error_callback = error_callback
        # Without callbacks, an apply_async result is its engine future (ready = done): no
        # second lock and condition per task. Otherwise it is ready once settled and called
        # back, which an Event of its own says.
        self._future = future
        self._event = (
            threading.Event()
            if future is None or callback is not None or error_callback is not None
            else None
        )
        self._success = False
        self._value: Any = None

    def ready(self) -> bool:
        """Whether the call has finished (and its callback has run)."""
        if self._event is None:
            assert self._future is not None
            return self._future.done()
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call returned without raising; ValueError if it is not ready yet.

        Example::

            >>> with Pool(1) as pool:
            ...     pool.apply_async(int, ("x",)).wait(60) or "waited"
            'waited'
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        if self._event is None:
            assert self._future is not None
            return not self._future.cancelled() and self._future.exception() is None
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds have passed."""
        if self._event is None:
            assert self._future is not None
            futures.wait([self._future], timeout)
        else:
            self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The value, or raise the call's exception; ``multiprocessing.TimeoutError`` if not
        ready within ``timeout`` seconds."""
        if self._event is None:
            assert self._future is not None
            try:
                return self._future.result(timeout)
            except futures.CancelledError:
                raise _cancelled() from None
            except futures.TimeoutError:
                if not self._future.done():
                    raise TimeoutError from None
                raise  # the task's own TimeoutError
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    # Called once, from whichever thread settles the result.
    def _settle(self, success: bool, value: Any) -> None:
        self._success, self._value = success, value
        callback = self._callback if success else self._error_callback
        pool, self._pool = self._pool, None
        assert self._event is not None
        if callback is not None and pool is not None:
            pool._callbacks().put(self)
        else:
            self._event.set()

    def _call_back(self) -> None:
        callback = self._callback if self._success else self._error_callback
        try:
            assert callback is not None
            callback(self._value)
        except BaseException:
            # The standard library lets this kill its result thread (and hang every later
            # get()); here it is reported and the result still becomes ready.
            print(f"Exception in the callback of {self!r}:", file=sys.stderr)
            traceback.print_exc()
        finally:
            assert self._event is not None
            self._event.set()

    def _from_future(self, future: Future[Any]) -> None:
        if future.cancelled():
            self._settle(False, _cancelled())
        elif (error := future.exception()) is not None:
            self._settle(False, error)
        else:
            self._settle(True, future.result())


def _cancelled() -> PoolClosed:
    return PoolClosed("the pool was terminated before the task ran")


ApplyResult = AsyncResult


def _guarded(iterable: Iterable[Any], error: list[BaseException]) -> Iterator[Any]:
    """``iterable``, ending where it raises; the exception goes to ``error``.

    As in the standard library, the results of the items read before it are handed out
    first, then the exception is raised (the engine alone would raise it at once).
    """
    try:
        yield from iterable
    except Exception as exc:
        error.append(exc)


def _first_failure(values: list[Any], job: MapJob) -> Failure | None:
    """The first Failure among a job's results (none to look for while it counted none)."""
    if job.failures:
        for value in values:
            if type(value) is Failure:
                return value
    return None


class MapResult(AsyncResult):
    """The result of ``map_async``/``starmap_async``: a list, or the first failure.

    Example::

        >>> with Pool(2) as pool:
        ...     pool.map_async(abs, [-1, -2], chunksize=1).get(60)
        [1, 2]
    """

    def _settle_values(self, values: list[Any], job: MapJob) -> None:
        failure = _first_failure(values, job)
        if failure is not None:
            self._settle(False, failure.exception)
        else:
            self._settle(True, values)


_END = object()


def _raising_failures(values: Iterator[Any]) -> Iterator[Any]:
    """``values``, raising each Failure's exception in its place."""
    for value in values:
        if type(value) is Failure:
            raise value.exception
        yield value


class IMapIterator(Iterator[Any]):
    """What ``imap``/``imap_unordered`` return: an iterator with ``next(timeout)``.

    A failed item raises its exception in its place; iteration goes on with the next one.

    Example::

        >>> with Pool(2) as pool:
        ...     results = pool.imap(abs, [-1, -2, -3])
        ...     results.next(timeout=60), list(results)
        (1, [2, 3])
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        # (values, whether they may hold a Failure), in the order they are handed out
        self._batches: deque[tuple[list[Any], bool]] = deque()
        # The batch being handed out, as a list iterator: its position is the only copy of
        # "how far the consumer got", shared by next() and every generator from __iter__, so
        # mixing them (or leaving a for loop and starting another) loses and repeats nothing.
        self._current: tuple[Iterator[Any], bool] = (iter(()), False)
        self._done = False
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[Any]:
        """An iterator over the same results (the standard library's ``imap`` with
        ``chunksize > 1`` returns a generator): a batch without failures goes at C speed, its
        results handed out by ``itertools.chain`` straight from the batch's list iterator."""
        return itertools.chain.from_iterable(self._pieces())

    def _pieces(self) -> Iterator[Iterator[Any]]:
        """The current batch's iterator (checked for failures when it may hold one), then each
        next batch's: what :meth:`__iter__` chains."""
        while True:
            current = self._current
            values, flagged = current
            yield _raising_failures(values) if flagged else values
            try:
                self._advance(current, None)
            except StopIteration:
                return

    def next(self, timeout: float | None = None) -> Any:
        """The next result; ``multiprocessing.TimeoutError`` if none comes within ``timeout``."""
        while True:
            current = self._current
            value = next(current[0], _END)
            if value is not _END:
                break
            self._advance(current, timeout)
        if current[1] and type(value) is Failure:
            raise value.exception
        return value

    __next__ = next

    def _advance(self, finished: tuple[Iterator[Any], bool], timeout: float | None) -> None:
        """Make the next batch current (unless another consumer already did)."""
        with self._cond:
            if self._current is not finished:
                return
            while not self._batches:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                if self._done:
                    raise StopIteration
                if not self._cond.wait(timeout):
                    raise TimeoutError
            values, flagged = self._batches.popleft()
            self._current = (iter(values), flagged)

    # Called from the driver thread.
    def _put(self, values: list[Any], flagged: bool) -> None:
        if values:
            with self._cond:
                self._batches.append((values, flagged))
                self._cond.notify()

    def _end(self, error: BaseException | None) -> None:
        with self._cond:
            self._error = error
            self._done = True
            self._cond.notify_all()


class Pool:
    """A drop-in for ``multiprocessing.Pool`` on conveyor's worker processes.

    ``processes``, ``initializer``, ``initargs``, ``maxtasksperchild`` and ``context`` mean what
    they mean in the standard library. Keyword-only extras: ``task_timeout`` (seconds one task
    may run before it is stopped with :class:`conveyor.TaskTimeout`) and ``retries`` (times a
    failed task is run again, for example after its worker crashed).

    Example::

        >>> with Pool(2) as pool:
        ...     pool.map(lambda x: x * x, range(5), chunksize=2)
        [0, 1, 4, 9, 16]
    """

    _backend = "process"

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        task_timeout: float | None = None,
        retries: int = 0,
    ):
        self._state = "INIT"  # RUN once built, so __del__ warns only about a working pool
        if processes is None:
            processes = usable_cpus()
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._processes = processes
        self._limits = engine_limits(task_timeout, retries)
        self._lock = threading.Lock()
        self._drivers: set[threading.Thread] = set()
        self._callback_thread: _Callbacks | None = None
        self._engine = self._make_engine(
            processes, initializer, tuple(initargs), maxtasksperchild, context
        )
        self._submit = self._engine.options(**self._limits).submit
        self._state = RUN

    def _make_engine(
        self,
        processes: int,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        maxtasksperchild: int | None,
        context: Any,
    ) -> _EnginePool:
        start_method = context.get_start_method() if context is not None else None
        return _EnginePool(
            workers=processes,
            backend=self._backend,
            start_method=start_method,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=maxtasksperchild,
        )

    # ----------------------------------------------------------------- single calls

    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: Any = None) -> Any:
        """``func(*args, **kwds)`` in a worker; returns its value or raises its exception.

        Example::

            >>> with Pool(1) as pool:
            ...     pool.apply(pow, (2, 10))
            1024
        """
        self._check_running()
        return self._submit(func, *args, **(kwds or {})).result()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: Any = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult:
        """Start ``func(*args, **kwds)`` in a worker; returns an :class:`AsyncResult`.

        Example::

            >>> with Pool(1) as pool:
            ...     pool.apply_async(sorted, ([3, 1, 2],)).get(60)
            [1, 2, 3]
        """
        self._check_running()
        future = self._submit(func, *args, **(kwds or {}))
        result = AsyncResult(self, callback, error_callback, future)
        if result._event is not None:
            future.add_done_callback(result._from_future)
        return result

    # ----------------------------------------------------------------- maps

    def map(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[Any]:
        """``[func(x) for x in iterable]`` in the workers; raises the first failure.

        Example::

            >>> with Pool(2) as pool:
            ...     pool.map(str, range(3))
            ['0', '1', '2']
        """
        return self._collect(func, iterable, chunksize, MODE_MAP)

    def starmap(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
    ) -> list[Any]:
        """``[func(*args) for args in iterable]`` in the workers.

        Example::

            >>> with Pool(2) as pool:
            ...     pool.starmap(pow, [(2, 3), (3, 2)])
            [8, 9]
        """
        return self._collect(func, iterable, chunksize, MODE_STAR)

    def map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult:
        """Start ``map``; returns a :class:`MapResult`.

        Example::

            >>> with Pool(2) as pool:
            ...     pool.map_async(len, ["ab", "c"]).get(60)
            [2, 1]
        """
        return self._map_async(func, iterable, chunksize, callback, error_callback, MODE_MAP)

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult:
        """Start ``starmap``; returns a :class:`MapResult`.

        Example::

            >>> with Pool(2) as pool:
            ...     pool.starmap_async(max, [(1, 5), (7, 2)]).get(60)
            [5, 7]
        """
        return self._map_async(func, iterable, chunksize, callback, error_callback, MODE_STAR)

    def imap(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None
    ) -> IMapIterator:
        """Results of ``func`` over ``iterable`` in input order, as they come.

        Example::

            >>> with Pool(2) as pool:
            ...     list(pool.imap(abs, [-1, -2], chunksize=1))
            [1, 2]
        """
        return self._stream(func, iterable, chunksize, ordered=True)

    def imap_unordered(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None
    ) -> IMapIterator:
        """Results of ``func`` over ``iterable`` in the order they finish.

        Example::

            >>> with Pool(2) as pool:
            ...     sorted(pool.imap_unordered(abs, [-1, -2]))
            [1, 2]
        """
        return self._stream(func, iterable, chunksize, ordered=False)

    def _job(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        mode: int,
        ordered: bool = True,
    ) -> MapJob:
        """One engine map job; every failure comes back in its item's place (a Failure)."""
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        options = JobOptions(
            mode=mode,
            ordered=ordered,
            chunksize="auto" if chunksize is None else chunksize,
            on_error="return",
            **self._limits,
        )
        return self._engine._job(func, iterable, options)

    def _collect(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None, mode: int
    ) -> list[Any]:
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        job = self._job(func, iterable, chunksize, mode)
        values = job.collect()
        failure = _first_failure(values, job)
        if failure is not None:
            raise failure.exception
        return values

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        mode: int,
    ) -> MapResult:
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        job = self._job(func, iterable, chunksize, mode)
        result = MapResult(self, callback, error_callback)

        def drive() -> None:
            try:
                values = job.collect()
            except BaseException as exc:
                result._settle(False, exc)
            else:
                result._settle_values(values, job)

        self._start_driver(drive)
        return result

    def _stream(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        ordered: bool,
    ) -> IMapIterator:
        self._check_running()
        input_error: list[BaseException] = []
        if type(iterable) not in (list, tuple, range):  # those are sliced, never raise
            iterable = _guarded(iterable, input_error)
        job = self._job(func, iterable, chunksize, MODE_MAP, ordered=ordered)
        stream = IMapIterator()

        def drive() -> None:
            try:
                for values in job.batches():
                    # a Failure is counted before the batch holding it is handed out
                    stream._put(values, job.failures > 0)
            except BaseException as exc:
                stream._end(exc)
            else:
                stream._end(input_error[0] if input_error else None)

        self._start_driver(drive)
        return stream

    def _start_driver(self, drive: Callable[[], None]) -> None:
        """Run ``drive`` in a daemon thread that join() waits for.

        Daemon: at interpreter exit (after Ctrl-C, say) Python joins non-daemon threads
        *before* running conveyor's exit handler that stops the workers, so a non-daemon
        driver waiting on a worker would hang the exit.
        """

        def run() -> None:
            try:
                drive()
            finally:
                with self._lock:
                    self._drivers.discard(thread)
                self._stop_when_idle()

        thread = threading.Thread(target=run, name="conveyor-mp-driver", daemon=True)
        with self._lock:
            self._drivers.add(thread)
        thread.start()

    # ----------------------------------------------------------------- lifetime

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _callbacks(self) -> _Callbacks:
        with self._lock:
            if self._callback_thread is None:
                self._callback_thread = _Callbacks()
            return self._callback_thread

    def _stop_when_idle(self) -> None:
        """Once closed and no driver is left, let the engine finish its queue and stop."""
        with self._lock:
            if self._state != CLOSE or self._drivers:
                return
        self._engine.shutdown(wait=False)

    def close(self) -> None:
        """Take no more work; the workers exit once what was submitted is done.

        Example::

            >>> pool = Pool(1); pool.close(); pool.join()
        """
        if self._state == RUN:
            self._state = CLOSE
            self._stop_when_idle()

    def terminate(self) -> None:
        """Stop the workers now; every unfinished result fails with ``conveyor.PoolClosed``.

        Example::

            >>> pool = Pool(1); pool.terminate(); pool.join()
        """
        self._state = TERMINATE
        self._engine.terminate()

    def join(self) -> None:
        """Wait until every submitted task is settled and the workers have exited.

        Call :meth:`close` or :meth:`terminate` first (``ValueError`` otherwise).
        """
        if self._state == RUN:
            raise ValueError("Pool is still running")
        while True:
            with self._lock:
                drivers = list(self._drivers)
            if not drivers:
                break
            for thread in drivers:
                thread.join()
        # After terminate() the process workers are already reaped; threads running a task
        # were abandoned (they cannot be stopped) and are not waited for.
        self._engine.shutdown(wait=self._state != TERMINATE)
        with self._lock:
            callbacks, self._callback_thread = self._callback_thread, None
        if callbacks is not None:
            callbacks.stop(wait=True)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_state", None) == RUN:  # as the standard library does
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)
        callbacks = getattr(self, "_callback_thread", None)
        if callbacks is not None:  # never joined: let its thread end after what is queued
            callbacks.stop(wait=False)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # As in the standard library: leaving the block terminates, it does not wait.
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        cls = type(self)
        return (
            f"<{cls.__module__}.{cls.__qualname__} state={self._state} pool_size={self._processes}>"
        )


class ThreadPool(Pool):
    """A drop-in for ``multiprocessing.pool.ThreadPool`` on conveyor's thread backend.

    Example::

        >>> with ThreadPool(2) as pool:
        ...     pool.map(str.upper, ["a", "b"])
        ['A', 'B']
    """

    _backend = "thread"

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        task_timeout: float | None = None,
        retries: int = 0,
    ):
        super().__init__(
            processes, initializer, initargs, task_timeout=task_timeout, retries=retries
        )
