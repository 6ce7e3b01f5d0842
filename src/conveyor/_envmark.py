"""Finding a worker's descendants that left its process group: by a mark in their environment.

Killing a worker's process group stops the children its tasks started, but not a descendant
that moved to a session or group of its own (``setsid``, ``start_new_session=True``, a
daemonizing server). Each worker therefore carries a token in its environment
(:data:`VARIABLE`), which every process it starts inherits unless it is handed an environment
of its own; when a worker is killed, or dies under a task, the processes carrying its token
are killed too. While an item with a timeout runs, the token is ``<worker token>:<n>``, one per
item, so that the programs of an item that timed out (the worker lives on) can be killed
without touching what earlier items started and left running on purpose.

Data flow::

    parent (dispatcher thread)                 worker process                 task's children
    --------------------------                 --------------                 ---------------
    makes a token per worker  -- start args -> puts it in os.environ  ------>  inherit it, also
                                                                               after setsid
    worker killed or crashed:  killpg(worker's group), then kill_marked(token): every process
    of ours whose /proc/<pid>/environ holds the token (or an item token under it), pass after
    pass until none is new
                                               parent gone (lifeline): the
                                               worker does the same, then exits;
                                               an item timed out: kill_marked(its item token)

Races, and what settles them: a marked process may fork while a pass runs, so passes repeat
until one finds nobody new; a pid seen once is not counted again (a process already sent
SIGKILL can still be listed until it is reaped). Only processes whose environment we may read
(our own user's) are looked at. The kernel shows the environment a process was *exec*-ed with,
so what is found is every program started from the worker or below (``subprocess``,
``os.system``, a shell and what it runs) with the variable in its environment; not a child
started with an environment that lacks it (an explicit ``env=``), nor a forked copy of a Python
process that never exec-ed (it shows its parent's exec-time environment; it is in the worker's
process group unless it left it). Without ``/proc`` (not Linux) this does nothing; the process
group is still killed.
"""

from __future__ import annotations

import os
import secrets
import signal

__all__ = ["VARIABLE", "ItemTokens", "kill_marked", "new_token"]

#: the environment variable that carries a worker's token
VARIABLE = "CONVEYOR_WORKER_TOKEN"
_MAX_PASSES = 50


def new_token() -> str:
    """A token no other worker (of this or another pool or program) carries.

    Example::

        >>> len(new_token().split(".")) == 2
        True
    """
    return f"{os.getpid()}.{secrets.token_hex(8)}"


class ItemTokens:
    """Gives each timed item of a worker a token of its own, under the worker's.

    Example::

        >>> tokens = ItemTokens("123.ab")
        >>> tokens.begin(), tokens.begin()
        ('123.ab:1', '123.ab:2')
        >>> tokens.end()
    """

    def __init__(self, token: str):
        self.token = token
        self._count = 0

    def begin(self) -> str:
        """A new item token, put into the environment now (for the item's programs)."""
        self._count += 1
        item = f"{self.token}:{self._count}"
        os.environ[VARIABLE] = item
        return item

    def end(self) -> None:
        """Back to the worker's token."""
        os.environ[VARIABLE] = self.token


def kill_marked(token: str) -> int:
    """SIGKILL every process (other than this one) whose environment carries ``token``, or an
    item token under it (``token:<n>``).

    Returns how many were sent SIGKILL.

    Example::

        >>> kill_marked(new_token())  # nobody carries a fresh token
        0
    """
    if not os.path.isdir("/proc/self"):
        return 0
    prefix = f"\0{VARIABLE}={token}".encode()
    me = os.getpid()
    killed: set[int] = set()
    for _ in range(_MAX_PASSES):
        new = False
        try:
            entries = os.listdir("/proc")
        except OSError:
            break
        for name in entries:
            if not name.isdigit():
                continue
            pid = int(name)
            if pid == me or pid in killed:
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    environ = f.read()
            except OSError:  # gone, or not ours to read
                continue
            if _carries(b"\0" + environ + b"\0", prefix):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    continue
                killed.add(pid)
                new = True
        if not new:
            break
    return len(killed)


def _carries(environ: bytes, prefix: bytes) -> bool:
    """Whether NUL-framed ``environ`` has ``VARIABLE=token`` or ``VARIABLE=token:...``."""
    start = environ.find(prefix)
    while start >= 0:
        after = environ[start + len(prefix) : start + len(prefix) + 1]
        if after in (b"\0", b":"):
            return True
        start = environ.find(prefix, start + 1)
    return False
