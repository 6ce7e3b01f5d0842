"""What runs inside a Dask worker: one conveyor unit (a chunk of items) as one Dask task.

Data flow (inside one Dask worker process)::

    Dask worker thread (runs the task)              item thread (one per item, timed units only)
    ----------------------------------              --------------------------------------------
    run_unit(fn_ref, mode, items, timeout):
      the pool's initializer, once per process
    load fn (cached per process by its token)
      untimed: run_items() here, in this thread
      timed: for each item, start an item thread -> run fn on the item, keep the outcome
             join it until the item's deadline;      (under the box lock)
             past it: raise Abandoned in it     -->  interrupts Python code at the next bytecode
             join it for a grace period;             (a call blocked in C runs on: "stuck")
             stuck: stop, return what ran and the
             worker's address, so the client restarts this worker
      return (values, errors as (exception, traceback text), run time, stuck-at address)

Guarantees kept here:

* The function arrives by value (cloudpickle bytes, made once per pool and function, inside
  each task or, when large, as a task result copied to each worker once) and is unpickled once
  per worker process (:data:`_FUNCTIONS`), so a function typed
  into ``__main__`` or a notebook runs on a ``dask worker`` that never saw the caller's module.
* An item past ``timeout`` gets :class:`~conveyor.TaskTimeout` and the rest of the chunk runs on.
  The race "the item ends just as its deadline passes" is settled by ``_Box.lock``: the item
  thread stores its outcome under it only if the task thread has not fired; the task thread fires
  only if no outcome is stored, and fires while holding the lock, so the item thread is alive
  (it cannot get past the lock) and its thread id is its own.
* An item that ignores the interruption (blocked in C) makes the task return at once with the
  items before it settled, that item a TaskTimeout, and the rest unrun (the client sends them
  again); the stuck thread stays behind until the client restarts this worker.
* An exception that cannot be pickled is replaced by a ``RuntimeError`` with its type, message
  and traceback text (as on the process backend).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import cloudpickle

from ..._executor_errors import TaskTimeout, WorkerInitError
from ..._work import Abandoned, Outcomes, run_items
from ..process.parent import hard_deadline_grace
from ..process.worker import _picklable_error
from ..thread import _raise_in_thread

__all__ = ["TaskResult", "ensure_initialized", "load_function", "run_loaded", "run_unit"]

#: (values, {position: (exception, traceback text)}, run seconds, address of a stuck worker)
TaskResult = tuple[list[Any], dict[int, tuple[BaseException, str]], float, "str | None"]

#: functions unpickled in this worker process, by the token they were pickled under
_FUNCTIONS: OrderedDict[str, Callable[..., Any]] = OrderedDict()
_FUNCTIONS_LOCK = threading.Lock()
FUNCTION_CACHE_SIZE = 64


def load_function(token: str, data: bytes) -> Callable[..., Any]:
    """The function pickled under ``token``, unpickled once per process.

    Example::

        >>> import cloudpickle
        >>> load_function("t-abs", cloudpickle.dumps(abs))(-2)
        2
    """
    with _FUNCTIONS_LOCK:
        fn = _FUNCTIONS.get(token)
        if fn is not None:
            _FUNCTIONS.move_to_end(token)
            return fn
    fn = cloudpickle.loads(data)
    with _FUNCTIONS_LOCK:
        _FUNCTIONS[token] = fn
        while len(_FUNCTIONS) > FUNCTION_CACHE_SIZE:
            _FUNCTIONS.popitem(last=False)
    return fn


#: initializers run in this worker process, by token: None when it ran, else why it failed
_INITIALIZED: dict[str, str | None] = {}
_INITIALIZED_LOCK = threading.Lock()


def ensure_initialized(init_ref: tuple[str, bytes] | None) -> str | None:
    """Run a pool's ``initializer(*initargs)`` once in this worker process (the first of the
    pool's tasks to arrive runs it; the worker's other threads wait for it). Returns None, or
    the message of a :class:`~conveyor.WorkerInitError` if it failed (then every task of that
    pool on this worker fails with it, as on the process backend).

    Example::

        >>> import cloudpickle
        >>> ensure_initialized(("t-int", cloudpickle.dumps((int, ("12",))))) is None
        True
        >>> print(ensure_initialized(("t-bad", cloudpickle.dumps((int, ("x",)))))
        ...       .splitlines()[0])
        the pool's initializer int failed in a Dask worker (None):
    """
    if init_ref is None:
        return None
    token, data = init_ref
    with _INITIALIZED_LOCK:
        if token in _INITIALIZED:
            return _INITIALIZED[token]
        name = "?"
        try:
            initializer, initargs = cloudpickle.loads(data)
            name = getattr(initializer, "__qualname__", repr(initializer))
            initializer(*initargs)
            failure = None
        except BaseException as exc:  # a SystemExit in an initializer is its failure too
            failure = (
                f"the pool's initializer {name} failed in a Dask worker ({_own_address()}):\n"
                + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            )
        _INITIALIZED[token] = failure
        return failure


def run_unit(
    fn_ref: tuple[str, bytes],
    mode: int,
    items: list[Any],
    timeout: float | None,
    init_ref: tuple[str, bytes] | None = None,
) -> TaskResult:
    """Run one unit in a Dask worker; see the module docstring for what comes back.

    Example::

        >>> import cloudpickle
        >>> values, errors, seconds, stuck = run_unit(("t-neg", cloudpickle.dumps(abs)), 1,
        ...                                           [-1, -2], None)
        >>> values, errors, stuck
        ([1, 2], {}, None)
    """
    return run_loaded(load_function(*fn_ref), mode, items, timeout, init_ref)


def run_loaded(
    fn: Callable[..., Any],
    mode: int,
    items: list[Any],
    timeout: float | None,
    init_ref: tuple[str, bytes] | None = None,
) -> TaskResult:
    """:func:`run_unit` for a function at hand (an executor in this process: no pickling, so a
    closure's side effects reach the caller, as on the thread backend).

    Example::

        >>> run_loaded(abs, 1, [-3], None)[:2]
        ([3], {})
    """
    failure = ensure_initialized(init_ref)
    if failure is not None:
        error = WorkerInitError(failure)
        return [None] * len(items), {i: (error, "") for i in range(len(items))}, 0.0, None
    started = time.perf_counter()
    stuck = False
    if timeout is None:
        values, errors = run_items(fn, mode, items)
    else:
        values, errors, stuck = _run_timed(fn, mode, items, timeout)
    elapsed = time.perf_counter() - started
    wire_errors = {position: _picklable_error(exc) for position, exc in errors.items()}
    return values, wire_errors, elapsed, _own_address() if stuck else None


class _Box:
    """The outcome of one timed item, and the lock that decides "finished" against "late"."""

    __slots__ = ("fired", "lock", "outcome")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcome: Outcomes | None = None
        self.fired = False


def _checkpoint() -> None:
    """A Python call: a pending asynchronous exception is raised at its first bytecode."""


def _run_boxed(box: _Box, fn: Callable[..., Any], mode: int, item: Any) -> None:
    try:
        outcome = run_items(fn, mode, [item])
        with box.lock:
            if not box.fired:
                box.outcome = outcome
        _checkpoint()  # an Abandoned fired while we waited for the lock lands here, inside
    except Abandoned:
        pass  # the task thread gave up on this item and settled it


def _run_timed(
    fn: Callable[..., Any], mode: int, items: list[Any], timeout: float
) -> tuple[list[Any], dict[int, BaseException], bool]:
    """Run items one per thread, each under its deadline; True last when one would not stop."""
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    for position, item in enumerate(items):
        box = _Box()
        thread = threading.Thread(
            target=_run_boxed, args=(box, fn, mode, item), name="conveyor-item", daemon=True
        )
        thread.start()
        thread.join(timeout)
        with box.lock:
            if box.outcome is None:
                box.fired = True
                assert thread.ident is not None
                _raise_in_thread(thread.ident, Abandoned)
        if not box.fired:
            assert box.outcome is not None
            item_values, item_errors = box.outcome
            values.append(item_values[0])
            if item_errors:
                errors[position] = item_errors[0]
            continue
        values.append(None)
        errors[position] = TaskTimeout(f"task ran past its timeout of {timeout:g} s", timeout)
        thread.join(hard_deadline_grace(timeout))
        if thread.is_alive():  # blocked in C: it ignores the interruption
            return values, errors, True
    return values, errors, False


def _own_address() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except Exception:  # not inside a Dask worker (run directly, as in the doctests)
        return None
