"""conveyor.pipeline tear-down with real faults: whatever stops a pipeline stops all of it.

Each case asserts that the caller gets the right outcome quickly (no hang), that the worker
processes which were running tasks are gone, and that nothing the pipeline started is left
(processes, /dev/shm entries).
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor
from test_faults_interrupt import check_clean_interrupt

import faults

pytestmark = pytest.mark.timeout(120)
#: seconds within which a stopped pipeline must have given its answer (generous: loaded CI)
PROMPT = 15.0


def hang(directory: Path) -> Any:
    """A process-stage function that records its worker's pid (started.<item>) and hangs."""
    return functools.partial(faults.touch_and_wait, str(directory), go=str(directory / "never"))


def started(directory: Path, count: int) -> None:
    faults.wait_until(lambda: len(faults.read_pids(directory, "started")) >= count, 60)


def test_a_raising_middle_stage_stops_every_stage(tmp_path: Path) -> None:
    def check(x: int) -> int:
        if x == 5:
            started(tmp_path, 2)  # the last stage is busy in two workers
            raise ValueError("item 5 is not allowed")
        return x

    with faults.no_leftovers():
        began = time.monotonic()
        p = (
            conveyor.pipeline(range(100))
            .map(abs, backend="thread", workers=2)
            .map(check, backend="thread", workers=2)
            .map(hang(tmp_path), backend="process", workers=2, chunksize=1)
        )
        with pytest.raises(ValueError, match="not allowed") as info:
            list(p)
        assert time.monotonic() - began < PROMPT + 5
        assert info.value.__notes__ == [  # type: ignore[attr-defined]
            "conveyor.pipeline: stage 2 'check' (map, backend='thread') failed on item 5"
        ]
        faults.wait_gone(faults.read_pids(tmp_path, "started"), what="the hanging workers")


def test_a_raising_source_stops_every_stage(tmp_path: Path) -> None:
    def source() -> Iterator[int]:
        yield from range(4)
        started(tmp_path, 2)
        raise RuntimeError("the input file is truncated")

    with faults.no_leftovers():
        p = conveyor.pipeline(source()).map(hang(tmp_path), backend="process", workers=2)
        with pytest.raises(RuntimeError, match="truncated") as info:
            list(p)
        assert info.value.__notes__ == [  # type: ignore[attr-defined]
            "conveyor.pipeline: the source raised after 4 items"
        ]
        faults.wait_gone(faults.read_pids(tmp_path, "started"), what="the hanging workers")


def test_a_crashed_worker_without_retries_stops_the_pipeline() -> None:
    with faults.no_leftovers():
        p = (
            conveyor.pipeline(range(20))
            .map(abs, backend="thread")
            .map(functools.partial(faults.crash_on, bad=7), backend="process", workers=2)
        )
        with pytest.raises(conveyor.WorkerCrashed, match="SIGKILL") as info:
            list(p)
        assert info.value.__notes__ == [  # type: ignore[attr-defined]
            "conveyor.pipeline: stage 2 'crash_on' (map, backend='process') failed on item 7"
        ]


def test_a_crashed_worker_with_retries_loses_nothing(tmp_path: Path) -> None:
    with faults.no_leftovers():
        items = [(str(tmp_path), i, 2 if i == 7 else 0) for i in range(20)]
        p = (
            conveyor.pipeline(items)
            .starmap(faults.crash_times, backend="process", workers=2, retries=2)
            .map(lambda x: x * 10, backend="process", workers=2, retries=2)
        )
        assert list(p) == [i * 10 for i in range(20)]
        assert (tmp_path / "attempts.7").read_text() == "3"


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_break_after_the_first_result_stops_every_stage(tmp_path: Path, backend: str) -> None:
    never = tmp_path / "never"
    wait = functools.partial(faults.touch_and_wait, str(tmp_path), go=str(never))

    def first_then_hang(x: int) -> int:
        return x if x == 0 else wait(x)

    try:
        with faults.no_leftovers():
            p = (
                conveyor.pipeline(range(1000))
                .map(abs, backend="thread", workers=2)
                .map(first_then_hang, backend=backend, workers=2, chunksize=1)
            )
            for value in p:
                assert value == 0
                started(tmp_path, 2)  # tasks are running in both workers
                break
            began = time.monotonic()
            p.close()  # what the loop's iterator did at `break` (collected), made explicit
            assert time.monotonic() - began < PROMPT
            stats = p.stats()
            assert stats is not None and not stats.finished
            if backend == "process":
                faults.wait_gone(faults.read_pids(tmp_path, "started"), what="the workers")
    finally:
        never.write_text("")  # abandoned threads end


def test_dropping_the_iterator_stops_the_run(tmp_path: Path) -> None:
    with faults.no_leftovers():
        p = conveyor.pipeline(range(1000)).map(
            lambda x: x if x == 0 else hang(tmp_path)(x), backend="process", workers=2
        )
        results = iter(p)
        assert next(results) == 0
        started(tmp_path, 1)
        del results  # garbage: the run stops, its workers are killed
        faults.wait_gone(faults.read_pids(tmp_path, "started"), what="the workers")


def test_ctrl_c_in_a_child_interpreter_running_a_pipeline(tmp_path: Path) -> None:
    shm_before = faults.shm_entries()
    child = faults.start_child(
        f"""
directory = {str(tmp_path)!r}
import functools
task = functools.partial(faults.spawn_grandchild_and_hang, directory)
announce_when(directory, "grandchild", 2)
(conveyor.pipeline(range(10))
    .map(abs, backend="thread", workers=2)
    .map(task, backend="process", workers=2, chunksize=1)
    .map(abs, backend="thread")
    .run())
""",
        tmp_path,
    )
    child.wait_ready()
    child.signal_and_time(signal.SIGINT)
    check_clean_interrupt(child, tmp_path, shm_before, "pipeline")
