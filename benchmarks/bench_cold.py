"""Cold start: what a short script pays, in a fresh interpreter per measurement.

Workloads (``python benchmarks/bench_cold.py [cold] [submit] [-r REPEATS]``):

  cold    a fresh interpreter runs ``import`` + the first map of 10 items + exit, for a tiny
          function (x * x) and an I/O one (1 ms sleep): conveyor (auto, thread, process) beside
          ThreadPoolExecutor, ProcessPoolExecutor, multiprocessing.Pool and joblib. Reported:
          the time to the first result (from the parent's spawn) and to the process's exit.
          Targets (issue 8): conveyor process's first result <= 1.2x ProcessPoolExecutor's;
          conveyor auto's exit <= cold ThreadPoolExecutor().map's + 10 ms.
  submit  5,000 futures submitted one by one and collected, with the pool's start and shutdown
          included (a script's real cost), in a fresh interpreter: conveyor.Pool vs
          ProcessPoolExecutor. Target: >= 3x faster.
  imports where a cold process map's time goes: the imports each path needs, each timed in a
          fresh interpreter (ProcessPoolExecutor's, cloudpickle's, conveyor's process path).

Every contender runs once per round, rounds round-robin (the machine's drift hits all alike);
the median over rounds is reported. Each script is written to a file and run as ``__main__``
(process pools that re-import the main module need that).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

FUNCTIONS = {
    "tiny": "def fn(x):\n    return x * x\n",
    "io": "def fn(x):\n    time.sleep(0.001)\n    return x\n",
}

#: contender -> (the first map's iterator, what closes the pool afterwards)
COLD = {
    "python (no pool)": ("iter([fn(x) for x in range(10)])", ""),
    "conveyor auto": ("iter(conveyor.map(fn, range(10)))", ""),
    "conveyor thread": ("conveyor.imap(fn, range(10), backend='thread')", ""),
    "conveyor process": ("conveyor.imap(fn, range(10), backend='process')", ""),
    "ThreadPoolExecutor": ("ex.map(fn, range(10))", "ex.shutdown()"),
    "ProcessPoolExecutor": ("ex.map(fn, range(10))", "ex.shutdown()"),
    "mp.Pool": ("iter(ex.map(fn, range(10)))", "ex.close(); ex.join()"),
    "joblib": ("iter(Parallel(n_jobs=-1)(delayed(fn)(x) for x in range(10)))", ""),
}
SETUP = {
    "conveyor auto": "import conveyor",
    "conveyor thread": "import conveyor",
    "conveyor process": "import conveyor",
    "ThreadPoolExecutor": "from concurrent.futures import ThreadPoolExecutor\n"
    "ex = ThreadPoolExecutor()",
    "ProcessPoolExecutor": "from concurrent.futures import ProcessPoolExecutor\n"
    "ex = ProcessPoolExecutor()",
    "mp.Pool": "import multiprocessing\nex = multiprocessing.Pool()",
    "joblib": "from joblib import Parallel, delayed",
}

COLD_SCRIPT = """\
import sys, time
{function}
if __name__ == "__main__":
    started = float(sys.argv[1])
    {setup}
    results = {call}
    first = next(results)
    at_first = time.time()
    rest = list(results)
    {close}
    print(at_first - started)
"""

SUBMIT_SCRIPT = """\
import sys, time
def fn(x):
    return x * x
if __name__ == "__main__":
    started = time.perf_counter()
    {setup}
    futures = [ex.submit(fn, i) for i in range(5000)]
    assert [f.result() for f in futures] == [i * i for i in range(5000)]
    ex.shutdown(wait=True)
    print(time.perf_counter() - started)
"""
SUBMIT = {
    "conveyor.Pool": "import conveyor\n    ex = conveyor.Pool()",
    "ProcessPoolExecutor": "from concurrent.futures import ProcessPoolExecutor\n"
    "    ex = ProcessPoolExecutor()",
}


def run_script(path: Path) -> tuple[float, float]:
    """Run ``path`` in a fresh interpreter: (its printed figure, seconds to its exit)."""
    started = time.time()
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(path), repr(started)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=path.parent,
    )
    total = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{path.name} failed:\n{out.stderr}")
    return float(out.stdout.strip().splitlines()[-1]), total


def median_printed(scripts: dict[str, Path], repeats: int) -> dict[str, float]:
    """Each script's printed figure, median over ``repeats`` round-robin rounds."""
    times: dict[str, list[float]] = {n: [] for n in scripts}
    for _ in range(repeats):
        for name, path in scripts.items():
            times[name].append(run_script(path)[0])
    return {n: statistics.median(v) for n, v in times.items()}


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / (
        name.replace(" ", "_").replace(".", "_").replace("(", "").replace(")", "") + ".py"
    )
    path.write_text(text)
    return path


