"""The zygote: a fork server forked from this process while it has a single thread.

How worker processes start by default on Linux. The standard ``forkserver`` start method is
safe (workers fork from a server that has one thread) but slow to start cold: the server is a
new interpreter that imports the worker side before the first worker exists (about 100 ms
before a first result). Plain ``fork`` is fast but unsafe once the parent has threads, and
conveyor's parent has a dispatcher thread per pool. The zygote keeps forkserver's guarantee at
fork's cost: it is made with ``os.fork()`` at the first process pool's start, *when the parent
still has one thread*, and from then on it is the process workers fork from (a pool made while
the parent still has one thread forks its first workers itself, with ``fork``, as safe at that
moment: see ``ProcessBackend.__init__``)::

    parent: caller thread /              zygote (one thread,                worker
    dispatcher thread                    for as long as the parent lives)
    -------------------------            ---------------------------------  --------------------
    ZygotePopen._launch (zygote_popen.py):
      data pipe, status pipe
      send_fds(socket, b"F",   ------>   selector wakes on the socket:
        [data_r, status_w,               recv_fds; os.fork() ------------>  closes the zygote's
         *descriptors of args])          status pipe <- the worker's pid    descriptors, reads
      read the pid  <------------------                                    the Process object
      write prep data + Process --------------------------------------->   from the data pipe,
        to the data pipe                                                    runs worker_main
    Popen.poll(): the exit code  <----   SIGCHLD (wake-up fd): waitpid,     ... exits
      arrives on the status pipe         write the exit code, close it

Guarantees, and what keeps each:

* **Forking is safe.** Birth needs exactly one thread in the parent: :func:`single_threaded`
  counts the threads of the process (``/proc/self/task``, so threads started by C libraries,
  an OpenBLAS pool say, count too), not only Python's; with more, the standard forkserver is
  used instead. No lock can be held by another thread at the fork, and the zygote never starts
  a thread, so every fork from it is as safe. (Python 3.12's DeprecationWarning is about forking
  a process with threads, which neither fork does.)
* **What a worker sees.** The parent's modules and globals as they were at the zygote's birth,
  like ``fork`` (and unlike ``forkserver``, whose workers start from a bare interpreter); later
  changes in the parent are not seen, as with any fork server. Functions and arguments still
  travel by value (cloudpickle), so a task runs the function as it is when it is sent; the one
  exception, a ``__main__`` function sent by name into this copy of ``__main__``, is exactly
  as good (see ``packing.FunctionCache.seed``).
* **No duplicated output.** ``sys.stdout``/``sys.stderr`` are flushed before the fork; the zygote
  and its workers never run the parent's ``atexit`` handlers or multiprocessing finalizers (the
  zygote leaves only by ``os._exit``; a worker clears them, as multiprocessing's own children do).
* **Descriptors.** The zygote keeps what the parent had open at its birth (as ``fork`` does),
  except conveyor's own pipes (``workers.parent_fds``), which it closes, and standard input,
  which becomes ``/dev/null``. A worker closes the zygote's socket and status pipes.
* **Ctrl-C.** The zygote ignores SIGINT; a worker inherits that until ``worker_main`` has moved
  it into its own process group (so, unlike with ``forkserver``, there is no window in which a
  Ctrl-C kills a starting worker).
* **Lifetime.** The zygote exits when the parent's end of its socket closes: at the parent's
  exit, however it ends. A plain ``os.fork()`` child of the parent forgets the zygote (closes
  its copy of the socket) and makes its own if it starts a pool.
* **If the zygote dies** (killed from outside), its workers' status pipes close: the pool takes
  each for dead (exit code 255), kills it, counts what it was running as a crash (retried under
  ``retries=``, as for any crash) and starts its replacements through the standard forkserver.
  (The same holds for the standard forkserver's own death.)
"""

from __future__ import annotations

import atexit
import gc
import os
import selectors
import signal
import socket
import sys
import threading
from multiprocessing import (
    heap,  # noqa: F401  (see below)
    process,
)
from multiprocessing import util as _util
from multiprocessing.context import ForkServerContext

