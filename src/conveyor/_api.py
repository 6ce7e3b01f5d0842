"""The one-shot calls (``conveyor.map`` and friends) and the default pools behind them.

A default pool is started lazily for each ``(backend, workers, start_method)`` the program
uses, kept for later calls (so a second call pays no start-up) and terminated at interpreter
exit. A call with an ``initializer`` gets a pool of its own, closed when the call is done.
A process forked from this one starts its own default pools afresh (the parent's serve the
parent only). Default pools are ``_pool.PoolCore`` s, the engine of ``conveyor.Pool`` without
its ``concurrent.futures.Executor`` base: a cold call imports neither ``concurrent.futures``
nor ``logging`` (see ``_executor_errors``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator, Iterable, Iterator

from ._errors import PoolClosed
from ._options import (
    Deadline,
    JobOptions,
    check_backend,
    check_deadline,
    check_workers,
)
from ._pool import PoolCore, checkpointed
from ._work import MODE_STAR

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import Executor, Future
    from typing import Any, TypeVar

    from ._stats import MapStats

    T = TypeVar("T")
    R = TypeVar("R")


__all__ = ["as_completed", "imap", "imap_unordered", "map", "starmap"]

_defaults: dict[tuple[str, int | None, str | None, Any], PoolCore] = {}
_defaults_lock = threading.Lock()


def _forget_defaults_after_fork() -> None:
    """In a forked child: the parent's default pools are not ours (and the lock may be held)."""
    global _defaults_lock
    _defaults_lock = threading.Lock()
    _defaults.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_defaults_after_fork)


def _default_pool(
    backend: str, workers: int | None, start_method: str | None, cluster: Any = None
) -> PoolCore:
    """The default pool for these options, made now if there is none (or it was shut down).

    A process pool starts its workers at its first call, which hands them that call's function
    (see ``PoolCore._backend_for``).
    """
    backend = check_backend(backend)
    workers = check_workers(workers)
    key = (backend, workers, start_method, cluster)
    with _defaults_lock:
        pool = _defaults.get(key)
        if pool is None or not pool._open():
            pool = PoolCore(
                workers=workers, backend=backend, start_method=start_method, cluster=cluster
            )
            _defaults[key] = pool
        return pool


def _run(
    fn: Callable[..., Any], iterable: Iterable[Any], call: _Call, options: JobOptions
) -> Generator[list[Any], None, None]:
    """Batches of results of one call, on a default pool or a pool of its own (with an
    initializer, or on the caller's executor: no default pool keeps either alive)."""
    if call.initializer is None and isinstance(call.backend, str):
        pool = _default_pool(call.backend, call.workers, call.start_method, call.cluster)
        try:
            job = pool._job(fn, iterable, options)
        except PoolClosed:  # shut down under us (at exit, or by a broken initializer)
            pool = _default_pool(call.backend, call.workers, call.start_method, call.cluster)
            job = pool._job(fn, iterable, options)
        yield from job.batches()
        return
    with PoolCore(
        workers=call.workers,
        backend=call.backend,
        start_method=call.start_method,
        initializer=call.initializer,
        initargs=call.initargs,
        cluster=call.cluster,
    ) as own:
        yield from own._job(fn, iterable, options).batches()


class _Call:
    """The options of a one-shot call that choose its pool."""

    __slots__ = ("backend", "cluster", "initargs", "initializer", "start_method", "workers")

    def __init__(
        self,
        workers: int | None,
        backend: str | Executor,
        start_method: str | None,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        cluster: Any = None,
    ):
        self.cluster = cluster
        self.workers = workers
        self.backend = backend
        self.start_method = start_method
        self.initializer = initializer
        self.initargs = initargs

    def iterate(
        self, fn: Callable[..., Any], iterable: Iterable[Any], options: JobOptions
    ) -> Iterator[Any]:
        """The results of one call, one by one (what imap returns)."""
        batches = _run(fn, iterable, self, options)
        try:
            for values in batches:
                yield from values
        finally:
            batches.close()


