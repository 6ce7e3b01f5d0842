"""Run one shell command in its own process group, capture its output, enforce limits.

Data flow for one job (this runs on an executor thread; one call per attempt)::

    executor thread                                  the job's process group
    ---------------                                  -----------------------
    Popen(sh -c SCRIPT sh ... or PROGRAM ARGS..., new session) --> leader + its children
    poll() on:  stdout pipe  <---------------------- writes
                stderr pipe  <---------------------- writes
                pidfd        <---------------------- leader exits
                stop pipe    <-- StopSignal.set() from any thread (halt now, Ctrl-C)
                stdin pipe   ----------------------> reads its block (--pipe, --pipe-part:
                                                     writer.write when writable, see pipe)
                kill pipe    <-- this job only (--memfree)
                + timeout    --> killpg(each signal of --termseq, waiting after each)
    output chunks --> sink(stream, bytes)   (or kept in a Captured, returned whole)

Guarantees, and where they are kept:

* The job is done when its output pipes are closed *and* its leader has exited (like
  ``communicate()``). Reaping happens only at the end (``proc.wait()`` in ``finally``),
  so the leader's pid -- which is the group id -- cannot be reused while we may still
  signal the group: ``killpg`` never hits a stranger.
* A timeout or a stop request stops the whole process group by the signal sequence
  (``termseq``: a signal, then milliseconds to wait, ...; SIGKILL at the end).
  Children that escaped the group (``setsid``) cannot be killed; their pipes are
  abandoned ``GRACE`` seconds after the SIGKILL so the runner still ends.
* The stop pipe is never drained once written, so every job blocked in ``poll`` sees
  it, and a job started after the stop sees it at its first ``poll``.
"""

from __future__ import annotations

import fcntl
import functools
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from . import guardian

if TYPE_CHECKING:
    from .pipe import StdinFeed

__all__ = ["GRACE", "Captured", "Completed", "StopSignal", "run_command"]

GRACE = 1.0  # seconds between SIGTERM and SIGKILL, and before abandoning pipes
SPILL = 8 << 20  # bytes of one output stream kept in memory before spilling to a file
_READ = 65536

Sink = Callable[[int, bytes], None]


class StopSignal:
    """A one-way flag that threads can also ``poll()`` on: it sets a readable pipe."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._read, self._write = os.pipe()
        self._lock = threading.Lock()

    def fileno(self) -> int:
        """The read end; readable once :meth:`set` was called."""
        return self._read

    def set(self) -> None:
        """Request every running job to be killed (idempotent, any thread)."""
        with self._lock:  # one byte, written once, never read: stays readable for all
            if not self._event.is_set():
                self._event.set()
                os.write(self._write, b"x")

    def is_set(self) -> bool:
        """Whether :meth:`set` was called."""
        return self._event.is_set()

    def close(self) -> None:
        """Close the pipe (only once no job can be running)."""
        os.close(self._read)
        os.close(self._write)


class Captured:
    """One output stream of a job, kept whole: in memory up to ``SPILL`` bytes, beyond
    that in an anonymous temporary file (already unlinked: nothing to clean up, even
    after a SIGKILL), so a job printing gigabytes does not exhaust memory."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._file: IO[bytes] | None = None

    def write(self, data: bytes) -> None:
        """Append output as it was read."""
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > SPILL:
            import tempfile  # lazy: start-up time counts, and few jobs print this much

            self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by pieces())
            self._file.writelines(self._chunks)
            self._chunks = []

    @property
    def size(self) -> int:
        """Bytes captured so far."""
        return self._size if self._file is None else self._file.tell()

    def pieces(self) -> Iterator[bytes]:
        """The output, in pieces of bounded size; can be read once."""
        if self._file is None:
            if self._chunks:
                yield b"".join(self._chunks)
            return
        with self._file:
            self._file.seek(0)
            while piece := self._file.read(1 << 20):
                yield piece

    def getvalue(self) -> bytes:
        """The whole output as bytes (for tests and small outputs)."""
        return b"".join(self.pieces())


