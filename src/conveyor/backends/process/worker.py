"""The worker process: receives batches of units over its pipe, runs them, sends the outcomes back.

Data flow (see :mod:`.protocol` for the messages)::

    parent's dispatcher thread         this process, main thread              lifeline thread
    --------------------------         -------------------------              ---------------
    RUN batch  ---- pipe ---------->   load fn (cached by key), items         blocks reading a
                                       run fn per item; per item, when        pipe the parent
                                       timed, under a SIGALRM timer           never writes: EOF
               <--- pipe -----------   DONE / ITEM outcomes                   = parent is gone
                                                                              -> os._exit

Guarantees kept here:

* Ctrl-C in the parent's terminal never reaches a worker: the worker ignores SIGINT and leads its
  own process group (so the parent can kill it together with any children a task started).
* A timed item is interrupted by ``TaskTimeout`` raised from a SIGALRM handler, and the worker
  lives on. The handler raises only while an item runs (``_Alarm.armed``); an alarm landing in
  the worker's own code after the item ended is ignored, so it cannot hit the message loop.
* An exception that cannot be pickled, or that would not unpickle in the parent, is replaced by a
  ``RuntimeError`` carrying its type, message and traceback text, never lost.
* If the parent dies (even by SIGKILL) the worker exits: the lifeline thread sees end-of-file.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from ..._errors import TaskTimeout, format_exception_text
from ..._work import call_item, run_items
from .protocol import DONE, FN_CACHE_SIZE, INIT_FAILED, ITEM, RUN, STOP, decode, encode

__all__ = ["worker_main"]


class _Alarm:
    """A per-item SIGALRM timer that raises TaskTimeout inside the item, and only there."""

    available = hasattr(signal, "setitimer")

    def __init__(self) -> None:
        self.armed = False
        self.timeout = 0.0
        if self.available:
            signal.signal(signal.SIGALRM, self._fire)

    def _fire(self, signum: int, frame: Any) -> None:
        if self.armed:
            self.armed = False
            raise TaskTimeout(f"task ran past its timeout of {self.timeout:g} s", self.timeout)

    def run(self, fn: Callable[..., Any], mode: int, item: Any, timeout: float) -> Any:
        if not self.available:
            return call_item(fn, mode, item)
        self.timeout = timeout
        try:
            self.armed = True
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                return call_item(fn, mode, item)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self.armed = False
        except TaskTimeout as exc:
            # Raised by the handler, possibly just after the item returned; either way the item
            # reached its deadline.
            raise exc.with_traceback(exc.__traceback__) from None


def _picklable_error(exc: BaseException) -> tuple[BaseException, str]:
    """The exception and its traceback text, made safe to unpickle in the parent."""
    tb = format_exception_text(exc)
    exc.__traceback__ = None
    try:
        pickle.loads(pickle.dumps(exc, pickle.HIGHEST_PROTOCOL))
        return exc, tb
    except Exception:
        pass
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
        return exc, tb
    except Exception:
        return RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"), tb


def _dump_outcomes(values: list[Any], errors: dict[int, BaseException]) -> bytes:
    wire_errors = {pos: _picklable_error(exc) for pos, exc in errors.items()}
    try:
        return pickle.dumps((values, wire_errors), pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    try:
        return cloudpickle.dumps((values, wire_errors), pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]
    except Exception:
        pass
    # Find the results that cannot be sent and turn each into an error naming its type.
    safe: list[Any] = []
    for pos, value in enumerate(values):
        try:
            cloudpickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            safe.append(value)
        except Exception as exc:
            safe.append(None)
            error = TypeError(
                f"the task's result, of type {type(value).__module__}.{type(value).__qualname__},"
                f" cannot be sent back from the worker process: {type(exc).__name__}: {exc}"
            )
            wire_errors[pos] = (error, "")
    return cloudpickle.dumps((safe, wire_errors), pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]


def _resident_bytes() -> int:
    """This process's resident set size, in bytes (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except Exception:
        return 0


def _watch_lifeline(lifeline: Connection) -> None:
    try:
        lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(0)


def worker_main(
    conn: Connection,
    lifeline: Connection,
    init_blob: bytes | None,
    report_memory: bool,
) -> None:
    """Entry point of a worker process (the ``target`` of its ``multiprocessing.Process``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True).start()
    if init_blob is not None:
        try:
            initializer, initargs = cloudpickle.loads(init_blob)
            initializer(*initargs)
        except BaseException as exc:
            conn.send_bytes(encode((INIT_FAILED, format_exception_text(exc))))
            return
    _serve(conn, report_memory)


def _serve(conn: Connection, report_memory: bool) -> None:
    alarm = _Alarm()
    functions: OrderedDict[int, Callable[..., Any]] = OrderedDict()
    perf_counter = time.perf_counter
    while True:
        try:
            message = decode(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if message[0] == STOP:
            return
        assert message[0] == RUN
        _, stream, units = message
        done = []
        for unit_id, key, fn_blob, mode, timeout, count, items_blob in units:
            started = perf_counter()
            try:
                fn = _function(functions, key, fn_blob)
                items = pickle.loads(items_blob)
            except BaseException as exc:
                # Every item of the unit gets the loading error (a module missing here, say).
                if stream:
                    for pos in range(count):
                        _send(conn, (ITEM, unit_id, pos, _dump_outcomes([None], {0: exc}), 0.0, 0))
                else:
                    blob = _dump_outcomes([None] * count, dict.fromkeys(range(count), exc))
                    done.append((unit_id, blob, perf_counter() - started))
                continue
            if stream:
                for pos, item in enumerate(items):
                    item_started = perf_counter()
                    try:
                        blob = _dump_outcomes([alarm.run(fn, mode, item, timeout)], {})
                    except BaseException as exc:
                        blob = _dump_outcomes([None], {0: exc})
                    rss = _resident_bytes() if report_memory else 0
                    _send(conn, (ITEM, unit_id, pos, blob, perf_counter() - item_started, rss))
                continue
            started = perf_counter()
            values, errors = run_items(fn, mode, items)
            done.append((unit_id, _dump_outcomes(values, errors), perf_counter() - started))
        if done:
            _send(conn, (DONE, done, _resident_bytes() if report_memory else 0))


def _send(conn: Connection, message: tuple[Any, ...]) -> None:
    try:
        conn.send_bytes(encode(message))
    except (BrokenPipeError, OSError):
        os._exit(0)  # the parent is gone


def _function(
    cache: OrderedDict[int, Callable[..., Any]], key: int, blob: bytes | None
) -> Callable[..., Any]:
    """The function for ``key``, kept as an LRU replayed identically by the parent."""
    if blob is None:
        cache.move_to_end(key)
        return cache[key]
    try:
        fn = cloudpickle.loads(blob)
    finally:
        # Even when loading fails the parent counts the key as sent; keep the caches in step.
        cache[key] = _unloadable
        cache.move_to_end(key)
        while len(cache) > FN_CACHE_SIZE:
            cache.popitem(last=False)
    cache[key] = fn
    return fn  # type: ignore[no-any-return]


def _unloadable(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("the function could not be loaded in the worker process (see the first error)")
