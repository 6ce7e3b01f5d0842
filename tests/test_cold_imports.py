"""A cold ``conveyor.map`` imports neither ``concurrent.futures`` nor ``logging`` (nor
``traceback``): ~4 ms of a cold start. Everything that needs them still works from such a
start: each test runs in a fresh interpreter, whose modules are what the script imported, so
the lazily imported exceptions, futures and log shipping are exercised there (the rest of the
suite runs where pytest imported them long ago)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: what a cold map must not import (concurrent.futures imports logging, which imports traceback)
HEAVY = ("concurrent.futures", "logging", "traceback")
ZYGOTE = sys.platform.startswith("linux")  # workers forked from the caller: they share its modules


def run(script: str, *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``script`` as ``__main__`` of a fresh interpreter; it must succeed."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.parametrize("backend", ["process", "thread", "auto"])
def test_a_cold_map_imports_neither_futures_nor_logging(backend: str) -> None:
    out = run(
        f"""
        import sys, conveyor
        HEAVY = {HEAVY!r}
        def heavy_here(x):
            return x * x, [m for m in HEAVY if m in sys.modules]
        got = conveyor.map(heavy_here, range(20), backend={backend!r})
        assert [v for v, _ in got] == [x * x for x in range(20)], got
        print(sorted({{m for _, loaded in got for m in loaded}}))
        print([m for m in HEAVY if m in sys.modules])
        """
    )
    in_tasks, in_caller = out.stdout.splitlines()
    assert in_caller == "[]"
    if backend != "process" or ZYGOTE:
        assert in_tasks == "[]"
    assert out.stderr == ""


def test_failures_from_a_cold_start_are_the_standard_kinds() -> None:
    """The exceptions that are concurrent.futures' kinds are imported where they are raised:
    in a worker's alarm (a task timeout), in the dispatcher (a crash), in the thread backend's
    watchdog, and for a map's missed deadline."""
    run(
        """
        import os, sys, time, conveyor
        out = conveyor.map(time.sleep, [30, 0], backend="process", task_timeout=0.5,
                           on_error="return")
        timed_out = out[0].exception
        out = conveyor.map(os._exit, [3], backend="process", on_error="return")
        crashed = out[0].exception
        out = conveyor.map(time.sleep, [30, 0], backend="thread", task_timeout=0.5,
                           on_error="return")
        thread_timed_out = out[0].exception
        try:
            conveyor.map(time.sleep, [30], backend="process", timeout=0.5)
        except Exception as exc:  # (concurrent.futures.TimeoutError: not built-in on 3.10)
            missed = exc
        else:
            raise AssertionError("no deadline")

        import concurrent.futures as cf
        assert isinstance(timed_out, conveyor.TaskTimeout), repr(timed_out)
        assert isinstance(timed_out, cf.TimeoutError)
        assert isinstance(thread_timed_out, conveyor.TaskTimeout), repr(thread_timed_out)
        assert isinstance(crashed, conveyor.WorkerCrashed), repr(crashed)
        assert isinstance(crashed, cf.BrokenExecutor) and crashed.exitcode == 3
        assert isinstance(missed, cf.TimeoutError) and "task_timeout=" in str(missed)
        """
    )


def test_a_cold_initializer_failure_is_a_broken_executor() -> None:
    run(
        """
        import conveyor
        for backend in ("process", "thread"):
            try:
                conveyor.map(abs, [1], backend=backend, initializer=int, initargs=("x",))
            except conveyor.WorkerInitError as exc:
                import concurrent.futures
                assert isinstance(exc, concurrent.futures.BrokenExecutor)
            else:
                raise AssertionError(backend)
        """
    )


def test_pool_is_still_an_executor_and_its_futures_standard() -> None:
    run(
        """
        import conveyor
        with conveyor.Pool(workers=2) as pool:
            future = pool.submit(divmod, 7, 2)
            import concurrent.futures as cf
            assert isinstance(pool, cf.Executor)
            assert isinstance(future, cf.Future) and future.result(timeout=60) == (3, 1)
            assert list(pool.map(abs, [-1, -2])) == [1, 2]
        """
    )


@pytest.mark.skipif(not ZYGOTE, reason="workers share the caller's modules where forked")
def test_workers_of_a_caller_without_logging_ship_records_once_they_log(tmp_path: Path) -> None:
    """Workers started while the caller had no ``logging`` ship their records to it from the
    first unit whose function's module imported it: here the caller configures logging after
    its pool started, then maps a function of a module that logs."""
    (tmp_path / "logmod.py").write_text(
        textwrap.dedent(
            """
            import logging, os
            def work(x):
                logging.getLogger("logmod").warning("item %d in %d", x, os.getpid())
                return x
            """
        )
    )
    out = run(
        """
        import os, sys, conveyor
        assert conveyor.map(abs, range(8), backend="process", workers=2) == list(range(8))
        assert "logging" not in sys.modules
        import logging
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record)
        logging.getLogger().addHandler(Keep())
        import logmod
        assert conveyor.map(logmod.work, range(6), backend="process", workers=2) == list(range(6))
        got = sorted(r.getMessage().split()[1] for r in records)
        assert got == [str(x) for x in range(6)], [r.getMessage() for r in records]
        assert all(r.process != os.getpid() for r in records)  # the workers' own records
        """,
        cwd=tmp_path,
    )
    assert "item" not in out.stderr  # shipped to the caller's handler, not printed by a worker


def test_first_submits_from_many_threads_at_once() -> None:
    """The first submit imports what submits need (``_pool._import_futures``): threads making
    their first submits at the same moment all get working futures."""
    run(
        """
        import threading, conveyor
        pool = conveyor.Pool(workers=2, backend="thread")
        barrier = threading.Barrier(8)
        futures = [None] * 8
        def first_submit(i):
            barrier.wait(60)
            futures[i] = pool.submit(pow, i, 2)
        threads = [threading.Thread(target=first_submit, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(8)]
        assert pool.stop(futures[0]) is False  # settled: stop() finds no task
        pool.shutdown()
        """
    )
