"""``conveyor.Pool``: a ``concurrent.futures.Executor`` on a thread or process backend.

Data flow::

    caller thread                         backend (worker threads, or the dispatcher thread)
    -------------                         --------------------------------------------------
    submit(fn, *args) -> Future  ------>  one-item Unit, sink = _FutureTask
                                          _FutureTask.deliver(): set_result / set_exception,
                                          or re-submit after a backoff while retries remain
    map/imap/...  -> MapJob (see _job.py), which runs in the caller's thread

Guarantees:

* A future is marked running exactly once, when its unit is first handed to a worker
  (``set_running_or_notify_cancel``); a future cancelled before that never runs.
* ``shutdown(cancel_futures=True)`` cancels every future that has not started.
* Leaving a ``with Pool()`` block by Ctrl-C (KeyboardInterrupt) or SystemExit terminates the
  workers instead of waiting for them, so an interrupt never hangs on running tasks.
* A pool that is garbage-collected or still open at interpreter exit is shut down: workers are
  stopped and reaped, never left behind.
"""

from __future__ import annotations

import atexit
import itertools
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

from ._async_methods import AsyncOptionsMethods, AsyncPoolMethods
from ._chunking import ItemTimes
from ._cpus import usable_cpus
from ._errors import PoolClosed, TaskTimeout, WorkerCrashed
from ._job import MapJob, retry_backoff
from ._options import check_backend, check_callable, check_options, check_timeout, check_workers
from ._work import MODE_CALL, MODE_MAP, MODE_STAR, Loader, Unit
from .backends.base import Backend

__all__ = ["Pool"]

_live_backends: weakref.WeakSet[Backend] = weakref.WeakSet()


class _SubmitTimes:
    """A moving average of how long submitted tasks run, to coalesce only short ones."""

    def __init__(self) -> None:
        self.estimate = 0.0

    def observe(self, elapsed: float) -> None:
        self.estimate += 0.2 * (elapsed - self.estimate) if self.estimate else elapsed


class _FutureTask:
    """The sink of one ``submit``: settles its future, retrying first if asked to."""

    __slots__ = ("attempts", "backend", "future", "retries", "started", "times")

    def __init__(self, backend: Backend, future: Future[Any], retries: int, times: _SubmitTimes):
        self.backend = backend
        self.future = future
        self.retries = retries
        self.times = times
        self.attempts = 0
        self.started = False

    @property
    def owner(self) -> object:
        # A property, not `self.owner = self`: that reference cycle kept every finished task, its
        # future and its result (maybe a view of shared memory) alive until the cycle collector.
        return self

    def starting(self, unit: Unit) -> bool:
        if self.started:  # a retry, or a piece re-queued after a crash
            return not self.future.done()
        self.started = True
        return self.future.set_running_or_notify_cancel()

    def deliver(self, unit: Unit, start: int, loader: Loader, elapsed: float) -> None:
        values, errors = loader()
        error = errors.get(0)
        if self.future.done():
            return
        if error is None:
            self.times.observe(elapsed)
            self.future.set_result(values[0])
            return
        if isinstance(error, PoolClosed) and not self.started:
            self.future.cancel()
            return
        self.attempts += 1
        if self.attempts <= self.retries and not isinstance(error, PoolClosed):
            retry = Unit(
                fn=unit.fn,
                items=unit.items,
                mode=unit.mode,
                sink=self,
                tags=unit.tags,
                timeout=unit.timeout,
                not_before=time.monotonic() + retry_backoff(self.attempts),
            )
            try:
                self.backend.submit([retry])
                return
            except Exception as exc:
                error = exc
        self.future.set_exception(error)


