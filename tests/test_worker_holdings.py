"""What another thread sees of a worker's holdings: never less than the worker really runs.

``interrupt()`` (Ctrl-C, a cancelled await, ``pool.stop``) finds the workers to kill by reading,
under the backend's lock, the units each worker holds. If the dispatcher ever lets the lock go
while a worker runs a unit that its record does not show, an interrupt at that moment misses the
worker, and the task it should stop runs on behind the caller's back. (It did: between
``_batch_finished`` clearing the batch sent ahead and ``_begin`` making it the running one.)

The test checks that at *every line* the dispatcher thread executes in the process backend's
modules: whenever the lock is free (another thread could take it and read), every unit that was
started (its sink's ``starting`` said yes) and is not delivered yet is among the holdings, or
back in the queue (after its worker died: where ``interrupt()``'s ``cancel`` finds it). The
same holds while a crash is settled (it did not: the dead worker's batch was cleared, and the
worker forgotten, before its units were re-queued). A trace function, not timing: the check is
deterministic, with no sleeps.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from types import FrameType
from typing import Any

import pytest

import conveyor.backends.process as process_package
from conveyor._executor_errors import WorkerCrashed
from conveyor._work import MODE_MAP, Loader, Unit
from conveyor.backends.process.parent import ProcessBackend

import faults
import tasks

_PACKAGE_DIR = os.path.dirname(process_package.__file__)


class _Sink:
    """Records which units started and which were delivered in full (dispatcher thread)."""

    def __init__(self, total: int) -> None:
        self.started: set[int] = set()
        self.delivered: set[int] = set()
        self.errors: list[BaseException] = []
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
        self.errors.extend(errors.values())
        if start + len(values) == len(unit.items):
            self.delivered.add(unit.id)
        if len(self.delivered) == self.total:
            self.all_done.set()


@pytest.mark.parametrize("scenario", ["prefetch", "crash"])
def test_a_running_unit_is_always_held_or_queued_when_the_lock_is_free(scenario: str) -> None:
    total = 60
    sink = _Sink(total)
    violations: list[tuple[str, int, set[int]]] = []
    holder: list[ProcessBackend] = []
    # The unit that kills its worker is settled by being blamed: its error is delivered after
    # the dispatcher lets the lock go (never to a sink under the lock), so it is neither held
    # nor queued meanwhile. Every other unit must be.
    exempt: set[int] = set()

    def probe(frame: FrameType) -> None:
        if not holder:
            return
        backend = holder[0]
        if not backend._lock.acquire(blocking=False):
            return  # held (by the dispatcher itself, or by a reader): nobody can look now
        try:
            held = {u.id for w in backend._workers.values() for u in w.assigned_units()}
            held.update(u.id for u in backend._queue.ready)
        finally:
            backend._lock.release()
        missing = sink.started - sink.delivered - held - exempt
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
        # "crash": one-item units that share batches (coalesced); item 17 kills its worker,
        # whose other units are re-queued whole (same ids) and run on its replacement.
        if scenario == "prefetch":
            units = [
                Unit(tasks.square, [i, i + 1], MODE_MAP, sink, [i, i + 1], estimate=0.001)
                for i in range(total)
            ]
        else:
            crash = functools.partial(faults.crash_on, bad=17, how="exit")
            units = [
                Unit(crash, [i], MODE_MAP, sink, [i], estimate=0.001, coalesce=True)
                for i in range(total)
            ]
            exempt.update(u.id for u in units if u.items == [17])
        backend.submit(units)
        assert sink.all_done.wait(60), "the units were not all delivered"
    finally:
        backend.shutdown()
    assert sys.gettrace() is None
    if scenario == "crash":
        assert [type(e) for e in sink.errors] == [WorkerCrashed]
    else:
        assert not sink.errors
    assert not violations, sorted({(name, line) for name, line, _ in violations})
