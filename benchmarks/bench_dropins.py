"""The drop-ins side by side with what they replace, in one run, as ratios.

* ``conveyor.multiprocessing.Pool`` against ``multiprocessing.Pool``: ``map`` of 100k tiny items
  (chunksize left out, and given), ``imap`` of 100k tiny items (chunksize given, and each
  library's default), ``apply_async`` one by one then every ``get()``.
* joblib ``backend="conveyor"`` against ``backend="loky"``: many small tasks, a few big ones,
  and (with scikit-learn installed) ``GridSearchCV`` on the digits data set with a small grid.

Every pool is created and warmed up (one untimed run) before the clock starts; the contenders
of a workload are timed round-robin, best of ``--repeats``; every result is checked. The ratio is
conveyor's best time over the peer's (below 1.0: conveyor is faster).

    python benchmarks/bench_dropins.py            # everything, best of 3
    python benchmarks/bench_dropins.py -r 5 mp    # only the multiprocessing workloads
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Callable
from typing import Any

from _common import fmt_ratio, fmt_seconds, markdown_table, usable_cores

TINY = 100_000


def square(x: int) -> int:
    return x * x


def burn(n: int) -> int:
    """About ``n`` microseconds of pure-Python work (roughly)."""
    total = 0
    for i in range(n * 10):
        total += i % 7
    return total


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


def race(
    name: str,
    contenders: dict[str, Callable[[], Any]],
    expected: Any,
    repeats: int,
    check: Callable[[Any], Any] = lambda v: v,
) -> list[list[str]]:
    """Warm up each contender, then time them round-robin; rows of the table."""
    best: dict[str, float] = {}
    for label, call in contenders.items():
        assert check(call()) == expected, f"{name}: {label} gave a wrong result"
    for _ in range(repeats):
        for label, call in contenders.items():
            seconds, value = timed(call)
            assert check(value) == expected, f"{name}: {label} gave a wrong result"
            best[label] = min(best.get(label, float("inf")), seconds)
        print(f"  {name}: {best}", file=sys.stderr)
    ours, theirs = list(best)
    ratio = best[ours] / best[theirs]
    return [
        [name, ours, fmt_seconds(best[ours]), theirs, fmt_seconds(best[theirs]), fmt_ratio(ratio)]
    ]


def multiprocessing_rows(workers: int, repeats: int) -> list[list[str]]:
    import conveyor.multiprocessing

    ours = conveyor.multiprocessing.Pool(workers)
    theirs = multiprocessing.Pool(workers)
    items = range(TINY)
    expected = [x * x for x in items]
    rows: list[list[str]] = []
    try:
        for chunksize in (None, 1000):
            rows += race(
                f"map {TINY:,} tiny, chunksize={chunksize}",
                {
                    "conveyor.multiprocessing": lambda c=chunksize: ours.map(square, items, c),
                    "multiprocessing.Pool": lambda c=chunksize: theirs.map(square, items, c),
                },
                expected,
                repeats,
            )
        rows += race(
            f"imap {TINY:,} tiny, chunksize=1000",
            {
                "conveyor.multiprocessing": lambda: list(ours.imap(square, items, 1000)),
                "multiprocessing.Pool": lambda: list(theirs.imap(square, items, 1000)),
            },
            expected,
            repeats,
        )
        small = range(TINY // 10)
        rows += race(
            f"imap {TINY // 10:,} tiny, each library's default chunksize (auto / 1)",
            {
                "conveyor.multiprocessing": lambda: list(ours.imap(square, small)),
                "multiprocessing.Pool": lambda: list(theirs.imap(square, small)),
            },
            [x * x for x in small],
            repeats,
        )
        count = 5000
        rows += race(
            f"apply_async x {count:,} one by one, then get()",
            {
                "conveyor.multiprocessing": lambda: [
                    r.get() for r in [ours.apply_async(square, (i,)) for i in range(count)]
                ],
                "multiprocessing.Pool": lambda: [
                    r.get() for r in [theirs.apply_async(square, (i,)) for i in range(count)]
                ],
            },
            [i * i for i in range(count)],
            repeats,
        )
    finally:
        for pool in (ours, theirs):
            pool.terminate()
            pool.join()
    return rows


def joblib_rows(workers: int, repeats: int) -> list[list[str]]:
    import joblib

    import conveyor.joblib

    conveyor.joblib.register()

    def under(backend: str, job: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with joblib.parallel_config(backend=backend, n_jobs=workers):
                return job()

        return call

    def both(job: Callable[[], Any]) -> dict[str, Callable[[], Any]]:
        return {"joblib conveyor": under("conveyor", job), "joblib loky": under("loky", job)}

    small = 20_000
    rows = race(
        f"{small:,} small tasks (x*x), batch_size=auto",
        both(lambda: joblib.Parallel()(joblib.delayed(square)(i) for i in range(small))),
        [i * i for i in range(small)],
        repeats,
    )
    big = [200_000] * (4 * workers)
    rows += race(
        f"{len(big)} big tasks (~0.2 s of Python each)",
        both(lambda: joblib.Parallel()(joblib.delayed(burn)(n) for n in big)),
        [burn(n) for n in big[:1]] * len(big),
        repeats,
    )
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import GridSearchCV
        from sklearn.svm import SVC
    except ImportError:
        print("scikit-learn is not installed: no GridSearchCV row", file=sys.stderr)
        return rows
    data, target = load_digits(return_X_y=True)
    grid = {"C": [1, 10], "gamma": [0.001, 0.0005]}

    def search() -> Any:
        found = GridSearchCV(SVC(), grid, n_jobs=workers, cv=3).fit(data, target)
        return found.best_params_

    rows += race(
        "GridSearchCV(SVC) digits, 4 candidates x 3 folds",
        both(search),
        search(),
        repeats,
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("groups", nargs="*", help="mp, joblib (default: both)")
    parser.add_argument("-r", "--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=usable_cores())
    args = parser.parse_args()
    groups = args.groups or ["mp", "joblib"]
    unknown = set(groups) - {"mp", "joblib"}
    if unknown:
        parser.error(f"unknown group {sorted(unknown)[0]!r}; the groups are mp, joblib")
    rows: list[list[str]] = []
    if "mp" in groups:
        rows += multiprocessing_rows(args.workers, args.repeats)
    if "joblib" in groups:
        rows += joblib_rows(args.workers, args.repeats)
    print(f"workers={args.workers}, best of {args.repeats}; ratio = conveyor / peer\n")
    headers = ["workload", "conveyor", "best s", "peer", "best s", "ratio"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
