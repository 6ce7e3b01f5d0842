"""The worker process: receives batches of units over its pipe, runs them, sends the outcomes back.

Data flow (see :mod:`.protocol` for the messages)::

    parent's dispatcher thread         this process, main thread              lifeline thread
    --------------------------         -------------------------              ---------------
    RUN batch  ---- pipe ---------->   load fn (cached by key), items         blocks reading a
                                       run fn per item; per item, when        pipe the parent
                                       timed, under a SIGALRM timer           never writes: EOF
               <--- pipe -----------   DONE / ITEM outcomes                   = parent is gone
    reads it after a death  <-- mark   which unit / item is running           -> kill own group,
                                                                                 os._exit

Guarantees kept here:

* Ctrl-C in the parent's terminal never reaches a worker or what its tasks start: the worker
  leads its own process group (so the parent can also kill it together with any children a task
  started). Until ``setpgid`` has run, SIGINT is blocked (``spawn`` and ``fork`` workers start
  with it blocked; see :mod:`.spawning` for the fork server's millisecond) and then ignored, so
  a Ctrl-C in that window is dropped, not turned into a KeyboardInterrupt traceback. After it,
  SIGINT gets its default action again: the tasks' own child processes inherit a normal
  disposition, and a SIGINT sent to the worker on purpose ends it silently like any other
  signal (the parent then settles it as a crash).
* A timed item is interrupted by ``TaskTimeout`` raised from a SIGALRM handler, and the worker
  lives on. The handler raises only while an item runs (``_Alarm.armed``); an alarm landing in
  the worker's own code after the item ended is ignored, so it cannot hit the message loop. A
  task that swallows the TaskTimeout and returns late still gets TaskTimeout. The lifeline
  thread blocks SIGALRM (and the other asynchronous signals) so the kernel delivers them to the
  main thread, where they interrupt the task's blocking system call.
* Before each unit (and each item of an exact or streamed unit) the worker writes where it is
  into ``mark``, memory shared with the parent, so a death is charged to the right item.
* An exception that cannot be pickled, or that would not unpickle in the parent, is rebuilt as
  its own type without its ``__init__`` (see conveyor._serialize.portable_exception), or, when
  even that cannot be, replaced by a ``RuntimeError`` carrying its type, message and traceback
  text; never lost.
* If the parent dies (even by SIGKILL) the worker exits: the lifeline thread sees end-of-file and
  kills the worker's process group, so the children its tasks started go with it.
"""

from __future__ import annotations

# signal's own functions, without the Python wrappers (signal.signal, getsignal,
# pthread_sigmask, valid_signals) that turn each number they take or return into an enum
# member: in a process just forked, that machinery's copy-on-write faults cost a worker ~0.3 ms
# of its start (2.3 -> 1.95 ms of CPU before its first task, measured). (No typeshed stub.)
import _signal  # type: ignore[import-not-found,unused-ignore]
import _thread
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection

from ... import _pull, _shm
from ..._envmark import VARIABLE, ItemTokens, kill_marked
from ..._errors import format_exception_text
from ..._serialize import (
    Payload,
    cloudpickle_module,
    dumps_payload,
    portable_exception,
    share_large_bytes,
)
from ..._shm import Segment, WorkerMappings
from ..._work import MODE_MAP, call_item, run_items
from .protocol import (
    FN_CACHE_SIZE,
    IDLE,
    Done,
    InitFailed,
    Item,
    Log,
    Message,
    Probed,
    Ready,
    Run,
    WirePayload,
    WireUnit,
    decode,
    encode,
    from_wire,
    loading,
    running,
    to_wire,
)

TYPE_CHECKING = False  # typing is for type checkers only: a cold map must not pay its import
if TYPE_CHECKING:
    from typing import Any

    from .protocol import Mark
    from .worker_logging import Levels


#: signals the kernel raises in the thread that caused them; never blocked
_SYNCHRONOUS = {
    getattr(signal, name)
    for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGABRT", "SIGSYS")
    if hasattr(signal, name)
}

__all__ = ["worker_main"]

