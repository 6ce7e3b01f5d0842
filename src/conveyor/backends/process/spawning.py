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
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.spawn
import sys
import threading
from collections.abc import Callable
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

__all__ = ["default_start_method", "get_context", "start_worker"]

_WORKER_MODULE = "conveyor.backends.process.worker"
_local = threading.local()
_original_preparation_data: Callable[[str], dict[str, Any]] = (
    multiprocessing.spawn.get_preparation_data
)
_setup_lock = threading.Lock()


def _preparation_data(name: str) -> dict[str, Any]:
    data = _original_preparation_data(name)
    if getattr(_local, "without_main", False):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


def default_start_method() -> str:
    """``forkserver`` where it exists (fork is unsafe once the parent has threads), else ``spawn``.

    Example::

        >>> from conveyor.backends.process.spawning import default_start_method
        >>> default_start_method() in {"forkserver", "spawn"}
        True
    """
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods and sys.platform != "darwin":
        return "forkserver"
    return "spawn"


def get_context(start_method: str | None) -> BaseContext:
    """The multiprocessing context for ``start_method``, with a clear error for a bad name."""
    method = start_method or default_start_method()
    methods = multiprocessing.get_all_start_methods()
    if method not in methods:
        raise ValueError(
            f"start_method={start_method!r} is not available here; choose one of {methods}"
        )
    ctx = multiprocessing.get_context(method)
    with _setup_lock:
        if multiprocessing.spawn.get_preparation_data is not _preparation_data:
            multiprocessing.spawn.get_preparation_data = _preparation_data
        if method == "forkserver":
            _preload_worker_module(ctx)
    return ctx


def _preload_worker_module(ctx: BaseContext) -> None:
    """Have the fork server import the worker module once, so each fork starts warm."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return  # already running: its preload list can no longer change
    modules = list(getattr(server, "_preload_modules", []))
    if _WORKER_MODULE not in modules:
        modules = [m for m in modules if m != "__main__"] + [_WORKER_MODULE]
        ctx.set_forkserver_preload(modules)  # type: ignore[attr-defined]


def start_worker(ctx: BaseContext, target: Callable[..., None], args: tuple[Any, ...], name: str) -> BaseProcess:
    """Start a process running ``target(*args)`` without re-running the parent's main script."""
    process = ctx.Process(target=target, args=args, name=name, daemon=False)  # type: ignore[attr-defined]
    _local.without_main = True
    try:
        process.start()
    finally:
        _local.without_main = False
    return process  # type: ignore[no-any-return]
