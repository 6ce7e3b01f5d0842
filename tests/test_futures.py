"""The futures ``Pool.submit`` returns: standard ``concurrent.futures.Future`` objects that
are cheaper to keep (``conveyor._futures``).

A differential search (Hypothesis) applies the same sequence of calls to a stock ``Future``
and to conveyor's and asserts they answer alike; threaded tests check the waits that the
light condition takes part in; and a count shows what a kept future costs the cycle
collector.
"""

from __future__ import annotations

import concurrent.futures
import gc
import re
import threading
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FuturesTimeout  # (TimeoutError from 3.11 on)
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conveyor
from conveyor._futures import LIGHT
from conveyor._futures import Future as PoolFuture

import tasks

WAIT = 60  # seconds: generous for a loaded 2-core machine


def test_the_light_future_is_used_on_every_supported_python() -> None:
    # CI runs 3.10, 3.11 and 3.13: each must get the light classes, not the fallback
    assert LIGHT
    with conveyor.Pool(workers=1, backend="thread") as pool:
        future = pool.submit(tasks.square, 3)
        assert isinstance(future, Future)
        assert future.result(timeout=WAIT) == 9


def test_a_kept_future_brings_few_objects_for_the_cycle_collector() -> None:
    def tracked(root: object) -> int:
        seen: set[int] = set()
        stack = [root]
        while stack:
            obj = stack.pop()
            if id(obj) in seen or not gc.is_tracked(obj) or isinstance(obj, type):
                continue
            seen.add(id(obj))
            stack.extend(gc.get_referents(obj))
        return len(seen)

    with conveyor.Pool(workers=1, backend="thread") as pool:
        future = pool.submit(tasks.square, 3)
        future.result(timeout=WAIT)
    stock: Future[int] = Future()
    stock.set_result(9)
    # a stock future: itself, its Condition, that one's deque and bound methods, two lists;
    # conveyor's: itself, its condition and lock, two lists, and a deque once waited on
    assert tracked(future) <= 6 < 10 <= tracked(stock)


_OPERATIONS = st.lists(
    st.sampled_from(
        [
            "set_result",
            "set_exception",
            "cancel",
            "set_running_or_notify_cancel",
            "done",
            "running",
            "cancelled",
            "result",
            "exception",
            "add_done_callback",
            "wait",
            "repr",
        ]
    ),
    max_size=12,
)


def _apply(future: Future[Any], operation: str, calls: list[str]) -> object:
    """``operation`` on ``future``: what it returned, or the type of what it raised."""
    try:
        if operation == "set_result":
            return future.set_result(1)
        if operation == "set_exception":
            return future.set_exception(ValueError("no"))
        if operation in ("result", "exception"):
            return repr(getattr(future, operation)(timeout=0))
        if operation == "add_done_callback":
            return future.add_done_callback(lambda f: calls.append(f._state))
        if operation == "wait":
            done, pending = concurrent.futures.wait([future], timeout=0)
            return len(done), len(pending)
        if operation == "repr":
            return re.sub("0x[0-9a-f]+", "", repr(future))  # (not the address)
        return getattr(future, operation)()
    except (CancelledError, InvalidStateError, FuturesTimeout, ValueError, RuntimeError) as exc:
        return type(exc)


@settings(max_examples=150, deadline=None)
@given(_OPERATIONS)
def test_conveyors_future_answers_every_call_as_the_stock_one_does(operations: list[str]) -> None:
    stock: Future[Any] = Future()
    light = PoolFuture()
    stock_calls: list[str] = []
    light_calls: list[str] = []
    for operation in operations:
        assert _apply(light, operation, light_calls) == _apply(stock, operation, stock_calls)
        assert light_calls == stock_calls
        assert light._state == stock._state


def test_many_threads_blocked_on_one_future_are_all_woken() -> None:
    future = PoolFuture()
    results: list[int] = []
    lock = threading.Lock()
    ready = threading.Barrier(9)

    def wait_for_result() -> None:
        ready.wait(timeout=WAIT)
        value = future.result(timeout=WAIT)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=wait_for_result) for _ in range(8)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=WAIT)
    future.set_result(7)
    for thread in threads:
        thread.join(timeout=WAIT)
    assert results == [7] * 8


def test_a_wait_that_times_out_leaves_the_future_usable() -> None:
    future = PoolFuture()
    with pytest.raises(FuturesTimeout):
        future.result(timeout=0.01)
    assert future._condition._waiters == type(future._condition._waiters)()  # none left behind
    threading.Thread(target=future.set_exception, args=(KeyError("late"),)).start()
    assert isinstance(future.exception(timeout=WAIT), KeyError)


def test_wait_and_as_completed_see_pool_futures_settle() -> None:
    with conveyor.Pool(workers=2, backend="thread") as pool:
        gate = threading.Event()
        blocked = pool.submit(gate.wait, WAIT)
        quick = [pool.submit(tasks.square, i) for i in range(20)]
        done, not_done = concurrent.futures.wait(
            [blocked, quick[0]], timeout=WAIT, return_when=concurrent.futures.FIRST_COMPLETED
        )
        assert quick[0] in done and blocked in not_done
        gate.set()
        finished = list(concurrent.futures.as_completed([blocked, *quick], timeout=WAIT))
        assert len(finished) == 21
        assert sorted(f.result() for f in quick) == sorted(i * i for i in range(20))
        assert blocked.result() is True
