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

With ``--pipe``, the workload is ``wc -l`` over a generated text file (1 GiB by default,
written into a temporary directory and deleted afterwards) split into 1 MiB blocks:
conveyor ``--pipe`` and ``--pipe-part`` against GNU parallel ``--pipe`` and
``--pipe-part``, each tool's line total checked. ``--pipe`` reads the file as its stdin
(``< FILE``); ``--pipe-part`` is given ``-a FILE``. The file is read once before the
runs, so every tool reads it from the page cache. Targets: conveyor ``--pipe`` at least
2x GNU ``--pipe``'s throughput, conveyor ``--pipe-part`` at most 1.2x GNU
``--pipe-part``'s time.

Usage: python benchmarks/bench_cli.py [--jobs N] [--count 1000] [--repeat 5]
       python benchmarks/bench_cli.py --pipe [--size 1G] [--repeat 3] [--dir DIR]
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


def make_text(path: str, size: int) -> int:
    """Write about ``size`` bytes of text lines (50-90 bytes each) to ``path``; returns
    the number of lines."""
    lines = b"".join(
        b"%08d the quick brown fox jumps over the lazy dog %s\n" % (i, b"x" * (i % 41))
        for i in range(10_000)
    )
    count = 0
    with open(path, "wb") as f:
        written = 0
        while written + len(lines) <= size:
            f.write(lines)
            written += len(lines)
            count += 10_000
    return count


def time_pipe(argv: list[str], stdin_path: str | None, lines: int) -> float:
    """Wall time of one ``wc -l`` run, whose totals must add up to ``lines``."""
    t = time.perf_counter()
    with open(stdin_path or os.devnull, "rb") as stdin:
        done = subprocess.run(argv, stdin=stdin, capture_output=True, check=False)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()}")
    counted = sum(int(word) for word in done.stdout.split())
    if counted != lines:
        raise SystemExit(f"{' '.join(argv)}: counted {counted} lines, not {lines}")
    return elapsed


def pipe_main(ns: argparse.Namespace) -> int:
    """``--pipe``: wc -l over a large file in 1 MiB blocks, both tools, both modes."""
    import tempfile

    j = str(ns.jobs)
    size = parse_bytes(ns.size)
    gnu = ensure_gnu_parallel()
    ours = [sys.executable, "-m", "conveyor", "run", "-j", j]
    with tempfile.TemporaryDirectory(prefix="bench-pipe-", dir=ns.dir) as tmp:
        path = os.path.join(tmp, "big.txt")
        lines = make_text(path, size)
        size = os.path.getsize(path)
        # (argv, stdin file or None)
        peers: dict[str, tuple[list[str], str | None]] = {
            "conveyor --pipe": ([*ours, "--pipe", "--block", "1M", "wc -l"], path),
            "conveyor --pipe-part": (
                [*ours, "--pipe-part", "-a", path, "--block", "1M", "wc -l"],
                None,
            ),
        }
        if gnu is not None:
            g = [gnu, "--will-cite", "-j", j]
            peers["GNU --pipe"] = ([*g, "--pipe", "--block", "1M", "wc -l"], path)
            peers["GNU --pipe-part"] = (
                [*g, "--pipe-part", "-a", path, "--block", "1M", "wc -l"],
                None,
            )
        with open(path, "rb") as f:  # into the page cache, for every tool alike
            while f.read(1 << 24):
                pass
        times: dict[str, list[float]] = {name: [] for name in peers}
        load_before = os.getloadavg()[0]
        for _ in range(ns.repeat):  # round-robin: load changes hit every tool alike
            for name, (argv, stdin) in peers.items():
                times[name].append(time_pipe(argv, stdin, lines))
        load_after = os.getloadavg()[0]
    results = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"\nwc -l over {size / (1 << 30):.2f} GiB ({lines} lines) in 1 MiB blocks, -j {j}, "
        f"median of {ns.repeat} (Python {sys.version.split()[0]}; 1-minute load average "
        f"{load_before:.2f} before the runs, {load_after:.2f} after)"
    )
    print(f"{'tool':<22} {'seconds':>8} {'MiB/s':>8}")
    for name, seconds in sorted(results.items(), key=lambda kv: kv[1]):
        print(f"{name:<22} {seconds:>8.2f} {size / seconds / (1 << 20):>8.0f}")
    ok = True
    if gnu is not None:
        speedup = results["GNU --pipe"] / results["conveyor --pipe"]
        part = results["conveyor --pipe-part"] / results["GNU --pipe-part"]
        print(f"\nconveyor --pipe throughput / GNU --pipe throughput: {speedup:.2f} (target >= 2)")
        print(f"conveyor --pipe-part time / GNU --pipe-part time: {part:.2f} (target <= 1.2)")
        ok = speedup >= 2 and part <= 1.2
    return 0 if ok else 1


def parse_bytes(text: str) -> int:
    """``1G``, ``256M``, ``100k``: K M G are powers of 1024, as for --block."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main() -> int:
    """Run the comparison and print the table; exit 1 if a target is missed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", "-j", type=int, default=cores or 1)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=None, help="default: 5, --pipe: 3")
    parser.add_argument("--pipe", action="store_true", help="the --pipe workload instead")
    parser.add_argument("--size", default="1G", help="--pipe: size of the text file")
    parser.add_argument("--dir", default=None, help="--pipe: where to write it (temp)")
    ns = parser.parse_args()
    if ns.pipe:
        ns.repeat = ns.repeat or 3
        return pipe_main(ns)
    ns.repeat = ns.repeat or 5
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
