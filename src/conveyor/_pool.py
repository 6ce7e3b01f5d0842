"""The engine of ``conveyor.Pool`` (:class:`PoolCore`), on a thread or process backend.

Data flow::

    caller thread                         backend (worker threads, or the dispatcher thread)
    -------------                         --------------------------------------------------
    submit(fn, *args) -> Future  ------>  one-item Unit, sink = _futures.FutureTask
                                          FutureTask.deliver(): set_result / set_exception,
                                          or re-submit after a backoff while retries remain
    map/imap/...  -> JobOptions (checked once) -> _job -> MapJob (see _job.py), which runs
                     in the caller's thread; backend="auto": _auto.Router measures and
                     picks the backend first

Guarantees:

* A future is marked running exactly once, when its unit is first handed to a worker
  (``set_running_or_notify_cancel``); a future cancelled before that never runs.
* ``shutdown(cancel_futures=True)`` cancels every future that has not started, and (like
  ``ProcessPoolExecutor``) leaves it CANCELLED_AND_NOTIFIED, so ``wait()`` and
  ``as_completed()`` count it as done; so does ``terminate()``, and so does the dispatcher
  for a future its caller cancelled (``_futures.FutureTask.deliver``, ``starting``).
* A submitted task is finished by ``shutdown``, its retries too (they are follow-ups, which a
  shutting-down backend takes); so is a map that has started (see backends/queue.py).
* Leaving a ``with Pool()`` block by Ctrl-C (KeyboardInterrupt) or SystemExit terminates the
  workers instead of waiting for them, so an interrupt never hangs on running tasks.
* A pool that is garbage-collected or still open at interpreter exit is shut down: workers are
  stopped and reaped, never left behind.
"""

from __future__ import annotations

import atexit
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence

from ._async_methods import AsyncOptionsMethods, AsyncPoolMethods
from ._chunking import ItemTimes
from ._cpus import usable_cpus
from ._errors import PoolClosed
from ._job import MapJob
from ._options import (
    JobOptions,
    as_executor,
    check_backend,
    check_callable,
    check_cluster,
    check_deadline,
    check_workers,
    engine_limits,
)
from ._work import MODE_CALL, MODE_MAP, MODE_STAR, Unit
from .backends.base import Backend, copied_bytes

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import Executor, Future
    from typing import Any, NoReturn, ParamSpec, TypeVar

    from ._auto import Router
    from ._futures import FutureTask, Settles
    from ._stats import MapStats, PoolStats

    P = ParamSpec("P")
    R = TypeVar("R")
    _Core = TypeVar("_Core", bound="PoolCore")

__all__ = ["PoolCore"]

_live_backends: weakref.WeakSet[Backend] = weakref.WeakSet()


#: the tags of a submit's one item (shared: a submit allocates as little as it can)
_ONE_TAG = (0,)

# What a submit needs and a map does not, imported by the first submit (see _futures: a cold
# map must not import concurrent.futures) and kept here: an import statement in submit itself
# would cost each submit ~0.4 us per name (~6% of a submit).
_Future: Any = None  # _futures.Future, the light Future submit returns
_FutureTask: Any = None  # _futures.FutureTask, its sink
_StdFuture: Any = None  # concurrent.futures.Future


def _import_futures() -> None:
    """Set the three names above. Two threads' first submits may both run this (the same
    objects: harmless); the order of the assignments is what keeps a concurrent submit right:
    ``_submit`` tests ``_Future`` and ``_submit_task`` tests ``_FutureTask``, each set only once
    everything that function uses is."""
    global _Future, _FutureTask, _StdFuture
    from concurrent.futures import Future as std_future

    from ._futures import Future, FutureTask

    _StdFuture = std_future
    _FutureTask = FutureTask
    _Future = Future


class _SubmitTimes:
    """A moving average of how long submitted tasks run, to coalesce only short ones."""

    def __init__(self) -> None:
        self.estimate = 0.0

    def observe(self, elapsed: float) -> None:
        self.estimate += 0.2 * (elapsed - self.estimate) if self.estimate else elapsed