#: The caller had not imported ``logging`` when this worker started (nothing there can have
#: configured it, and a cold map imports neither it nor worker_logging): the worker ships its
#: records from the first unit it runs once its own ``logging`` exists (a task's module imported
#: it), with logging's default levels. A record logged by the very call that first imports
#: ``logging`` in the worker still goes to logging's last-resort handler (the worker's stderr).
_logs_waiting = False


class _Alarm:
    """A per-item SIGALRM timer that raises TaskTimeout inside the item, and only there."""

    available = hasattr(signal, "setitimer")

    def __init__(self) -> None:
        self.armed = False
        self.fired = False
        self.timeout = 0.0
        self.paused = 0  # > 0 while the main thread writes to the pipe (a log record)
        self.deferred = False  # the alarm came while paused: raise when resumed
        # conveyor.TaskTimeout, imported by the first timed item (run), never by the handler
        # (see conveyor._executor_errors): a worker that times nothing never imports it
        self.error: type[BaseException] | None = None
        if self.available:
            _signal.signal(signal.SIGALRM, self._fire)

    def _fire(self, signum: int, frame: Any) -> None:
        if self.armed:
            if self.paused:
                # Raising now could tear a message in half: resume() raises instead.
                self.deferred = True
                return
            self.armed = False
            self.fired = True
            assert self.error is not None  # armed by run(), which imported it
            raise self.error(f"task ran past its timeout of {self.timeout:g} s", self.timeout)

    def pause(self) -> None:
        """Hold back the TaskTimeout (main thread only; handlers run there, so no race)."""
        self.paused += 1

    def resume(self) -> None:
        """End a :meth:`pause`; a TaskTimeout that came meanwhile is raised now."""
        self.paused -= 1
        if not self.paused and self.deferred:
            self.deferred = False
            self._fire(signal.SIGALRM, None)

    def run(self, fn: Callable[..., Any], mode: int, item: Any, timeout: float) -> Any:
        if not self.available:
            return call_item(fn, mode, item)
        if _signal.getsignal(signal.SIGALRM) != self._fire:
            _signal.signal(signal.SIGALRM, self._fire)  # an earlier task installed its own
        if self.error is None:
            from ..._executor_errors import TaskTimeout

            self.error = TaskTimeout
        self.timeout = timeout
        self.fired = False
        # The timer is cancelled before ``armed`` is cleared, so no alarm is pending once the
        # item is over; an alarm whose handler runs late finds ``armed`` False and does nothing.
        # One that fires after the function returned but before the timer is cancelled raises
        # here: the item did reach its deadline.
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            result = call_item(fn, mode, item)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.armed = False
        if self.fired:  # the task caught the TaskTimeout and went on: its result is too late
            assert self.error is not None
            raise self.error(
                f"task ran past its timeout of {timeout:g} s (it caught the TaskTimeout raised "
                f"at the deadline and returned later)",
                timeout,
            )
        return result


def _picklable_error(exc: BaseException) -> tuple[Any, str]:
    """The exception and its traceback text, made safe to unpickle in the parent."""
    tb = format_exception_text(exc)
    exc.__traceback__ = None
    return portable_exception(exc), tb


def _dump_outcomes(values: list[Any], errors: dict[int, BaseException]) -> Payload:
    """Pickle outcomes; large result buffers go to shared memory (see conveyor._shm)."""
    wire_errors = {pos: _picklable_error(exc) for pos, exc in errors.items()}
    try:
        payload = dumps_payload((values, wire_errors))
    except (Exception, SystemExit):  # a result whose pickling calls sys.exit(): its failure
        payload = None
    if payload is not None:
        shared = share_large_bytes(values, MODE_MAP, len(payload.data))
        if shared is None:
            return payload
        payload.release()
        return dumps_payload((shared, wire_errors))
    # Find the results that cannot be sent and turn each into an error naming its type.
    safe: list[Any] = []
    for pos, value in enumerate(values):
        try:
            cloudpickle_module().dumps(value, pickle.HIGHEST_PROTOCOL)
            safe.append(value)
        except (Exception, SystemExit) as exc:
            safe.append(None)
            error = TypeError(
                f"the task's result, of type {type(value).__module__}.{type(value).__qualname__},"
                f" cannot be sent back from the worker process: {type(exc).__name__}: {exc}"
            )
            wire_errors[pos] = (error, "")
    return dumps_payload((safe, wire_errors), cloud=True)