# multiprocessing's private helpers, which its own fork server uses the same way (typeshed does
# not describe them)
util: Any = _util
# multiprocessing.heap is imported above, before the zygote's birth, so that no worker imports
# it after its fork: each worker's position mark (protocol.Mark) is a block of its heap.
# multiprocessing's forkserver, popen_forkserver and spawn modules are imported only where a
# worker is asked of the zygote (zygote_popen.py in the caller; _import_for_workers in the
# zygote, when idle or at its first request): a pool made while the caller has one thread forks
# its first workers itself (ProcessBackend), so a cold map never needs them (~2 ms of imports).

TYPE_CHECKING = False  # typing is for type checkers only: a cold map must not pay its import
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ZygoteContext", "available", "birth_possible", "pid", "running", "single_threaded"]

#: seconds without a request after which the zygote imports cloudpickle (see _serve)
_WARM_AFTER = 0.25
_MAX_FDS = 200  # per request: a worker's pipes, socket, memory mark (the kernel allows 253)
_lock = threading.Lock()  # guards _zygote and serializes requests on its socket
_zygote: _Zygote | None = None


def available() -> bool:
    """Whether this platform can have a zygote at all (Linux: fork is fine, threads countable).

    Example::

        >>> import sys
        >>> from conveyor.backends.process import zygote
        >>> zygote.available() == sys.platform.startswith("linux")
        True
    """
    return sys.platform.startswith("linux") and hasattr(socket, "send_fds")


def single_threaded() -> bool:
    """Whether this process has exactly one thread, counting those that Python did not start.

    Example::

        >>> from conveyor.backends.process.zygote import single_threaded
        >>> isinstance(single_threaded(), bool)
        True
    """
    if threading.active_count() != 1:
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def running() -> bool:
    """Whether this process has a zygote (made earlier, still alive).

    Example::

        >>> from conveyor.backends.process.zygote import running
        >>> isinstance(running(), bool)
        True
    """
    with _lock:
        return _zygote is not None and _zygote.alive


def pid() -> int | None:
    """The zygote's pid, if this process has one running (for tests and diagnostics).

    Example::

        >>> from conveyor.backends.process import zygote
        >>> zygote.pid() is None or zygote.pid() > 0
        True
    """
    with _lock:
        return _zygote.pid if _zygote is not None and _zygote.alive else None


def birth_possible() -> bool:
    """Whether a zygote is running or could be made now (see the module's guarantees)."""
    return available() and (running() or single_threaded())


class _Zygote:
    """The parent's handle on its zygote: its pid and our end of its socket."""

    def __init__(self, pid: int, sock: socket.socket):
        self.pid = pid
        self.sock = sock
        self.alive = True

    def request(self, fds: list[int]) -> None:
        """Ask for a worker; ``fds``: its data pipe's read end, status pipe's write end, rest.

        MSG_NOSIGNAL: a dead zygote is an OSError here, never a SIGPIPE (a program that set
        SIGPIPE back to its default action would die of it).
        """
        socket.send_fds(self.sock, [b"F"], fds, socket.MSG_NOSIGNAL)

    def died(self) -> None:
        """It is gone (killed from outside): reap it; later workers start through forkserver."""
        with _lock:
            self.alive = False
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _ensure_zygote() -> _Zygote | None:
    """The running zygote; one is made now if there is none and it is safe (else ``None``)."""
    global _zygote
    with _lock:
        if _zygote is not None and _zygote.alive:
            return _zygote
        if _zygote is None and available() and single_threaded():
            _zygote = _give_birth()
            return _zygote
        return None


def _give_birth() -> _Zygote:
    from . import workers  # conveyor's own pipes, which the zygote must not keep

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    util._flush_std_streams()
    pid = os.fork()
    if pid == 0:  # the zygote
        code = 0
        try:
            ours.close()
            for fd in list(workers.parent_fds):
                try:
                    os.close(fd)
                except OSError:
                    pass
            _serve(theirs)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    return _Zygote(pid, ours)


