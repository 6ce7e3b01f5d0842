"""Task functions for the asyncio tests (importable by worker processes by name).

Each blocking task first says "started" by writing a file (pid and thread id), so a test knows
for certain that the task runs before it cancels it; none relies on timing.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from faults import _write_atomically, wait_for_path


def _started(directory: str, tag: object) -> None:
    _write_atomically(Path(directory) / f"started.{tag}", f"{os.getpid()} {threading.get_ident()}")


def spin(directory: str, tag: object = 0) -> None:
    """Say started, then loop in Python forever."""
    _started(directory, tag)
    while True:
        pass


def block_in_c(directory: str, tag: object = 0) -> None:
    """Say started, then block in one C call that never returns (a read of a pipe nobody
    writes), with SIGALRM blocked too: nothing in the process can end it."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    read_end, _ = os.pipe()
    _started(directory, tag)
    os.read(read_end, 1)


_thread_exits: dict[str, threading.Event] = {}


def thread_exit_event(key: str) -> threading.Event:
    """An event set when :func:`spin_until_stopped` with ``key`` leaves (thread backend)."""
    return _thread_exits.setdefault(key, threading.Event())


def spin_until_stopped(directory: str, key: str) -> None:
    """Say started, then loop in Python until stopped; the exit event says it left."""
    try:
        _started(directory, key)
        while True:
            pass
    finally:
        thread_exit_event(key).set()


def first_waits_for_second(directory: str, x: int) -> int:
    """Item 0 returns once item 1 has started; every other item says started and hangs."""
    if x == 0:
        wait_for_path(str(Path(directory) / "started.1"))
        return x
    _started(directory, x)
    time.sleep(1000)
    return x


_per_loop: dict[Any, dict[str, Any]] = {}


async def meet(x: int, group: int) -> int:
    """Wait until ``group`` coroutines run at once on this worker's loop; returns the most that
    ever ran at once there. Hangs (until its timeout) if the worker runs fewer at once."""
    loop = asyncio.get_running_loop()
    state = _per_loop.setdefault(loop, {"active": 0, "most": 0, "all_here": asyncio.Event()})
    state["active"] += 1
    state["most"] = max(state["most"], state["active"])
    if state["active"] >= group:
        state["all_here"].set()
    try:
        await asyncio.wait_for(state["all_here"].wait(), 60)
        return int(state["most"])
    finally:
        state["active"] -= 1
        if state["active"] == 0:
            _per_loop.pop(loop, None)


async def async_fail(x: int) -> int:
    await asyncio.sleep(0)
    if x == 2:
        raise KeyError(f"async item {x}")
    return x


async def async_forever(x: int) -> int:
    await asyncio.Event().wait()
    return x


async def async_square(x: int) -> int:
    await asyncio.sleep(0)
    return x * x


def pid_and_value(x: int) -> tuple[int, int]:
    return os.getpid(), x
