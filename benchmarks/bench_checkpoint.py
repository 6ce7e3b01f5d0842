"""What a checkpoint journal costs, beside joblib.Memory and diskcache's memoize.

Workloads (each timed best of ``--repeat``, round-robin between contenders):

* ``tiny``: ``abs`` over 100k ints on the thread backend, with and without ``checkpoint=``
  (a new journal each run); the difference per item is the journal's overhead. The same on
  the process backend. Also a resume: the call again on a complete journal (nothing runs).
* ``arrays``: 8 results of 50 MB (numpy), process backend, with and without ``checkpoint=``.
* ``peers``: 10k tiny calls through each cache on a cold store: conveyor's journal (one
  ``map``), ``joblib.Memory(...).cache(fn)`` called per item, diskcache's ``memoize`` per item.

Targets (issue 14): at most 20 us of overhead per tiny item; at least 50x faster per item than
joblib.Memory.

Usage: python benchmarks/bench_checkpoint.py [--repeat 3] [--items 100000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import conveyor

from _common import fmt_seconds, markdown_table


def big_result(i: int) -> Any:
    import numpy as np

    return np.full(50_000_000, i % 256, dtype=np.uint8)


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def fresh_dir(root: Path, name: str) -> Path:
    directory = root / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--peer-items", type=int, default=10_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    n, m = args.items, args.peer_items
    items = list(range(n))
    rows: list[list[str]] = []
    try:
        # warm both default pools
        conveyor.map(abs, range(1000), backend="thread")
        conveyor.map(abs, range(1000), backend="process")
        contenders: dict[str, Callable[[], object]] = {}
        for backend in ("thread", "process"):
            contenders[f"tiny {backend} plain"] = lambda b=backend: conveyor.map(
                abs, items, backend=b
            )
            contenders[f"tiny {backend} checkpoint"] = lambda b=backend: conveyor.map(
                abs, items, backend=b, checkpoint=fresh_dir(root, "t") / "run.db"
            )
        resume_dir = fresh_dir(root, "resume")
        conveyor.map(abs, items, backend="thread", checkpoint=resume_dir / "run.db")
        contenders["tiny resume (all stored)"] = lambda: conveyor.map(
            abs, items, backend="thread", checkpoint=resume_dir / "run.db"
        )
        try:
            import numpy  # noqa: F401

            contenders["arrays 8x50MB plain"] = lambda: conveyor.map(
                big_result, range(8), backend="process"
            )
            contenders["arrays 8x50MB checkpoint"] = lambda: conveyor.map(
                big_result, range(8), backend="process", checkpoint=fresh_dir(root, "a") / "r.db"
            )
        except ImportError:
            print("SKIP arrays: numpy missing", file=sys.stderr)
        peer_items = list(range(m))
        contenders[f"peers {m} conveyor checkpoint"] = lambda: conveyor.map(
            abs, peer_items, backend="thread", checkpoint=fresh_dir(root, "p") / "run.db"
        )
        try:
            import joblib

            def joblib_memory() -> object:
                cached = joblib.Memory(fresh_dir(root, "joblib"), verbose=0).cache(abs)
                return [cached(x) for x in peer_items]

            contenders[f"peers {m} joblib.Memory"] = joblib_memory
        except ImportError:
            print("SKIP joblib.Memory: joblib missing (pip install '.[bench]')", file=sys.stderr)
        try:
            import diskcache

            def diskcache_memoize() -> object:
                cache = diskcache.Cache(str(fresh_dir(root, "diskcache")))
                cached = cache.memoize()(abs)
                try:
                    return [cached(x) for x in peer_items]
                finally:
                    cache.close()

            contenders[f"peers {m} diskcache.memoize"] = diskcache_memoize
        except ImportError:
            print("SKIP diskcache: missing (pip install '.[bench]')", file=sys.stderr)

        best: dict[str, float] = {name: float("inf") for name in contenders}
        for _ in range(args.repeat):
            for name, call in contenders.items():
                best[name] = min(best[name], timed(call))

        def per_item(name: str, count: int) -> str:
            return f"{best[name] / count * 1e6:.2f} us"

        for name, seconds in best.items():
            rows.append([name, fmt_seconds(seconds), ""])
        print(markdown_table(["contender", "seconds (best)", "note"], rows))
        print()
        verdicts = []
        for backend in ("thread", "process"):
            over = (best[f"tiny {backend} checkpoint"] - best[f"tiny {backend} plain"]) / n * 1e6
            verdicts.append(
                f"tiny overhead on {backend}: {over:.2f} us/item (target <= 20): "
                + ("PASS" if over <= 20 else "FAIL")
            )
        verdicts.append(f"resume of {n} stored items: {per_item('tiny resume (all stored)', n)}")
        if "arrays 8x50MB checkpoint" in best:
            ratio = best["arrays 8x50MB checkpoint"] / best["arrays 8x50MB plain"]
            verdicts.append(f"arrays with checkpoint: {ratio:.2f}x the time without")
        ours = best[f"peers {m} conveyor checkpoint"]
        for peer in ("joblib.Memory", "diskcache.memoize"):
            key = f"peers {m} {peer}"
            if key in best:
                factor = best[key] / ours
                target = " (target >= 50x)" if peer == "joblib.Memory" else ""
                verdict = (" PASS" if factor >= 50 else " FAIL") if target else ""
                verdicts.append(
                    f"conveyor checkpoint vs {peer}: {factor:.1f}x faster{target}{verdict}"
                )
        print("\n".join(verdicts))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
