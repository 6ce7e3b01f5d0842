"""``conveyor demo``: the classic threads-versus-processes demonstration.

Counts the primes below ``--limit`` by trial division, split into ``--blocks`` ranges,
three ways: serially, with ``conveyor.map(..., backend="thread")`` and with
``conveyor.map(..., backend="process")``. It prints the time of each, the speed-up over
the serial run and the answer, which must agree. Pure-Python CPU-bound work holds the
GIL, so threads do not speed it up (except on a free-threaded build); processes do.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["count_primes", "main"]


def count_primes(bounds: tuple[int, int]) -> int:
    """The number of primes ``p`` with ``lo <= p < hi``, by trial division."""
    lo, hi = bounds
    count = 0
    for n in range(max(lo, 2), hi):
        if n < 4:
            count += 1
            continue
        if n % 2 == 0:
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


def _blocks(limit: int, blocks: int) -> list[tuple[int, int]]:
    edges = [limit * i // blocks for i in range(blocks + 1)]
    return [(edges[i], edges[i + 1]) for i in range(blocks)]


def _engine_map(backend: str, workers: int) -> Callable[..., list[Any]]:
    """``conveyor.map`` bound to a backend and a number of workers."""
    import conveyor

    def run(fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        # One block per task: the blocks are few and coarse (and uneven: later ones
        # cost more), so each worker should take the next block as soon as it is free.
        return conveyor.map(fn, items, backend=backend, workers=workers, chunksize=1)

    return run


def _parser() -> argparse.ArgumentParser:
    from conveyor.cli.options import ErrorRaisingParser, usable_cores

    p = ErrorRaisingParser(
        prog="conveyor demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--limit", type=int, default=1_000_000, help="count primes below this (default %(default)s)"
    )
    p.add_argument("--blocks", type=int, default=16, help="work items (default %(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        default=usable_cores(),
        help="threads / processes (default: usable cores, %(default)s here)",
    )
    return p


def main(argv: Sequence[str]) -> int:
    """Run the demonstration; 0 if the three answers agree, 1 if not, 255 on bad usage."""
    from conveyor.cli.options import UsageError

    try:
        ns = _parser().parse_args(list(argv))
        if ns.limit < 2 or ns.blocks < 1 or ns.workers < 1:
            raise UsageError("--limit must be >= 2, --blocks and --workers >= 1")
    except UsageError as e:
        print(f"conveyor demo: error: {e}", file=sys.stderr)
        return 255
    blocks = _blocks(ns.limit, ns.blocks)
    print(
        f"Counting primes below {ns.limit:,} in {ns.blocks} blocks, "
        f"{ns.workers} workers, Python {sys.version.split()[0]}",
        flush=True,
    )
    rows: list[tuple[str, float, int]] = []
    t = time.perf_counter()
    answer = sum(map(count_primes, blocks))
    rows.append(("serial", time.perf_counter() - t, answer))
    for label, backend in (("threads", "thread"), ("processes", "process")):
        run = _engine_map(backend, ns.workers)
        t = time.perf_counter()
        answer = sum(run(count_primes, blocks))
        rows.append((label, time.perf_counter() - t, answer))
    serial_time = rows[0][1]
    print(f"\n{'':<10} {'seconds':>8} {'speed-up':>9} {'primes':>9}")
    for label, seconds, answer in rows:
        print(f"{label:<10} {seconds:>8.2f} {serial_time / seconds:>8.2f}x {answer:>9,}")
    answers = {answer for _, _, answer in rows}
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print("\n(conveyor.map with backend='thread' and 'process'; the process time includes")
    print(" starting the worker processes)")
    if gil:
        print(
            "Threads share one GIL, so CPU-bound Python code gains nothing from them;\n"
            "processes each have their own interpreter and use every core."
        )
    else:
        print("This is a free-threaded Python: threads can run Python code in parallel too.")
    if len(answers) != 1:
        print("ERROR: the answers disagree", file=sys.stderr)
        return 1
    return 0
