"""The one-shot calls (``conveyor.map`` and friends) and the default pools behind them.

A default pool is started lazily for each ``(backend, workers, start_method)`` the program
uses, kept for later calls (so a second call pays no start-up) and terminated at interpreter
exit. A call with an ``initializer`` gets a pool of its own, closed when the call is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from ._errors import PoolClosed
from ._options import check_backend, check_workers
from ._pool import Pool
from ._work import MODE_MAP, MODE_STAR

__all__ = ["as_completed", "imap", "imap_unordered", "map", "starmap"]

_defaults: dict[tuple[str, int | None, str | None, Any], Pool] = {}
_defaults_lock = threading.Lock()


def _default_pool(
    backend: str, workers: int | None, start_method: str | None, cluster: Any = None
) -> Pool:
    backend = check_backend(backend)
    workers = check_workers(workers)
    key = (backend, workers, start_method, cluster)
    with _defaults_lock:
        pool = _defaults.get(key)
        if pool is None or not pool._backend.alive:
            pool = Pool(
                workers=workers, backend=backend, start_method=start_method, cluster=cluster
            )
            _defaults[key] = pool
        return pool


def _run(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    mode: int,
    ordered: bool,
    workers: int | None,
    backend: str,
    start_method: str | None,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    options: dict[str, Any],
    cluster: Any = None,
) -> Generator[list[Any], None, None]:
    """Batches of results of one call, on a default pool or a pool of its own."""
    if initializer is None:
        pool = _default_pool(backend, workers, start_method, cluster)
        try:
            job = pool._job(fn, iterable, (), ordered=ordered, mode=mode, **options)
        except PoolClosed:  # shut down under us (at exit, or by a broken initializer)
            pool = _default_pool(backend, workers, start_method, cluster)
            job = pool._job(fn, iterable, (), ordered=ordered, mode=mode, **options)
        yield from job.batches()
        return
    with Pool(
        workers=workers,
        backend=backend,
        start_method=start_method,
        initializer=initializer,
        initargs=initargs,
        cluster=cluster,
    ) as own:
        yield from own._job(fn, iterable, (), ordered=ordered, mode=mode, **options).batches()


def map(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    *,
    workers: int | None = None,
    backend: str = "auto",
    ordered: bool = True,
    chunksize: int | str = "auto",
    timeout: float | None = None,
    retries: int = 0,
    on_error: str = "raise",
    progress: bool | dict[str, Any] = False,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    start_method: str | None = None,
    explain: bool = False,
    cluster: Any = None,
) -> list[Any]:
    """``[fn(x) for x in iterable]``, run in parallel; returns the list of results.

    * ``backend``: ``"process"`` (conveyor's worker processes; any callable works, lambdas
      included), ``"thread"``, ``"auto"``, or ``"dask"`` with ``cluster=`` an address
      (``"tcp://host:8786"``, ``"tls://..."``), a ``distributed.Client``, or None for a
      LocalCluster on 127.0.0.1 (kept for later calls, closed at exit).
    * ``ordered=False``: results in completion order.
    * ``chunksize``: ``"auto"`` measures per-item time and sizes chunks to it; or a number.
    * ``timeout``: seconds per item; an item past it raises :class:`conveyor.TaskTimeout`.
    * ``retries``: run a failed, timed-out or crashed item up to this many more times.
    * ``on_error``: ``"raise"`` the first error, ``"return"`` a :class:`conveyor.Failure` in the
      item's place, or ``"skip"`` the item.
    * ``progress=True``: a tqdm bar (or a dict of tqdm options).
    * ``initializer(*initargs)`` runs once in each worker (such a call gets its own pool).
    * ``explain=True``: print what ``backend="auto"`` measured and chose (it is also logged at
      INFO on the ``conveyor`` logger).

    Example::

        >>> import conveyor
        >>> conveyor.map(lambda x: x * x, range(5))
        [0, 1, 4, 9, 16]
    """
    options = dict(
        chunksize=chunksize,
        timeout=timeout,
        retries=retries,
        on_error=on_error,
        progress=progress,
        explain=explain,
    )
    out: list[Any] = []
    for values in _run(
        fn,
        iterable,
        MODE_MAP,
        ordered,
        workers,
        backend,
        start_method,
        initializer,
        initargs,
        options,
        cluster,
    ):
        out.extend(values)
    return out


def starmap(fn: Callable[..., Any], iterable: Iterable[Iterable[Any]], **options: Any) -> list[Any]:
    """``[fn(*args) for args in iterable]`` in parallel; the options of :func:`map`.

    Example::

        >>> conveyor.starmap(pow, [(2, 5), (3, 2)])
        [32, 9]
    """
    return _collect(fn, iterable, MODE_STAR, **options)


def imap(fn: Callable[..., Any], iterable: Iterable[Any], **options: Any) -> Iterator[Any]:
    """Lazily yield ``fn(x)`` in input order; input is read as results are consumed.

    At most a few chunks per worker are in flight, so an endless generator is fine, and
    breaking out of the loop cancels what is queued. The options of :func:`map`.

    Example::

        >>> import itertools
        >>> for square in conveyor.imap(lambda x: x * x, itertools.count()):
        ...     if square > 100:
        ...         break
    """
    options.setdefault("ordered", True)
    return _iterate(fn, iterable, MODE_MAP, **options)


def imap_unordered(
    fn: Callable[..., Any], iterable: Iterable[Any], **options: Any
) -> Iterator[Any]:
    """Like :func:`imap`, yielding results as they finish.

    Example::

        >>> sorted(conveyor.imap_unordered(abs, [-3, -1, -2]))
        [1, 2, 3]
    """
    options["ordered"] = False
    return _iterate(fn, iterable, MODE_MAP, **options)


_CALL_OPTIONS = (
    "workers",
    "backend",
    "start_method",
    "initializer",
    "initargs",
    "ordered",
    "cluster",
)
_JOB_OPTIONS = ("chunksize", "timeout", "retries", "on_error", "progress", "explain")


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    unknown = sorted(set(options) - set(_CALL_OPTIONS) - set(_JOB_OPTIONS))
    if unknown:
        raise TypeError(
            f"unexpected option {unknown[0]!r}; the options are "
            f"{', '.join(_CALL_OPTIONS + _JOB_OPTIONS)}"
        )
    call = {k: options[k] for k in _CALL_OPTIONS if k in options}
    job = {k: options[k] for k in _JOB_OPTIONS if k in options}
    return call, job


def _batches(
    fn: Callable[..., Any], iterable: Iterable[Any], mode: int, **options: Any
) -> Generator[list[Any], None, None]:
    call, job = _split(options)
    return _run(
        fn,
        iterable,
        mode,
        call.get("ordered", True),
        call.get("workers"),
        call.get("backend", "auto"),
        call.get("start_method"),
        call.get("initializer"),
        call.get("initargs", ()),
        job,
        call.get("cluster"),
    )


def _collect(
    fn: Callable[..., Any], iterable: Iterable[Any], mode: int, **options: Any
) -> list[Any]:
    out: list[Any] = []
    for values in _batches(fn, iterable, mode, **options):
        out.extend(values)
    return out


def _iterate(
    fn: Callable[..., Any], iterable: Iterable[Any], mode: int, **options: Any
) -> Iterator[Any]:
    batches = _batches(fn, iterable, mode, **options)
    try:
        for values in batches:
            yield from values
    finally:
        batches.close()


def as_completed(
    futures: Iterable[Future[Any]], timeout: float | None = None
) -> Iterator[Future[Any]]:
    """Yield futures as they finish (``concurrent.futures.as_completed``).

    With conveyor's pools, a task that must not run past a deadline should be given
    ``pool.options(timeout=...)``: that stops the task; this ``timeout`` only stops waiting.

    Example::

        >>> with conveyor.Pool() as pool:
        ...     futures = [pool.submit(abs, -i) for i in range(3)]
        ...     sorted(f.result() for f in conveyor.as_completed(futures))
        [0, 1, 2]
    """
    from concurrent.futures import as_completed as _as_completed

    return _as_completed(futures, timeout=timeout)
