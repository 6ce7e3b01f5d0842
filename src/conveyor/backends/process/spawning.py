"""Starting worker processes: the start method, and keeping the user's ``__main__`` out of them.

The standard ``spawn`` and ``forkserver`` start methods re-run the parent's main script in every
child (as ``__mp_main__``) so that functions defined there can be found by name. That is the
origin of the classic pitfall: a script without ``if __name__ == "__main__":`` recursively starts
pools, and every worker pays for the script's imports and side effects.

conveyor sends functions by value with cloudpickle, so its workers never need the main script.
:func:`start_worker` therefore starts processes with the main-module entries removed from
multiprocessing's preparation data. It does so through a wrapper around
``multiprocessing.spawn.get_preparation_data`` that acts only inside :func:`start_worker` on the
calling thread (a thread-local flag), so other users of multiprocessing in the same program are
unaffected. The rest of the preparation (``sys.path``, the working directory) is kept.

With ``spawn`` and ``fork`` a worker is also started with SIGINT *blocked*: the child inherits
the signal mask of the thread that starts it (through ``exec`` too), so a Ctrl-C that reaches a
new worker before it has moved into its own process group stays pending, and the worker drops it
(see :func:`.worker.worker_main`) instead of printing a KeyboardInterrupt traceback; the
caller's own mask is restored at once. With the ``zygote`` (the default on Linux) SIGINT is
ignored from the fork on (see :mod:`.zygote`). Not with ``forkserver``: there the fork happens
in the fork server, which every user of that start method in the program shares, and a server
started with SIGINT blocked would make all their processes (and the programs those run) deaf to
Ctrl-C.
A forkserver worker is therefore exposed from its fork to the first lines of ``worker_main``,
about a millisecond; a Ctrl-C in exactly that window ends that new worker (with a traceback on
stderr) and the pool replaces it.

A process made by a plain ``os.fork()`` inherits multiprocessing's record of its parent's fork
server, which is not its child: starting any forkserver process there fails with
``ChildProcessError``. :func:`_forget_fork_server` makes such a child start a fork server of its
own (leaving the parent's running, untouched).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

TYPE_CHECKING = False  # typing is for type checkers only: a cold map must not pay its import
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType
    from typing import Any

__all__ = ["default_start_method", "get_context", "start_methods", "start_worker"]

_WORKER_MODULE = "conveyor.backends.process.worker"
_local = threading.local()
_original_preparation_data: Callable[[str], dict[str, Any]] | None = None
_setup_lock = threading.Lock()


def _preparation_data(name: str) -> dict[str, Any]:
    assert _original_preparation_data is not None
    data = _original_preparation_data(name)
    if getattr(_local, "without_main", False):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


def default_start_method() -> str:
    """``zygote`` where it can be made, else ``forkserver`` where it exists, else ``spawn``.

    The zygote (see :mod:`.zygote`) is a fork server forked from this process while it has a
    single thread: as safe as ``forkserver`` and as quick to start as ``fork``. It can be made
    on Linux while the process has one thread (or once it runs); otherwise ``forkserver`` (fork
    is unsafe once the parent has threads), and ``spawn`` where there is no fork at all.

    Example::

        >>> from conveyor.backends.process.spawning import default_start_method
        >>> default_start_method() in {"zygote", "forkserver", "spawn"}
        True
    """
    zygote = _zygote()
    if zygote is not None and zygote.birth_possible():
        return "zygote"
    return _without_zygote()


def _without_zygote() -> str:
    """``forkserver`` where it exists (not on macOS), else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods and sys.platform != "darwin":
        return "forkserver"
    return "spawn"


def start_methods() -> list[str]:
    """The start methods a pool can be asked for here: multiprocessing's, and ``zygote``."""
    methods = multiprocessing.get_all_start_methods()
    zygote = _zygote()
    return [*methods, "zygote"] if zygote is not None and zygote.available() else methods


def check_start_method(start_method: str | None) -> None:
    """A clear error for a start method that is not available here (``None`` is the default).

    >>> check_start_method("no-such-method")
    Traceback (most recent call last):
    ...
    ValueError: start_method='no-such-method' is not available here; choose one of [...]
    """
    methods = start_methods()
    if start_method is not None and start_method not in methods:
        raise ValueError(
            f"start_method={start_method!r} is not available here; choose one of {methods}"
        )


