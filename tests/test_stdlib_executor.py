"""CPython 3.13's own executor tests, run against ``conveyor.Pool`` (issue 8: a drop-in Executor).

The test classes are IMPORTED from the ``test`` package installed with CPython 3.13
(``Lib/test/test_concurrent_futures``), never copied; on other Pythons this module is skipped.
They run on both of conveyor's backends that a user would pass for an executor: ``process`` (in
place of ``ProcessPoolExecutor``) and ``thread`` (``ThreadPoolExecutor``).

Where conveyor deliberately does better than the standard library, the standard test is replaced
by one asserting the better behaviour (each replacement says what it replaces and why):

* a worker that dies, or a task whose argument or result fails to (un)pickle, fails only that
  task (``WorkerCrashed``, a ``BrokenExecutor``, for a death); the pool replaces the worker and
  goes on, where ``ProcessPoolExecutor`` breaks for good (``test_killed_child``, and every
  ``test_deadlock`` test through ``_check_crash``, ``test_shutdown_deadlock``,
  ``test_crash_big_data``);
* a task whose argument cannot be pickled fails alone, at once, in the caller
  (``test_error_at_task_pickle``, ``test_shutdown_deadlock_pickle``);
* the worker's traceback is chained as ``conveyor.RemoteTraceback``, not the private
  ``concurrent.futures.process._RemoteTraceback`` (``test_traceback``);
* a bad ``workers`` count is named by conveyor's own option name (``test_max_workers_negative``);
* a failing initializer raises ``conveyor.WorkerInitError`` (a ``BrokenExecutor``) naming the
  initializer and carrying the worker's traceback, instead of logging to the
  ``concurrent.futures`` logger (``FailingInitializerMixin.test_initializer``).

Tests that read a standard executor's private state (``_processes``, ``_executor_manager_thread``,
``_max_workers``) do not apply and are not run: test_process_pool's ``test_saturation``,
``test_idle_process_reuse_*``, ``test_max_tasks_*``, ``test_python_finalization_error``, and
test_deadlock's ``test_gh105829_should_not_deadlock_if_wakeup_pipe_full`` (it mocks a private
class).
"""

from __future__ import annotations

import pickle
import sys
import unittest
from typing import Any

import pytest

if sys.version_info[:2] != (3, 13):
    pytest.skip(
        "CPython 3.13's executor tests are imported from its installed test package; "
        f"this is Python {sys.version_info[0]}.{sys.version_info[1]}",
        allow_module_level=True,
    )
try:
    # test_map_timeout asks for the 'walltime' resource, checked when its module is imported:
    # allow it first, as `python -m test -u walltime` would.
    from test import support

    support.use_resources = ["walltime"]
    from test.test_concurrent_futures import test_deadlock, test_process_pool
    from test.test_concurrent_futures.executor import ExecutorTest
    from test.test_concurrent_futures.test_as_completed import AsCompletedTests
    from test.test_concurrent_futures.test_init import (
        InitializerMixin,
        get_init_status,
        init_fail,
    )
    from test.test_concurrent_futures.test_wait import WaitTests
    from test.test_concurrent_futures.util import BaseTestCase, ExecutorMixin
except ImportError as exc:  # a Python built without its test package
    pytest.skip(f"CPython's test package is not installed: {exc}", allow_module_level=True)

from concurrent.futures import BrokenExecutor

import conveyor


def _process_pool(
    max_workers: int | None = None,
    mp_context: Any = None,
    initializer: Any = None,
    initargs: tuple[Any, ...] = (),
) -> conveyor.Pool:
    """``ProcessPoolExecutor``'s constructor, spelled with conveyor's options."""
    start_method = mp_context.get_start_method() if mp_context is not None else None
    return conveyor.Pool(
        workers=max_workers,
        backend="process",
        start_method=start_method,
        initializer=initializer,
        initargs=initargs,
    )


def _thread_pool(
    max_workers: int | None = None, initializer: Any = None, initargs: tuple[Any, ...] = ()
) -> conveyor.Pool:
    """``ThreadPoolExecutor``'s constructor, spelled with conveyor's options."""
    return conveyor.Pool(
        workers=max_workers, backend="thread", initializer=initializer, initargs=initargs
    )


class ProcessMixin(ExecutorMixin):
    executor_type = staticmethod(_process_pool)
    ctx = "forkserver"


