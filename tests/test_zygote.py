"""The zygote: process pools start their workers from a fork of the caller made while it had
one thread (backends/process/zygote.py).

Each test runs a script in a fresh interpreter, because whether a zygote can be made depends on
the whole process's history (this pytest process made its own at the session's start).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import psutil
import pytest

from faults import alive, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the zygote is made on Linux only"
)


def run(script: str, *, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


def start(script: str, **popen: Any) -> subprocess.Popen:
    """``script`` in a fresh interpreter, running on (its stdout a text pipe)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_default_pool_forks_workers_from_a_zygote_and_leaves_nothing() -> None:
    out = run(
        """
        import os, psutil, conveyor
        from conveyor.backends.process import zygote
        me = os.getpid()
        with conveyor.Pool(workers=2, backend="process") as pool:
            assert pool._backend.start_method == "zygote"
            assert zygote.pid() not in (None, me)
            # the pool that bore the zygote: the zygote forked its first workers at its birth
            assert set(pool.imap(lambda _: os.getppid(), range(20))) == {zygote.pid()}
            # the second pool's workers fork from the zygote too, asked for one by one
            with conveyor.Pool(workers=2, backend="process") as second:
                parents = set(second.imap(lambda _: os.getppid(), range(20)))
                assert parents == {zygote.pid()}, (parents, zygote.pid())
                print("pids", zygote.pid(), *pool._backend.worker_pids(),
                      *second._backend.worker_pids())
        assert conveyor.map(lambda x: x * x, range(5), backend="process") == [0, 1, 4, 9, 16]
        """
    )
    pids = [int(p) for p in out.stdout.split("pids")[1].split()]
    # The zygote leaves with its parent, the workers with their pool: nothing is orphaned.
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=30)


def test_at_exit_the_zygote_leaves_before_the_interpreter_ends() -> None:
    """conveyor's exit handler stops the pools, then lets the zygote go: it is gone while the
    program still runs its last exit handlers (registered before conveyor's, so run after),
    not after the interpreter's teardown (a pipe the program shares with it ends sooner)."""
    out = run(
        """
        import atexit, os

        def last():
            # the zygote is this process's child: wait for it, as long as need be
            pid, status = os.waitpid(zygote_pid, 0)
            print("zygote gone", os.waitstatus_to_exitcode(status), flush=True)

        atexit.register(last)  # before conveyor's handler: runs after it
        import conveyor
        from conveyor.backends.process import zygote
        assert conveyor.map(abs, range(-3, 0), backend="process") == [3, 2, 1]
        zygote_pid = zygote.pid()
        """,
        timeout=60,  # (without the release, the wait in last() never ends)
    )
    assert "zygote gone 0" in out.stdout, out


def test_a_thread_before_the_first_pool_means_forkserver() -> None:
    out = run(
        """
        import threading, conveyor
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        with conveyor.Pool(workers=1, backend="process") as pool:
            print(pool._backend.start_method, pool.submit(abs, -3).result())
        try:
            conveyor.Pool(workers=1, backend="process", start_method="zygote")
        except ValueError as exc:
            print("refused:", exc)
        stop.set()
        """
    )
    assert "forkserver 3" in out.stdout
    assert "refused: start_method='zygote' needs this process to have a single thread" in (
        out.stdout
    )


def test_threads_started_later_keep_using_the_zygote() -> None:
    """Once made, the zygote serves every later pool, whatever threads the caller has since."""
    out = run(
        """
        import conveyor
        with conveyor.Pool(workers=1, backend="process") as first:
            with conveyor.Pool(workers=1, backend="process") as second:
                print(first._backend.start_method, second._backend.start_method,
                      second.submit(abs, -2).result())
        """
    )
    assert "zygote zygote 2" in out.stdout