def get_context(start_method: str | None, first: Sequence[Any] = ()) -> BaseContext:
    """The multiprocessing context for ``start_method``, with a clear error for a bad name.

    ``None`` is :func:`default_start_method` (the zygote when one runs or can be made now).
    ``"zygote"`` asked for explicitly needs one to be running or the process to have a single
    thread now; the error says so. ``first``: the :class:`.zygote.FirstWorker` list a zygote
    born in this call forks at its birth.
    """
    check_start_method(start_method)
    ctx: BaseContext | None = None
    zygote = _zygote()
    if start_method in (None, "zygote") and zygote is not None:
        # One check, made by ensure_zygote under the zygote's lock: a running one, or one born
        # now while this process has a single thread.
        context = zygote.ZygoteContext()
        if context.ensure_zygote(first):
            ctx = context
        elif start_method == "zygote":
            raise ValueError(
                "start_method='zygote' needs this process to have a single thread when the "
                f"first such pool starts (it has {_thread_count()}); start the pool before "
                "any thread, or use start_method='forkserver'"
            )
    if ctx is None:
        ctx = multiprocessing.get_context(start_method or _without_zygote())
    return ctx


def _set_up(method: str) -> None:
    """Before the first start of a worker that is sent its Process (not ``fork``): keep the
    parent's ``__main__`` out of it, and have the fork server preload the worker module. Not
    done for ``fork``, nor for the first workers a zygote forks at its birth: a cold map never
    imports multiprocessing's spawn or forkserver modules."""
    global _original_preparation_data
    import multiprocessing.spawn

    with _setup_lock:
        if multiprocessing.spawn.get_preparation_data is not _preparation_data:
            _original_preparation_data = multiprocessing.spawn.get_preparation_data
            multiprocessing.spawn.get_preparation_data = _preparation_data
        if method in ("forkserver", "zygote"):  # the zygote falls back on the fork server
            _preload_worker_module()


def _zygote() -> ModuleType | None:
    """The zygote module where there can be one (Linux); imported only there, since it builds
    on multiprocessing's fork-server machinery, which Windows lacks."""
    if not sys.platform.startswith("linux"):
        return None
    from . import zygote

    return zygote


def zygote_pid() -> int | None:
    """The pid of this process's zygote, if one is running (``None`` off Linux).

    Example::

        >>> zygote_pid() is None or zygote_pid() > 0
        True
    """
    zygote = _zygote()
    return zygote.pid() if zygote is not None else None


def single_threaded() -> bool:
    """Whether this process has a single thread now (``False`` where that cannot be known).

    Example::

        >>> single_threaded() in (True, False)
        True
    """
    zygote = _zygote()
    return zygote is not None and zygote.single_threaded()


def fork_context() -> BaseContext:
    """multiprocessing's ``fork`` context (only while :func:`single_threaded`: see
    ``ProcessBackend.__init__``)."""
    return multiprocessing.get_context("fork")


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _preload_worker_module() -> None:
    """Have the fork server import the worker module once, so each fork starts warm."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return  # already running: its preload list can no longer change
    modules = list(getattr(server, "_preload_modules", []))
    if _WORKER_MODULE not in modules:
        # cloudpickle too: the worker imports it only for a function sent by value
        modules = [m for m in modules if m != "__main__"] + [_WORKER_MODULE, "cloudpickle"]
        forkserver.set_forkserver_preload(modules)


def start_worker(
    ctx: BaseContext, target: Callable[..., None], args: tuple[Any, ...], name: str
) -> BaseProcess:
    """Start a process running ``target(*args)`` without re-running the parent's main script."""
    process = ctx.Process(target=target, args=args, name=name, daemon=False)  # type: ignore[attr-defined]
    method = ctx.get_start_method()
    masking = hasattr(signal, "pthread_sigmask") and method in ("spawn", "fork")
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if masking else set()
    if method != "fork":  # (fork: multiprocessing's Popen flushes stdout and stderr itself)
        _set_up(method)
    _local.without_main = True
    try:
        process.start()
    finally:
        _local.without_main = False
        if masking and signal.SIGINT not in old_mask:
            # A Ctrl-C that came meanwhile is delivered now, as KeyboardInterrupt as usual.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return process


def _forget_fork_server() -> None:
    """In a forked child: forget the parent's fork server (the next worker starts our own)."""
    forkserver = sys.modules.get("multiprocessing.forkserver")  # none imported: none to forget
    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    server._lock = threading.Lock()  # a thread of the parent may have held it at the fork
    alive_fd = server._forkserver_alive_fd
    server._forkserver_pid = server._forkserver_address = server._forkserver_alive_fd = None
    if alive_fd is not None:
        try:
            os.close(alive_fd)  # our copy; the parent's keeps its server running
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_fork_server)
