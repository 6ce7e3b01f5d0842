"""A guardian process that kills the runner's jobs if the runner itself is killed.

Jobs run in sessions of their own (so that a timeout can kill a job's whole process group, and
Ctrl-C in the terminal reaches only the runner, which then stops them). The flip side: if the
runner is killed outright (SIGKILL, the out-of-memory killer), nothing would stop its jobs, and a
``--resume`` would start again jobs that are still running, or that finish unrecorded. So the
runner starts one small guardian process and tells it about each job's process group.

Data flow::

    runner (any executor thread)              guardian (own session, ``python -I -S -c``)
    ----------------------------              -------------------------------------------
    "+PGID" once a job has started  ------->  remember the group
    "-PGID" before the job is reaped ------>  forget it
    runner ends: pipe closed  -------------->  nothing remembered: exit
    runner dies: the kernel closes the pipe ->  SIGKILL every remembered group, exit

Guarantees: every line is one ``write`` shorter than PIPE_BUF, so lines from different threads
never mix. "-PGID" is written before the job's leader is reaped, so a group id the guardian
holds always belongs to a job of ours (a reaped pid could be reused by a stranger).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading

__all__ = ["ended", "started"]

_CODE = r"""
import os, signal
groups, rest = set(), b""
while True:
    data = os.read(0, 65536)
    if not data:
        break
    *lines, rest = (rest + data).split(b"\n")
    for line in lines:
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""

_lock = threading.Lock()
_guardian: subprocess.Popen[bytes] | None = None
_fd = -1


def _ensure() -> int:
    global _guardian, _fd
    with _lock:
        if _guardian is None:
            _guardian = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _CODE],
                stdin=subprocess.PIPE,
                start_new_session=True,
            )
            assert _guardian.stdin is not None
            _fd = _guardian.stdin.fileno()
            atexit.register(_close)
        return _fd


def _tell(line: bytes) -> None:
    try:
        os.write(_ensure(), line)
    except OSError:
        pass  # the guardian is gone; the jobs are still killed on every normal path


def started(pgid: int) -> None:
    """A job's process group now exists."""
    _tell(b"+%d\n" % pgid)


def ended(pgid: int) -> None:
    """A job's leader is about to be reaped."""
    _tell(b"-%d\n" % pgid)


def _close() -> None:
    """At the runner's normal end: let the guardian go (it has nothing left to kill)."""
    global _guardian
    with _lock:
        guardian, _guardian = _guardian, None
    if guardian is not None:
        assert guardian.stdin is not None
        guardian.stdin.close()
        try:
            guardian.wait(5.0)
        except subprocess.TimeoutExpired:
            guardian.kill()