def map(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    workers: int | None = None,
    backend: str | Executor = "auto",
    ordered: bool = True,
    chunksize: int | str = "auto",
    task_timeout: float | None = None,
    timeout: float | None = None,
    retries: int = 0,
    on_error: str = "raise",
    progress: bool | dict[str, Any] = False,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    start_method: str | None = None,
    explain: bool = False,
    stats: MapStats | None = None,
    capture_output: bool = False,
    checkpoint: Any = None,
    cluster: Any = None,
) -> list[R]:
    """``[fn(x) for x in iterable]``, run in parallel; returns the list of results.

    * ``backend``: ``"process"`` (conveyor's worker processes; any callable works, lambdas
      included), ``"thread"``, ``"auto"``, or ``"dask"`` with ``cluster=`` an address
      (``"tcp://host:8786"``, ``"tls://..."``), a ``distributed.Client``, or None for a
      LocalCluster on 127.0.0.1 (kept for later calls, closed at exit).
    * ``ordered=False``: results in completion order.
    * ``chunksize``: ``"auto"`` measures per-item time and sizes chunks to it; or a number.
    * ``task_timeout``: seconds per item; an item past it is stopped and raises
      :class:`conveyor.TaskTimeout` (a ``TimeoutError``).
    * ``timeout``: seconds for the whole call, as in ``concurrent.futures``; past it the call
      raises ``TimeoutError`` (``concurrent.futures.TimeoutError``) and its work is stopped
      (queued items dropped; on processes, the workers running its items are killed and
      replaced). With a ``timeout``, ``backend="auto"`` never runs the work inline.
    * ``retries``: run a failed, timed-out or crashed item up to this many more times.
    * ``on_error``: ``"raise"`` the first error, ``"return"`` a :class:`conveyor.Failure` in the
      item's place, or ``"skip"`` the item.
    * ``progress=True``: a tqdm bar (or a dict of tqdm options).
    * ``initializer(*initargs)`` runs once in each worker (such a call gets its own pool).
    * ``explain=True``: print what ``backend="auto"`` measured and chose (it is also logged at
      INFO on the ``conveyor`` logger).
    * ``checkpoint="run.db"`` (or a :class:`conveyor.Checkpoint`): keep every item's outcome in
      that journal as it arrives; the same call run again (after a crash, say) returns every
      result and computes only what the journal does not hold.

    Example::

        >>> import conveyor
        >>> conveyor.map(lambda x: x * x, range(5))
        [0, 1, 4, 9, 16]
    """
    options = JobOptions.from_call(locals())
    call = _Call(workers, backend, start_method, initializer, initargs, cluster)
    return _list(fn, iterable, call, options, checkpoint)


def starmap(
    fn: Callable[..., R],
    iterable: Iterable[Iterable[Any]],
    *,
    workers: int | None = None,
    backend: str | Executor = "auto",
    ordered: bool = True,
    chunksize: int | str = "auto",
    task_timeout: float | None = None,
    timeout: float | None = None,
    retries: int = 0,
    on_error: str = "raise",
    progress: bool | dict[str, Any] = False,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    start_method: str | None = None,
    explain: bool = False,
    stats: MapStats | None = None,
    capture_output: bool = False,
    checkpoint: Any = None,
    cluster: Any = None,
) -> list[R]:
    """``[fn(*args) for args in iterable]`` in parallel; the options of :func:`map`.

    Example::

        >>> conveyor.starmap(pow, [(2, 5), (3, 2)])
        [32, 9]
    """
    options = JobOptions.from_call(locals(), mode=MODE_STAR)
    call = _Call(workers, backend, start_method, initializer, initargs, cluster)
    return _list(fn, iterable, call, options, checkpoint)


