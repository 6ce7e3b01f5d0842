"""Run one shell command in its own process group, capture its output, enforce limits.

Data flow for one job (this runs on an executor thread; one call per attempt)::

    executor thread                                  the job's process group
    ---------------                                  -----------------------
    Popen(/bin/sh -c CMD, new session) ------------> sh (group leader) + its children
    poll() on:  stdout pipe  <---------------------- writes
                stderr pipe  <---------------------- writes
                pidfd        <---------------------- leader exits
                stop pipe    <-- StopSignal.set() from any thread (halt now, Ctrl-C)
                + timeout    --> killpg(TERM), after GRACE killpg(KILL)
    output chunks --> sink(stream, bytes)   (or kept and returned whole)

Guarantees, and where they are kept:

* The job is done when its output pipes are closed *and* its leader has exited (like
  ``communicate()``). Reaping happens only at the end (``proc.wait()`` in ``finally``),
  so the leader's pid -- which is the group id -- cannot be reused while we may still
  signal the group: ``killpg`` never hits a stranger.
* A timeout or a stop request kills the whole process group: SIGTERM, then SIGKILL
  after ``GRACE`` seconds. Children that escaped the group (``setsid``) cannot be killed;
  their pipes are abandoned ``GRACE`` seconds after the SIGKILL so the runner still ends.
* The stop pipe is never drained once written, so every job blocked in ``poll`` sees
  it, and a job started after the stop sees it at its first ``poll``.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["GRACE", "Completed", "StopSignal", "run_command"]

GRACE = 1.0  # seconds between SIGTERM and SIGKILL, and before abandoning pipes
SHELL = "/bin/sh"
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
        with self._lock:
            if not self._event.is_set():
                self._event.set()
                os.write(self._write, b"x")

    def is_set(self) -> bool:
        """Whether :meth:`set` was called."""
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :meth:`set`; return whether it was set."""
        return self._event.wait(timeout)

    def close(self) -> None:
        """Close the pipe (only once no job can be running)."""
        os.close(self._read)
        os.close(self._write)


@dataclass
class Completed:
    """The outcome of one attempt."""

    returncode: int  # negative: killed by that signal
    timed_out: bool
    stopped: bool  # killed because a stop was requested
    stdout: bytes
    stderr: bytes
    start: float  # Unix time
    duration: float


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


def run_command(command: str, *, timeout: float | None, stop: StopSignal,
                sink: Sink | None = None) -> Completed:
    """Run ``command`` under ``/bin/sh -c`` in a new session and wait for it.

    Output goes to ``sink(1 or 2, data)`` as it arrives, or, with no sink, is returned
    in :class:`Completed`. stdin is ``/dev/null``.
    """
    start = time.time()
    t0 = time.monotonic()
    proc = subprocess.Popen([SHELL, "-c", command], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    streams = {proc.stdout.fileno(): 1, proc.stderr.fileno(): 2}
    chunks: dict[int, list[bytes]] = {1: [], 2: []}
    pidfd = _pidfd(proc.pid)
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    poller.register(stop.fileno(), select.POLLIN)
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    exited = False
    timed_out = stopped = False
    deadline = t0 + timeout if timeout is not None else None
    kill_at: float | None = None
    abandon_at: float | None = None
    try:
        while streams or not exited:
            now = time.monotonic()
            if kill_at is None and abandon_at is None:  # no signal sent yet
                if stop.is_set():
                    stopped = True
                elif deadline is not None and now >= deadline:
                    timed_out = True
                if stopped or timed_out:
                    _killpg(proc.pid, signal.SIGTERM)
                    kill_at = now + GRACE
            elif kill_at is not None and now >= kill_at:
                _killpg(proc.pid, signal.SIGKILL)
                kill_at, abandon_at = None, now + GRACE
            elif abandon_at is not None and now >= abandon_at:
                break  # only processes that left the group hold the pipes
            wake = [t for t in (kill_at, abandon_at) if t is not None]
            if deadline is not None and not (timed_out or stopped):
                wake.append(deadline)
            wait_ms = None if not wake else max(0, int((min(wake) - now) * 1000) + 1)
            if not streams and not exited and pidfd < 0:
                exited = _poll_leader(proc, wait_ms)
                continue
            for fd, _event in poller.poll(wait_ms):
                if fd in streams:
                    data = os.read(fd, _READ)
                    if data:
                        if sink is None:
                            chunks[streams[fd]].append(data)
                        else:
                            sink(streams[fd], data)
                        continue
                    poller.unregister(fd)
                    del streams[fd]
                elif fd == pidfd:
                    exited = True
                    poller.unregister(fd)
                else:  # the stop pipe: handled at the top of the loop
                    poller.unregister(fd)
    finally:
        proc.stdout.close()
        proc.stderr.close()
        if pidfd >= 0:
            os.close(pidfd)
        if not exited and proc.poll() is None:  # an exception left it running
            _killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
    return Completed(returncode, timed_out, stopped, b"".join(chunks[1]),
                     b"".join(chunks[2]), start, time.monotonic() - t0)


def _poll_leader(proc: subprocess.Popen[bytes], wait_ms: int | None) -> bool:
    """Without pidfd: wait a little for the leader; True once it has exited."""
    # Returns at least every 50 ms so the caller re-checks stop and deadlines.
    limit = 0.05 if wait_ms is None else min(0.05, wait_ms / 1000)
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        return False
    return True
