"""backend="auto"'s Router (conveyor._auto) with stand-in backends: no process is started."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import pytest

from conveyor import _auto
from conveyor._options import JobOptions
from conveyor.backends.base import Backend
from conveyor.backends.thread import ThreadBackend


def spin(x: int) -> int:
    """About 3 ms of Python holding the GIL."""
    end = time.thread_time() + 0.003
    while time.thread_time() < end:
        pass
    return x


class Backends:
    """Thread backends standing in for the pool's processes and threads, recorded by name."""

    def __init__(self) -> None:
        self.made: dict[str, Backend] = {}

    def make(self, name: str) -> Backend:
        if name not in self.made:
            self.made[name] = ThreadBackend(2)
        return self.made[name]

    def close(self) -> None:
        for backend in self.made.values():
            backend.shutdown()


@pytest.fixture
def backends() -> Any:
    made = Backends()
    yield made
    made.close()


def route(backends: Backends, payload_size: Any) -> Any:
    _auto._measurements.clear()  # measured afresh, not remembered from an earlier test
    router = _auto.Router(
        process=lambda: backends.make("process"),
        make_threads=lambda: backends.make("thread"),
        payload_size=payload_size,
        workers=2,
        inline_ok=True,
    )
    job = router.job(spin, list(range(120)), JobOptions())
    assert job.collect() == list(range(120))
    return job.backend


def test_cpu_bound_python_goes_to_processes(backends: Backends) -> None:
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        pytest.skip("free-threaded: threads are chosen")
    assert route(backends, lambda items: 0) is backends.made["process"]


def test_the_payload_size_hook_weighs_the_copy(backends: Backends) -> None:
    """Rule 3: arguments so large that copying them costs more than the parallel work saves."""
    sizes: list[int] = []

    def huge(items: Sequence[Any]) -> int:
        sizes.append(len(items))
        return len(items) << 40

    assert route(backends, huge) is backends.made["thread"]
    assert sizes and "process" not in backends.made


def test_a_probe_that_runs_past_three_task_timeouts_forces_processes(backends: Backends) -> None:
    router = _auto.Router(
        process=lambda: backends.make("process"),
        make_threads=lambda: backends.make("thread"),
        payload_size=lambda items: 0,
        workers=2,
        inline_ok=True,
    )
    probe = router.probe(time.sleep, 1, [1.0], task_timeout=0.05)
    assert probe.measurement is None and probe.done == 0
    assert probe.forced is not None and probe.forced.backend == "process"