def imap(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    workers: int | None = None,
    backend: str | Executor = "auto",
    chunksize: int | str = "auto",
    task_timeout: float | None = None,
    timeout: float | None = None,
    retries: int = 0,
    on_error: str = "raise",
    progress: bool | dict[str, Any] = False,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    start_method: str | None = None,
    explain: bool = False,
    stats: MapStats | None = None,
    capture_output: bool = False,
    checkpoint: Any = None,
    cluster: Any = None,
) -> Iterator[R]:
    """Lazily yield ``fn(x)`` in input order; input is read as results are consumed.

    At most a few chunks per worker are in flight, so an endless generator is fine, and
    breaking out of the loop cancels what is queued. The options of :func:`map`; ``timeout``
    is counted from this call.

    Example::

        >>> import itertools
        >>> for square in conveyor.imap(lambda x: x * x, itertools.count()):
        ...     if square > 100:
        ...         break
    """
    options = JobOptions.from_call(locals(), ordered=True, timeout=_started(timeout))
    call = _Call(workers, backend, start_method, initializer, initargs, cluster)
    if checkpoint is not None:
        return checkpointed(call.iterate, fn, iterable, options, checkpoint)
    return call.iterate(fn, iterable, options)


def imap_unordered(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    workers: int | None = None,
    backend: str | Executor = "auto",
    chunksize: int | str = "auto",
    task_timeout: float | None = None,
    timeout: float | None = None,
    retries: int = 0,
    on_error: str = "raise",
    progress: bool | dict[str, Any] = False,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    start_method: str | None = None,
    explain: bool = False,
    stats: MapStats | None = None,
    capture_output: bool = False,
    checkpoint: Any = None,
    cluster: Any = None,
) -> Iterator[R]:
    """Like :func:`imap`, yielding results as they finish.

    Example::

        >>> sorted(conveyor.imap_unordered(abs, [-3, -1, -2]))
        [1, 2, 3]
    """
    options = JobOptions.from_call(locals(), ordered=False, timeout=_started(timeout))
    call = _Call(workers, backend, start_method, initializer, initargs, cluster)
    if checkpoint is not None:
        return checkpointed(call.iterate, fn, iterable, options, checkpoint)
    return call.iterate(fn, iterable, options)


def _list(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    call: _Call,
    options: JobOptions,
    checkpoint: Any,
) -> list[Any]:
    """map's and starmap's list of results."""
    if checkpoint is not None:
        return list(checkpointed(call.iterate, fn, iterable, options, checkpoint))
    return _collect(_run(fn, iterable, call, options))


def _collect(batches: Iterable[list[Any]]) -> list[Any]:
    """The batches as one list; the first batch is that list (a call that ran inline in one
    chunk hands its results over without a copy: the job keeps no reference to its batches)."""
    out: list[Any] | None = None
    for values in batches:
        if out is None:
            out = values
        else:
            out.extend(values)
    return [] if out is None else out


def _started(timeout: Any) -> Deadline | None:
    """imap's ``timeout`` counts from the call, not from the first ``next()`` (the generator's
    body runs only then): its end is fixed here."""
    timeout = check_deadline(timeout)
    return None if timeout is None else Deadline.starting_now(timeout)


def as_completed(futures: Iterable[Future[R]], timeout: float | None = None) -> Iterator[Future[R]]:
    """Yield futures as they finish (``concurrent.futures.as_completed``).

    With conveyor's pools, a task that must not run past a time limit should be given
    ``pool.options(task_timeout=...)``: that stops the task; this ``timeout`` only stops
    waiting.

    Example::

        >>> with conveyor.Pool() as pool:
        ...     futures = [pool.submit(abs, -i) for i in range(3)]
        ...     sorted(f.result() for f in conveyor.as_completed(futures))
        [0, 1, 2]
    """
    from concurrent.futures import as_completed as _as_completed

    return _as_completed(futures, timeout=timeout)
