"""backend="auto": what it chooses for clearly different kinds of work, and that it says why."""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Iterator

import pytest

import conveyor
from conveyor import _auto


@pytest.fixture(autouse=True)
def fresh_measurements() -> Iterator[None]:
    _auto._measurements.clear()
    yield
    _auto._measurements.clear()


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def wait(x: float) -> float:
    time.sleep(x)
    return x


def derive(salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", b"password", salt, 40_000)  # releases the GIL


def tiny(x: int) -> int:
    return x + 1


def chosen(caplog: pytest.LogCaptureFixture) -> str:
    messages = [r.getMessage() for r in caplog.records if "backend='auto' chose" in r.getMessage()]
    assert messages, "auto did not report its choice"
    return messages[-1].split("chose ")[1].split()[0].strip("'")


def test_cpu_bound_python_goes_to_processes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    n = 200_000  # ~10 ms of pure Python
    assert conveyor.map(spin, [n] * 12) == [spin(n)] * 12
    assert chosen(caplog) == "process"


def test_cpu_bound_python_goes_to_threads_without_a_gil(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CI has no free-threaded build: the interpreter's answer to "is the GIL on?" is replaced,
    # the measurement (made in a real worker) and the choice are real.
    caplog.set_level(logging.INFO, logger="conveyor")
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    n = 200_000
    assert conveyor.map(spin, [n] * 12) == [spin(n)] * 12
    assert chosen(caplog) == "thread"


def test_io_bound_work_goes_to_threads(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    assert conveyor.map(wait, [0.02] * 40, workers=8) == [0.02] * 40
    assert chosen(caplog) == "thread"


def test_gil_releasing_work_goes_to_threads(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    salts = [bytes([i]) * 16 for i in range(16)]  # ~20 ms of hashing each
    assert conveyor.map(derive, salts) == [derive(s) for s in salts]
    assert chosen(caplog) == "thread"


def test_tiny_work_runs_inline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    assert conveyor.map(tiny, range(10_000)) == list(range(1, 10_001))
    assert chosen(caplog) == "inline"


def test_tiny_work_with_a_timeout_is_not_run_inline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    assert conveyor.map(tiny, range(1000), task_timeout=5) == list(range(1, 1001))
    assert chosen(caplog) != "inline"


def test_explain_prints_what_was_measured_and_chosen(capsys: pytest.CaptureFixture[str]) -> None:
    conveyor.map(wait, [0.01] * 10, explain=True)
    err = capsys.readouterr().err
    assert "chose 'thread'" in err
    assert "per item" in err and "CPU" in err


def test_the_measurement_is_remembered_for_the_next_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    conveyor.map(wait, [0.01] * 10)
    assert _auto.remembered(wait, 1) is not None
    conveyor.map(wait, [0.01] * 10)
    assert chosen(caplog) == "thread"


def test_probed_items_are_not_run_twice(tmp_path) -> None:
    log = tmp_path / "runs"

    def record(x: int) -> int:
        with open(log, "a") as f:
            f.write(f"{x}\n")
        time.sleep(0.005)
        return x

    assert conveyor.map(record, range(30)) == list(range(30))
    assert sorted(int(line) for line in log.read_text().split()) == list(range(30))


def test_unpicklable_arguments_go_to_threads(caplog: pytest.LogCaptureFixture) -> None:
    import threading

    caplog.set_level(logging.INFO, logger="conveyor")
    locks = [threading.Lock() for _ in range(3)]
    assert conveyor.map(lambda lock: lock.locked(), locks) == [False] * 3
    assert chosen(caplog) == "thread"


def test_a_crashing_function_is_measured_safely() -> None:
    import os

    # the probe runs in a worker: os._exit there must not end this process
    out = conveyor.map(os._exit, [3], on_error="return")
    assert isinstance(out[0], conveyor.Failure)
    assert isinstance(out[0].exception, conveyor.WorkerCrashed)


def test_auto_pool_runs_every_api(caplog: pytest.LogCaptureFixture) -> None:
    with conveyor.Pool(workers=2, backend="auto") as pool:
        assert pool.submit(tiny, 1).result() == 2
        assert list(pool.imap(tiny, range(100))) == list(range(1, 101))
        assert list(pool.imap(wait, [0.01] * 5)) == [0.01] * 5
        assert pool.starmap(pow, [(2, 3)]) == [8]
