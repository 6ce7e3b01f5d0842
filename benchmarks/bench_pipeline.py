"""A 3-stage pipeline, I/O -> CPU -> I/O, through conveyor and its peers, in one run.

The workload (issue 11): 400 items; stage 1 waits 20 ms per item (I/O, 32 threads), stage 2
runs pure Python for about 5 ms per item (CPU, one process per core), stage 3 waits 10 ms per
item (I/O, 32 threads). Contenders:

* ``conveyor``: ``conveyor.pipeline(...).map(..., backend="thread").map(..., backend="process")
  .map(..., backend="thread")``, results in input order; ``conveyor-cs1`` the same with
  ``chunksize=1`` on the CPU stage (its items go one by one, as the peers send them);
* ``pypeln``: ``pl.thread.map | pl.process.map | pl.thread.map`` (completion order);
* ``handwritten``: threads and bounded ``queue.Queue``s for the I/O stages, a
  ``concurrent.futures.ProcessPoolExecutor`` for the CPU stage (completion order), the way the
  classic producer/consumer lessons build it.

Each contender runs ``--rounds`` times, round-robin (so drift in the machine's speed hits all
alike); the table shows each one's best wall time and its ratio to the best peer (target:
conveyor at most 0.9x), and its first run's (which pays for starting processes: conveyor's
process stages run on its default pools, which later runs reuse, as ``conveyor.map`` does).
Then conveyor runs over an endless source with a slow last stage and the growth of its resident
memory over the second half of that run is printed (it must stay flat).

Usage: ``python benchmarks/bench_pipeline.py [--items 400] [--rounds 3] [--cpu-ms 5]``
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import usable_cores

CORES = usable_cores()
IO_THREADS = 32
_LOOPS = {"n": 20_000}


def fetch(x: int) -> int:
    """Stage 1: 20 ms of waiting (a network call)."""
    time.sleep(0.02)
    return x


def score(x: int, loops: int | None = None) -> int:
    """Stage 2: pure-Python CPU work (holds the GIL)."""
    total = 0
    for i in range(loops or _LOOPS["n"]):
        total += i * i % 7
    return x + total * 0


def write(x: int) -> int:
    """Stage 3: 10 ms of waiting (a write)."""
    time.sleep(0.01)
    return x


def calibrate(cpu_ms: float) -> int:
    """Loops of :func:`score` that take about ``cpu_ms`` on this machine."""
    loops = 200_000
    started = time.thread_time()  # CPU time: a busy machine does not inflate it
    score(0, loops)
    per_loop = (time.thread_time() - started) / loops
    return max(1000, int(cpu_ms / 1000 / per_loop))


# ----------------------------------------------------------------- contenders


def run_conveyor(items: Sequence[int], loops: int, chunksize: int | str = "auto") -> list[int]:
    import functools

    import conveyor

    return list(
        conveyor.pipeline(items)
        .map(fetch, backend="thread", workers=IO_THREADS)
        .map(
            functools.partial(score, loops=loops),
            backend="process",
            workers=CORES,
            chunksize=chunksize,
        )
        .map(write, backend="thread", workers=IO_THREADS)
    )


def run_conveyor_one_by_one(items: Sequence[int], loops: int) -> list[int]:
    """conveyor with ``chunksize=1`` on the CPU stage (items sent one by one, as the peers do)."""
    return run_conveyor(items, loops, chunksize=1)


def run_pypeln(items: Sequence[int], loops: int) -> list[int]:
    import functools

    import pypeln as pl

    return list(
        items
        | pl.thread.map(fetch, workers=IO_THREADS, maxsize=2 * IO_THREADS)
        | pl.process.map(functools.partial(score, loops=loops), workers=CORES, maxsize=4 * CORES)
        | pl.thread.map(write, workers=IO_THREADS, maxsize=2 * IO_THREADS)
    )


_END = object()


def _thread_stage(
    fn: Callable[[Any], Any], inbox: queue.Queue[Any], outbox: queue.Queue[Any], workers: int
) -> list[threading.Thread]:
    """``workers`` threads: take from inbox, put fn(item) to outbox; the last one passes _END."""
    remaining = [workers]
    lock = threading.Lock()

    def work() -> None:
        while True:
            item = inbox.get()
            if item is _END:
                inbox.put(_END)  # for the other threads of this stage
                with lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        outbox.put(_END)
                return
            outbox.put(fn(item))

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    return threads


def run_handwritten(items: Sequence[int], loops: int) -> list[int]:
    import functools

    fetched: queue.Queue[Any] = queue.Queue(maxsize=2 * IO_THREADS)
    scored: queue.Queue[Any] = queue.Queue(maxsize=2 * IO_THREADS)
    written: queue.Queue[Any] = queue.Queue()
    source: queue.Queue[Any] = queue.Queue(maxsize=2 * IO_THREADS)
    cpu = functools.partial(score, loops=loops)
    with concurrent.futures.ProcessPoolExecutor(CORES) as processes:
        _thread_stage(fetch, source, fetched, IO_THREADS)
        _thread_stage(write, scored, written, IO_THREADS)

        def feed_processes() -> None:
            # at most 2 tasks per process in flight: bounded, and the processes never idle
            slots = threading.BoundedSemaphore(2 * CORES)
            pending = [0]
            done = threading.Condition()

            def finished(future: concurrent.futures.Future[int]) -> None:
                scored.put(future.result())
                slots.release()
                with done:
                    pending[0] -= 1
                    done.notify()

            while (item := fetched.get()) is not _END:
                slots.acquire()
                with done:
                    pending[0] += 1
                processes.submit(cpu, item).add_done_callback(finished)
            with done:
                done.wait_for(lambda: pending[0] == 0)
            scored.put(_END)

        feeder = threading.Thread(target=feed_processes, daemon=True)
        feeder.start()
        for item in items:
            source.put(item)
        source.put(_END)
        results = []
        while (value := written.get()) is not _END:
            results.append(value)
        feeder.join()
    return results


CONTENDERS: dict[str, Callable[[Sequence[int], int], list[int]]] = {
    "conveyor": run_conveyor,
    "conveyor-cs1": run_conveyor_one_by_one,
    "pypeln": run_pypeln,
    "handwritten": run_handwritten,
}


# ----------------------------------------------------------------- memory on an endless source


def endless_memory(count: int) -> tuple[float, float, int]:
    """conveyor over itertools.count() with 64 KB items and a slow last stage.

    Returns (RSS growth in MB over the second half of the run, once the buffers have filled;
    the peak RSS in MB; how many items the source had been read ahead of the consumer).
    """
    import functools

    import psutil

    import conveyor

    me = psutil.Process()
    p = (
        conveyor.pipeline(itertools.count())
        .map(functools.partial(_payload, 64 * 1024), backend="thread", workers=8)
        .map(len, backend="process", workers=CORES)
        .map(_nap, backend="thread", workers=4)
    )
    results = iter(p)
    start_rss = peak = 0
    end_rss = 0
    for n, _ in enumerate(results, start=1):
        if n == count // 2:
            start_rss = me.memory_info().rss
        if n % 100 == 0:
            peak = max(peak, me.memory_info().rss)
        if n == count:
            end_rss = me.memory_info().rss
            break
    stats = results.stats()
    results.close()
    return (end_rss - start_rss) / 2**20, peak / 2**20, stats.source_items - count


def _payload(size: int, i: int) -> bytes:
    return bytes(size)


def _nap(x: int) -> int:
    time.sleep(0.001)
    return x


# ----------------------------------------------------------------- main


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-ms", type=float, default=5.0)
    parser.add_argument("--memory-items", type=int, default=10_000)
    parser.add_argument("--only", nargs="*", choices=sorted(CONTENDERS), default=None)
    args = parser.parse_args(list(argv) if argv is not None else None)

    loops = calibrate(args.cpu_ms)
    items = list(range(args.items))
    names = args.only or list(CONTENDERS)
    best: dict[str, float] = {}
    first: dict[str, float] = {}  # the first run: pays for starting processes
    errors: dict[str, str] = {}
    print(
        f"pipeline: {args.items} items; fetch 20 ms ({IO_THREADS} threads) -> score "
        f"~{args.cpu_ms:g} ms pure Python ({CORES} processes) -> write 10 ms ({IO_THREADS} "
        f"threads); best of {args.rounds}, round-robin",
        flush=True,
    )
    for _ in range(args.rounds):
        for name in names:
            if name in errors:
                continue
            try:
                started = time.perf_counter()
                out = CONTENDERS[name](items, loops)
                seconds = time.perf_counter() - started
            except ImportError as exc:
                errors[name] = f"not installed ({exc.name})"
                continue
            if sorted(out) != items:
                errors[name] = "wrong results"
                continue
            best[name] = min(best.get(name, float("inf")), seconds)
            first.setdefault(name, seconds)
    peers = {n: s for n, s in best.items() if not n.startswith("conveyor")}
    reference = min(peers.values()) if peers else None
    first_reference = min(first[n] for n in peers) if peers else None
    print(f"{'contender':<12} {'best s':>8} {'ratio':>7} {'first s':>8} {'ratio':>7}")
    for name in names:
        if name in errors:
            print(f"{name:<12} {errors[name]}")
            continue
        ratio = f"{best[name] / reference:.2f}x" if reference else "-"
        first_ratio = f"{first[name] / first_reference:.2f}x" if first_reference else "-"
        print(f"{name:<12} {best[name]:>8.3f} {ratio:>7} {first[name]:>8.3f} {first_ratio:>7}")
    floor = args.items * args.cpu_ms / 1000 / CORES
    print(f"(floor: the CPU stage alone on {CORES} cores takes {floor:.2f} s)")
    for name in ("conveyor", "conveyor-cs1"):
        if name in best and reference:
            verdict = "met" if best[name] <= 0.9 * reference else "NOT met"
            print(f"target {name} <= 0.9x the best peer: {verdict}")

    grew, peak, ahead = endless_memory(args.memory_items)
    print(
        f"endless source, 64 KB items, slow last stage: RSS grew {grew:.1f} MB from item "
        f"{args.memory_items // 2} to {args.memory_items} (peak {peak:.0f} MB); "
        f"the source was read {ahead} items ahead of the consumer"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
