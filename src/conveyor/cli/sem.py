"""``conveyor sem``: a counting semaphore for shell scripts, like GNU parallel's ``sem``.

::

    conveyor sem -j 4 --id NAME COMMAND...   # start COMMAND in the background as soon
                                             # as one of NAME's 4 slots is free
    conveyor sem --wait --id NAME            # wait until every command started under
                                             # NAME has ended
    conveyor sem --fg -j 4 --id NAME COMMAND # the same, but in the foreground: exit
                                             # with COMMAND's status

How it works: NAME's slots are files ``slot.1`` .. ``slot.N`` in the directory
``$CONVEYOR_SEM_DIR/NAME`` (default ``$XDG_RUNTIME_DIR/conveyor-sem`` or
``~/.cache/conveyor/sem``). A slot is taken by an exclusive ``flock`` on its file; the
open file is inherited by COMMAND (run by the shell, as in ``conveyor run``), so the
slot stays taken exactly as long as COMMAND -- and any process it left running with
the descriptor -- lives, even if ``conveyor sem`` itself has exited or been killed.
No lock can be left stale: the kernel releases it when the last holder exits.
``--wait`` takes (and releases) every slot file of NAME in turn.

Differences from GNU parallel's sem: the default --id is ``default`` (GNU: one per
terminal); COMMAND's output is not buffered (it goes where conveyor sem's goes). As in GNU
parallel, COMMAND's words are joined into shell code; ``-q`` keeps each one word.

>>> slot_dir("x").name
'x'
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "slot_dir"]

EXIT_ERROR = 255
POLL = 0.02  # seconds between attempts to take a slot while all are taken


def _base_dir() -> Path:
    configured = os.environ.get("CONVEYOR_SEM_DIR")
    if configured:
        return Path(configured)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "conveyor-sem"
    return Path.home() / ".cache" / "conveyor" / "sem"


def slot_dir(name: str) -> Path:
    """The directory of semaphore ``name``'s slot files."""
    return _base_dir() / name


def _parser() -> argparse.ArgumentParser:
    from conveyor.cli.options import ErrorRaisingParser

    p = ErrorRaisingParser(
        prog="conveyor sem",
        usage="conveyor sem [-j N] [--id NAME] [--fg] COMMAND ... | conveyor sem --wait "
        "[--id NAME]",
        description="A counting semaphore for shell scripts, like GNU parallel's sem: start "
        "COMMAND (shell code, run by --shell) in the background as soon as one of NAME's -j "
        "slots is free, or with --wait, wait until every command started under NAME has "
        "ended. A slot is held as long as its command runs, even if conveyor sem was "
        "killed; slots are files in $CONVEYOR_SEM_DIR/NAME (default "
        "$XDG_RUNTIME_DIR/conveyor-sem or ~/.cache/conveyor/sem).",
        epilog="examples:\n"
        '  for f in *.wav; do conveyor sem -j 2 --id enc -q lame "$f"; done\n'
        "  conveyor sem --wait --id enc\n"
        "  conveyor sem --fg --id db ./migrate.sh   # a mutex (-j 1), in the foreground",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-j", "--jobs", metavar="N", type=int, default=1, help="slots (default 1: a mutex)"
    )
    p.add_argument(
        "--id",
        metavar="NAME",
        default="default",
        help="the semaphore's name (letters, digits, _.-; default %(default)s)",
    )
    p.add_argument("--wait", action="store_true", help="wait for all commands under NAME")
    p.add_argument(
        "--fg", action="store_true", help="run COMMAND in the foreground, exit with its status"
    )
    p.add_argument(
        "--shell", metavar="PATH", help="the shell for COMMAND (as conveyor run's --shell)"
    )
    p.add_argument(
        "-q",
        "--quote",
        action="store_true",
        help="COMMAND's words are literal (each one word, no shell syntax), e.g. file names",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    return p


def _open_slot(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _take_slot(directory: Path, slots: int) -> int:
    """Block until one of the slot files is locked by us; its descriptor."""
    paths = [directory / f"slot.{i}" for i in range(1, slots + 1)]
    while True:
        for path in paths:
            fd = _open_slot(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
        time.sleep(POLL)


def _wait_all(directory: Path) -> None:
    """Take and release every slot file of the semaphore, waiting as needed."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("slot.*")):
        fd = _open_slot(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            os.close(fd)


def main(argv: Sequence[str]) -> int:
    """``conveyor sem ARGS``: the exit status (0 once COMMAND started, its status with
    --fg, 255 for a bad command line)."""
    from conveyor.cli.options import UsageError, choose_shell

    try:
        ns = _parser().parse_args(list(argv))
        command = list(ns.command)
        if command[:1] == ["--"]:
            command.pop(0)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", ns.id) or ns.id in (".", ".."):
            raise UsageError(f"bad --id {ns.id!r}: use letters, digits, '_', '.' and '-'")
        if ns.jobs < 1:
            raise UsageError(f"bad -j {ns.jobs}: must be 1 or more")
        if ns.wait and command:
            raise UsageError("--wait and COMMAND: --wait only waits; run COMMAND separately")
        if not ns.wait and not command:
            raise UsageError("no COMMAND (or --wait) given")
        shell = choose_shell(ns.shell)
    except UsageError as e:
        print(f"conveyor sem: error: {e}\n(see conveyor sem --help)", file=sys.stderr)
        return EXIT_ERROR
    directory = slot_dir(ns.id)
    try:
        if ns.wait:
            _wait_all(directory)
            return 0
        directory.mkdir(parents=True, exist_ok=True)
        fd = _take_slot(directory, ns.jobs)
    except KeyboardInterrupt:
        return EXIT_ERROR
    except OSError as e:
        print(f"conveyor sem: error: {directory}: {e.strerror}", file=sys.stderr)
        return EXIT_ERROR
    try:
        proc = subprocess.Popen(
            [shell, "-c", shlex.join(command) if ns.quote else " ".join(command)],
            pass_fds=(fd,),  # the slot is held as long as COMMAND runs
            start_new_session=not ns.fg,
            stdin=None if ns.fg else subprocess.DEVNULL,
        )
    except OSError as e:
        print(f"conveyor sem: error: cannot run {shell}: {e.strerror}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        os.close(fd)
    if not ns.fg:
        return 0
    try:
        status = proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        return EXIT_ERROR
    return 128 - status if status < 0 else status
