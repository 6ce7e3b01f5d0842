"""Shared helpers for conveyor's benchmarks: core count, deadlines, timing rows, tables, JSON.

Nothing here imports conveyor or any peer library, so every helper works while they are missing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def usable_cores() -> int:
    """CPUs this process may run on: the affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


class BenchTimeout(Exception):
    """A contender ran past its time budget."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise BenchTimeout in the main thread after ``seconds`` (SIGALRM; no-op if None or <= 0).

    Blocking waits in CPython (locks, Future.result, queue.get) are interrupted by the signal,
    so a hung pool turns into an error row instead of a hung benchmark.
    """
    if not seconds or seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def _on_alarm(signum: int, frame: Any) -> None:
        raise BenchTimeout(f"timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Row:
    """One contender's measurement in one workload."""

    workload: str
    contender: str
    library: str
    kind: str  # "process" | "thread" | "auto" | "serial"
    workers: int | None
    is_conveyor: bool = False
    is_peer: bool = False  # counts towards "best peer"
    peer_default: bool = False  # the library's default configuration (used by the auto comparison)
    times: list[float] = field(default_factory=list)
    error: str | None = None
    note: str = ""
    ratio: float | None = None  # seconds / best peer's seconds
    verdict: str = ""

    @property
    def best(self) -> float | None:
        return min(self.times) if self.times and self.error is None else None


def describe_error(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.3f}"
    return f"{value:.4f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table whose columns are also padded to line up in a terminal."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "usable_cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def row_to_dict(row: Row) -> dict[str, Any]:
    data = asdict(row)
    data["best"] = row.best
    return data


def dump_json(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.write("\n")
