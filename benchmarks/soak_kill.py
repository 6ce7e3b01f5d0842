"""Soak test: SIGKILL random workers during big maps; every round must end complete and correct.

Each round maps ``work`` over 20,000 items on a process pool (2 workers by default) while a side
thread SIGKILLs random worker pids at random moments (3 to 6 kills per round, spread over the
first 80% of the round's expected length). A round passes when its result list equals the
serial result exactly: nothing lost, nothing duplicated, nothing out of order, no ``Failure``.
After the last round the pool must still have its full width and shut down promptly, leaving no
worker behind.

Why ``retries``: a kill costs nothing to an ordinary chunk (many items, run at full speed): the
worker's mark only says which chunk it was on, so the chunk is sent back once, *exact* (each item
marked), and its items succeed. But a kill that lands on a one-item unit (the first chunks of a
map are single items until the chunk size is measured; retries are single items) or on a chunk
being re-run exact names the very item that was running, and that item gets ``WorkerCrashed``,
exactly as if it had crashed the worker itself: from outside, an OOM kill and a crash look the
same. ``retries=3`` re-runs such an item (after a short backoff); for it to still fail, four
kills would have to land on the same item. Run with ``--retries 0`` to see how many items the
kills cost before retries (they come back as ``Failure(WorkerCrashed)``, and are counted, not
treated as errors, in that mode).

Run from the repository root (not part of CI; takes about a minute)::

    python benchmarks/soak_kill.py                 # 50 rounds x 20,000 items, retries=3
    python benchmarks/soak_kill.py --retries 0     # what the kills cost without retries
    python benchmarks/soak_kill.py --rounds 5 --items 2000 --seed 7
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import threading
import time

import conveyor


def work(x: int) -> int:
    """About 20-40 us of pure-Python work, with a result that depends on the item."""
    total = x
    for i in range(150):
        total = (total * 31 + i) % 1_000_003
    return total


class Killer(threading.Thread):
    """SIGKILLs random workers of ``pool`` at the given offsets (seconds) from its start."""

    def __init__(self, pool: conveyor.Pool, offsets: list[float], rng: random.Random):
        super().__init__(name="soak-killer", daemon=True)
        self.pool = pool
        self.offsets = sorted(offsets)
        self.rng = rng
        self.stop = threading.Event()
        self.kills: list[int] = []

    def run(self) -> None:
        started = time.monotonic()
        for offset in self.offsets:
            if self.stop.wait(max(0.0, started + offset - time.monotonic())):
                return
            pids = self.pool._backend.worker_pids()
            if not pids:
                continue
            pid = self.rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
                self.kills.append(pid)
            except ProcessLookupError:
                pass  # it had just exited (replaced): no kill this time


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--min-kills", type=int, default=3)
    parser.add_argument("--max-kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    items = list(range(args.items))
    expected = [work(x) for x in items]
    print(
        f"soak: {args.rounds} rounds x {args.items} items, {args.workers} workers, "
        f"retries={args.retries}, {args.min_kills}-{args.max_kills} SIGKILLs per round, "
        f"seed {seed}, Python {sys.version.split()[0]}"
    )

    failures = 0
    crashed_items = 0
    seen_pids: set[int] = set()
    with conveyor.Pool(workers=args.workers) as pool:
        # An untimed warm-up, then the best of three rounds without kills: the baseline.
        assert list(pool.imap(work, items)) == expected
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            assert list(pool.imap(work, items)) == expected
            runs.append(time.perf_counter() - started)
        baseline = min(runs)
        print(f"baseline (no kills): {baseline:.3f} s per round")

        times, kills = [], []
        for number in range(1, args.rounds + 1):
            count = rng.randint(args.min_kills, args.max_kills)
            offsets = [rng.uniform(0.0, 0.8 * baseline) for _ in range(count)]
            killer = Killer(pool, offsets, rng)
            seen_pids.update(pool._backend.worker_pids())
            started = time.perf_counter()
            killer.start()
            try:
                results = list(pool.imap(work, items, retries=args.retries, on_error="return"))
            finally:
                killer.stop.set()
                killer.join()
            elapsed = time.perf_counter() - started
            seen_pids.update(killer.kills)
            times.append(elapsed)
            kills.append(len(killer.kills))
            lost = [r for r in results if isinstance(r, conveyor.Failure)]
            crashed = [f for f in lost if isinstance(f.exception, conveyor.WorkerCrashed)]
            crashed_items += len(crashed)
            ok = len(results) == len(expected) and all(
                isinstance(r, conveyor.Failure) or r == e for r, e in zip(results, expected)
            )
            bad = not ok or (len(lost) > 0 if args.retries else len(lost) > len(crashed))
            if bad:
                failures += 1
            note = f", {len(crashed)} item(s) got WorkerCrashed" if crashed else ""
            print(
                f"round {number:3d}: {len(killer.kills)} kills, {elapsed:.3f} s, "
                f"{'FAILED' if bad else 'ok'}{note}" + (f" -- {lost[:3]}" if bad and lost else "")
            )

        # The pool still has its full width, and serves.
        deadline = time.monotonic() + 10
        while len(pool._backend.worker_pids()) != args.workers and time.monotonic() < deadline:
            time.sleep(0.01)
        width = len(pool._backend.worker_pids())
        assert list(pool.imap(work, items)) == expected
        seen_pids.update(pool._backend.worker_pids())
        shutdown_started = time.perf_counter()
    shutdown = time.perf_counter() - shutdown_started
    left = [pid for pid in seen_pids if alive(pid)]

    print()
    print(f"rounds: {args.rounds}, failed rounds: {failures}")
    print(
        f"kills: {sum(kills)} in all, per round min {min(kills)} / mean "
        f"{statistics.mean(kills):.1f} / max {max(kills)}"
    )
    print(
        f"time per round: min {min(times):.3f} s / median {statistics.median(times):.3f} s / "
        f"max {max(times):.3f} s (baseline without kills {baseline:.3f} s)"
    )
    if args.retries:
        print(
            f"items lost (a Failure in the results) despite retries={args.retries}: {crashed_items}"
        )
    else:
        print(f"items the kills cost (Failure(WorkerCrashed), retries=0): {crashed_items}")
    print(
        f"workers at the end: {width} of {args.workers}; shutdown took {shutdown:.3f} s; "
        f"processes left: {left or 'none'}"
    )
    good = failures == 0 and width == args.workers and not left
    print("PASS" if good else "FAIL")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