def test_output_buffered_before_the_pool_is_not_printed_twice() -> None:
    out = run(
        """
        import sys, conveyor
        sys.stdout.write("before the pool;")   # still in the buffer: stdout is a pipe
        with conveyor.Pool(workers=2, backend="process") as pool:
            assert list(pool.imap(abs, range(-5, 0))) == [5, 4, 3, 2, 1]
            pool.terminate_workers()
        print("after")
        """
    )
    assert out.stdout.count("before the pool;") == 1, out.stdout


def test_a_killed_zygote_costs_its_workers_and_the_pool_goes_on() -> None:
    run(
        """
        import os, signal, time, conveyor
        from conveyor.backends.process import zygote

        def slow(x):
            time.sleep(0.05)
            return x

        with conveyor.Pool(workers=2, backend="process") as pool:
            assert list(pool.imap(slow, range(4))) == [0, 1, 2, 3]
            os.kill(zygote.pid(), signal.SIGKILL)
            # Its workers' status pipes close: the pool sees them as gone (what they ran
            # counts as a crash, hence retries=1) and replaces them through forkserver.
            assert list(pool.imap(slow, range(40), retries=1)) == list(range(40))
            assert pool.submit(abs, -1).result() == 1
        with conveyor.Pool(workers=1, backend="process") as later:
            assert later.submit(abs, -7).result() == 7
        """
    )


def test_parent_killed_takes_the_zygote_and_its_workers_along() -> None:
    child = start(
        """
        import sys, time, conveyor
        from conveyor.backends.process import zygote
        pool = conveyor.Pool(workers=2, backend="process")
        pool.submit(abs, 1).result()
        print(zygote.pid(), *pool._backend.worker_pids(), flush=True)
        time.sleep(600)
        """
    )
    try:
        assert child.stdout is not None
        pids = [int(p) for p in child.stdout.readline().split()]
        assert len(pids) == 3
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        wait_until(lambda: not any(alive(pid) for pid in pids), timeout=30)
    finally:
        child.kill()
        child.wait()


def test_a_forked_child_makes_its_own_zygote() -> None:
    out = run(
        """
        import os, conveyor
        from conveyor.backends.process import zygote
        with conveyor.Pool(workers=1, backend="process") as pool:
            pool.submit(abs, 1).result()
            parents_zygote = zygote.pid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                assert zygote.pid() is None
                with conveyor.Pool(workers=1, backend="process") as pool:
                    assert pool._backend.start_method == "zygote"
                    assert zygote.pid() not in (None, parents_zygote)
                    assert pool.submit(os.getppid).result() == zygote.pid()  # born with it
                    with conveyor.Pool(workers=1, backend="process") as second:
                        assert second.submit(os.getppid).result() == zygote.pid()
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        print("ok")
        """
    )
    assert "ok" in out.stdout


TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def test_first_workers_are_the_zygotes_children_with_their_pids_known() -> None:
    """The pool whose start bears the zygote: the zygote forks its workers at its birth. The
    caller knows each one's pid (read from the zygote when first asked), multiprocessing sees
    them as the caller's children, and each sees the caller as its parent process."""
    out = run(
        """
        import multiprocessing, os, psutil, conveyor
        from conveyor.backends.process import zygote
        me = os.getpid()

        def who(_):
            return os.getpid(), os.getppid(), multiprocessing.parent_process().pid

        with conveyor.Pool(workers=3, backend="process") as pool:
            seen = set(pool.imap(who, range(60)))
            pids = set(pool._backend.worker_pids())
            assert len(pids) == 3, pids
            children = {p.pid for p in psutil.Process(zygote.pid()).children()}
            assert pids == children, (pids, children)
            assert {pid for pid, _, _ in seen} <= pids
            assert {(ppid, parent) for _, ppid, parent in seen} == {(zygote.pid(), me)}
            assert {p.pid for p in multiprocessing.active_children()} == pids
            assert all(p.is_alive() for p in multiprocessing.active_children())
        assert multiprocessing.active_children() == []  # joined: exit codes came from the zygote
        print("pids", *pids)
        """
    )
    pids = [int(p) for p in out.stdout.split("pids")[1].split()]
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=30)


