"""conveyor's Dask backend against raw Dask on the same two-worker cluster, in one run.

Contenders, all on one LocalCluster (``--workers`` worker processes of one thread each, on
127.0.0.1), each timed best-of-R after an untimed warm-up run:

* ``conveyor dask``: ``conveyor.Pool(backend="dask", cluster=client).map(fn, items)``;
* ``client.map``: raw ``client.map(fn, items, pure=False)`` + ``client.gather``, one task per
  item (Dask's own way to map a function). On ``tiny`` it runs on ``--raw-items`` items and its
  time is scaled to the full count (per-item cost is flat: one task each), said in the note;
* ``dask.bag``: ``dask.bag.from_sequence(items, npartitions=...).map(fn).compute()`` on the
  cluster's client, partitioned as Dask's docs advise (about 100 partitions for ``tiny``, one
  per block for ``cpu``);
* ``conveyor process`` (``cpu`` only): conveyor's own process backend with as many workers, and
  ``serial / workers``, the floor.

Workloads: ``tiny`` (100k items of ``x*x``) and ``cpu`` (32 pure-Python blocks calibrated to
about 60 ms each). Targets (issue 10): tiny at least 10x faster than one-task-per-item
``client.map``; cpu within 1.1x of the best of client.map and dask.bag.

    python benchmarks/bench_dask.py                 # both workloads, best of 3 (~1 min)
    python benchmarks/bench_dask.py cpu -r 5
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import Any

from _common import fmt_ratio, fmt_seconds, markdown_table, usable_cores


def square(x: int) -> int:
    return x * x


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def calibrate(seconds: float) -> int:
    """The ``spin`` argument that takes about ``seconds`` here."""
    n = 10_000
    while True:
        started = time.perf_counter()
        spin(n)
        elapsed = time.perf_counter() - started
        if elapsed > 0.02:
            return max(1, int(n * seconds / elapsed))
        n *= 4


def best_of(repeats: int, run: Callable[[], Any], check: Callable[[Any], bool]) -> float:
    result = run()  # warm-up (and correctness)
    if not check(result):
        raise AssertionError("wrong result")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workloads", nargs="*", default=["tiny", "cpu"])
    parser.add_argument("-r", "--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(2, usable_cores()))
    parser.add_argument("--tiny-items", type=int, default=100_000)
    parser.add_argument("--raw-items", type=int, default=5_000)
    parser.add_argument("--blocks", type=int, default=32)
    args = parser.parse_args()

    import dask.bag
    from distributed import Client, LocalCluster

    import conveyor

    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    pool = conveyor.Pool(backend="dask", cluster=client)
    tables = []
    try:
        if "tiny" in args.workloads:
            items = list(range(args.tiny_items))
            expected = [x * x for x in items]
            raw = items[: args.raw_items]
            scale = len(items) / len(raw)
            rows: list[tuple[str, float, str]] = [
                (
                    "conveyor dask",
                    best_of(args.repeats, lambda: pool.map(square, items), expected.__eq__),
                    "",
                ),
                (
                    "client.map",
                    scale
                    * best_of(
                        args.repeats,
                        lambda: client.gather(client.map(square, raw, pure=False)),
                        [x * x for x in raw].__eq__,
                    ),
                    f"{len(raw):,} items, time x{scale:g}",
                ),
                (
                    "dask.bag",
                    best_of(
                        args.repeats,
                        lambda: (
                            dask.bag.from_sequence(items, npartitions=100).map(square).compute()
                        ),
                        expected.__eq__,
                    ),
                    "100 partitions",
                ),
            ]
            tables.append(_table(f"tiny: {len(items):,} x square", rows, "client.map", "tiny", 0.1))
        if "cpu" in args.workloads:
            n = calibrate(0.06)
            blocks = [n] * args.blocks
            started = time.perf_counter()
            answer = spin(n)
            serial = (time.perf_counter() - started) * len(blocks)
            right = [answer] * len(blocks)
            with conveyor.Pool(workers=args.workers, backend="process") as processes:
                rows = [
                    (
                        "conveyor dask",
                        best_of(args.repeats, lambda: pool.map(spin, blocks), right.__eq__),
                        "",
                    ),
                    (
                        "client.map",
                        best_of(
                            args.repeats,
                            lambda: client.gather(client.map(spin, blocks, pure=False)),
                            right.__eq__,
                        ),
                        "one task per block",
                    ),
                    (
                        "dask.bag",
                        best_of(
                            args.repeats,
                            lambda: (
                                dask.bag.from_sequence(blocks, npartitions=len(blocks))
                                .map(spin)
                                .compute()
                            ),
                            right.__eq__,
                        ),
                        "one partition per block",
                    ),
                    (
                        "conveyor process",
                        best_of(args.repeats, lambda: processes.map(spin, blocks), right.__eq__),
                        "not Dask: the same machine's own pool",
                    ),
                    ("serial / workers", serial / args.workers, "the floor"),
                ]
            tables.append(
                _table(
                    f"cpu: {len(blocks)} blocks of ~{serial / len(blocks) * 1000:.0f} ms",
                    rows,
                    None,
                    "cpu",
                    1.1,
                )
            )
    finally:
        pool.shutdown()
        client.close()
        cluster.close()
    print(f"{args.workers} Dask workers x 1 thread on 127.0.0.1, best of {args.repeats}\n")
    print("\n\n".join(tables))


def _table(
    title: str,
    rows: list[tuple[str, float, str]],
    against: str | None,
    workload: str,
    target: float,
) -> str:
    """A table of seconds and ratios to the best Dask peer (or to ``against``)."""
    peers = {name: t for name, t, _ in rows if name in ("client.map", "dask.bag")}
    base = peers[against] if against else min(peers.values())
    label = against or "best Dask peer"
    mine = dict((name, t) for name, t, _ in rows)["conveyor dask"]
    verdict = "met" if mine / base <= target else "MISSED"
    body = [[name, fmt_seconds(t), fmt_ratio(t / base), note] for name, t, note in rows]
    table = markdown_table(["contender", "seconds", f"ratio to {label}", "note"], body)
    return (
        f"### {title}\n\n{table}\n\ntarget ({workload}): conveyor dask <= {target:g}x "
        f"{label}: {fmt_ratio(mine / base)} -> {verdict}"
    )


if __name__ == "__main__":
    main()
