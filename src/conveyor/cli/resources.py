"""Resource limits of ``conveyor run``: --load, --memfree, --termseq (and --results'
option, parsed here with them).

* ``--load N|N%``: start no job while the 1-minute load average is at or above N (N%
  of the usable cores); checked before each start, every 0.25 s while waiting.
* ``--memfree SIZE``: start no job while less than SIZE bytes are available
  (``MemAvailable`` of ``/proc/meminfo``). While jobs run, a monitor checks every 0.25 s;
  below half of SIZE it kills the youngest running job (by --termseq) and puts it back:
  the same job runs again once memory allows (not counted as a retry). It never kills
  the only running job, which could then never finish.
* ``--termseq SIG,MS,SIG,MS...``: how a job is stopped (timeout, --halt now, Ctrl-C,
  --memfree): each signal is sent to the job's process group, then that many
  milliseconds are waited. GNU parallel's default, ``TERM,200,TERM,100,TERM,50,KILL,25``.
  A sequence that does not end with KILL gets ``KILL,25`` appended.

>>> parse_size("1.5G"), parse_size("512k"), parse_size("100")
(1610612736, 524288, 100)
>>> [(s.name, ms) for s, ms in parse_termseq("INT,100,KILL,25")]
[('SIGINT', 100), ('SIGKILL', 25)]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import threading
from dataclasses import dataclass, field

from conveyor.cli.errors import CliError
from conveyor.cli.process import StopSignal

__all__ = [
    "DEFAULT_TERMSEQ",
    "ResourceMonitor",
    "Resources",
    "add_resource_options",
    "available_memory",
    "load_average",
    "may_start",
    "parse_resources",
    "parse_size",
    "parse_termseq",
]

DEFAULT_TERMSEQ = "TERM,200,TERM,100,TERM,50,KILL,25"
CHECK_INTERVAL = 0.25  # seconds between checks of the load and the free memory

TermSeq = tuple[tuple[signal.Signals, int], ...]


def _usage(message: str) -> CliError:
    from conveyor.cli.options import UsageError  # a UsageError is what the CLI reports

    return UsageError(message)


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str) -> int:
    """A size with GNU parallel's unit suffixes (K M G T P, either case, powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgtp]?)b?\s*", text, re.I)
    if not m:
        raise _usage(f"bad --memfree {text!r}: expected a size such as 500M or 2G")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_termseq(text: str) -> TermSeq:
    """``SIG,MS,SIG,MS...`` -> ((signal, ms), ...), ending with KILL."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) % 2:
        parts.append("25")
    steps: list[tuple[signal.Signals, int]] = []
    for name, ms in zip(parts[::2], parts[1::2]):
        key = name.upper()
        key = key if key.startswith("SIG") else "SIG" + key
        try:
            sig = signal.Signals[key] if not name.isdigit() else signal.Signals(int(name))
            wait = int(ms)
        except (KeyError, ValueError):
            raise _usage(
                f"bad --termseq {text!r}: expected SIGNAL,MS,SIGNAL,MS... (e.g. {DEFAULT_TERMSEQ})"
            ) from None
        if wait < 0:
            raise _usage(f"bad --termseq {text!r}: milliseconds must be 0 or more")
        steps.append((sig, wait))
    if not steps or steps[-1][0] != signal.SIGKILL:
        steps.append((signal.SIGKILL, 25))
    return tuple(steps)


@dataclass(frozen=True)
class Resources:
    """--load, --memfree, --termseq, --results as parsed."""

    load: float | None = None  # start no job while the load average is >= this
    memfree: int | None = None  # bytes
    termseq: TermSeq = field(default_factory=lambda: parse_termseq(DEFAULT_TERMSEQ))
    results: str | None = None


def add_resource_options(p: argparse.ArgumentParser) -> None:
    """Add --load, --memfree, --termseq and --results to ``conveyor run``'s parser."""
    a = p.add_argument
    a(
        "--load",
        metavar="N|N%",
        help="start no job while the 1-minute load average is N or more (N%% of the usable "
        "cores). E.g. --load 80%%",
    )
    a(
        "--memfree",
        metavar="SIZE",
        help="start no job while less than SIZE is available (K M G T suffixes); below "
        "half of it kill the youngest job and run it again later. E.g. --memfree 1G",
    )
    a(
        "--termseq",
        "--term-seq",
        metavar="SEQ",
        default=DEFAULT_TERMSEQ,
        help="how a job is stopped: signals to its process group and milliseconds to wait "
        "after each (default %(default)s). E.g. --termseq INT,1000,KILL,25",
    )
    a(
        "--results",
        "--res",
        metavar="DIR|FILE",
        help="also save each job's output: DIR/<group>/<value>/.../{stdout,stderr,seq,"
        "exitcode} (GNU parallel's tree), or one table if it ends in .csv, .tsv or "
        ".json ('-.csv' etc.: on stdout instead of the jobs' output). "
        "E.g. --results out/ or --results runs.csv",
    )