#: resident bytes this worker had when it started: forked from the zygote, it shares every page
#: of the caller's memory as it was then, all counted in its resident set at once (a caller
#: holding 5 GB would make every worker "5 GB big"); max_memory_per_worker counts what it gained
_started_with = 0


def _gained_bytes() -> int:
    """Resident bytes this worker gained since it started (see ``_started_with``)."""
    return max(0, _resident_bytes() - _started_with)


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


def _start_lifeline_thread(lifeline: Connection, own_group: bool, token: str) -> None:
    """Start the thread that watches the lifeline, with the asynchronous signals blocked in it
    (so the kernel delivers them to the main thread): it inherits the mask in force while it
    is made, so no signal can reach it before it could block them itself.

    A bare thread (``_thread``), not a ``threading.Thread``, whose ``start()`` waits until the
    new thread runs: in a freshly forked worker that wait took ~2 ms before READY.
    """
    masking = hasattr(signal, "pthread_sigmask")
    if masking:
        old = _signal.pthread_sigmask(signal.SIG_BLOCK, _signal.valid_signals() - _SYNCHRONOUS)
    try:
        _thread.start_new_thread(_watch_lifeline, (lifeline, own_group, token))
    finally:
        if masking:
            _signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _watch_lifeline(lifeline: Connection, own_group: bool, token: str) -> None:
    try:
        lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    # The parent is gone (or closed the pipe after killing us). Take the task's children along:
    # those that left our process group by the token in their environment (see _envmark), the
    # others with the group. Only when we lead it: otherwise it is the parent's group.
    kill_marked(token)
    if own_group:
        try:
            os.killpg(os.getpid(), signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)


class _Channel:
    """The worker's end of its pipe and of its fd socket, for sending outcomes and log records.

    Concurrency: outcomes are sent by the main thread, log records by any thread (a task's own
    threads log too); ``_lock`` keeps each message (its descriptors, then its bytes) whole.
    A record sent by the main thread holds off the item's alarm meanwhile (see _Alarm.hold).
    """

    def __init__(self, conn: Connection, fd_sock: socket.socket | None, alarm: _Alarm):
        self.conn = conn
        self.fd_sock = fd_sock
        self.alarm = alarm
        self._lock = threading.Lock()
        self._main = threading.main_thread()

    def receive(self) -> tuple[Message, list[Segment]]:
        """The next message and the descriptors sent ahead of it (``nfds`` of them)."""
        message = decode(self.conn.recv_bytes())
        segments = []
        if message.nfds:
            assert self.fd_sock is not None
            segments = [Segment.adopt(fd) for fd in _shm.recv_fds(self.fd_sock, message.nfds)]
        return message, segments

    def send(self, message: Message, payloads: Sequence[Payload] = ()) -> None:
        """Send ``message``; the payloads' segments go ahead on the fd socket, in the order of
        the indexes :func:`.protocol.to_wire` gave them (``message.nfds`` must count them)."""
        fds = [p.segment.fd for p in payloads if p.segment is not None]
        assert message.nfds == len(fds)
        try:
            with self._lock:
                if fds:
                    assert self.fd_sock is not None
                    _shm.send_fds(self.fd_sock, fds)
                self.conn.send_bytes(encode(message))
        except OSError:
            os._exit(0)  # the parent is gone
        finally:
            for payload in payloads:
                payload.release()  # the parent holds its own descriptors now

    def send_raw(self, message: bytes) -> None:
        """Send an encoded message that carries no descriptors."""
        with self._lock:
            self.conn.send_bytes(message)

    def send_log(self, record: dict[str, Any]) -> None:
        """Send a log record (see :mod:`.worker_logging`); dropped if the parent is gone."""
        message = encode(Log(0, record))
        main = threading.current_thread() is self._main
        if main:
            self.alarm.pause()
        try:
            self.send_raw(message)
        except OSError:
            pass  # the parent is gone; the lifeline ends this process
        finally:
            if main:
                self.alarm.resume()


