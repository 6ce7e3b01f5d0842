"""conveyor's asyncio front against the ways async programs push work to processes today.

Two workloads, in one process run, each contender timed round-robin (best of ``-r``):

* ``tiny``: 10,000 awaited calls of ``x * x``, ``asyncio.gather`` under a semaphore of 64;
* ``cpu``: 32 CPU-bound blocks, as a map (``amap`` / ``Pool.map`` / a gather of 32 calls).

Contenders: ``conveyor`` (``pool.acall``, ``pool.amap``), ``loop.run_in_executor`` with a
``ProcessPoolExecutor``, ``aiomultiprocess.Pool`` (``apply``, ``map``) and
``anyio.to_process.run_sync`` (with a limiter of ``workers``). Every pool is started and
warmed (one call) before timing: start-up is not what is compared. Each row prints its time
and its ratio to the best peer (below 1.00x: conveyor is faster).

    pip install -e ".[bench]"
    python benchmarks/bench_async.py              # both workloads, best of 3
    python benchmarks/bench_async.py --quick      # 10x smaller
    python benchmarks/bench_async.py tiny -r 5
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench_engine import cpu_block, square

from _common import Row, describe_error, fmt_ratio, fmt_seconds, markdown_table, usable_cores

# --------------------------------------------------------------------------- contenders


class Contender:
    """One library: how it awaits one call and how it maps, on ``workers`` processes."""

    name = ""
    is_conveyor = False

    async def start(self, workers: int) -> None:
        raise NotImplementedError

    async def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        raise NotImplementedError

    async def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*(self.call(fn, x) for x in items)))

    async def close(self) -> None:
        pass


class Conveyor(Contender):
    name = "conveyor (acall / amap)"
    is_conveyor = True

    async def start(self, workers: int) -> None:
        import conveyor

        self.pool = conveyor.Pool(workers=workers, backend="process")
        await self.pool.acall(square, 1)

    async def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        return await self.pool.acall(fn, arg)

    async def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return [r async for r in self.pool.amap(fn, items)]

    async def close(self) -> None:
        self.pool.shutdown()


class RunInExecutor(Contender):
    name = "run_in_executor(ProcessPoolExecutor)"

    async def start(self, workers: int) -> None:
        self.executor = ProcessPoolExecutor(workers)
        await self.call(square, 1)

    async def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, arg)

    async def close(self) -> None:
        self.executor.shutdown()


class AioMultiprocess(Contender):
    name = "aiomultiprocess.Pool"

    async def start(self, workers: int) -> None:
        import aiomultiprocess

        self.pool = aiomultiprocess.Pool(processes=workers)
        await self.call(square, 1)

    async def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        return await self.pool.apply(_as_coroutine, (fn, arg))

    async def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(await self.pool.map(functools.partial(_as_coroutine, fn), items))

    async def close(self) -> None:
        self.pool.close()
        await self.pool.join()


async def _as_coroutine(fn: Callable[[Any], Any], arg: Any) -> Any:
    """aiomultiprocess runs coroutine functions only."""
    return fn(arg)


class AnyioToProcess(Contender):
    name = "anyio.to_process.run_sync"

    async def start(self, workers: int) -> None:
        import anyio

        self.limiter = anyio.CapacityLimiter(workers)
        await self.call(square, 1)

    async def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        from anyio import to_process

        return await to_process.run_sync(fn, arg, limiter=self.limiter)


CONTENDERS: list[type[Contender]] = [Conveyor, RunInExecutor, AioMultiprocess, AnyioToProcess]


# --------------------------------------------------------------------------- workloads


async def tiny(contender: Contender, count: int) -> None:
    gate = asyncio.Semaphore(64)

    async def one(x: int) -> int:
        async with gate:
            return int(await contender.call(square, x))

    results = await asyncio.gather(*(one(x) for x in range(count)))
    assert results[-1] == (count - 1) ** 2


async def cpu(contender: Contender, count: int, size: int) -> None:
    results = await contender.map(cpu_block, [size] * count)
    assert len(results) == count


async def measure(
    workloads: dict[str, Callable[[Contender], Awaitable[None]]],
    workers: int,
    repeats: int,
    timeout: float,
) -> list[Row]:
    rows: dict[tuple[str, str], Row] = {}
    started: list[Contender] = []
    for kind in CONTENDERS:
        contender = kind()
        for workload in workloads:
            rows[workload, kind.name] = Row(
                workload,
                kind.name,
                kind.name.split(" ")[0],
                "process",
                workers,
                is_conveyor=kind.is_conveyor,
                is_peer=not kind.is_conveyor,
            )
        try:
            await asyncio.wait_for(contender.start(workers), timeout)
            started.append(contender)
        except BaseException as exc:
            for workload in workloads:
                rows[workload, kind.name].error = describe_error(exc)
    for repeat in range(repeats):
        for workload, run in workloads.items():
            for contender in started:  # round-robin: the machine's drift hits all alike
                row = rows[workload, contender.name]
                if row.error is not None:
                    continue
                print(f"  {workload} #{repeat + 1} {contender.name}", file=sys.stderr)
                began = time.perf_counter()
                try:
                    await asyncio.wait_for(run(contender), timeout)
                except BaseException as exc:
                    row.error = describe_error(exc)
                    continue
                row.times.append(time.perf_counter() - began)
    for contender in started:
        await contender.close()
    return list(rows.values())


def report(rows: list[Row]) -> str:
    out = []
    for workload in dict.fromkeys(r.workload for r in rows):
        mine = [r for r in rows if r.workload == workload]
        peers = [r.best for r in mine if r.is_peer and r.best is not None]
        best_peer = min(peers) if peers else None
        table = []
        for row in sorted(mine, key=lambda r: (r.best is None, r.best or 0.0)):
            if row.best is not None and best_peer:
                row.ratio = row.best / best_peer
            table.append(
                [
                    row.contender,
                    fmt_seconds(row.best),
                    fmt_ratio(row.ratio),
                    row.error or "",
                ]
            )
        out.append(f"### {workload}\n")
        out.append(markdown_table(["contender", "best s", "vs best peer", "error"], table))
        conveyor_row = next((r for r in mine if r.is_conveyor), None)
        if conveyor_row is not None and conveyor_row.ratio:
            out.append(f"\nconveyor is {1 / conveyor_row.ratio:.2f}x the best peer's speed\n")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workloads", nargs="*", choices=["tiny", "cpu", []], default=[])
    parser.add_argument("-r", "--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="every workload 10x smaller")
    parser.add_argument("--workers", type=int, default=usable_cores())
    parser.add_argument("--timeout", type=float, default=300.0, help="per contender and run")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    workloads: dict[str, Callable[[Contender], Awaitable[None]]] = {
        "tiny": lambda c: tiny(c, 10_000 // scale),
        "cpu": lambda c: cpu(c, 32, 2_000_000 // scale),
    }
    chosen = args.workloads or list(workloads)
    workloads = {name: run for name, run in workloads.items() if name in chosen}
    rows = asyncio.run(measure(workloads, args.workers, args.repeats, args.timeout))
    print(f"workers: {args.workers}, best of {args.repeats}\n")
    print(report(rows))


if __name__ == "__main__":
    main()
