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

The same killer serves ``conveyor run``'s guardian (cli/guardian.py), which runs this file as a
script (``python -I -S _envmark.py CONVEYOR_RUN_ID <token>``, see :func:`guard`): there the
variable is the runner's ``CONVEYOR_RUN_ID``, whose value is a ``:``-separated list of run ids
(a runner started by a job of another runner appends its own). One rule serves both: a process
carries ``token`` when ``token`` is a ``:``-separated part of the variable's value
(``<worker token>:<n>`` carries the worker token and the item token; ``outer:inner`` carries
both run ids).

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
import signal
import sys
import time

# (the guardian runs this file with ``python -I -S``: it must import only what is built in)
__all__ = ["VARIABLE", "ItemTokens", "guard", "kill_marked", "new_token"]

#: the environment variable that carries a worker's token
VARIABLE = "CONVEYOR_WORKER_TOKEN"
_MAX_PASSES = 50


def new_token() -> str:
    """A token no other worker (of this or another pool or program) carries.

    Example::

        >>> len(new_token().split(".")) == 2
        True
    """
    # os.urandom, not secrets: the same bytes, without its hmac/hashlib imports (~4 ms)
    return f"{os.getpid()}.{os.urandom(8).hex()}"


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


def kill_marked(token: str, variable: str = VARIABLE) -> int:
    """SIGKILL every process (other than this one) whose environment carries ``token`` in
    ``variable`` (see the module docstring: a worker token also finds its item tokens).

    Passes repeat until one finds nobody new, at most 50; a pid sent SIGKILL is not looked at
    again. Returns how many were sent SIGKILL.

    Example::

        >>> kill_marked(new_token())  # nobody carries a fresh token
        0
    """
    if not os.path.isdir("/proc/self"):
        return 0
    variable_prefix = f"{variable}=".encode()
    needle = f":{token}:".encode()
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
            if _carries(environ, variable_prefix, needle):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    continue
                killed.add(pid)
                new = True
        if not new:
            break
    return len(killed)


def _carries(environ: bytes, variable_prefix: bytes, needle: bytes) -> bool:
    """Whether NUL-separated ``environ`` sets the variable (``variable_prefix``: ``NAME=``) to a
    value with ``needle`` (``:token:``) among ``:``-separated parts.

    Example::

        >>> _carries(b"A=1\\0CONVEYOR_WORKER_TOKEN=1.ab:3\\0", b"CONVEYOR_WORKER_TOKEN=", b":1.ab:")
        True
        >>> _carries(b"CONVEYOR_WORKER_TOKEN=1.ab:30", b"CONVEYOR_WORKER_TOKEN=", b":1.ab:3:")
        False
    """
    if needle[1:-1] not in environ:  # the common case: a stranger, looked at cheaply
        return False
    for entry in environ.split(b"\0"):
        if entry.startswith(variable_prefix):
            value = entry[len(variable_prefix) :]
            return needle in b":" + value + b":"
    return False


def guard(variable: str, token: str, fd: int = 0) -> None:
    """The body of ``conveyor run``'s guardian process (see cli/guardian.py for why).

    Reads lines from ``fd`` until it closes: ``+PGID`` a job's process group exists, ``-PGID``
    it is about to be reaped, ``.`` the runner ends normally. If the pipe closes without ``.``
    (the runner was killed), SIGKILL every remembered group, then every process carrying
    ``token`` in ``variable`` (:func:`kill_marked`).
    """
    groups: set[int] = set()
    rest, clean = b"", False
    while True:
        data = os.read(fd, 65536)
        if not data:
            break
        time.sleep(0.02)  # let lines gather: waking a blocked reader costs the runner (guardian.py)
        *lines, rest = (rest + data).split(b"\n")
        for line in lines:
            if line[:1] == b"+":
                groups.add(int(line[1:]))
            elif line[:1] == b"-":
                groups.discard(int(line[1:]))
            elif line == b".":
                clean = True
    if clean:
        return
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
    kill_marked(token, variable)


if __name__ == "__main__":  # the guardian: python -I -S _envmark.py VARIABLE TOKEN
    guard(sys.argv[1], sys.argv[2])