def worker_main(
    conn: Connection,
    lifeline: Connection,
    fd_sock: socket.socket | None,
    init_blob: bytes | None,
    report_memory: bool,
    mark: Mark,
    token: str,
    close_fds: tuple[int, ...] = (),
    pull_probe: tuple[int, int, bytes] | None = None,
    log_levels: Levels | None = None,
) -> None:
    """Entry point of a worker process (the ``target`` of its ``multiprocessing.Process``).

    ``close_fds``: the parent's ends of the pool's pipes, inherited through ``fork`` (the write
    end of our own lifeline among them: kept open here, it would keep us alive after the parent).
    ``token`` goes into the environment, for every program a task starts (see _envmark).
    ``pull_probe``: where to try reading the parent's memory; PROBED says whether it worked
    (then the parent lets us copy a map's large arguments ourselves, see conveyor._pull).
    ``log_levels``: the caller's logging levels; records our loggers let through are sent to
    the parent (see :mod:`.worker_logging`), from the initializer on. None: the caller had not
    imported logging (see ``_logs_waiting``).
    """
    global _started_with, _logs_waiting
    os.environ[VARIABLE] = token
    if report_memory:
        _started_with = _resident_bytes()
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    # SIGINT may arrive blocked (see spawning.py). Ignoring it discards one that came meanwhile;
    # once we lead our own process group the terminal's Ctrl-C cannot reach us, so the default
    # action is restored for the tasks' children and then the signal is unblocked.
    _signal.signal(signal.SIGINT, _signal.SIG_IGN)
    own_group = False
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        own_group = os.getpgrp() == os.getpid()
    if own_group:
        _signal.signal(signal.SIGINT, _signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        _signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _start_lifeline_thread(lifeline, own_group, token)
    alarm = _Alarm()
    channel = _Channel(conn, fd_sock, alarm)
    if log_levels is not None:
        _ship_logs(channel, log_levels)
    else:
        _logs_waiting = True
    if init_blob is not None:
        try:
            initializer, initargs = pickle.loads(init_blob)  # cloudpickle's, read by pickle
            initializer(*initargs)
        except BaseException as exc:
            channel.send_raw(encode(InitFailed(0, format_exception_text(exc))))
            return
    channel.send(Ready(0))
    _serve(channel, alarm, report_memory, mark, ItemTokens(token), pull_probe)


def _ship_logs(channel: _Channel, levels: Levels | None) -> None:
    """Send this worker's log records to the parent from now on (``levels`` None: logging's
    defaults, which a caller that had not imported logging has)."""
    global _logs_waiting
    _logs_waiting = False
    from . import worker_logging

    worker_logging.install(levels or worker_logging.DEFAULT_LEVELS, channel.send_log)


def _serve(
    channel: _Channel,
    alarm: _Alarm,
    report_memory: bool,
    mark: Mark,
    tokens: ItemTokens,
    pull_probe: tuple[int, int, bytes] | None,
) -> None:
    functions: OrderedDict[int, Callable[..., Any]] = OrderedDict()
    mappings = WorkerMappings()
    while True:
        try:
            message, segments = channel.receive()
        except (EOFError, OSError):
            return
        if not isinstance(message, Run):
            return  # Stop
        if segments and pull_probe is not None:
            # The first batch with shared memory: may we read the parent's? (see Probed)
            channel.send(Probed(0, _pull.probe(*pull_probe)))
            pull_probe = None
        stream, units, seq = message.stream, message.units, message.seq
        mappings.forget(message.forget)
        done: list[tuple[int, Payload, float, int]] = []
        for index, unit in enumerate(units):
            part = _run_unit(
                channel,
                alarm,
                functions,
                mappings,
                segments,
                stream,
                unit,
                report_memory,
                mark,
                index,
                seq,
                tokens,
            )
            if part is not None:
                done.append(part)
        for segment in segments:
            segment.close()  # mapped where used; the descriptors are not needed any more
        del segments, message, units  # no local may keep a view of shared memory alive
        if done:
            fds: list[int] = []
            unit_ids, payloads, elapsed, failed = map(list, zip(*done))
            wires = [to_wire(payload, fds) for payload in payloads]
            rss = _gained_bytes() if report_memory else 0
            released = mappings.released()
            message = Done(len(fds), unit_ids, wires, elapsed, failed, rss, released)
            channel.send(message, payloads)


def _run_unit(
    channel: _Channel,
    alarm: _Alarm,
    functions: OrderedDict[int, Callable[..., Any]],
    mappings: WorkerMappings,
    segments: list[Segment],
    stream: bool,
    unit: WireUnit,
    report_memory: bool,
    mark: Mark,
    index: int,
    seq: int,
    tokens: ItemTokens,
) -> tuple[int, Payload, float, int] | None:
    """Run one unit: streamed item by item (sent here), or whole (returned for the DONE).

    A function of its own so that the items, and any view of shared memory they hold, are
    released when it returns, before the worker waits for its next batch.
    """
    unit_id, fn_key, fn_wire, mode, timeout, count, items_wire, exact = unit
    perf_counter = time.perf_counter
    mark[1] = IDLE
    mark[0] = loading(index, seq)
    try:
        fn = _function(functions, fn_key, fn_wire, segments)
        items = from_wire(items_wire, segments, mappings)
        if _logs_waiting and "logging" in sys.modules:  # (see _logs_waiting)
            _ship_logs(channel, None)
    except BaseException as exc:
        # Every item of the unit gets the loading error (a module missing here, say).
        if not stream:
            payload = _dump_outcomes([None] * count, dict.fromkeys(range(count), exc))
            return unit_id, payload, 0.0, count
        for pos in range(count):
            payload = _dump_outcomes([None], {0: exc})
            fds: list[int] = []
            wire = to_wire(payload, fds)
            channel.send(Item(len(fds), unit_id, pos, wire, 0.0, 0, [], 1), [payload])
        return None
    mark[0] = running(index, seq)
    if not stream:
        started = perf_counter()
        values, errors = _run_exact(fn, mode, items, mark) if exact else run_items(fn, mode, items)
        elapsed = perf_counter() - started
        return unit_id, _dump_outcomes(values, errors), elapsed, len(errors)
    last = len(items) - 1
    assert timeout is not None  # streamed: timed units only
    for pos in range(len(items)):
        mark[1] = pos
        item_started = perf_counter()
        item_token = tokens.begin()
        failed = 0
        try:
            payload = _dump_outcomes([alarm.run(fn, mode, items[pos], timeout)], {})
        except BaseException as exc:
            failed = 1
            payload = _dump_outcomes([None], {0: exc})
            if alarm.error is not None and isinstance(exc, alarm.error):  # a TaskTimeout
                # The item is over, its programs must be too (those that left this worker's
                # process group as well): see conveyor._envmark.
                kill_marked(item_token)
        finally:
            tokens.end()
        elapsed = perf_counter() - item_started
        rss = _gained_bytes() if report_memory else 0
        released: list[int] = []
        if pos == last:
            items = None  # let go of the views first, so their release rides on this message
            released = mappings.released()
        fds = []
        wire = to_wire(payload, fds)
        channel.send(Item(len(fds), unit_id, pos, wire, elapsed, rss, released, failed), [payload])
    return None


def _run_exact(fn: Callable[..., Any], mode: int, items: list[Any], mark: Mark) -> Any:
    """:func:`run_items`, writing each item's position into ``mark[1]`` before running it."""
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    for pos, item in enumerate(items):
        mark[1] = pos
        value, error = run_items(fn, mode, [item])
        values.append(value[0])
        if error:
            errors[pos] = error[0]
    return values, errors


def _function(
    cache: OrderedDict[int, Callable[..., Any]],
    key: int,
    wire: WirePayload | None,
    segments: list[Segment],
) -> Callable[..., Any]:
    """The function for ``key``, kept as an LRU replayed identically by the parent."""
    if wire is None:
        cache.move_to_end(key)
        return cache[key]
    try:
        fn = from_wire(wire, segments)
    finally:
        # Even when loading fails the parent counts the key as sent; keep the caches in step.
        cache[key] = _unloadable
        cache.move_to_end(key)
        while len(cache) > FN_CACHE_SIZE:
            cache.popitem(last=False)
    cache[key] = fn
    return fn


def _unloadable(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(
        "the function could not be loaded in the worker process (see the first error)"
    )