class ThreadMixin(ExecutorMixin):
    executor_type = staticmethod(_thread_pool)


class _Better:
    """Replacements shared by both backends (see the module docstring)."""

    executor: conveyor.Pool
    executor_type: Any

    def test_max_workers_negative(self: Any) -> None:
        # replaces the stdlib's check of its message "max_workers must be greater than 0"
        for number in (0, -1):
            with self.assertRaisesRegex(ValueError, "workers must be a whole number of at least 1"):
                self.executor_type(max_workers=number)


class ProcessExecutorTest(
    _Better, ProcessMixin, test_process_pool.ProcessPoolExecutorTest, BaseTestCase
):  # type: ignore[misc]
    """ExecutorTest + test_process_pool's ProcessPoolExecutorTest on the process backend."""

    # private state of ProcessPoolExecutor: do not apply
    test_saturation = None
    test_idle_process_reuse_one = None
    test_idle_process_reuse_multiple = None
    test_max_tasks_per_child = None
    test_max_tasks_per_child_defaults_to_spawn_context = None
    test_max_tasks_early_shutdown = None
    test_python_finalization_error = None

    def test_killed_child(self) -> None:
        # replaces: "When a child process is abruptly terminated, the whole pool gets broken".
        # conveyor: only its task fails (WorkerCrashed, a BrokenExecutor); the pool goes on.
        # The workers are killed once the task has *started* in one (its file is written): a
        # task sent to a worker killed before it began is run again instead, as it should be.
        import os
        import signal
        import tempfile

        import faults

        with tempfile.TemporaryDirectory() as directory:
            never = os.path.join(directory, "never")
            future = self.executor.submit(faults.touch_and_wait, directory, "task", never, 30)
            started = os.path.join(directory, "started.task")
            for _ in support.sleeping_retry(support.SHORT_TIMEOUT, "task never started"):
                if os.path.exists(started):
                    break
            for pid in self.executor._backend.worker_pids():  # type: ignore[attr-defined]
                os.kill(pid, signal.SIGKILL)
            self.assertRaises(BrokenExecutor, future.result)
        self.assertIsInstance(future.exception(), conveyor.WorkerCrashed)
        self.assertEqual(self.executor.submit(pow, 2, 8).result(), 256)

    def test_traceback(self) -> None:
        # replaces: the cause's type is the private futures.process._RemoteTraceback
        future = self.executor.submit(self._test_traceback)
        with self.assertRaises(RuntimeError) as cm:
            future.result()
        exc = cm.exception
        self.assertEqual(exc.args, (123,))
        self.assertIs(type(exc.__cause__), conveyor.RemoteTraceback)
        # the function goes by value (cloudpickle): its frame is named, its source line is not
        self.assertIn("in _test_traceback", exc.__cause__.tb)
        self.assertIn("RuntimeError: 123", exc.__cause__.tb)


class ThreadExecutorTest(_Better, ThreadMixin, ExecutorTest, BaseTestCase):  # type: ignore[misc]
    """ExecutorTest on the thread backend."""


class ProcessAsCompletedTest(ProcessMixin, AsCompletedTests, BaseTestCase):  # type: ignore[misc]
    pass


class ThreadAsCompletedTest(ThreadMixin, AsCompletedTests, BaseTestCase):  # type: ignore[misc]
    pass


class ProcessWaitTest(ProcessMixin, WaitTests, BaseTestCase):  # type: ignore[misc]
    pass


class ThreadWaitTest(ThreadMixin, WaitTests, BaseTestCase):  # type: ignore[misc]
    pass


class ProcessInitializerTest(ProcessMixin, InitializerMixin, BaseTestCase):  # type: ignore[misc]
    pass


class ThreadInitializerTest(ThreadMixin, InitializerMixin, BaseTestCase):  # type: ignore[misc]
    pass