def _serve(sock: socket.socket) -> None:
    """The zygote's loop: a worker for each request, exit codes for each death, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    except OSError:
        pass
    gc.freeze()  # what came from the parent stays shared with the workers (copy-on-write)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wake-up fd is what wakes the loop
    status_of: dict[int, int] = {}  # worker pid -> write end of its status pipe
    warm = "cloudpickle" in sys.modules
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            ready = {key.fileobj for key, _ in selector.select(None if warm else _WARM_AFTER)}
            if not ready and not warm:
                # Idle: import what the workers forked from now on need, so that each need not:
                # multiprocessing's (to start: the caller has not imported it for a cold map)
                # and cloudpickle (for a function sent by value; born for a cold map whose
                # function went by name, the zygote lacks it; see FunctionCache.seed). Not at
                # once: on a cold map this process would take a core from the caller's start.
                warm = True
                _import_for_workers()
                try:
                    import cloudpickle  # noqa: F401
                except BaseException:
                    pass
                continue
            if wake_r in ready:
                _reap(wake_r, status_of)
            if sock in ready:
                try:
                    message, fds, _flags, _addr = socket.recv_fds(sock, 1, _MAX_FDS)
                except InterruptedError:
                    continue
                if not message:
                    return  # the parent is gone (or forked and closed its copy: not here)
                data_r, status_w, *inherited = fds
                write_signed = _import_for_workers()  # before the fork: for every worker
                pid = os.fork()
                if pid == 0:
                    _become_worker(sock, selector, wake_r, wake_w, status_of, status_w, fds)
                for fd in (data_r, *inherited):
                    os.close(fd)
                try:
                    write_signed(status_w, pid)
                except OSError:
                    pass  # the parent gave up on it; its death still closes the pipe below
                status_of[pid] = status_w
                # A worker that died before it was recorded is reaped on the next wake-up:
                # its SIGCHLD wrote to the wake-up fd, which select() reports again.


def _import_for_workers() -> Any:
    """Import what a worker started from here runs on (multiprocessing's spawn and forkserver
    modules); their ``write_signed``, with which the zygote reports pids and exit codes."""
    from multiprocessing import forkserver, spawn  # noqa: F401

    return forkserver.write_signed


def _reap(wake_r: int, status_of: dict[int, int]) -> None:
    try:
        while os.read(wake_r, 4096):
            pass
    except BlockingIOError:
        pass
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        status_w = status_of.pop(pid, None)
        if status_w is not None:
            try:  # (a worker of ours: _import_for_workers ran before its fork)
                _import_for_workers()(status_w, os.waitstatus_to_exitcode(status))
            except OSError:
                pass
            os.close(status_w)


def _become_worker(
    sock: socket.socket,
    selector: selectors.BaseSelector,
    wake_r: int,
    wake_w: int,
    status_of: dict[int, int],
    status_w: int,
    fds: list[int],
) -> None:
    """In a new child of the zygote: drop the zygote's handles, then run the Process sent."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # SIGINT stays ignored until worker_main leads its own process group (see above).
        selector.close()
        sock.close()
        for fd in (wake_r, wake_w, status_w, *status_of.values()):
            os.close(fd)
        data_r, _status_w, *inherited = fds
        from multiprocessing import forkserver, spawn  # (imported before the fork)

        state: Any = forkserver._forkserver
        state._inherited_fds = inherited  # what ZygotePopen.DupFd reads
        atexit._clear()
        atexit.register(util._exit_function)
        spawn_main: Any = spawn._main
        code = spawn_main(data_r, os.dup(data_r))
    except BaseException:
        try:
            sys.excepthook(*sys.exc_info())
            sys.stderr.flush()
        except BaseException:
            pass
    finally:
        try:
            atexit._run_exitfuncs()
        finally:
            os._exit(code)


class _ZygoteProcess(process.BaseProcess):
    # None: a worker keeps the parent's default start method (as it was at the zygote's birth)
    _start_method = None

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        from .zygote_popen import ZygotePopen

        return ZygotePopen(process_obj)


class ZygoteContext(ForkServerContext):
    """A multiprocessing context whose processes fork from the zygote.

    Example::

        >>> from conveyor.backends.process.zygote import ZygoteContext
        >>> ZygoteContext().get_start_method()
        'zygote'
    """

    _name = "zygote"
    Process = _ZygoteProcess  # type: ignore[assignment]

    def ensure_zygote(self) -> bool:
        """Make the zygote now if there is none; whether one runs afterwards."""
        return _ensure_zygote() is not None


def _forget_after_fork() -> None:
    """In a plain ``os.fork()`` child: the zygote is the parent's; close our copy of its socket."""
    global _lock, _zygote
    _lock = threading.Lock()
    zygote, _zygote = _zygote, None
    if zygote is not None:
        try:
            zygote.sock.close()
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
