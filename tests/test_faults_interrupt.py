"""Ctrl-C, interpreter exit and a killed parent, in real child interpreters.

Each test runs a script in a fresh interpreter (in a session of its own, like a job in a
terminal), waits for the script's ``READY`` line (printed once its tasks are running, with the
pids they recorded), then interrupts, ends or kills it, and checks: how fast it exited, that it
exited the right way, that no worker, grandchild or /dev/shm entry is left, and that workers
printed nothing of their own.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

import faults

pytestmark = pytest.mark.timeout(90)

#: how long the interpreter may take to exit after Ctrl-C. The aim is about a second; measured
#: figures are printed (run with -s) and far lower, the bound is generous for loaded CI machines.
EXIT_BOUND = 10.0

P = 'workers=2, chunksize=1, backend="process"'
HANGING = {
    # the call that blocks in the script, over 4 tasks that hang after starting `sleep 1000`
    "map": f"conveyor.map(task, range(4), {P})",
    "imap": f"for _ in conveyor.imap(task, range(4), {P}): pass",
    "imap_unordered": f"list(conveyor.imap_unordered(task, range(4), {P}))",
    "starmap": "conveyor.starmap(faults.spawn_grandchild_and_hang,"
    f" [(directory, i) for i in range(4)], {P})",
    "submit": "with conveyor.Pool(workers=2) as pool:\n"
    "    futures = [pool.submit(task, i) for i in range(4)]\n"
    "    [f.result() for f in futures]",
    "submit_spawn": "with conveyor.Pool(workers=2, start_method='spawn') as pool:\n"
    "    [f.result() for f in [pool.submit(task, i) for i in range(4)]]",
    "submit_unclosed": "pool = conveyor.Pool(workers=2)\n"
    "[f.result() for f in [pool.submit(task, i) for i in range(4)]]",
    "timeout": f"conveyor.map(task, range(4), task_timeout=600, {P})",
    # grandchildren in sessions of their own: found by the token in their environment
    "map_setsid": "task = functools.partial(task, new_session=True)\n"
    f"conveyor.map(task, range(4), {P})",
}


def hanging_script(directory: Path, call: str) -> str:
    return f"""
directory = {str(directory)!r}
import functools
task = functools.partial(faults.spawn_grandchild_and_hang, directory)
announce_when(directory, "grandchild", 2)
{call}
"""


def check_clean_interrupt(
    child: faults.Child, directory: Path, shm_before: set[str], label: str
) -> None:
    """The child died of KeyboardInterrupt, printed one traceback, and left nothing behind."""
    workers = faults.read_pids(directory, "worker")
    grandchildren = faults.read_pids(directory, "grandchild")
    assert len(workers) >= 2 and len(grandchildren) >= 2
    everything = set(
        workers + grandchildren + child.ready["descendants"] + child.ready["infrastructure"]
    )
    gone = faults.wait_gone(everything, timeout=10, what="processes of the interrupted script")
    print(
        f"\n  {label}: exit {child.exit_seconds:.3f} s after SIGINT; all processes gone "
        f"{gone:.3f} s after that ({len(everything)} processes)"
    )
    # An uncaught KeyboardInterrupt makes Python end itself by SIGINT.
    assert child.process.returncode in (-signal.SIGINT, 130, 1), child.stderr
    assert child.stderr.rstrip().endswith("KeyboardInterrupt"), child.stderr
    assert child.stderr.count("Traceback (most recent call last)") == 1, child.stderr
    assert "conveyor-worker" not in child.stderr, child.stderr
    assert child.exit_seconds < EXIT_BOUND
    faults.assert_no_shm_leak(shm_before)


@pytest.mark.parametrize("call", sorted(HANGING))
def test_ctrl_c_ends_every_blocking_call_cleanly(tmp_path: Path, call: str) -> None:
    shm_before = faults.shm_entries()
    child = faults.start_child(hanging_script(tmp_path, HANGING[call]), tmp_path)
    child.wait_ready()
    child.signal_and_time(signal.SIGINT)
    check_clean_interrupt(child, tmp_path, shm_before, call)


def test_ctrl_c_from_a_terminal_reaches_the_whole_process_group(tmp_path: Path) -> None:
    # A terminal sends SIGINT to every process of the foreground group: the script, the fork
    # server, the resource tracker. The workers are in groups of their own.
    shm_before = faults.shm_entries()
    child = faults.start_child(hanging_script(tmp_path, HANGING["map"]), tmp_path)
    child.wait_ready()
    child.signal_and_time(signal.SIGINT, group=True)
    check_clean_interrupt(child, tmp_path, shm_before, "map, SIGINT to the process group")


def test_ctrl_c_with_large_arrays_in_flight(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    shm_before = faults.shm_entries()
    child = faults.start_child(
        f"""
import numpy
directory = {str(tmp_path)!r}
announce_when(directory, "worker", 2)
array = numpy.ones(1_000_000)  # 8 MB: sent in shared memory
conveyor.starmap(faults.hang_with_array, [(directory, i, array) for i in range(4)],
                 workers=2, chunksize=1, backend="process")