def cold(repeats: int, directory: Path) -> None:
    for kind, function in FUNCTIONS.items():
        scripts = {}
        for name, (call, close) in COLD.items():
            setup = textwrap.indent(SETUP.get(name, "pass"), "    ").strip()
            text = COLD_SCRIPT.format(
                function=function, setup=setup, call=call, close=close or "pass"
            )
            scripts[name] = write(directory, f"cold_{kind}_{name}", text)
        firsts: dict[str, list[float]] = {n: [] for n in scripts}
        exits: dict[str, list[float]] = {n: [] for n in scripts}
        for _ in range(repeats):
            for name, path in scripts.items():
                first, total = run_script(path)
                firsts[name].append(first)
                exits[name].append(total)
        first = {n: statistics.median(v) for n, v in firsts.items()}
        exit_ = {n: statistics.median(v) for n, v in exits.items()}
        print(
            f"\n### cold, {kind} function: first map of 10 items in a fresh interpreter "
            f"(median of {repeats}; Python {sys.version.split()[0]})"
        )
        print(f"{'contender':<22} {'first result':>13} {'to exit':>10}  ratio")
        for name in scripts:
            note = ""
            if name == "conveyor process":
                ratio = first[name] / first["ProcessPoolExecutor"]
                note = f"first result {ratio:.2f}x PPE's (target <= 1.2x)"
            elif name == "conveyor auto":
                extra = (exit_[name] - exit_["ThreadPoolExecutor"]) * 1e3
                note = f"exit {extra:+.1f} ms vs ThreadPoolExecutor (target <= +10 ms)"
            print(f"{name:<22} {first[name] * 1e3:>10.1f} ms {exit_[name] * 1e3:>7.1f} ms  {note}")


def submit(repeats: int, directory: Path) -> None:
    scripts = {
        name: write(directory, f"submit_{name}", SUBMIT_SCRIPT.format(setup=setup))
        for name, setup in SUBMIT.items()
    }
    median = median_printed(scripts, repeats)
    print(
        f"\n### submit: 5,000 futures one by one, pool start and shutdown included, fresh "
        f"interpreter (median of {repeats}; Python {sys.version.split()[0]})"
    )
    for name in scripts:
        speedup = median["ProcessPoolExecutor"] / median[name]
        print(f"{name:<22} {median[name]:>7.3f} s  {speedup:.2f}x faster than PPE (target >= 3x)")


#: what each path imports before its first process task runs
IMPORTS = {
    "ProcessPoolExecutor": "import concurrent.futures.process",
    "cloudpickle (alone)": "import cloudpickle",
    "PPE's + cloudpickle": "import concurrent.futures.process, cloudpickle",
    "conveyor thread path": "import conveyor._pool, conveyor.backends.thread",
    "conveyor process path": "import conveyor._pool, conveyor.backends.process.parent",
}
IMPORT_SCRIPT = """\
import time
started = time.perf_counter()
{statement}
print(time.perf_counter() - started)
"""


def imports(repeats: int, directory: Path) -> None:
    scripts = {
        name: write(directory, f"imports_{name}", IMPORT_SCRIPT.format(statement=statement))
        for name, statement in IMPORTS.items()
    }
    median = median_printed(scripts, repeats)
    print(
        f"\n### imports: what each path imports, timed in a fresh interpreter "
        f"(median of {repeats}; Python {sys.version.split()[0]})"
    )
    base = median["ProcessPoolExecutor"]
    for name in scripts:
        extra = (median[name] - base) * 1e3
        print(f"{name:<24} {median[name] * 1e3:>7.1f} ms  {extra:+.1f} ms vs PPE's")


def compile_conveyor() -> None:
    """Byte-compile conveyor's sources, as ``pip install`` does: an editable install run with
    PYTHONDONTWRITEBYTECODE (or a read-only tree) would otherwise compile every module in every
    fresh interpreter, which the standard library and installed peers never pay."""
    import compileall

    import conveyor

    compileall.compile_dir(os.path.dirname(conveyor.__file__), quiet=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("workloads", nargs="*", help="cold, submit, imports (default: all)")
    p.add_argument("-r", "--repeats", type=int, default=5)
    args = p.parse_args()
    workloads = {"cold": cold, "submit": submit, "imports": imports}
    unknown = set(args.workloads) - set(workloads)
    if unknown:
        p.error(f"unknown workload(s) {sorted(unknown)}; choose from {', '.join(workloads)}")
    args.workloads = args.workloads or list(workloads)
    compile_conveyor()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cores usable: {cores}")
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads:
            workloads[workload](args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