FIRST_WORKER_FAULTS = {
    # fault: the pool's call in the script, what the failed item must be
    "sigkill": ("list(pool.imap(crash, range(12), on_error='return'))", "WorkerCrashed", "SIGKILL"),
    "os._exit": ("list(pool.imap(exit3, range(12), on_error='return'))", "WorkerCrashed", "3"),
    "segfault": ("list(pool.imap(segv, range(12), on_error='return'))", "WorkerCrashed", "SIGSEGV"),
    "timeout": (
        "list(pool.imap(stubborn, [600 if x == 5 else 0 for x in range(12)], task_timeout=2,"
        " chunksize=1, on_error='return'))",
        "TaskTimeout",
        "timeout",
    ),
}


@pytest.mark.parametrize("fault", list(FIRST_WORKER_FAULTS))
def test_a_first_worker_lost_costs_one_item_and_is_replaced(fault: str) -> None:
    """Real faults in the workers the zygote was born with (the rest of the suite's pools are
    started after this process's zygote): one item fails, the pool replaces the worker and
    goes on, and nothing is left behind."""
    call, error, detail = FIRST_WORKER_FAULTS[fault]
    out = run(
        f"""
        import functools, os, sys
        sys.path.insert(0, {TESTS_DIR!r})
        import conveyor, faults
        from conveyor.backends.process import zygote

        crash = functools.partial(faults.crash_on, bad=5, how="sigkill")
        exit3 = functools.partial(faults.crash_on, bad=5, how="exit")
        segv = functools.partial(faults.crash_on, bad=5, how="segfault")
        stubborn = functools.partial(faults.nap, ignore_alarm=True)  # must be killed
        with conveyor.Pool(workers=2, backend="process") as pool:
            first = set(pool._backend.worker_pids())
            out = {call}
            failure = out[5]
            assert isinstance(failure, conveyor.Failure), out
            assert type(failure.exception).__name__ == {error!r}, failure
            assert {detail!r} in str(failure.exception), str(failure.exception)
            assert [r for i, r in enumerate(out) if i != 5] == [
                x * x if {fault!r} != "timeout" else 0 for x in range(12) if x != 5
            ], out
            assert list(pool.imap(faults.square, range(20))) == [x * x for x in range(20)]
            now = set(pool._backend.worker_pids())
            assert len(now) == 2 and now != first, (first, now)
            print("pids", zygote.pid(), *first, *now)
        """
    )
    pids = [int(p) for p in out.stdout.split("pids")[1].split()]
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=30)


def test_a_zygote_that_dies_before_forking_the_first_workers_costs_nothing() -> None:
    """The zygote is killed at its birth, before it forks the first workers (its loop is
    replaced by an exit, in the zygote only): the caller took them over already; they have no
    pid and their status pipes close, so the pool takes them for workers that died starting
    and replaces them through the fork server. The map is not the worse for it."""
    run(
        """
        import os, conveyor
        from conveyor.backends.process import zygote

        zygote._fork_first_workers = lambda *args: os._exit(1)  # runs in the zygote only
        assert conveyor.map(abs, range(-20, 0), backend="process") == list(range(20, 0, -1))
        assert zygote.pid() is None  # dead, and not made again
        with conveyor.Pool(workers=2, backend="process") as pool:
            assert list(pool.imap(abs, range(-5, 0))) == [5, 4, 3, 2, 1]
            assert pool._backend.start_method == "forkserver"
        """
    )