class PoolCore(AsyncPoolMethods):
    """Everything of :class:`conveyor.Pool` but being a ``concurrent.futures.Executor``.

    The pools conveyor makes for itself (the one-shot calls' default pools and own pools, the
    async calls', a pipeline's, the ``multiprocessing`` drop-in's) are ``PoolCore`` s, so that a
    cold map never imports ``concurrent.futures``: subclassing ``Executor`` imports it, and
    with it ``logging`` and ``traceback`` (~4 ms of a cold start on Python 3.11).
    ``conveyor.Pool`` (``_executor_pool``), the one users make, adds the ``Executor`` base and
    nothing else; the methods, documented there, are these.

    Example::

        >>> with PoolCore(workers=2, backend="thread") as pool:
        ...     list(pool.map(abs, [-1, -2]))
        [1, 2]
    """

    def __init__(
        self,
        workers: int | None = None,
        backend: str | Executor = "process",
        start_method: str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        cluster: Any = None,
        security: Any = None,
    ):
        executor = as_executor(backend)
        backend = check_backend(backend)
        check_cluster(backend, cluster, security)
        workers = check_workers(workers)
        if initializer is not None:
            check_callable(initializer, "initializer")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, got {type(initargs).__name__}")
        for name, value in (
            ("max_tasks_per_worker", max_tasks_per_worker),
            ("max_memory_per_worker", max_memory_per_worker),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(
                    f"{name} must be a whole number of at least 1 or None, got {value!r}"
                )
        self.backend_name = backend
        self._requested_workers = workers
        self._initializer = (initializer, initargs)
        self._options: dict[str, Any] = dict(
            start_method=start_method,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=max_tasks_per_worker,
            max_memory_per_worker=max_memory_per_worker,
            cluster=cluster,
            security=security,
            executor=executor,
        )
        self._closed = False
        self._lock = threading.Lock()
        # backend="auto" starts no process until processes are chosen, and a process pool none
        # until its first call (as ProcessPoolExecutor does; see _backend_for), unless it has
        # an initializer or asks for the zygote: their errors (an initializer that cannot be
        # pickled, start_method="zygote" in a process with threads) belong to the line that
        # makes the pool.
        self._primary: Backend | None = None
        lazy = backend == "auto" or (
            backend == "process" and initializer is None and start_method != "zygote"
        )
        if not lazy:
            self._start_primary()
        elif backend == "process" and start_method is not None:
            from .backends.process.spawning import check_start_method

            check_start_method(start_method)  # a bad name is the creating line's error
        self.workers = self._primary.workers if self._primary else (workers or usable_cpus())
        self._times = _SubmitTimes()
        self._item_times = ItemTimes()  # per function: the next map starts with sized chunks
        self._router: Router | None = None  # backend="auto": measures, then routes (_auto.py)
        if backend == "auto":
            from ._auto import Router

            host = weakref.proxy(self)  # the router must not keep its pool alive (finalizers)
            self._router = Router(
                process=lambda: host._backend,
                make_threads=lambda: host._make_threads(),
                payload_size=lambda items: host._payload_size(items),
                workers=self.workers,
                inline_ok=initializer is None,
                item_times=self._item_times,
            )

    def _start_primary(self, first_function: Callable[..., Any] | None = None) -> Backend:
        primary = _make_backend(
            "process" if self.backend_name == "auto" else self.backend_name,
            self._requested_workers,
            first_function=first_function,
            **self._options,
        )
        _live_backends.add(primary)
        weakref.finalize(self, _shutdown_quietly, primary)
        self._primary = primary
        return primary

    @property
    def _backend(self) -> Backend:
        """The pool's own backend (a process pool's or backend="auto"'s processes are started
        on first use)."""
        return self._backend_for(None)

    def _backend_for(self, fn: Callable[..., Any] | None) -> Backend:
        """The pool's own backend, for a call of ``fn``: a process pool started by this call
        gets ``fn`` as its first function (sent to its first workers by name when it can be:
        see ``ProcessBackend``)."""
        primary = self._primary
        if primary is not None:
            return primary
        with self._lock:
            if self._primary is not None:
                return self._primary
            if self._closed:
                raise PoolClosed("cannot submit to a pool that was shut down")
            return self._start_primary(fn)

    def _open(self) -> bool:
        """Whether work may still be submitted (without starting anything)."""
        return not self._closed and (self._primary is None or self._primary.alive)

    # ----------------------------------------------------------------- Executor

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` on a worker; returns a ``concurrent.futures.Future``.

        Every keyword goes to ``fn``; per-task options go through :meth:`options`.

        Example::

            >>> with conveyor.Pool() as pool:
            ...     pool.submit(divmod, 7, 2).result()
            (3, 1)
        """
        return self._submit(fn, args, kwargs, None, 0)

    def options(
        self, *, task_timeout: float | None = None, retries: int = 0, **renamed: NoReturn
    ) -> _PoolOptions:
        """The pool with per-task options for ``submit`` and the map calls.

        ``task_timeout``: seconds one task (one item of a map) may run; past it, it is stopped
        and fails with :class:`conveyor.TaskTimeout`. ``retries``: run a failed, timed-out or
        crashed task up to this many more times. ``pool.options(task_timeout=5).submit(fn, *args,
        **kwargs)`` passes every keyword to ``fn``, so the options never collide with the
        function's own keyword arguments.

        Example::

            >>> import time
            >>> with conveyor.Pool() as pool:
            ...     fut = pool.options(task_timeout=1.0).submit(time.sleep, 10)
            ...     fut.exception()
            TaskTimeout('task ran past its timeout of 1 s')
        """
        _reject_renamed("Pool.options", renamed)
        return _PoolOptions(self, **engine_limits(task_timeout, retries))

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_timeout: float | None,
        retries: int,
    ) -> Future[Any]:
        if _Future is None:
            _import_futures()
        future = _Future()
        self._submit_task(fn, args, kwargs, task_timeout, retries, future)
        return future

    def _submit_task(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_timeout: float | None,
        retries: int,
        future: Settles,
    ) -> FutureTask:
        """Submit one call; its sink, which owns its unit (to stop it: ``interrupt(task)``).

        The sink settles ``future``: a ``Future`` (``submit``'s), or what an awaited call
        hands its outcome on with (``_aio._CallFuture``).
        """
        if _FutureTask is None:
            _import_futures()
        check_callable(fn)
        backend = self._backend_for(fn)
        task: FutureTask = _FutureTask(backend, future, retries, self._times)
        unit = Unit(
            fn=fn,
            items=[(args, kwargs)],
            mode=MODE_CALL,
            sink=task,
            tags=_ONE_TAG,
            timeout=task_timeout,
            estimate=self._times.estimate,
            estimator=self._times,
            coalesce=True,
        )
        backend.submit([unit])
        if isinstance(future, _StdFuture):  # for stop(); weak: the future must not keep its task
            future._conveyor_task = weakref.ref(task)
        return task

    def stop(self, future: Future[Any]) -> bool:
        """Stop one submitted task, even a running one; True if it was stopped.

        ``future.cancel()`` keeps its standard meaning (only a task that has not started can be
        cancelled). ``stop`` also stops a running task: on the process backend its worker is
        killed (with what the task started) and replaced, and the future fails with
        :class:`conveyor.TaskStopped` (a ``concurrent.futures.CancelledError``). A thread cannot
        be killed: on the thread backend the future fails at once and the thread's work is
        abandoned (its result is dropped). False if the task had already finished.

        Example::

            >>> import time
            >>> with conveyor.Pool(workers=1) as pool:
            ...     fut = pool.submit(time.sleep, 60)
            ...     pool.stop(fut), fut.done()  # stopped before or while it ran
            (True, True)
        """
        if future.cancel():
            return True
        from concurrent.futures import InvalidStateError

        from ._executor_errors import TaskStopped
        from ._futures import task_of

        task = task_of(future)
        if task is None or future.done():
            return False
        for backend in self._all_backends():
            backend.interrupt(task)
        try:
            future.set_exception(TaskStopped("the task was stopped by Pool.stop()"))
        except InvalidStateError:  # it finished just before it could be stopped
            return False
        return True

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
    ) -> Iterator[R]:
        """``concurrent.futures.Executor.map``, exactly: an iterator over ``fn(*args)`` for the
        zipped ``iterables``, in order.

        It returns at once, having submitted every task (with ``buffersize``: at most that many
        tasks are submitted and not yet handed out, and the input is read as results are taken,
        as in Python 3.14, on every Python). ``timeout`` is a deadline for the whole iteration,
        counted from this call: past it, iterating raises ``TimeoutError``. An item's exception
        is raised when iteration reaches it. ``chunksize`` items go to a worker together.
        ``task_timeout`` (seconds per item; the item fails with :class:`conveyor.TaskTimeout`)
        and ``retries`` are conveyor's. For a list, chunks sized automatically, results as they
        finish, ``on_error`` or a progress bar, use :meth:`imap` / :meth:`imap_unordered` (or
        :func:`conveyor.map`, which returns a list).

        Example::

            >>> with conveyor.Pool() as pool:
            ...     list(pool.map(pow, [2, 3], [5, 2]))
            [32, 9]
        """
        check_callable(fn)
        if not iterables:
            raise TypeError("Pool.map() needs at least one iterable")
        for iterable in iterables:
            _check_iterable(iterable)
        limits = engine_limits(task_timeout, retries)
        timeout = check_deadline(timeout)
        if not self._open():
            raise PoolClosed("cannot submit to a pool that was shut down")
        from ._executor_map import executor_map  # (only here: a cold script's map skips it)

        return executor_map(
            self._backend_for(fn),
            fn,
            iterables,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            estimate=self._times.estimate,
            **limits,
        )

    def imap(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        chunksize: int | str = "auto",
        task_timeout: float | None = None,
        timeout: float | None = None,
        retries: int = 0,
        on_error: str = "raise",
        progress: bool | dict[str, Any] = False,
        explain: bool = False,
        stats: MapStats | None = None,
        capture_output: bool = False,
        checkpoint: Any = None,
    ) -> Iterator[R]:
        """Lazily yield ``fn(x)`` for each ``x``, in input order; takes input as it goes.

        Several iterables are zipped. The options are :func:`conveyor.map`'s: ``task_timeout``
        per item, ``timeout`` a deadline for the whole call (``TimeoutError``, its work
        stopped).

        Example::

            >>> import itertools
            >>> with conveyor.Pool() as pool:
            ...     for square in pool.imap(abs, itertools.count(-3)):
            ...         if square == 0: break
        """
        options = JobOptions.from_call(locals(), ordered=True)
        return self._results(fn, iterable, iterables, options, checkpoint)

    def imap_unordered(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        chunksize: int | str = "auto",
        task_timeout: float | None = None,
        timeout: float | None = None,
        retries: int = 0,
        on_error: str = "raise",
        progress: bool | dict[str, Any] = False,
        explain: bool = False,
        stats: MapStats | None = None,
        capture_output: bool = False,
        checkpoint: Any = None,
    ) -> Iterator[R]:
        """Like :meth:`imap`, but yields results as they finish.

        Example::

            >>> with conveyor.Pool() as pool:
            ...     sorted(pool.imap_unordered(abs, [-2, -1]))
            [1, 2]
        """
        options = JobOptions.from_call(locals(), ordered=False)
        return self._results(fn, iterable, iterables, options, checkpoint)

    def starmap(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        *,
        ordered: bool = True,
        chunksize: int | str = "auto",
        task_timeout: float | None = None,
        timeout: float | None = None,
        retries: int = 0,
        on_error: str = "raise",
        progress: bool | dict[str, Any] = False,
        explain: bool = False,
        stats: MapStats | None = None,
        capture_output: bool = False,
        checkpoint: Any = None,
    ) -> list[R]:
        """``[fn(*args) for args in iterable]`` on the pool's workers, as a list (as
        ``multiprocessing.Pool.starmap``); the options of :func:`conveyor.map`.

        Example::

            >>> with conveyor.Pool() as pool:
            ...     pool.starmap(pow, [(2, 5), (3, 2)])
            [32, 9]
        """
        options = JobOptions.from_call(locals(), mode=MODE_STAR)
        if checkpoint is not None:
            return list(checkpointed(self._job, fn, iterable, options, checkpoint))
        return self._job(fn, iterable, options).collect()

    def _results(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        iterables: tuple[Iterable[Any], ...],
        options: JobOptions,
        checkpoint: Any,
    ) -> Iterator[Any]:
        """imap's results: several iterables are zipped (each item is then ``fn(*args)``)."""
        if iterables:
            iterable, options = zip(iterable, *iterables), options.replace(mode=MODE_STAR)
        if checkpoint is not None:
            return checkpointed(self._job, fn, iterable, options, checkpoint)
        return iter(self._job(fn, iterable, options))

    def _job(self, fn: Callable[..., Any], iterable: Iterable[Any], options: JobOptions) -> MapJob:
        """The map job of ``fn`` over ``iterable`` (its ``options`` checked already)."""
        check_callable(fn)
        if not self._open():
            raise PoolClosed("cannot submit to a pool that was shut down")
        _check_iterable(iterable)
        if options.capture_output:
            fn = _captured(fn)
        if self._router is not None:
            return self._router.job(fn, iterable, options)
        return MapJob(self._backend_for(fn), fn, iterable, options, item_times=self._item_times)

    def _make_threads(self) -> Backend:
        """backend="auto": its thread backend, made when first chosen."""
        initializer, initargs = self._initializer
        threads = _make_backend(
            "thread", self._requested_workers, initializer=initializer, initargs=initargs
        )
        _live_backends.add(threads)
        weakref.finalize(self, _shutdown_quietly, threads)
        return threads

    def _payload_size(self, items: Sequence[Any]) -> int:
        """backend="auto": what sending ``items`` to the pool's processes copies (their
        backend's hook; before any process is started, the same estimate)."""
        primary = self._primary
        return copied_bytes(items) if primary is None else primary.payload_size(items)

    def stats(self) -> PoolStats:
        """What the pool's workers have done so far: per live worker its tasks and its busy
        and idle seconds, the items run in all, and workers replaced by cause (``crash``,
        ``timeout``, ``recycle``, ``stopped``). Cheap: counters the pool keeps anyway, read
        without stopping it. A map's own figures: pass ``stats=conveyor.MapStats()`` to it.

        Example::

            >>> with conveyor.Pool(workers=2, backend="thread") as pool:
            ...     _ = list(pool.imap(abs, range(10)))
            ...     stats = pool.stats()
            >>> stats.tasks, len(stats.workers), stats.restarts["timeout"]
            (10, 2, 0)
        """
        from ._stats import PoolStats

        return PoolStats.merged([b.stats() for b in self._all_backends()])

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; finish what was submitted (or cancel what has not started).

        As with ``concurrent.futures``: submitted tasks finish (retries included), and so do
        maps and imaps already running in other threads (they keep taking their input); with
        ``cancel_futures=True`` what has not started is cancelled (a running map then raises
        PoolClosed). An imap left suspended in the calling thread cannot go on while it waits:
        it is not waited for, and its later input fails with PoolClosed. Called with
        ``wait=True`` on one of the pool's own threads (a task or done-callback), it shuts the
        pool down and raises RuntimeError instead of waiting for itself, as the stdlib does.

        Example::

            >>> pool = conveyor.Pool(); pool.shutdown()
        """
        with self._lock:
            self._closed = True
        error: RuntimeError | None = None
        for backend in self._all_backends():
            try:
                backend.shutdown(wait=wait, cancel_pending=cancel_futures)
            except RuntimeError as exc:  # called from the pool's own thread: shut, not joined
                error = error or exc
        if error is not None:
            raise error

    def terminate(self) -> None:
        """Stop at once: kill the workers; what had not finished fails with PoolClosed.

        Example::

            >>> pool = conveyor.Pool(); pool.terminate()
        """
        with self._lock:
            self._closed = True
        for backend in self._all_backends():
            backend.terminate()

    def terminate_workers(self) -> None:
        """Python 3.14's ``ProcessPoolExecutor.terminate_workers()``, on every Python: stop the
        workers at once (SIGKILL; conveyor's workers lead their own process groups, and a
        gentler signal would leave what their tasks started running). The pool is shut down;
        what had not finished fails with :class:`conveyor.PoolClosed`.

        Example::

            >>> pool = conveyor.Pool(); pool.terminate_workers()
        """
        self.terminate()

    def kill_workers(self) -> None:
        """Python 3.14's ``ProcessPoolExecutor.kill_workers()``, on every Python: the same as
        :meth:`terminate_workers` (both kill; see there).

        Example::

            >>> pool = conveyor.Pool(); pool.kill_workers()
        """
        self.terminate()

    def _all_backends(self) -> list[Backend]:
        threads = None if self._router is None else self._router.threads
        return [b for b in (self._primary, threads) if b is not None]

    def __enter__(self: _Core) -> _Core:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            self.terminate()
            return None
        try:
            self.shutdown(wait=True)
        except KeyboardInterrupt:
            self.terminate()
            raise
        return None

    def __repr__(self) -> str:
        state = "open" if self._open() else "shut down"
        return f"<conveyor.Pool backend={self.backend_name!r} workers={self.workers} {state}>"


class _PoolOptions(AsyncOptionsMethods):
    """A pool seen with per-task options; returned by :meth:`Pool.options`.

    Its calls are the pool's, with this view's ``task_timeout`` and ``retries`` (checked by
    :meth:`Pool.options`); every other option is the pool's call's own.
    """

    def __init__(self, pool: PoolCore, task_timeout: float | None, retries: int):
        self._pool = pool
        self._task_timeout = task_timeout
        self._retries = retries
        self._limits: dict[str, Any] = {"task_timeout": task_timeout, "retries": retries}

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """``Pool.submit`` with this view's task_timeout and retries."""
        return self._pool._submit(fn, args, kwargs, self._task_timeout, self._retries)

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[R]:
        """``Pool.map`` (``Executor.map``) with this view's task_timeout and retries."""
        return self._pool.map(
            fn,
            *iterables,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            **self._limits,
        )

    def imap(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        chunksize: int | str = "auto",
        timeout: float | None = None,
        on_error: str = "raise",
        progress: bool | dict[str, Any] = False,
        explain: bool = False,
        stats: MapStats | None = None,
        capture_output: bool = False,
        checkpoint: Any = None,
    ) -> Iterator[R]:
        """``Pool.imap`` with this view's task_timeout and retries."""
        return self._pool.imap(
            fn,
            iterable,
            *iterables,
            chunksize=chunksize,
            timeout=timeout,
            on_error=on_error,
            progress=progress,
            explain=explain,
            stats=stats,
            capture_output=capture_output,
            checkpoint=checkpoint,
            **self._limits,
        )

    def imap_unordered(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        chunksize: int | str = "auto",
        timeout: float | None = None,
        on_error: str = "raise",
        progress: bool | dict[str, Any] = False,
        explain: bool = False,
        stats: MapStats | None = None,
        capture_output: bool = False,
        checkpoint: Any = None,
    ) -> Iterator[R]:
        """``Pool.imap_unordered`` with this view's task_timeout and retries."""
        return self._pool.imap_unordered(
            fn,
            iterable,
            *iterables,
            chunksize=chunksize,
            timeout=timeout,
            on_error=on_error,
            progress=progress,
            explain=explain,
            stats=stats,
            capture_output=capture_output,
            checkpoint=checkpoint,
            **self._limits,
        )

    def starmap(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        *,
        ordered: bool = True,
        chunksize: int | str = "auto",
        timeout: float | None = None,
        on_error: str = "raise",
        progress: bool | dict[str, Any] = False,
        explain: bool = False,
        stats: MapStats | None = None,
        capture_output: bool = False,
        checkpoint: Any = None,
    ) -> list[R]:
        """``Pool.starmap`` with this view's task_timeout and retries."""
        return self._pool.starmap(
            fn,
            iterable,
            ordered=ordered,
            chunksize=chunksize,
            timeout=timeout,
            on_error=on_error,
            progress=progress,
            explain=explain,
            stats=stats,
            capture_output=capture_output,
            checkpoint=checkpoint,
            **self._limits,
        )


def checkpointed(
    start_job: Callable[[Callable[..., Any], Iterable[Any], JobOptions], Iterable[Any]],
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    options: JobOptions,
    checkpoint: Any,
) -> Iterator[Any]:
    """A map through a checkpoint journal (see _checkpoint.py): the engine (``start_job``) runs
    with ``on_error="return"`` on (position, item) pairs; the journal applies ``on_error``."""
    from ._checkpoint import run_checkpointed

    def start_engine(
        positioned: Callable[..., Any], pairs: Iterable[Any], ordered: bool
    ) -> Iterator[Any]:
        engine = options.replace(mode=MODE_MAP, on_error="return", ordered=ordered)
        return iter(start_job(positioned, pairs, engine))

    return run_checkpointed(
        checkpoint,
        fn,
        iterable,
        star=options.mode == MODE_STAR,
        ordered=options.ordered,
        on_error=options.on_error,
        start_engine=start_engine,
    )


def _reject_renamed(call: str, renamed: dict[str, Any]) -> None:
    """A clear error for an option that does not exist, naming ``task_timeout`` for ``timeout``
    (its old meaning, a limit per task: guessing would silently change what the call does)."""
    if not renamed:
        return
    name = sorted(renamed)[0]
    if name == "timeout":
        raise TypeError(
            f"{call}() takes no timeout=: the limit per task is called task_timeout= "
            f"(timeout= means a deadline for waiting, as in concurrent.futures)"
        )
    raise TypeError(f"{call}() got an unexpected keyword argument {name!r}")


def _check_iterable(iterable: Any) -> None:
    try:
        iter(iterable)
    except TypeError:
        raise TypeError(
            f"iterable must be iterable, got {iterable!r} (of type {type(iterable).__name__})"
        ) from None


def _make_backend(
    name: str,
    workers: int | None,
    *,
    start_method: str | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    max_tasks_per_worker: int | None = None,
    max_memory_per_worker: int | None = None,
    cluster: Any = None,
    security: Any = None,
    executor: Executor | None = None,
    first_function: Callable[..., Any] | None = None,
) -> Backend:
    if name == "executor":
        for option, value in (
            ("start_method", start_method),
            ("max_tasks_per_worker", max_tasks_per_worker),
            ("max_memory_per_worker", max_memory_per_worker),
        ):
            if value is not None:
                raise ValueError(
                    f"{option}={value!r} is for the process backend; with an executor as the "
                    "backend, its workers are the executor's (set their limits when making it)"
                )
        from .backends.executor import ExecutorBackend

        assert executor is not None
        return ExecutorBackend(executor, workers, initializer=initializer, initargs=initargs)
    if name == "thread":
        from .backends.thread import ThreadBackend

        count = workers or min(32, usable_cpus() + 4)
        return ThreadBackend(count, initializer=initializer, initargs=initargs)
    if name == "process":
        from .backends.process import ProcessBackend

        _register_exit_handler()
        return ProcessBackend(
            workers or usable_cpus(),
            start_method=start_method,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=max_tasks_per_worker,
            max_memory_per_worker=max_memory_per_worker,
            first_function=first_function,
        )
    if name == "dask":
        for option, value in (
            ("start_method", start_method),
            ("max_tasks_per_worker", max_tasks_per_worker),
            ("max_memory_per_worker", max_memory_per_worker),
        ):
            if value is not None:
                raise ValueError(
                    f'{option}={value!r} is for the process backend; backend="dask" runs on '
                    "the cluster's own workers (set their limits where the cluster is started)"
                )
        from .backends.dask.cluster import require_distributed

        require_distributed()
        from .backends.dask import DaskBackend

        _register_exit_handler()
        return DaskBackend(
            workers,
            cluster=cluster,
            security=security,
            initializer=initializer,
            initargs=initargs,
        )
    raise AssertionError(f"no backend {name!r}: check_backend lets only BACKENDS through")


def _captured(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with each item's output captured (``capture_output=True``, see _capture.py)."""
    from ._capture import CapturedCall
    from ._coroutines import is_async_function

    if is_async_function(fn):
        raise TypeError(
            "capture_output=True is for plain functions: the coroutines of an async def "
            "function share their thread, so their output cannot be told apart"
        )
    return CapturedCall(fn)


def _shutdown_quietly(backend: Backend) -> None:
    try:
        backend.shutdown(wait=False)
    except Exception:
        pass


_exit_handler_registered = False


def _register_exit_handler() -> None:
    """Register :func:`_terminate_all` to run at exit before multiprocessing's own handler.

    multiprocessing joins its non-daemon children at exit (our workers are not daemons, so that
    their tasks may start processes of their own); exit handlers run last-registered first, so
    importing multiprocessing.util (which registers its handler) before registering ours makes
    ours kill the workers first, and that join returns at once.
    """
    global _exit_handler_registered
    if not _exit_handler_registered:
        import multiprocessing.util  # noqa: F401

        atexit.register(_terminate_all)
        _exit_handler_registered = True


def _terminate_all() -> None:
    """At exit, stop every pool still open: kill and reap its workers, never wait on tasks.
    Then let the zygote go (if there is one): it leaves now, while this interpreter tears down,
    not after it (a pipe from this program, which it shares, ends that much sooner)."""
    for backend in list(_live_backends):
        try:
            backend.terminate()
        except Exception:
            pass
    zygote = sys.modules.get("conveyor.backends.process.zygote")
    if zygote is not None:
        zygote._release()