class Pool(AsyncPoolMethods, Executor):
    """A pool of workers: a real ``concurrent.futures.Executor`` with conveyor's map calls.

    ``backend`` is ``"process"`` (default; conveyor's own worker processes), ``"thread"`` or
    ``"auto"``. ``workers=None`` means the CPUs this process may use (for threads:
    that plus 4, at most 32). ``max_tasks_per_worker`` and ``max_memory_per_worker`` (bytes of
    resident memory) replace a worker process after it ran that many tasks or grew that big.

    Example::

        >>> import conveyor
        >>> with conveyor.Pool(workers=2) as pool:
        ...     future = pool.submit(pow, 2, 10)
        ...     squares = pool.map(lambda x: x * x, range(5))
        >>> future.result(), squares
        (1024, [0, 1, 4, 9, 16])
    """

    def __init__(
        self,
        workers: int | None = None,
        backend: str = "process",
        start_method: str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
    ):
        backend = check_backend(backend)
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
        self._threads: Backend | None = None  # backend="auto": made when first chosen
        self._inline: Backend | None = None
        self._backend = _make_backend(
            "process" if backend == "auto" else backend,
            workers,
            start_method=start_method,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=max_tasks_per_worker,
            max_memory_per_worker=max_memory_per_worker,
        )
        self.workers = self._backend.workers
        _live_backends.add(self._backend)
        self._finalizer = weakref.finalize(self, _shutdown_quietly, self._backend)
        self._times = _SubmitTimes()
        self._item_times = ItemTimes()  # per function: the next map starts with sized chunks

    # ----------------------------------------------------------------- Executor

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a worker; returns a ``concurrent.futures.Future``.

        Every keyword goes to ``fn``; per-task options go through :meth:`options`.

        Example::

            >>> with conveyor.Pool() as pool:
            ...     pool.submit(divmod, 7, 2).result()
            (3, 1)
        """
        return self._submit(fn, args, kwargs, None, 0)

    def options(self, *, timeout: float | None = None, retries: int = 0) -> _PoolOptions:
        """The pool with per-task options for ``submit`` (and defaults for the map calls).

        ``pool.options(timeout=5, retries=2).submit(fn, *args, **kwargs)`` passes every keyword
        to ``fn``, so the options never collide with the function's own keyword arguments.

        Example::

            >>> with conveyor.Pool() as pool:
            ...     fut = pool.options(timeout=1.0).submit(time.sleep, 10)
            ...     fut.exception()
            TaskTimeout('task ran past its timeout of 1 s')
        """
        check_options(timeout=timeout, retries=retries)
        return _PoolOptions(self, timeout, retries)

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        retries: int,
    ) -> Future[Any]:
        return self._submit_task(fn, args, kwargs, timeout, retries).future

    def _submit_task(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        retries: int,
    ) -> _FutureTask:
        """Submit one call; its sink, which owns its unit (to stop it: ``interrupt(task)``)."""
        check_callable(fn)
        future: Future[Any] = Future()
        task = _FutureTask(self._backend, future, retries, self._times)
        unit = Unit(
            fn=fn,
            items=[(args, kwargs)],
            mode=MODE_CALL,
            sink=task,
            tags=[0],
            timeout=timeout,
            estimate=self._times.estimate,
            coalesce=True,
        )
        self._backend.submit([unit])
        return task

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        ordered: bool = True,
        chunksize: int | str = "auto",
        timeout: float | None = None,
        retries: int = 0,
        on_error: str = "raise",
        progress: bool | dict[str, Any] = False,
    ) -> list[Any]:
        """``[fn(x) for x in iterable]`` on the pool's workers, as a list.

        Several iterables are zipped, as with the built-in ``map``. ``timeout`` is per item
        (unlike ``Executor.map``'s overall timeout). See :func:`conveyor.map` for the options.

        Example::

            >>> with conveyor.Pool() as pool:
            ...     pool.map(pow, [2, 3], [5, 2])
            [32, 9]
        """
        return self._job(
            fn, iterable, iterables, ordered, chunksize, timeout, retries, on_error, progress
        ).collect()

    def imap(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        **options: Any,
    ) -> Iterator[Any]:
        """Lazily yield ``fn(x)`` for each ``x``, in input order; takes input as it goes.

        Example::

            >>> import itertools
            >>> with conveyor.Pool() as pool:
            ...     for square in pool.imap(abs, itertools.count(-3)):
            ...         if square == 0: break
        """
        options.setdefault("ordered", True)
        return iter(self._job(fn, iterable, iterables, **_job_options(options)))

    def imap_unordered(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        **options: Any,
    ) -> Iterator[Any]:
        """Like :meth:`imap`, but yields results as they finish.

        Example::

            >>> with conveyor.Pool() as pool:
            ...     sorted(pool.imap_unordered(abs, [-2, -1]))
            [1, 2]
        """
        options["ordered"] = False
        return iter(self._job(fn, iterable, iterables, **_job_options(options)))

    def starmap(
        self, fn: Callable[..., Any], iterable: Iterable[Iterable[Any]], **options: Any
    ) -> list[Any]:
        """``[fn(*args) for args in iterable]`` on the pool's workers, as a list.

        Example::

            >>> with conveyor.Pool() as pool:
            ...     pool.starmap(pow, [(2, 5), (3, 2)])
            [32, 9]
        """
        job = self._job(fn, iterable, (), mode=MODE_STAR, **_job_options(options))
        return job.collect()

    def _job(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool = True,
        chunksize: int | str = "auto",
        timeout: float | None = None,
        retries: int = 0,
        on_error: str = "raise",
        progress: bool | dict[str, Any] = False,
        mode: int = MODE_MAP,
        explain: bool = False,
    ) -> MapJob:
        check_callable(fn)
        check_options(
            chunksize=chunksize,
            timeout=timeout,
            retries=retries,
            on_error=on_error,
            ordered=ordered,
        )
        if not self._backend.alive:
            raise PoolClosed("cannot submit to a pool that was shut down")
        if iterables:
            iterable, mode = zip(iterable, *iterables), MODE_STAR
        _check_iterable(iterable)
        timeout = check_timeout(timeout)
        options: dict[str, Any] = dict(
            mode=mode,
            ordered=ordered,
            chunksize=chunksize,
            timeout=timeout,
            retries=retries,
            on_error=on_error,
            progress=progress,
            item_times=self._item_times,
        )
        if self.backend_name != "auto":
            return MapJob(self._backend, fn, iterable, **options)
        return self._auto_job(fn, iterable, mode, timeout, explain, options)

    def _auto_job(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        mode: int,
        timeout: float | None,
        explain: bool,
        options: dict[str, Any],
    ) -> MapJob:
        """backend="auto": measure (see _auto.py), choose, and run the rest on the choice."""
        from . import _auto

        total = _length(iterable)
        inline_ok = self._initializer[0] is None
        rest = iter(iterable)
        head: list[Any] = []
        done, outcomes = 0, None
        measurement = _auto.remembered(fn, mode)
        if measurement is not None:
            choice = _auto.choose(measurement, total, timeout, self.workers, inline_ok)
        else:
            head = _auto.take_head(rest, timed=timeout is not None)
            if not head:
                return MapJob(self._backend, fn, head, **options)
            forced, done, outcomes, measurement = self._probe(fn, mode, head, timeout)
            if measurement is not None:
                _auto.remember(fn, mode, measurement)
                remaining = None if total is None else total - done
                choice = _auto.choose(measurement, remaining, timeout, self.workers, inline_ok)
            else:
                assert forced is not None
                choice = forced
        _auto.report(choice, fn, explain)
        backend = self._backend_for(choice.backend)
        if choice.backend == "inline" and options["chunksize"] == "auto":
            options = {**options, "chunksize": 65536}  # nothing to balance: few, large chunks
        # A list, tuple or range goes whole (MapJob slices it, skipping the probed items).
        sequence = type(iterable) in (list, tuple, range)
        return MapJob(
            backend,
            fn,
            iterable if sequence else itertools.chain(head[done:], rest),
            total=total,
            head=(head[:done], outcomes) if outcomes is not None else None,
            **options,
        )

    def _probe(
        self, fn: Callable[..., Any], mode: int, head: list[Any], timeout: float | None
    ) -> tuple[Any, int, Any, Any]:
        """Run the probe in a worker.

        Returns (a choice forced by how it failed, or None; how many items it ran; their
        outcomes; the measurement, or None when it failed).
        """
        from . import _auto

        future: Future[Any] = Future()
        task = _FutureTask(self._backend, future, 0, self._times)
        unit = Unit(
            fn=_auto.probe,
            items=[((fn, mode, head), {})],
            mode=MODE_CALL,
            sink=task,
            tags=[0],
            timeout=None if timeout is None else 3 * timeout,
        )
        try:
            self._backend.submit([unit])
            sent = getattr(unit.wire, "items", None)  # its pickled form: what moving it costs
            bytes_per_item = sent.nbytes / len(head) if sent is not None else 0.0
        except TypeError:
            return (
                _auto.Choice(
                    "thread",
                    "the function or its arguments cannot be pickled, and threads need no pickling",
                ),
                0,
                None,
                None,
            )
        try:
            done, outcomes, measurement = future.result()
        except KeyboardInterrupt:
            self._backend.interrupt(task)
            raise
        except TaskTimeout:
            return (
                _auto.Choice(
                    "process", "measuring it ran past its timeout; processes can stop such tasks"
                ),
                0,
                None,
                None,
            )
        except WorkerCrashed:
            return (
                _auto.Choice(
                    "process", "measuring it crashed its worker; processes isolate such tasks"
                ),
                0,
                None,
                None,
            )
        except Exception:
            # The probe itself failed (the items failed in ways the job will report itself).
            return _auto.Choice("process", "it could not be measured"), 0, None, None
        return None, done, outcomes, measurement.with_bytes(bytes_per_item)

    def _backend_for(self, name: str) -> Backend:
        if name == "process":
            return self._backend
        if name == "inline":
            if self._inline is None:
                from .backends.inline import InlineBackend

                self._inline = InlineBackend()
            return self._inline
        if self._threads is None:
            initializer, initargs = self._initializer
            self._threads = _make_backend(
                "thread", self._requested_workers, initializer=initializer, initargs=initargs
            )
            _live_backends.add(self._threads)
            weakref.finalize(self, _shutdown_quietly, self._threads)
        return self._threads

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; finish what was submitted (or cancel what has not started).

        Example::

            >>> pool = conveyor.Pool(); pool.shutdown()
        """
        for backend in self._all_backends():
            backend.shutdown(wait=wait, cancel_pending=cancel_futures)

    def terminate(self) -> None:
        """Stop at once: kill the workers; what had not finished fails with PoolClosed.

        Example::

            >>> pool = conveyor.Pool(); pool.terminate()
        """
        for backend in self._all_backends():
            backend.terminate()

    def _all_backends(self) -> list[Backend]:
        return [b for b in (self._backend, self._threads) if b is not None]

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
        state = "open" if self._backend.alive else "shut down"
        return f"<conveyor.Pool backend={self.backend_name!r} workers={self.workers} {state}>"


class _PoolOptions(AsyncOptionsMethods):
    """A pool seen with per-task options; returned by :meth:`Pool.options`."""

    def __init__(self, pool: Pool, timeout: float | None, retries: int):
        self._pool = pool
        self._timeout = check_timeout(timeout)
        self._retries = retries

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """``Pool.submit`` with this view's timeout and retries."""
        return self._pool._submit(fn, args, kwargs, self._timeout, self._retries)

    def _with_defaults(self, options: dict[str, Any]) -> dict[str, Any]:
        options.setdefault("timeout", self._timeout)
        options.setdefault("retries", self._retries)
        return options

    def map(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        **options: Any,
    ) -> list[Any]:
        """``Pool.map`` with this view's timeout and retries as defaults."""
        return self._pool.map(fn, iterable, *iterables, **self._with_defaults(options))

    def imap(
        self, fn: Callable[..., Any], iterable: Iterable[Any], **options: Any
    ) -> Iterator[Any]:
        """``Pool.imap`` with this view's timeout and retries as defaults."""
        return self._pool.imap(fn, iterable, **self._with_defaults(options))

    def imap_unordered(
        self, fn: Callable[..., Any], iterable: Iterable[Any], **options: Any
    ) -> Iterator[Any]:
        """``Pool.imap_unordered`` with this view's timeout and retries as defaults."""
        return self._pool.imap_unordered(fn, iterable, **self._with_defaults(options))

    def starmap(
        self, fn: Callable[..., Any], iterable: Iterable[Iterable[Any]], **options: Any
    ) -> list[Any]:
        """``Pool.starmap`` with this view's timeout and retries as defaults."""
        return self._pool.starmap(fn, iterable, **self._with_defaults(options))


_JOB_OPTIONS = ("ordered", "chunksize", "timeout", "retries", "on_error", "progress", "explain")


def _job_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_JOB_OPTIONS))
    if unknown:
        raise TypeError(
            f"unexpected option {unknown[0]!r}; the options are {', '.join(_JOB_OPTIONS)}"
        )
    return options


def _length(iterable: Any) -> int | None:
    try:
        return len(iterable)
    except Exception:
        return None


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
) -> Backend:
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
        )
    raise ValueError(f"backend {name!r} is not available yet")


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
    """At exit, stop every pool still open: kill and reap its workers, never wait on tasks."""
    for backend in list(_live_backends):
        try:
            backend.terminate()
        except Exception:
            pass
