"""backend="auto": what it chooses for clearly different kinds of work, and that it says why."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

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


def spin_for(milliseconds: float) -> int:
    """The ``n`` for which ``spin(n)`` takes about ``milliseconds`` on this machine (machines
    differ ~3x: a fixed ``n`` that is clearly CPU work on one looks tiny on another, and auto
    rightly runs tiny work inline)."""
    n = 50_000
    started = time.perf_counter()
    spin(n)
    took = max(time.perf_counter() - started, 1e-6)
    return max(n, int(n * milliseconds / 1000 / took))


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
    n = spin_for(15)  # pure Python
    assert conveyor.map(spin, [n] * 12) == [spin(n)] * 12
    assert chosen(caplog) == "process"


def test_cpu_bound_python_goes_to_threads_without_a_gil(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CI has no free-threaded build: the interpreter's answer to "is the GIL on?" is replaced,
    # the measurement (made in a real worker) and the choice are real.
    caplog.set_level(logging.INFO, logger="conveyor")
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    n = spin_for(15)
    assert conveyor.map(spin, [n] * 12) == [spin(n)] * 12
    assert chosen(caplog) == "thread"


def test_io_bound_work_goes_to_threads(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    assert conveyor.map(wait, [0.02] * 40, workers=8) == [0.02] * 40
    assert chosen(caplog) == "thread"


def cpus_two_threads_get() -> float:
    """How many CPUs two threads running GIL-releasing work kept busy just now (at most 2)."""
    started, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=derive, args=(bytes([i]) * 16,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (time.process_time() - cpu) / (time.perf_counter() - started)


def test_gil_releasing_work_goes_to_threads(caplog: pytest.LogCaptureFixture) -> None:
    # The pair test can only see threads scale if the machine gives them the CPUs: a loaded
    # one makes such work look GIL-bound (processes: slower, still right; see _auto). So up to
    # three tries, and a skip that says so if the machine itself had no room for two threads.
    caplog.set_level(logging.INFO, logger="conveyor")
    salts = [bytes([i]) * 16 for i in range(16)]  # ~20 ms of hashing each
    for _ in range(3):
        _auto._measurements.clear()
        assert conveyor.map(derive, salts) == [derive(s) for s in salts]
        if chosen(caplog) == "thread":
            return
    room = cpus_two_threads_get()
    if room < _auto.SCALING_LIMIT:
        pytest.skip(f"the machine is loaded: two hashing threads kept only {room:.2f} CPUs busy")
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
    locks = [threading.Lock() for _ in range(12)]
    # CPU-bound Python (processes, were its items picklable) over unpicklable locks
    n = spin_for(15)
    out = conveyor.map(lambda lock: spin(n) + lock.locked(), locks)
    assert out == [spin(n)] * 12
    assert chosen(caplog) == "thread"


def _appender(seen: list[int], pause: float) -> Callable[[int], int]:
    def record(x: int) -> int:
        if pause:
            time.sleep(pause)
        seen.append(x)
        return x

    return record


@pytest.mark.parametrize(
    ("items", "pause", "expected"), [(100, 0.002, "thread"), (10_000, 0.0, "inline")]
)
def test_auto_keeps_every_side_effect_on_threads_and_inline(
    caplog: pytest.LogCaptureFixture, items: int, pause: float, expected: str
) -> None:
    # The probe runs in this process: every item's side effect reaches the caller (it used to
    # run the first items in a worker process, and their appends were lost).
    caplog.set_level(logging.INFO, logger="conveyor")
    seen: list[int] = []
    assert conveyor.map(_appender(seen, pause), range(items)) == list(range(items))
    # (on a machine so loaded that the first item is descheduled, tiny work can look like
    # waiting and go to threads: in this process all the same)
    assert chosen(caplog) in (expected, "thread")
    assert sorted(seen) == list(range(items))


def test_auto_starts_no_process_unless_it_chooses_processes(tmp_path) -> None:
    script = textwrap.dedent(
        """
        import time, psutil, conveyor
        me = psutil.Process()
        def wait(x):
            time.sleep(0.002)
            return x
        assert conveyor.map(abs, range(10)) == list(range(10))          # inline
        assert conveyor.map(wait, range(50)) == list(range(50))         # threads
        with conveyor.Pool(backend="auto") as pool:
            assert list(pool.imap(wait, range(50))) == list(range(50))
            assert pool._primary is None
        print("children", len(me.children(recursive=True)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "children 0" in out.stdout


def test_auto_pool_runs_every_api(caplog: pytest.LogCaptureFixture) -> None:
    with conveyor.Pool(workers=2, backend="auto") as pool:
        assert pool.submit(tiny, 1).result() == 2
        assert list(pool.imap(tiny, range(100))) == list(range(1, 101))
        assert list(pool.imap(wait, [0.01] * 5)) == [0.01] * 5
        assert pool.starmap(pow, [(2, 3)]) == [8]
