"""Records logged inside workers reach the caller's logging, with the worker's name and pid."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor


class Collect(logging.Handler):
    """Keeps every record it is given (thread-safe: Handler.handle takes its lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def caught() -> Iterator[Collect]:
    """A handler on the caller's root logger; logging's state is restored afterwards."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    handler = Collect()
    root.addHandler(handler)
    yield handler
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name in ("app", "app.noisy"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def log_and_pid(x: int) -> int:
    logging.getLogger("app").info("item %d", x)
    return os.getpid()


def debug_enabled_then_log(x: int) -> bool:
    log = logging.getLogger("app")
    log.debug("debug %d", x)
    log.warning("warning %d", x)
    return log.isEnabledFor(logging.DEBUG)


def log_exception(x: int) -> None:
    try:
        1 / x
    except ZeroDivisionError:
        logging.getLogger("app").exception("failed on %d", x)


def log_from_threads(x: int) -> None:
    """Logs from the task's own threads too, all at once."""

    def burst(n: int) -> None:
        for i in range(5):
            logging.getLogger("app").info("thread %d record %d of item %d", n, i, x)

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    burst(-1)
    for thread in threads:
        thread.join()
    logging.getLogger("app.noisy").info("never shipped")


def log_until_stopped(x: float) -> None:
    while True:
        logging.getLogger("app").info("busy " + "x" * 2000)


class SlowText:
    """A log message whose text takes long to make: the alarm lands while the record is made."""

    def __str__(self) -> str:
        time.sleep(30)
        return "slow"


def log_slow_message(x: int) -> int:
    logging.getLogger("app").warning(SlowText())
    time.sleep(30)  # only reached if the timeout was lost; then the parent's kill ends it
    return x


def log_huge_then_idle(size: int) -> None:
    """One record so large that writing it outlasts the item's deadline, then a loop that
    only the in-process alarm can end (if the alarm were lost, the parent's kill would)."""
    logging.getLogger("app").warning("x" * size)
    while True:
        time.sleep(0.01)


def log_in_initializer() -> None:
    logging.getLogger("app").warning("initializer of %d", os.getpid())


def log_unpicklable_extra(x: int) -> None:
    logging.getLogger("app").warning("with extra", extra={"lock": threading.Lock()})


def test_process_worker_records_carry_the_workers_name_and_pid(caught: Collect) -> None:
    logging.getLogger().setLevel(logging.INFO)
    with conveyor.Pool(workers=2) as pool:
        pids = list(pool.imap(log_and_pid, range(6)))
    by_item = {r.getMessage(): r for r in caught.records if r.name == "app"}
    assert sorted(by_item) == [f"item {i}" for i in range(6)]
    for i, pid in enumerate(pids):
        record = by_item[f"item {i}"]
        assert record.process == pid != os.getpid()
        assert record.processName.startswith("conveyor-worker-")
        assert record.levelno == logging.INFO


def test_caller_levels_decide_what_workers_ship(caught: Collect) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    with conveyor.Pool(workers=2) as pool:
        enabled = list(pool.imap(debug_enabled_then_log, range(4)))
    assert enabled == [False] * 4  # the DEBUG record is not even made in the worker
    messages = sorted(r.getMessage() for r in caught.records if r.name == "app")
    assert messages == [f"warning {i}" for i in range(4)]


def test_caller_filters_again_when_its_levels_rose_since_the_worker_started(
    caught: Collect,
) -> None:
    logging.getLogger().setLevel(logging.INFO)
    with conveyor.Pool(workers=1) as pool:
        list(pool.imap(log_and_pid, range(2)))
        logging.getLogger().setLevel(logging.ERROR)
        list(pool.imap(log_and_pid, range(2, 4)))
    assert sorted(r.getMessage() for r in caught.records) == ["item 0", "item 1"]


def test_logged_exception_arrives_with_its_traceback(caught: Collect) -> None:
    logging.getLogger().setLevel(logging.INFO)
    with conveyor.Pool(workers=1) as pool:
        list(pool.imap(log_exception, [0]))
    [record] = [r for r in caught.records if r.name == "app"]
    assert record.getMessage() == "failed on 0"
    assert record.exc_info is None
    assert record.exc_text is not None
    assert "Traceback" in record.exc_text and "ZeroDivisionError" in record.exc_text
    text = logging.Formatter().format(record)
    assert "in log_exception" in text and "1 / x" in text


def test_many_records_from_many_workers_and_threads_none_lost(caught: Collect) -> None:
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("app.noisy").setLevel(logging.ERROR)
    with conveyor.Pool(workers=3, initializer=log_in_initializer) as pool:
        pids = set(pool._backend.worker_pids())
        list(pool.imap(log_from_threads, range(200), chunksize=7))
    records = [r for r in caught.records if r.name == "app"]
    items = [r.getMessage() for r in records if "of item" in r.getMessage()]
    expected = [
        f"thread {n} record {i} of item {x}"
        for x in range(200)
        for n in range(-1, 3)
        for i in range(5)
    ]
    assert sorted(items) == sorted(expected)  # each once: none lost, none doubled
    inits = [r for r in records if r.getMessage().startswith("initializer")]
    assert {r.process for r in inits} == pids
    assert all(r.getMessage() == f"initializer of {r.process}" for r in inits)
    assert not [r for r in caught.records if r.name == "app.noisy"]


def test_timed_item_logging_hard_ends_with_task_timeout_and_pipe_intact(
    caught: Collect,
) -> None:
    # The alarm is likely to land while the task writes a record: it must not tear it.
    logging.getLogger().setLevel(logging.INFO)
    with conveyor.Pool(workers=1) as pool:
        results = list(pool.imap(log_until_stopped, [0, 1, 2], task_timeout=0.3, on_error="return"))
        assert all(isinstance(r, conveyor.Failure) for r in results)
        assert all(isinstance(r.exception, conveyor.TaskTimeout) for r in results)
        assert list(pool.imap(log_and_pid, [7])) == pool._backend.worker_pids()
    assert caught.records[-1].getMessage() == "item 7"
    assert all(r.getMessage() == "busy " + "x" * 2000 for r in caught.records[:-1])


def test_deadline_during_a_records_write_is_raised_in_the_task_after_it(
    caught: Collect,
) -> None:
    size = 4_000_000
    with conveyor.Pool(workers=1) as pool:
        [pid] = pool._backend.worker_pids()
        [failure] = list(
            pool.imap(log_huge_then_idle, [size], task_timeout=0.005, on_error="return")
        )
        assert isinstance(failure.exception, conveyor.TaskTimeout)
        assert "killed" not in str(failure.exception)  # the alarm ended it, in the worker
        assert pool._backend.worker_pids() == [pid]
        assert list(pool.imap(log_and_pid, [1])) == [pid]  # the pipe is intact
    assert all(len(r.getMessage()) == size for r in caught.records if r.levelno == 30)


def test_deadline_while_a_record_is_made_is_raised_in_the_task(
    caught: Collect,
) -> None:
    # Not swallowed by logging's error handler (which printed "--- Logging error ---" and let
    # the task run on until the parent's kill).
    with conveyor.Pool(workers=1) as pool:
        [pid] = pool._backend.worker_pids()
        [failure] = list(pool.imap(log_slow_message, [1], task_timeout=0.2, on_error="return"))
        assert isinstance(failure.exception, conveyor.TaskTimeout)
        assert "killed" not in str(failure.exception)
        assert pool._backend.worker_pids() == [pid]


def test_unpicklable_extra_travels_as_its_repr(caught: Collect) -> None:
    with conveyor.Pool(workers=1) as pool:
        list(pool.imap(log_unpicklable_extra, [0]))
    [record] = [r for r in caught.records if r.name == "app"]
    assert "lock" in repr(record.lock)  # type: ignore[attr-defined]


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_forked_worker_does_not_write_through_the_callers_inherited_handlers(
    caught: Collect, tmp_path: Path
) -> None:
    logging.getLogger().setLevel(logging.INFO)
    path = tmp_path / "log.txt"
    to_file = logging.FileHandler(path)
    logging.getLogger().addHandler(to_file)
    try:
        with conveyor.Pool(workers=2, start_method="fork") as pool:
            list(pool.imap(log_and_pid, range(5)))
    finally:
        to_file.close()
    lines = path.read_text().splitlines()
    assert sorted(lines) == [f"item {i}" for i in range(5)]  # written once, by the caller


def test_forked_worker_ships_records_of_a_logger_that_does_not_propagate(
    caught: Collect,
) -> None:
    logging.getLogger().setLevel(logging.INFO)
    app = logging.getLogger("app")
    own = Collect()
    app.addHandler(own)
    app.propagate = False
    try:
        with conveyor.Pool(workers=1, start_method="fork") as pool:
            list(pool.imap(log_and_pid, range(3)))
    finally:
        app.removeHandler(own)
        app.propagate = True
    assert sorted(r.getMessage() for r in own.records) == ["item 0", "item 1", "item 2"]
    assert not [r for r in caught.records if r.name == "app"]  # the caller's propagate=False


def test_thread_workers_log_in_process(caught: Collect) -> None:
    logging.getLogger().setLevel(logging.INFO)
    with conveyor.Pool(workers=2, backend="thread") as pool:
        list(pool.imap(log_and_pid, range(4)))
    records = [r for r in caught.records if r.name == "app"]
    assert sorted(r.getMessage() for r in records) == [f"item {i}" for i in range(4)]
    assert {r.process for r in records} == {os.getpid()}
    assert all(r.thread != threading.main_thread().ident for r in records)


_PRINTING = """
import sys, conveyor
def shout(x):
    # one write per line: two workers share the pipe, and print() may write its end apart
    sys.stdout.write(f"out {x}\\n"); sys.stdout.flush()
    sys.stderr.write(f"err {x}\\n"); sys.stderr.flush()
    return x
if __name__ == "__main__":
    with conveyor.Pool(workers=2) as pool:
        assert list(pool.imap(shout, range(3))) == [0, 1, 2]
"""


def test_print_in_process_workers_goes_to_callers_stdout_and_stderr(tmp_path: Path) -> None:
    # A child interpreter: its workers write to its own stdout/stderr (pytest's capture of
    # this process would not see a fork server started before it).
    script = tmp_path / "printing.py"
    script.write_text(_PRINTING)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["out 0", "out 1", "out 2"]
    assert sorted(done.stderr.splitlines()) == ["err 0", "err 1", "err 2"]
