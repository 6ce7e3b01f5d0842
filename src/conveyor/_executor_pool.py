"""``conveyor.Pool``: the pool's engine (``_pool.PoolCore``) as a ``concurrent.futures.Executor``.

No data flow of its own: the class adds the ``Executor`` base to :class:`~conveyor._pool.PoolCore`
and nothing else (``PoolCore`` defines every method ``Executor`` has, ``__enter__`` included,
so the base contributes no behaviour: only ``isinstance(pool, Executor)``). It is a module of
its own because subclassing ``Executor`` imports ``concurrent.futures``, and with it
``logging`` and ``traceback``: the one-shot calls use ``PoolCore`` directly, so a cold
``conveyor.map`` imports none of them.
"""

from __future__ import annotations

from concurrent.futures import Executor

from ._pool import PoolCore

__all__ = ["Pool"]


class Pool(PoolCore, Executor):
    """A pool of workers: a real ``concurrent.futures.Executor`` with conveyor's map calls.

    ``backend`` is ``"process"`` (default; conveyor's own worker processes), ``"thread"``,
    ``"auto"`` or ``"dask"`` (a Dask cluster: ``cluster=`` an address, a ``distributed.Client``
    or None for a LocalCluster on 127.0.0.1 that the pool owns; ``security=`` a
    ``distributed.Security`` for TLS), or any ``concurrent.futures.Executor`` (mpi4py's,
    loky's, one you already have: conveyor's maps, retries and ``on_error`` run on its
    ``submit``, with the guarantees listed in ``conveyor.backends.executor``).
    ``workers=None`` means the CPUs this process may use (for threads: that plus 4, at most
    32; for an executor: its own ``_max_workers`` where it has one). ``max_tasks_per_worker`` and
    ``max_memory_per_worker`` (bytes of resident memory a worker gained since it started; the
    pages it shares with this process from its fork do not count) replace a worker process
    after it ran that many tasks or grew that big. ``start_method``: how worker processes
    start; ``None`` (default) is ``"zygote"`` on Linux while it can be made (a fork of this
    process taken while it has one thread, from which every worker forks: see
    ``conveyor.backends.process.zygote``), else ``"forkserver"``, and ``"spawn"`` where there
    is no fork.

    Example::

        >>> import conveyor
        >>> with conveyor.Pool(workers=2) as pool:
        ...     future = pool.submit(pow, 2, 10)
        ...     squares = list(pool.map(lambda x: x * x, range(5)))
        >>> future.result(), squares
        (1024, [0, 1, 4, 9, 16])
    """