class _FailingInitializer:
    """Replaces FailingInitializerMixin.test_initializer: it reads ProcessPoolExecutor's private
    ``_broken`` and its logging; conveyor raises an error naming the initializer instead."""

    worker_count = 2
    executor: conveyor.Pool

    def setUp(self: Any) -> None:
        self.executor_kwargs = dict(initializer=init_fail)
        super().setUp()  # type: ignore[misc]

    def test_initializer(self: Any) -> None:
        try:
            future = self.executor.submit(get_init_status)
        except BrokenExecutor:
            pass  # already broken
        else:
            with self.assertRaises(BrokenExecutor) as cm:
                future.result(timeout=support.SHORT_TIMEOUT)
            self.assertIsInstance(cm.exception, conveyor.WorkerInitError)
            self.assertIn("init_fail", str(cm.exception))
            self.assertIn("error in initializer", str(cm.exception))
        with self.assertRaises(BrokenExecutor):
            self.executor.submit(get_init_status)


class ProcessFailingInitializerTest(_FailingInitializer, ProcessMixin, BaseTestCase):  # type: ignore[misc]
    pass


class ThreadFailingInitializerTest(_FailingInitializer, ThreadMixin, BaseTestCase):  # type: ignore[misc]
    pass


class ProcessDeadlockTest(ProcessMixin, test_deadlock.ExecutorDeadlockTest, BaseTestCase):  # type: ignore[misc]
    """test_deadlock: no crash, exit or pickling error at any stage may hang the pool."""

    TIMEOUT = 60

    test_gh105829_should_not_deadlock_if_wakeup_pipe_full = None  # mocks a private class

    def _fail_on_deadlock(self, executor: conveyor.Pool) -> None:
        executor.terminate()
        self.fail("Executor deadlock")

    def _check_crash(self, error: type[BaseException], func: Any, *args: Any, **kw: Any) -> None:
        # replaces the expected outcome by conveyor's better one: the task fails alone and the
        # pool serves on, where ProcessPoolExecutor breaks for good (BrokenProcessPool). The
        # task's error is WorkerCrashed (a BrokenExecutor) when its worker died, the error
        # itself when loading its argument failed in the worker (UnpicklingError, SystemExit),
        # a TypeError / RuntimeError naming the result that could not be sent back or loaded
        # here; an argument that cannot be pickled is refused by submit itself, at once.
        self.executor.shutdown(wait=True)
        with self.executor_type(max_workers=2, mp_context=self.get_context()) as executor:
            expected: Any = (
                error,
                conveyor.WorkerCrashed,
                pickle.UnpicklingError,
                SystemExit,
                TypeError,
                RuntimeError,
            )
            try:
                future = executor.submit(func, *args)
            except (conveyor.Unsendable, test_deadlock.PicklingError):
                future = None
            if future is not None:
                with support.captured_stderr(), self.assertRaises(expected):
                    future.result(timeout=self.TIMEOUT)
            self.assertEqual(executor.submit(pow, 2, 8).result(timeout=self.TIMEOUT), 256)

    def test_shutdown_deadlock(self) -> None:
        # replaces: the crashed task's BrokenProcessPool -> WorkerCrashed; shutdown does not hang
        self.executor.shutdown(wait=True)
        with self.executor_type(max_workers=2, mp_context=self.get_context()) as executor:
            future = executor.submit(test_deadlock._crash, delay=0.1)
            executor.shutdown(wait=True)
            with self.assertRaises(conveyor.WorkerCrashed):
                future.result()

    def test_shutdown_deadlock_pickle(self) -> None:
        # replaces: an argument that fails to pickle is refused by submit itself, at once
        self.executor.shutdown(wait=True)
        with self.executor_type(max_workers=2, mp_context=self.get_context()) as executor:
            executor.submit(id, 42).result()
            with self.assertRaises(conveyor.Unsendable):
                executor.submit(id, test_deadlock.ErrorAtPickle())
            executor.shutdown(wait=False)

    def test_crash_big_data(self) -> None:
        # replaces: BrokenProcessPool -> the first item's WorkerCrashed, raised by map
        self.executor.shutdown(wait=True)
        data = "a" * support.PIPE_MAX_SIZE
        with self.executor_type(max_workers=2, mp_context=self.get_context()) as executor:
            with self.assertRaises(conveyor.WorkerCrashed):
                list(executor.map(test_deadlock._crash_with_data, [data] * 10))
            self.assertEqual(executor.submit(pow, 2, 8).result(timeout=self.TIMEOUT), 256)


def load_tests(loader: unittest.TestLoader, tests: Any, pattern: Any) -> unittest.TestSuite:
    return loader.loadTestsFromModule(sys.modules[__name__])
