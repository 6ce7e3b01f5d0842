"""The async methods of ``conveyor.Pool`` (and of ``pool.options(...)``).

They hand over to :mod:`conveyor._aio`, imported on first use, so that ``import conveyor``
does not import asyncio. Every call runs on the pool's own backend (threads or processes).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._aio import AsyncResults
    from ._pool import PoolCore as Pool

__all__ = ["AsyncOptionsMethods", "AsyncPoolMethods"]


class AsyncPoolMethods:
    """``acall``, ``amap``, ``amap_unordered`` and ``astarmap`` for :class:`conveyor.Pool`."""

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Await ``fn(*args, **kwargs)`` run on a worker (``async def`` functions too).

        Named like ``submit``'s awaitable twin: it calls ``fn`` and gives back what it
        returns (``run`` is what ``conveyor run`` does with commands). Every keyword goes to
        ``fn``; ``pool.options(task_timeout=..., retries=...).acall(...)`` sets a limit and retries.
        Cancelling the await (``asyncio.timeout``, ``wait_for``, a failing ``TaskGroup``)
        stops the task: a worker process running it is killed and replaced, a worker thread is
        asked to stop as :meth:`terminate` does. ``asyncio.shield(pool.acall(...))`` lets it
        run on instead.

        Example::

            >>> import asyncio, conveyor
            >>> async def main():
            ...     with conveyor.Pool(workers=2) as pool:
            ...         return await pool.acall(divmod, 7, 2)
            >>> asyncio.run(main())
            (3, 1)
        """
        from ._aio import call_on

        return await call_on(_pool(self), fn, args, kwargs)

    def amap(
        self, fn: Callable[..., Any], iterable: Iterable[Any] | AsyncIterable[Any], **options: Any
    ) -> AsyncResults:
        """``async for r in pool.amap(fn, items)``; the options of :func:`conveyor.amap`
        but ``workers``, ``backend``, ``initializer`` and ``start_method`` (the pool's).

        Example::

            >>> import asyncio, conveyor
            >>> async def main():
            ...     with conveyor.Pool(workers=2) as pool:
            ...         return [r async for r in pool.amap(abs, [-1, -2])]
            >>> asyncio.run(main())
            [1, 2]
        """
        from ._aio import map_on

        return map_on(_pool(self), fn, iterable, **options)

    def amap_unordered(
        self, fn: Callable[..., Any], iterable: Iterable[Any] | AsyncIterable[Any], **options: Any
    ) -> AsyncResults:
        """Like :meth:`amap`, yielding results as they finish.

        Example::

            >>> import asyncio, conveyor
            >>> async def main():
            ...     with conveyor.Pool(workers=2) as pool:
            ...         return sorted([r async for r in pool.amap_unordered(abs, [-2, -1])])
            >>> asyncio.run(main())
            [1, 2]
        """
        options["ordered"] = False
        return self.amap(fn, iterable, **options)

    def astarmap(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Iterable[Any]] | AsyncIterable[Iterable[Any]],
        **options: Any,
    ) -> AsyncResults:
        """Like :meth:`amap`, calling ``fn(*args)`` for each ``args``.

        Example::

            >>> import asyncio, conveyor
            >>> async def main():
            ...     with conveyor.Pool(workers=2) as pool:
            ...         return [r async for r in pool.astarmap(pow, [(2, 5), (3, 2)])]
            >>> asyncio.run(main())
            [32, 9]
        """
        from ._aio import map_on
        from ._work import MODE_STAR

        return map_on(_pool(self), fn, iterable, mode=MODE_STAR, **options)


class AsyncOptionsMethods:
    """``acall`` for ``pool.options(...)``: the view's limit and retries apply."""

    _pool: Pool
    _task_timeout: float | None
    _retries: int

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``Pool.acall`` with this view's limit and retries.

        Example::

            >>> import asyncio, conveyor
            >>> async def main():
            ...     with conveyor.Pool(workers=1) as pool:
            ...         return await pool.options(retries=1).acall(abs, -3)
            >>> asyncio.run(main())
            3
        """
        from ._aio import call_on

        return await call_on(self._pool, fn, args, kwargs, self._task_timeout, self._retries)


def _pool(methods: AsyncPoolMethods) -> Pool:
    return methods  # type: ignore[return-value]
