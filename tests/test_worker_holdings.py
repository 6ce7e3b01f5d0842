"""What another thread sees of a worker's holdings: never less than the worker really runs.

``interrupt()`` (Ctrl-C, a cancelled await, ``pool.stop``) finds the workers to kill by reading,
under the backend's lock, the units each worker holds. If the dispatcher ever lets the lock go
while a worker runs a unit that its record does not show, an interrupt at that moment misses the
worker, and the task it should stop runs on behind the caller's back. (It did: between
``_batch_finished`` clearing the batch sent ahead and ``_begin`` making it the running one.)

The test checks that at *every line* the dispatcher thread executes in the process backend's
modules: whenever the lock is free (another thread could take it and read), every unit that was
started (its sink's ``starting`` said yes) and is not delivered yet is among the holdings.
A trace function, not timing: the check is deterministic, with no sleeps.
"""

from __future__ import annotations

import os
import sys
import threading
from types import FrameType
from typing import Any

import conveyor.backends.process as process_package
from conveyor._work import MODE_MAP, Loader, Unit
from conveyor.backends.process.parent import ProcessBackend

import tasks

_PACKAGE_DIR = os.path.dirname(process_package.__file__)


class _Sink:
    """Records which units started and which were delivered in full (dispatcher thread)."""

    def __init__(self, total: int) -> None:
        self.started: set[int] = set()
        self.delivered: set[int] = set()
        self.total = total
        self.all_done = threading.Event()

    @property
    def owner(self) -> object:
        return self

    def starting(self, unit: Unit) -> bool:
        self.started.add(unit.id)
        return True

    def deliver(self, unit: Unit, start: int, loader: Loader, elapsed: float) -> None:
        values, errors = loader()
        assert not errors, errors
        if start + len(values) == len(unit.items):
            self.delivered.add(unit.id)
        if len(self.delivered) == self.total:
            self.all_done.set()


def test_a_running_unit_is_always_among_the_holdings_when_the_lock_is_free() -> None:
    total = 60
    sink = _Sink(total)
    violations: list[tuple[str, int, set[int]]] = []
    holder: list[ProcessBackend] = []

    def probe(frame: FrameType) -> None:
        if not holder:
            return
        backend = holder[0]
        if not backend._lock.acquire(blocking=False):
            return  # held (by the dispatcher itself, or by a reader): nobody can look now
        try:
            held = {u.id for w in backend._workers.values() for u in w.held_units()}
        finally:
            backend._lock.release()
        missing = sink.started - sink.delivered - held
        if missing:
            violations.append((frame.f_code.co_name, frame.f_lineno, missing))

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            probe(frame)
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            return local
        return None

    threading.settrace(tracer)  # the dispatcher thread starts in the constructor
    try:
        backend = ProcessBackend(workers=1)
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    holder.append(backend)
    try:
        # Small units with a known estimate: each is a batch of its own, and the next one is
        # sent ahead while the worker runs the one before (prefetch), so the dispatcher goes
        # through the "batch done, the one ahead begins" transition many times.
        units = [
            Unit(tasks.square, [i, i + 1], MODE_MAP, sink, [i, i + 1], estimate=0.001)
            for i in range(total)
        ]
        backend.submit(units)
        assert sink.all_done.wait(60), "the units were not all delivered"
    finally:
        backend.shutdown()
    assert sys.gettrace() is None
    assert not violations, sorted({(name, line) for name, line, _ in violations})
