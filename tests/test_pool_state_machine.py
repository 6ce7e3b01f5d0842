"""A searching test of ``conveyor.Pool``: random sequences of what a user does to a pool.

Hypothesis drives a pool (thread and process backends) through submits (fast, slow, raising,
and on processes crashing by ``os._exit``), cancels, done-callbacks (counting, raising,
submitting more work, shutting the pool down from inside), ``result(timeout=)``,
``wait``/``as_completed``, maps, ``shutdown`` in every variant (also from another thread) and
``terminate``, and checks after every sequence that:

* every future ends (nothing is left pending once the pool is shut down), and ends right: its
  value, its own exception, WorkerCrashed for a crash, or, only where the user asked for it
  (cancel, ``cancel_futures``, ``terminate``), cancelled or PoolClosed;
* every done-callback ran exactly once;
* every shutdown returned, and no process the pool started is left.

The bounded profile (default, ``ci``) runs in CI in about a minute for both backends; set
``CONVEYOR_HYPOTHESIS_PROFILE=long`` to search much harder.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import conveyor
from conveyor._errors import PoolClosed

import faults
import tasks

#: generous for a loaded 2-core machine: a hang fails the example after this long
DEADLINE = float(os.environ.get("CONVEYOR_TEST_DEADLINE", 60))

_COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
settings.register_profile("conveyor-ci", stateful_step_count=12, **_COMMON)
settings.register_profile("conveyor-long", stateful_step_count=40, **_COMMON)
PROFILE = os.environ.get("CONVEYOR_HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"CONVEYOR_HYPOTHESIS_PROFILE must be 'ci' or 'long', got {PROFILE!r}")
#: examples per backend: a process pool costs a few hundred ms to start and stop, threads less
EXAMPLES = {"ci": {"thread": 300, "process": 150}, "long": {"thread": 3000, "process": 1500}}[
    PROFILE
]


@dataclass(eq=False)
class _MapInThread:
    """A map running in a thread of its own, meanwhile the machine goes on."""

    expected: list[Any]
    thread: threading.Thread | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    may_fail: bool = False  # the pool may have refused it (a callback shut it) or cut it off


@dataclass(eq=False)
class Expected:
    """What one future must end as."""

    kind: str  # "value", "raise", "crash"
    value: Any = None
    cancel_ok: bool = False  # the user cancelled it, or cut it off (cancel_futures, terminate)
    callbacks: list[list[int]] = field(default_factory=list)  # one counter per callback


class PoolMachine(RuleBasedStateMachine):
    backend = "thread"

    def __init__(self) -> None:
        super().__init__()
        self.before = faults.descendants()
        self.pool = conveyor.Pool(workers=2, backend=self.backend)
        self.futures: dict[cf.Future[Any], Expected] = {}
        self.lock = threading.Lock()  # callbacks add futures from the pool's threads
        self.closed = False  # shut down (or terminated) for sure
        self.may_close = False  # a done-callback that shuts the pool down was added
        self.cut_off = False  # cancel_futures or terminate cut pending work off
        self.closers: list[threading.Thread] = []
        self.errors: list[BaseException] = []  # failures seen inside callbacks and threads
        self.maps: list[_MapInThread] = []

    # ----------------------------------------------------------------- helpers

    def _track(self, future: cf.Future[Any], expected: Expected) -> None:
        with self.lock:
            # A submit from a callback (a pool thread) can be accepted just before a
            # shutdown(cancel_futures=True) in the main thread and tracked only after that
            # shutdown cancelled it: once pending work was cut off, such a late future may
            # end cancelled too (the check and the insertion are one step under the lock).
            if self.cut_off:
                expected.cancel_ok = True
            self.futures[future] = expected

    def _submit(self, kind: str, value: int, from_callback: bool = False) -> None:
        fn: Any
        if kind == "fast":
            fn, args, expected = abs, (-value,), Expected("value", value)
        elif kind == "slow":
            fn, args = tasks.slow_identity, (0.02 * (value % 5),)
            expected = Expected("value", 0.02 * (value % 5))
        elif kind == "raise":
            fn, args, expected = tasks.fail_on, (value, value), Expected("raise")
        else:
            fn, args, expected = faults.exit_with, (3,), Expected("crash")
        try:
            future = self.pool.submit(fn, *args)
        except PoolClosed:
            if not (self.closed or self.may_close or from_callback):
                raise
            return
        if self.closed and not from_callback:
            raise AssertionError("a shut-down pool accepted a submit")
        self._track(future, expected)

    def _some(self, data: st.DataObject) -> cf.Future[Any] | None:
        # Always one draw, whatever the pool's threads added meanwhile: Hypothesis must see
        # the same draws when it replays an example.
        index = data.draw(st.integers(0, 1000), label="future")
        with self.lock:
            futures = list(self.futures)
        return futures[index % len(futures)] if futures else None

    def _cut_off_pending(self) -> None:
        """cancel_futures or terminate: what has not finished may end cancelled or PoolClosed."""
        with self.lock:
            self.cut_off = True
            for future, expected in self.futures.items():
                if not future.done():
                    expected.cancel_ok = True
        for running in self.maps:
            running.may_fail = True

    # ----------------------------------------------------------------- rules

    @rule(
        kind=st.sampled_from(["fast", "fast", "slow", "raise", "crash"]),
        value=st.integers(0, 50),
    )
    def submit(self, kind: str, value: int) -> None:
        if kind == "crash" and self.backend != "process":
            kind = "slow"  # os._exit would end the test process itself
        self._submit(kind, value)

    @rule(data=st.data(), how=st.sampled_from(["count", "raise", "submit", "shutdown"]))
    def add_callback(self, data: st.DataObject, how: str) -> None:
        future = self._some(data)
        if future is None:
            return
        counter = [0]
        with self.lock:
            self.futures[future].callbacks.append(counter)

        def callback(done: cf.Future[Any]) -> None:
            counter[0] += 1
            if not done.done():
                self.errors.append(AssertionError("a callback ran before its future was done"))
            if how == "raise":
                raise ValueError("a callback that fails (logged, not raised)")
            if how == "submit":
                self._submit("fast", 7, from_callback=True)
            if how == "shutdown":
                # on one of the pool's own threads it must raise, not wait for itself
                on_pool = threading.current_thread().name.startswith("conveyor-")
                try:
                    self.pool.shutdown(wait=True)
                except RuntimeError as exc:
                    if not on_pool or "cannot join current thread" not in str(exc):
                        self.errors.append(exc)
                else:
                    if on_pool:
                        self.errors.append(AssertionError("shutdown(wait=True) on a pool thread"))

        if how == "shutdown":
            self.may_close = True
        future.add_done_callback(callback)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        future = self._some(data)
        if future is None:
            return
        if future.cancel():
            self.futures[future].cancel_ok = True
            assert future.cancelled()

    @rule(data=st.data(), timeout=st.sampled_from([0, 0.01, 0.1]))
    def result_with_timeout(self, data: st.DataObject, timeout: float) -> None:
        future = self._some(data)
        if future is None:
            return
        try:
            self._check(future, future.result(timeout=timeout), None)
        except cf.TimeoutError:
            pass  # may also be a task's own TimeoutError... none of ours raise one
        except cf.CancelledError:
            assert self.futures[future].cancel_ok
        except BaseException as exc:
            self._check(future, None, exc)

    @rule(timeout=st.sampled_from([0, 0.05]))
    def wait_and_as_completed(self, timeout: float) -> None:
        with self.lock:
            futures = list(self.futures)
        done, _ = cf.wait(futures, timeout=timeout)
        assert all(f.done() for f in done)
        seen = set()
        try:
            for future in cf.as_completed(futures, timeout=timeout):
                assert future.done()
                seen.add(future)
        except cf.TimeoutError:
            pass
        assert done <= seen | {f for f in futures if f.done()}

    @precondition(lambda self: not self.closed)
    @rule(values=st.lists(st.integers(-20, 20), max_size=30), call=st.sampled_from(["map", "imap"]))
    def map(self, values: list[int], call: str) -> None:
        try:
            results = list(getattr(self.pool, call)(abs, values))
        except PoolClosed:
            assert self.may_close  # a callback shut the pool down meanwhile
            return
        assert results == [abs(v) for v in values]

    @precondition(lambda self: not self.closed and len(self.maps) < 3)
    @rule(size=st.integers(1, 40), ordered=st.booleans())
    def map_in_another_thread(self, size: int, ordered: bool) -> None:
        # chunksize=1: the map goes on sending chunks while the machine shuts the pool down
        values = [0.002 * (i % 3) for i in range(size)]
        running = _MapInThread(expected=values, may_fail=self.may_close)
        started = threading.Event()

        def run() -> None:
            try:
                call = self.pool.imap if ordered else self.pool.imap_unordered
                try:
                    results = call(tasks.slow_identity, values, chunksize=1)
                finally:
                    started.set()
                running.outcome["value"] = list(results)
            except BaseException as exc:
                running.outcome["error"] = exc

        running.thread = threading.Thread(target=run, daemon=True)
        running.thread.start()
        # The map has started once imap has returned (it holds its claim on the pool from
        # then on). Without this wait, a shutdown in the next step could come before the
        # thread called imap at all, which must then refuse it: steps can take microseconds.
        assert started.wait(DEADLINE), f"imap did not return; threads:\n{_stacks()}"
        self.maps.append(running)

    @rule(
        wait=st.booleans(),
        cancel_futures=st.booleans(),
        where=st.sampled_from(["here", "thread"]),
    )
    def shutdown(self, wait: bool, cancel_futures: bool, where: str) -> None:
        self.closed = True
        if cancel_futures:
            self._cut_off_pending()
        if where == "here":
            self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)
            if wait:
                with self.lock:
                    futures = list(self.futures)
                pending = [f for f in futures if not f.done()]
                assert not pending, f"shutdown(wait=True) returned with {pending} pending"
            return

        def shut() -> None:
            try:
                self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)
            except BaseException as exc:
                self.errors.append(exc)

        closer = threading.Thread(target=shut, daemon=True)
        closer.start()
        self.closers.append(closer)
        # Shut for sure once the closer has begun: a submit in the next step must be refused
        # (the step could otherwise come before the closer thread ran at all).
        faults.wait_until(lambda: self.pool._closed, DEADLINE, "the shutdown to begin")

    @rule()
    def terminate(self) -> None:
        self.closed = True
        self._cut_off_pending()
        self.pool.terminate()
        with self.lock:
            futures = list(self.futures)
        # terminate() leaves nothing to wait for: every future has ended, now
        _, not_done = cf.wait(futures, timeout=DEADLINE)
        assert not not_done, f"terminate() left futures pending: {not_done}"

    # ----------------------------------------------------------------- checks

    def _check(self, future: cf.Future[Any], value: Any, error: BaseException | None) -> None:
        expected = self.futures[future]
        if error is not None and expected.cancel_ok and isinstance(error, PoolClosed):
            return
        if expected.kind == "value":
            assert error is None, f"expected {expected.value!r}, got {error!r}"
            assert value == expected.value
        elif expected.kind == "raise":
            assert isinstance(error, ValueError), error
        else:
            assert isinstance(error, conveyor.WorkerCrashed), error

    @invariant()
    def no_error_inside(self) -> None:
        assert not self.errors, self.errors

    def teardown(self) -> None:
        try:
            closer = threading.Thread(target=self.pool.shutdown, daemon=True)
            closer.start()
            for thread in [*self.closers, closer]:
                thread.join(DEADLINE)
                assert not thread.is_alive(), f"a shutdown hung; threads:\n{_stacks()}"
            for running in self.maps:
                assert running.thread is not None
                running.thread.join(DEADLINE)
                assert not running.thread.is_alive(), f"a map hung; threads:\n{_stacks()}"
                if "error" in running.outcome:
                    # only a pool that cut it off (cancel_futures, terminate) or refused it
                    assert running.may_fail, running.outcome["error"]
                    assert isinstance(running.outcome["error"], PoolClosed)
                else:
                    assert sorted(running.outcome["value"]) == sorted(running.expected)
            with self.lock:
                futures = dict(self.futures)
            _, not_done = cf.wait(futures, timeout=DEADLINE)
            assert not not_done, f"futures never ended: {not_done}"
            for future, expected in futures.items():
                if future.cancelled():
                    assert expected.cancel_ok, f"{future} was cancelled, not by the user"
                    continue
                error = future.exception()
                self._check(future, None if error else future.result(), error)
            # add_done_callback on a done future calls at once: every callback ran, once
            for future, expected in futures.items():
                for counter in expected.callbacks:
                    assert counter[0] == 1, f"a callback of {future} ran {counter[0]} times"
            assert not self.errors, self.errors
        finally:
            self.pool.terminate()
        faults.wait_until(
            lambda: not (faults.descendants() - self.before - faults.infrastructure_pids()),
            DEADLINE,
            "the pool's processes to exit",
        )


def _stacks() -> str:
    """Where every thread of this process is, for the message of a hang."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(
        f"--- {names.get(ident, ident)}\n{''.join(traceback.format_stack(frame))}"
        for ident, frame in sys._current_frames().items()
    )


class ThreadPoolMachine(PoolMachine):
    backend = "thread"


class ProcessPoolMachine(PoolMachine):
    backend = "process"


def _case(machine: type[PoolMachine]) -> Any:
    case = machine.TestCase
    case.settings = settings(
        settings.get_profile(f"conveyor-{PROFILE}"), max_examples=EXAMPLES[machine.backend]
    )
    return case


TestThreadPool = _case(ThreadPoolMachine)
TestProcessPool = _case(ProcessPoolMachine)
TestThreadPool.pytestmark = TestProcessPool.pytestmark = [pytest.mark.timeout(600)]