""",
        tmp_path,
    )
    child.wait_ready()
    seconds = child.signal_and_time(signal.SIGINT)
    print(f"\n  starmap with 8 MB arrays in flight: exit {seconds:.3f} s after SIGINT")
    workers = faults.read_pids(tmp_path, "worker")
    faults.wait_gone(set(workers + child.ready["descendants"]), what="the script's processes")
    assert child.stderr.rstrip().endswith("KeyboardInterrupt"), child.stderr
    assert child.exit_seconds < EXIT_BOUND
    faults.assert_no_shm_leak(shm_before)


def test_ctrl_c_on_the_thread_backend(tmp_path: Path) -> None:
    child = faults.start_child(
        f"""
directory = {str(tmp_path)!r}
announce_when(directory, "started", 2)
conveyor.starmap(faults.touch_and_wait, [(directory, i, directory + "/never") for i in range(2)],
                 backend="thread", workers=2)
""",
        tmp_path,
    )
    child.wait_ready()
    seconds = child.signal_and_time(signal.SIGINT)
    print(f"\n  thread backend: exit {seconds:.3f} s after SIGINT")
    assert child.stderr.rstrip().endswith("KeyboardInterrupt"), child.stderr
    assert seconds < EXIT_BOUND


def test_the_pool_serves_again_after_a_caught_ctrl_c(tmp_path: Path) -> None:
    child = faults.start_child(
        f"""
directory = {str(tmp_path)!r}
import functools
task = functools.partial(faults.spawn_grandchild_and_hang, directory)
announce_when(directory, "grandchild", 2)
with conveyor.Pool(workers=2) as pool:
    try:
        list(pool.imap(task, range(4), chunksize=1))
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    print("AFTER", list(pool.imap(faults.square, range(6))), len(pool._backend.worker_pids()),
          flush=True)
""",
        tmp_path,
    )
    child.wait_ready()
    child.signal_and_time(signal.SIGINT)
    assert child.process.returncode == 0, child.stderr
    assert "INTERRUPTED\nAFTER [0, 1, 4, 9, 16, 25] 2\n" in child.stdout
    assert child.stderr == ""
    faults.wait_gone(child.known_pids())


def test_an_unclosed_pool_is_cleaned_up_at_exit(tmp_path: Path) -> None:
    shm_before = faults.shm_entries()
    child = faults.start_child(
        f"""
directory = {str(tmp_path)!r}
pool = conveyor.Pool(workers=2)
futures = [pool.submit(faults.spawn_grandchild_and_hang, directory, i) for i in range(3)]
faults.wait_until(lambda: len(faults.read_pids(directory, "grandchild")) >= 2, 60)
print("READY " + json.dumps(dict(descendants=sorted(faults.descendants()),
                                 infrastructure=sorted(faults.infrastructure_pids()))),
      flush=True)
# ... and the script simply ends, the pool still open and its tasks still running.
""",
        tmp_path,
    )
    child.wait_ready()
    child.process.wait(30)
    child.finish()
    assert child.process.returncode == 0, child.stderr
    assert child.stderr == ""
    pids = set(
        faults.read_pids(tmp_path, "worker")
        + faults.read_pids(tmp_path, "grandchild")
        + child.ready["descendants"]
        + child.ready["infrastructure"]
    )
    faults.wait_gone(pids, what="the processes of the ended script")
    faults.assert_no_shm_leak(shm_before)


@pytest.mark.parametrize("call", ["submit", "map_setsid"])
def test_workers_exit_when_the_parent_is_killed(tmp_path: Path, call: str) -> None:
    child = faults.start_child(hanging_script(tmp_path, HANGING[call]), tmp_path)
    child.wait_ready()
    seconds = child.signal_and_time(signal.SIGKILL)
    assert child.process.returncode == -signal.SIGKILL
    pids = set(
        faults.read_pids(tmp_path, "worker")
        + faults.read_pids(tmp_path, "grandchild")
        + child.ready["descendants"]
    )
    gone = faults.wait_gone(pids, what="the workers of a killed parent (lifeline)")
    print(f"\n  parent SIGKILLed: its {len(pids)} processes gone {seconds + gone:.3f} s later")


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method semantics")
def test_lifeline_with_the_fork_start_method(tmp_path: Path) -> None:
    # With fork, every worker inherits the parent's end of the earlier workers' lifelines:
    # they must still all go when the parent dies.
    child = faults.start_child(
        hanging_script(
            tmp_path,
            "with conveyor.Pool(workers=3, start_method='fork') as pool:\n"
            "    [f.result() for f in [pool.submit(task, i) for i in range(3)]]",
        ).replace('"grandchild", 2', '"grandchild", 3'),
        tmp_path,
    )
    child.wait_ready()
    child.signal_and_time(signal.SIGKILL)
    pids = set(faults.read_pids(tmp_path, "worker") + faults.read_pids(tmp_path, "grandchild"))
    faults.wait_gone(pids, what="the fork workers of a killed parent")