def test_first_workers_whose_initializer_fails_leave_nothing() -> None:
    out = run(
        """
        import os, conveyor
        from conveyor.backends.process import zygote

        def boom():
            raise RuntimeError("no database")

        try:
            with conveyor.Pool(workers=2, backend="process", initializer=boom) as pool:
                pool.submit(abs, 1).result()
        except conveyor.WorkerInitError as error:
            assert "no database" in str(error), error
        else:
            raise AssertionError("no WorkerInitError")
        print("zygote", zygote.pid())
        """
    )
    zygote_pid = int(out.stdout.split("zygote")[1])
    wait_until(lambda: not psutil.Process(zygote_pid).children(), timeout=30)


def test_first_workers_are_recycled_like_any_other() -> None:
    run(
        """
        import os, conveyor

        with conveyor.Pool(workers=2, backend="process", max_tasks_per_worker=3) as pool:
            pids = list(pool.imap(lambda _: os.getpid(), range(30), chunksize=1))
            assert len(set(pids)) >= 10, pids
            assert list(pool.imap(abs, range(-5, 0))) == [5, 4, 3, 2, 1]
        """
    )


def test_ctrl_c_reaches_neither_the_zygote_nor_starting_workers() -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C): the caller gets its
    KeyboardInterrupt, the zygote ignores it, and no traceback comes from any other process."""
    child = start(
        """
        import time, conveyor
        from conveyor.backends.process import zygote
        pool = conveyor.Pool(workers=2, backend="process")
        pool.submit(abs, 1).result()
        print(zygote.pid(), flush=True)
        def nap():
            print("running", flush=True)  # the worker shares our stdout
            time.sleep(600)
        try:
            pool.submit(nap).result()
        except KeyboardInterrupt:
            print("interrupted", zygote.pid() is not None, flush=True)
        """,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal would make
    )
    try:
        assert child.stdout is not None
        zygote_pid = int(child.stdout.readline())
        assert child.stdout.readline().strip() == "running"
        os.killpg(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=60)
        assert "interrupted True" in out
        assert "Traceback" not in err, err
        wait_until(lambda: not alive(zygote_pid), timeout=30)
    finally:
        child.kill()
        child.wait()


def test_workers_see_the_callers_modules_as_they_were_at_the_zygotes_birth() -> None:
    """Modules imported before the first pool are already there in the workers (no import to
    pay, as with fork); one imported later is imported by the worker that needs it."""
    run(
        """
        import sys, conveyor
        import json  # before the first pool
        def has(name):
            return name in sys.modules
        with conveyor.Pool(workers=1, backend="process") as pool:
            assert pool.submit(has, "json").result()
            import csv  # after: not in the zygote, so not in its workers
            assert not pool.submit(has, "csv").result()
        """
    )


def test_a_cold_script_sends_its_main_function_by_name_without_cloudpickle() -> None:
    """The function of the call that starts the default process pool goes by name into the
    zygote's ``__main__`` (a copy of the caller's at that moment): neither process imports
    cloudpickle (nor ctypes: a pool without large arguments never probes for pulling them),
    and the task sees the globals as they were at the call, as by value."""
    out = run(
        """
        import os, sys, conveyor
        SCALE = 2
        HEAVY = ("cloudpickle", "ctypes")
        def scaled(x):
            return x * SCALE, [m for m in HEAVY if m in sys.modules], os.getpid()
        got = conveyor.map(scaled, range(6), backend="process")
        assert [v for v, _, _ in got] == [0, 2, 4, 6, 8, 10], got
        assert not any(loaded for _, loaded, _ in got), got
        assert not [m for m in HEAVY if m in sys.modules], "the caller imported them"
        SCALE = 3  # as by value: the pool keeps the function as it was when it first got it
        assert [v for v, _, _ in conveyor.map(scaled, range(3), backend="process")] == [0, 2, 4]
        # a function defined since cannot be in the zygote's __main__: it goes by value
        def later(x):
            return -x * SCALE
        assert conveyor.map(later, range(3), backend="process") == [0, -3, -6]
        assert "cloudpickle" in sys.modules
        assert conveyor.map(lambda x: x + SCALE, [1], backend="process") == [4]
        """
    )
    assert out.stderr == ""


def test_a_zygote_born_without_cloudpickle_imports_it_when_idle() -> None:
    """So workers forked from it later need not import it for a function sent by value."""
    run(
        """
        import sys, time, conveyor
        def first(x):
            return x
        CHECK = "'cloudpickle' in __import__('sys').modules"
        assert conveyor.map(first, [1], backend="process") == [1]  # by name: no cloudpickle
        deadline = time.monotonic() + 60
        while True:
            with conveyor.Pool(workers=1, backend="process") as pool:  # its worker: the zygote's
                if pool.submit(eval, CHECK).result():
                    break
            assert time.monotonic() < deadline, "the zygote never imported cloudpickle"
            time.sleep(0.5)  # idle for a while (each request wakes it, and each worker's exit)
        """
    )


def test_a_main_function_sent_by_name_reaches_workers_not_forked_from_the_zygote() -> None:
    """After the zygote is killed the fork server starts the workers; they lack the caller's
    ``__main__``, so the function kept by name goes to them by value."""
    run(
        """
        import os, signal, conveyor
        from conveyor._api import _default_pool
        from conveyor.backends.process import zygote
        OFFSET = 10
        def shifted(x):
            return x + OFFSET
        assert conveyor.map(shifted, range(4), backend="process") == [10, 11, 12, 13]
        backend = _default_pool("process", None, None)._backend
        assert backend._packer.functions._main_keys, "the function was not kept by name"
        os.kill(zygote.pid(), signal.SIGKILL)
        for pid in backend.worker_pids():  # the first ones, forked from this process itself
            os.kill(pid, signal.SIGKILL)
        got = conveyor.map(shifted, range(40), backend="process", retries=1)
        assert got == [x + 10 for x in range(40)], got
        records = list(backend._workers.values())
        assert records and not any(r.has_birth_main for r in records), records
        """
    )


def test_cloudpickle_register_pickle_by_value_is_respected() -> None:
    """A module the user registered with cloudpickle is sent by value, never by name."""
    import cloudpickle

    from conveyor._serialize import by_name

    import tasks

    assert by_name(tasks.square) is not None
    cloudpickle.register_pickle_by_value(tasks)
    try:
        assert by_name(tasks.square) is None
    finally:
        cloudpickle.unregister_pickle_by_value(tasks)


def test_memory_shared_with_the_caller_does_not_count_against_max_memory_per_worker() -> None:
    """A worker forked from the zygote maps all the caller's memory (its resident set starts
    as big as the caller's); max_memory_per_worker counts what the worker itself gained."""
    run(
        """
        import os, conveyor
        def touched(megabytes):
            data = bytearray(megabytes * 1024 * 1024)
            for i in range(0, len(data), 4096):
                data[i] = 1  # resident, not only allocated
            return data
        held = touched(300)  # in the caller, hence in each forked worker's page tables
        kept = []
        def grow(megabytes):
            kept.append(touched(megabytes))  # the worker's own, held on to
            return len(kept)
        limit = 200 * 1024 * 1024
        with conveyor.Pool(workers=1, backend="process", max_memory_per_worker=limit) as pool:
            assert pool._backend.start_method == "zygote"
            pids = {pool.submit(os.getpid).result() for _ in range(5)}
            assert len(pids) == 1, pids  # never recycled for memory it did not take
            assert pool.submit(grow, 300).result() == 1
            assert pool.submit(os.getpid).result() not in pids  # its own 300 MB: recycled
        """
    )


def test_no_zygote_process_outlives_the_test_session_children() -> None:
    """This process's own zygote is one of the session's infrastructure processes."""
    from conveyor.backends.process import zygote

    if zygote.pid() is None:
        pytest.skip("this session has no zygote (it had threads at its start)")
    process = psutil.Process(zygote.pid())
    assert process.ppid() == os.getpid()
    assert process.num_threads() == 1