def parse_resources(ns: argparse.Namespace) -> Resources:
    """The :class:`Resources` of parsed options (raises UsageError for bad values)."""
    load: float | None = None
    if ns.load is not None:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)(%?)\s*", ns.load)
        if not m:
            raise _usage(f"bad --load {ns.load!r}: expected N or N%")
        from conveyor.cli.options import usable_cores

        value = float(m.group(1))
        load = usable_cores() * value / 100 if m.group(2) else value
        load = max(load, 0.01)  # GNU parallel: 0 means 0.01
    memfree = parse_size(ns.memfree) if ns.memfree is not None else None
    if memfree is not None and memfree <= 0:
        raise _usage(f"bad --memfree {ns.memfree!r}: must be more than 0")
    results = ns.results
    if results is not None and not results:
        raise _usage("bad --results '': expected a directory or a .csv/.tsv/.json file")
    return Resources(load, memfree, parse_termseq(ns.termseq), results)


def load_average() -> float:
    """The 1-minute load average (0 where the system does not tell)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def available_memory() -> int:
    """Bytes of memory available to new processes: Linux's MemAvailable, else the
    free pages (``sysconf``), else a very large number (no limit known). Tests point
    $CONVEYOR_MEMINFO at a file of /proc/meminfo's layout."""
    try:
        with open(os.environ.get("CONVEYOR_MEMINFO", "/proc/meminfo"), "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def may_start(resources: Resources) -> bool:
    """Whether --load and --memfree allow a job to start now."""
    if resources.load is not None and load_average() >= resources.load:
        return False
    return resources.memfree is None or available_memory() >= resources.memfree


class ResourceMonitor:
    """--load and --memfree for one run (any thread).

    Guarantees: :meth:`wait_until_ok` returns True only when the limits allow a start,
    False once ``no_new`` is set (it never blocks a halt). With --memfree, a watcher
    thread kills (sets the kill signal of) the youngest running job when less than half
    of it is available, at most one job per check, never the only running one.
    """

    def __init__(self, resources: Resources, no_new: threading.Event) -> None:
        self.resources = resources
        self._no_new = no_new
        self._lock = threading.Lock()
        self._running: dict[int, StopSignal] = {}  # by start, oldest first
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self.killed = 0  # jobs killed for memory (and run again)

    def wait_until_ok(self) -> bool:
        """Wait until a job may start; False if no job is to start any more."""
        while not may_start(self.resources):
            if self._no_new.wait(CHECK_INTERVAL):
                return False
        return not self._no_new.is_set()

    def job_started(self, seq: int) -> StopSignal | None:
        """Register a running job; its kill signal (--memfree), or None."""
        if self.resources.memfree is None:
            return None
        kill = StopSignal()
        with self._lock:
            self._running[seq] = kill
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="conveyor-run-memfree", daemon=True
                )
                self._watcher.start()
        return kill

    def job_ended(self, seq: int) -> None:
        """Unregister a job (its attempt ended); its kill signal may be closed after."""
        with self._lock:
            self._running.pop(seq, None)

    def _watch(self) -> None:
        assert self.resources.memfree is not None
        while not self._closed.wait(CHECK_INTERVAL):
            if available_memory() >= self.resources.memfree / 2:
                continue
            with self._lock:  # set under the lock: job_ended() then closes it after
                if len(self._running) < 2:
                    continue
                seq = next(reversed(self._running))
                self._running.pop(seq).set()
                self.killed += 1

    def close(self) -> None:
        """Stop the watcher (at the end of the run)."""
        self._closed.set()