@dataclass
class Completed:
    """The outcome of one attempt."""

    returncode: int  # negative: killed by that signal
    timed_out: bool
    stopped: bool  # killed because a stop was requested
    stdout: Captured
    stderr: Captured
    start: float  # Unix time
    duration: float
    received: int = 0  # bytes the job wrote to its stdout
    host: str = ":"  # where it ran: ':' is this machine (GNU's joblog), else a worker address


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the whole group is gone already


def _pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, OSError):
        return -1  # not Linux >= 5.3: fall back to polling the leader


@functools.cache
def _devnull() -> int:
    """/dev/null, opened once for every job's stdin (an open per job measured ~70 us)."""
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def _spawn(
    argv: list[str],
    env: dict[str, str] | None = None,
    executable: str | None = None,
    stdin: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (``/bin/sh -c SCRIPT sh VALUES...``) in a new session, stdin from
    /dev/null (or a pipe), stdout and stderr to pipes; nothing else is inherited
    (``close_fds``).

    ``subprocess.Popen`` (vfork + exec), not ``os.posix_spawn``: posix_spawn measured
    ~45 us less parent CPU a job but a slower start (glibc resets every signal handler
    in the child, and the environment is converted on each call), and start latency is
    what a slot waits for.
    """
    return subprocess.Popen(
        argv,
        executable=executable,
        env=env,
        stdin=_devnull() if stdin is None else stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _open_stdin(proc: subprocess.Popen[bytes], feed: StdinFeed) -> int:
    """Make the job's stdin pipe non-blocking and, where the system allows, as large as
    the block (up to 1 MiB, Linux' default limit), so one write usually feeds it all."""
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    os.set_blocking(fd, False)
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is not None and feed.size > 65536:
        try:
            fcntl.fcntl(fd, setsize, min(feed.size, 1 << 20))
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size or the user's pipe quota: keep 64 KiB
    return fd


TermSeq = Sequence[tuple[int, int]]  # (signal, milliseconds to wait after it)
DEFAULT_TERMSEQ: TermSeq = ((signal.SIGTERM, int(GRACE * 1000)), (signal.SIGKILL, 0))
RECHECK = 0.1  # seconds between re-evaluations of a timeout given as a function


def run_command(
    argv: list[str],
    *,
    timeout: float | Callable[[], float | None] | None,
    stop: StopSignal,
    sink: Sink | None = None,
    env: dict[str, str] | None = None,
    executable: str | None = None,
    termseq: TermSeq = DEFAULT_TERMSEQ,
    kill: StopSignal | None = None,
    stdin: StdinFeed | None = None,
) -> Completed:
    """Run ``argv`` (a shell with its script and values, or a program) in a new session
    and wait for it.

    Output goes to ``sink(1 or 2, data)`` as it arrives, or, with no sink, is returned
    in :class:`Completed`. stdin is ``/dev/null``, or a pipe fed from ``stdin`` (a
    ``--pipe`` block), closed once it is all written or the job closed its end.
    ``timeout`` may be a function, re-evaluated every ``RECHECK`` seconds
    (``--timeout N%``: the median changes).
    ``kill`` is this job's own stop request (``--memfree``), reported as ``stopped``.
    A stop or a timeout sends ``termseq``'s signals to the group, waiting after each.
    """
    start = time.time()
    t0 = time.monotonic()
    proc = _spawn(argv, env, executable, None if stdin is None else subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    pid = proc.pid
    guardian.started(pid)
    streams = {proc.stdout.fileno(): 1, proc.stderr.fileno(): 2}
    captured = {1: Captured(), 2: Captured()}
    pidfd = _pidfd(pid)
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    poller.register(stop.fileno(), select.POLLIN)
    if kill is not None:
        poller.register(kill.fileno(), select.POLLIN)
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    feed_fd = -1
    if stdin is not None:
        feed_fd = _open_stdin(proc, stdin)
        writer = stdin.writer()
        poller.register(feed_fd, select.POLLOUT)
    exited = False
    received = 0
    returncode: int | None = None
    timed_out = stopped = False
    dynamic = callable(timeout)
    deadline: float | None = None
    kill_at: float | None = None  # when the next signal of termseq is due
    abandon_at: float | None = None
    steps = list(termseq)
    try:
        while streams or not exited:
            now = time.monotonic()
            if callable(timeout):
                limit = timeout()
                deadline = t0 + limit if limit is not None else None
            elif timeout is not None:
                deadline = t0 + timeout
            if kill_at is None and abandon_at is None:  # no signal sent yet
                if stop.is_set() or (kill is not None and kill.is_set()):
                    stopped = True
                elif deadline is not None and now >= deadline:
                    timed_out = True
                if stopped or timed_out:
                    kill_at = now
            if kill_at is not None and now >= kill_at:
                sig, pause_ms = steps.pop(0) if steps else (signal.SIGKILL, 0)
                _killpg(pid, sig)
                if sig == signal.SIGKILL or not steps:
                    if sig != signal.SIGKILL:
                        _killpg(pid, signal.SIGKILL)
                    kill_at, abandon_at = None, now + max(GRACE, pause_ms / 1000)
                else:
                    kill_at = now + pause_ms / 1000
            elif abandon_at is not None and now >= abandon_at:
                break  # only processes that left the group hold the pipes
            wake = [t for t in (kill_at, abandon_at) if t is not None]
            if deadline is not None and not (timed_out or stopped):
                wake.append(deadline)
            if dynamic and not (timed_out or stopped):
                wake.append(now + RECHECK)
            wait_ms = None if not wake else max(0, int((min(wake) - now) * 1000) + 1)
            if feed_fd >= 0 and (stopped or timed_out or abandon_at is not None):
                feed_fd = _close_stdin(proc, poller)  # killed: nothing more to feed
            if not streams and pidfd < 0 and feed_fd < 0:  # no pidfd: poll the leader
                returncode = proc.poll()
                exited = returncode is not None
                if not exited:
                    time.sleep(0.05 if wait_ms is None else min(0.05, wait_ms / 1000))
                continue
            for fd, _event in poller.poll(wait_ms):
                if fd in streams:
                    data = os.read(fd, _READ)
                    if data:
                        if streams[fd] == 1:
                            received += len(data)
                        if sink is None:
                            captured[streams[fd]].write(data)
                        else:
                            sink(streams[fd], data)
                        continue
                    poller.unregister(fd)
                    del streams[fd]
                elif fd == pidfd:
                    exited = True
                    poller.unregister(fd)
                elif fd == feed_fd:
                    try:
                        done = writer.write(fd)
                    except BlockingIOError:
                        continue  # the pipe is full: wait until the job reads
                    except BrokenPipeError:
                        done = True  # the job closed its stdin (e.g. head -1): fine
                    if done:
                        feed_fd = _close_stdin(proc, poller)
                else:  # a stop pipe: handled at the top of the loop
                    poller.unregister(fd)
    finally:
        # Guarantee: the leader is reaped only here (without pidfd: in the loop, which
        # then ends at once), after the last killpg, so its pid -- the group id -- can
        # not have been reused by then.
        proc.stdout.close()
        proc.stderr.close()
        if feed_fd >= 0:
            _close_stdin(proc, poller)
        if pidfd >= 0:
            os.close(pidfd)
        guardian.ended(pid)
        if returncode is None:
            if not exited:  # an exception (or abandoned pipes) left it running
                _killpg(pid, signal.SIGKILL)
            returncode = proc.wait()
    return Completed(
        returncode,
        timed_out,
        stopped,
        captured[1],
        captured[2],
        start,
        time.monotonic() - t0,
        received,
    )


def _close_stdin(proc: subprocess.Popen[bytes], poller: select.poll) -> int:
    """Close the job's stdin pipe (it sees end of file) and stop polling it; returns -1."""
    assert proc.stdin is not None
    poller.unregister(proc.stdin.fileno())
    try:
        proc.stdin.close()
    except OSError:  # BrokenPipeError from the (empty) buffer's flush: nothing was lost
        pass
    return -1
