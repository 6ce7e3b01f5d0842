"""``conveyor run`` against GNU parallel and ``xargs -P``: 1,000 trivial jobs (``true``).

Every tool reads the same 1,000 input lines on stdin and runs ``true LINE`` once per line
with the same ``-j``; the time includes each tool's own start-up. GNU parallel and
conveyor run ``true`` through ``/bin/sh -c`` (a builtin there: cheaper than exec'ing
coreutils' ``true``); xargs execs ``true`` directly. GNU parallel
(Debian package ``parallel``) is installed with apt-get if it is missing; if that fails
its row is skipped with a message.

Targets: conveyor at least 3x GNU parallel's jobs per second, and at most 1.2x the time
of ``xargs -P``. Two more rows run ``/usr/bin/true`` (no shell builtin): exec'ed directly
(conveyor skips the shell for a command of plain words) and, forced by a trailing ``;``,
through ``sh``, to show what skipping the shell saves.

Usage: python benchmarks/bench_cli.py [--jobs N] [--count 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

CONVEYOR = [sys.executable, "-m", "conveyor", "run"]
PARALLEL_INSTALL = "apt-get update -qq && apt-get install -y -qq parallel"


def ensure_gnu_parallel() -> str | None:
    """Path of GNU parallel, installing the Debian package first if needed."""
    path = shutil.which("parallel")
    if path is None:
        print(f"GNU parallel missing; installing: {PARALLEL_INSTALL}", file=sys.stderr)
        done = subprocess.run(
            ["sh", "-c", PARALLEL_INSTALL],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        path = shutil.which("parallel")
        if path is None:
            print(
                f"SKIP GNU parallel: install failed ({done.stderr.strip()[-200:]})", file=sys.stderr
            )
            return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    if "GNU parallel" not in version.stdout:
        print(f"SKIP GNU parallel: {path} is not GNU parallel", file=sys.stderr)
        return None
    return path


def time_command(argv: list[str], stdin: bytes) -> float:
    """Wall time of one run, which must exit 0."""
    t = time.perf_counter()
    done = subprocess.run(
        argv, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode()}")
    return elapsed


def main() -> int:
    """Run the comparison and print the table; exit 1 if a target is missed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", "-j", type=int, default=cores or 1)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    ns = parser.parse_args()
    j = str(ns.jobs)
    stdin = "".join(f"{i}\n" for i in range(ns.count)).encode()
    peers: dict[str, list[str]] = {
        "conveyor run": [*CONVEYOR, "-j", j, "true"],
        "xargs -P": ["xargs", "-P", j, "-n", "1", "true"],
        # A program that is no shell builtin: exec'ed directly, or (the trailing ';' is
        # shell syntax) through sh, which then execs it -- what skipping the shell saves.
        "conveyor, direct exec": [*CONVEYOR, "-j", j, "/usr/bin/true"],
        "conveyor, sh + exec": [*CONVEYOR, "-j", j, "/usr/bin/true {};"],
    }
    gnu = ensure_gnu_parallel()
    if gnu is not None:
        peers["GNU parallel"] = [gnu, "--will-cite", "-j", j, "true"]
    for argv in peers.values():
        time_command(argv, stdin[:20])  # warm the page cache
    # Round-robin, so that a change in the machine's load hits every tool alike.
    times: dict[str, list[float]] = {name: [] for name in peers}
    for _ in range(ns.repeat):
        for name, argv in peers.items():
            times[name].append(time_command(argv, stdin))
    results = {name: statistics.median(values) for name, values in times.items()}
    ours = results["conveyor run"]
    print(f"\n{ns.count} x `true`, -j {j}, median of {ns.repeat} (Python {sys.version.split()[0]})")
    print(f"{'tool':<22} {'seconds':>8} {'jobs/s':>8} {'time vs conveyor':>17}")
    for name, seconds in sorted(results.items(), key=lambda kv: kv[1]):
        print(f"{name:<22} {seconds:>8.3f} {ns.count / seconds:>8.0f} {seconds / ours:>16.2f}x")
    ok = True
    xargs_ratio = ours / results["xargs -P"]
    print(f"\nconveyor time / xargs -P time: {xargs_ratio:.2f} (target <= 1.2)")
    ok &= xargs_ratio <= 1.2
    if "GNU parallel" in results:
        speedup = results["GNU parallel"] / ours
        print(f"conveyor jobs/s / GNU parallel jobs/s: {speedup:.2f} (target >= 3)")
        ok &= speedup >= 3
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
