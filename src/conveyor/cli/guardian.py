"""A guardian process that kills the runner's jobs if the runner itself is killed.

Jobs run in sessions of their own (so that a timeout can kill a job's whole process group, and
Ctrl-C in the terminal reaches only the runner, which then stops them). The flip side: if the
runner is killed outright (SIGKILL, the out-of-memory killer), nothing would stop its jobs, and a
``--resume`` would start again jobs that are still running, or that finish unrecorded. So the
runner starts one small guardian process and tells it about each job's process group.

Data flow::

    runner (any executor thread)              guardian (own session: ``python -I -S
                                              conveyor/_envmark.py``, its :func:`guard`)
    ----------------------------              -------------------------------------------
    sets CONVEYOR_RUN_ID in its environment   (inherits it: every job carries it too)
    "+PGID" once a job has started  ------->  remember the group
    "-PGID" before the job is reaped ------>  forget it
    runner ends: "." then pipe closed  ---->  exit, kill nothing
    runner dies: the kernel closes the pipe ->  SIGKILL every remembered group, then every
                                                process whose environment carries our id
                                                (Linux /proc), until a pass finds none; exit

Guarantees: every line is one ``write`` shorter than PIPE_BUF, so lines from different threads
never mix. The guardian sleeps 20 ms after each read, so that lines gather in the pipe: a
``write`` that wakes a reader blocked in ``read`` measured ~130 us of the runner's time under
load (two a job), one into a pipe nobody waits on a few us; the runner's death is then seen at
most 20 ms later, and the lines still in the pipe are read before the EOF. "-PGID" is written
before the job's leader is reaped, so a group id the guardian holds always belongs to a job
of ours (a reaped pid could be reused by a stranger).

Race, and how it is closed: a job's group is known only once ``Popen`` returns, and the thread
that started it may wait for the GIL before it writes "+PGID"; a runner killed in that window
(measured: it happens under load) would leave the job running. The run id in the environment
closes it: a job carries the id from its first instruction, and so do its descendants, even
those that left the job's process group or session. The id is the runner's pid plus random
bits, appended (``:``-separated) to an inherited one, so a runner started by a job of another
runner is found by both. What still escapes: a descendant that clears its environment, and
on systems without ``/proc`` a job started in that window.
On a normal end (also after Ctrl-C, where the runner stops its jobs itself) the guardian kills
nothing: background processes a job left on purpose are not ours to stop.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading

from .. import _envmark

__all__ = ["ended", "start", "started"]

RUN_ID = "CONVEYOR_RUN_ID"

_lock = threading.Lock()
_guardian: subprocess.Popen[bytes] | None = None
_fd = -1


def _ensure() -> int:
    global _guardian, _fd
    with _lock:
        if _guardian is None:
            # Before the guardian and any job: both inherit it.
            token = _envmark.new_token()
            inherited = os.environ.get(RUN_ID)
            os.environ[RUN_ID] = f"{inherited}:{token}" if inherited else token
            # -I -S: nothing of the user's (PYTHONPATH, site, sitecustomize) runs in it, and it
            # starts at once; the script imports only built-in modules.
            _guardian = subprocess.Popen(
                [sys.executable, "-I", "-S", _envmark.__file__, RUN_ID, token],
                stdin=subprocess.PIPE,
                start_new_session=True,
            )
            assert _guardian.stdin is not None
            _fd = _guardian.stdin.fileno()
            atexit.register(_close)
        return _fd


def start() -> None:
    """Start the guardian now (idempotent); call before the first job is started.

    Example::

        guardian.start()
        proc = subprocess.Popen(..., start_new_session=True)
        guardian.started(proc.pid)
    """
    _ensure()


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
        try:
            os.write(guardian.stdin.fileno(), b".\n")  # a normal end: kill nothing
        except OSError:
            pass
        guardian.stdin.close()
        try:
            guardian.wait(5.0)
        except subprocess.TimeoutExpired:
            guardian.kill()
