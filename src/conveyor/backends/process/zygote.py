"""The zygote: a fork server forked from this process while it has a single thread.

How worker processes start by default on Linux. The standard ``forkserver`` start method is
safe (workers fork from a server that has one thread) but slow to start cold: the server is a
new interpreter that imports the worker side before the first worker exists (about 100 ms
before a first result). Plain ``fork`` is fast but unsafe once the parent has threads, and
conveyor's parent has a dispatcher thread per pool. The zygote keeps forkserver's guarantee at
fork's cost: it is made with ``os.fork()`` at the first process pool's start, *when the parent
still has one thread*, and from then on it is the process workers fork from.

**First workers.** The pool whose start bears the zygote has its workers forked by the zygote
at its birth: the caller makes each one's pipes, mark and ``Process`` object first
(:class:`FirstWorker`, ``workers.WorkerPlan``), forks once, and takes them over (``adopt``)
without waiting: their pids come on one "births" pipe, read when first asked for. A fork costs
the forking process ~0.3 ms and the copy-on-write faults that follow more; forking the zygote
and then each worker from the caller (as before) cost a cold map's caller ~900 more page faults
and ~2 ms. (A pool made later while the parent has one thread again forks its workers itself,
with ``fork``, as safe at that moment: see ``ProcessBackend.__init__``.) Other workers are
asked of the zygote one by one::

    parent: caller thread /              zygote (one thread,                worker
    dispatcher thread                    for as long as the parent lives)
    -------------------------            ---------------------------------  --------------------
    first workers (the birth, _give_birth):
      pipes, marks, Process objects,
      status pipes, births pipe
      os.fork() ---------------------->  _fork_first_workers: os.fork() ->  closes the others'
      adopt each (no wait)               each; its pid -> births pipe       descriptors, runs
      pid, when first asked <----------  (then waits for requests)          worker_main
    later workers
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
* **A first worker is any other worker.** It is the zygote's child, its exit code reaches the
  caller on its status pipe and ``multiprocessing`` lists it among the caller's children, as
  for a worker asked of the zygote; it sees the caller as ``multiprocessing.parent_process()``
  (its sentinel is its lifeline, which only the caller holds). It has no descriptor of another
  worker's (each closes its siblings' ends, the zygote closes them all once they are forked),
  so a worker's death is seen at once. A worker the zygote failed to fork has no pid and a
  closed status pipe: the pool takes it for a worker that died starting, and replaces it.
* **If the zygote dies** (killed from outside), its workers' status pipes close: the pool takes
  each for dead (exit code 255), kills it, counts what it was running as a crash (retried under
  ``retries=``, as for any crash) and starts its replacements through the standard forkserver.
  (The same holds for the standard forkserver's own death.)
"""

from __future__ import annotations

# signal's own functions, without the Python wrappers (signal.signal, getsignal,
# pthread_sigmask, valid_signals) that turn each number they take or return into an enum
# member: in a process just forked, that machinery's copy-on-write faults cost a worker ~0.3 ms
# of its start (2.3 -> 1.95 ms of CPU before its first task, measured). (No typeshed stub.)
import _signal  # type: ignore[import-not-found,unused-ignore]
import atexit
import gc
import os
import selectors
import signal
import socket
import struct
import sys
import threading
from multiprocessing import popen_fork, process
from multiprocessing import util as _util
from multiprocessing.context import ForkServerContext

# multiprocessing's private helpers, which its own fork server uses the same way (typeshed does
# not describe them)
util: Any = _util
# multiprocessing's forkserver, popen_forkserver and spawn modules are imported only where a
# worker is asked of the zygote (zygote_popen.py in the caller; _import_for_workers in the
# zygote, when idle or at its first request): the pool that bears the zygote has its first
# workers forked at the birth, and a pool made while the caller has one thread forks them
# itself (ProcessBackend), so a cold map never needs them (~2 ms of imports).

TYPE_CHECKING = False  # typing is for type checkers only: a cold map must not pay its import
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

_ForkPopen: Any = popen_fork.Popen  # (typeshed's Popen declares pid an int, set once)

__all__ = [
    "FirstWorker",
    "ZygoteContext",
    "available",
    "birth_possible",
    "pid",
    "running",
    "single_threaded",
]

#: seconds without a request after which the zygote imports cloudpickle (see _serve)
_WARM_AFTER = 0.25
_SIGNED = struct.Struct("q")  # pids and exit codes on a status pipe (as multiprocessing's)
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


def _release() -> None:
    """Let this process's zygote go (it exits when our end of its socket closes): at exit,
    after the pools are stopped (conveyor._pool). A worker asked for later starts through
    forkserver."""
    with _lock:
        if _zygote is not None and _zygote.alive:
            _zygote.alive = False
            _zygote.sock.close()


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


def _ensure_zygote(first: Sequence[FirstWorker] = ()) -> _Zygote | None:
    """The running zygote; one is made now if there is none and it is safe (else ``None``).

    ``first``: workers a zygote born now forks at once (see "First workers" above); with a
    zygote running already they are not started (each one's :meth:`FirstWorker.adopt` says so).
    """
    global _zygote
    with _lock:
        if _zygote is not None and _zygote.alive:
            return _zygote
        if _zygote is None and available() and single_threaded():
            _zygote = _give_birth(first)
            return _zygote
        return None


def _give_birth(first: Sequence[FirstWorker]) -> _Zygote:
    from . import workers  # conveyor's own pipes, which the zygote must not keep

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    births = _Births(len(first)) if first else None
    util._flush_std_streams()
    pid = os.fork()
    if pid == 0:  # the zygote
        code = 0
        try:
            ours.close()
            ends = [worker.status_r for worker in first] + ([births.r] if births else [])
            for fd in [*workers.parent_fds, *ends]:
                try:
                    os.close(fd)
                except OSError:
                    pass
            _serve(theirs, first, births.w if births else -1)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    if births is not None:
        os.close(births.w)
        for index, worker in enumerate(first):
            os.close(worker.status_w)
            worker.births, worker.index = births, index
    return _Zygote(pid, ours)


def _serve(sock: socket.socket, first: Sequence[FirstWorker] = (), births_w: int = -1) -> None:
    """The zygote's loop: a worker for each request, exit codes for each death, until EOF."""
    _signal.signal(signal.SIGINT, _signal.SIG_IGN)
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
    _signal.signal(signal.SIGCHLD, lambda *_: None)  # the wake-up fd is what wakes the loop
    status_of: dict[int, int] = {}  # worker pid -> write end of its status pipe
    if first:
        _fork_first_workers(sock, wake_r, wake_w, first, births_w, status_of)
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
                _import_for_workers()  # before the fork: for every worker
                pid = os.fork()
                if pid == 0:
                    _become_worker(sock, selector, wake_r, wake_w, status_of, status_w, fds)
                for fd in (data_r, *inherited):
                    os.close(fd)
                try:
                    _write_signed(status_w, pid)
                except OSError:
                    pass  # the parent gave up on it; its death still closes the pipe below
                status_of[pid] = status_w
                # A worker that died before it was recorded is reaped on the next wake-up:
                # its SIGCHLD wrote to the wake-up fd, which select() reports again.


def _fork_first_workers(
    sock: socket.socket,
    wake_r: int,
    wake_w: int,
    first: Sequence[FirstWorker],
    births_w: int,
    status_of: dict[int, int],
) -> None:
    """At the birth: fork each first worker, write its pid to the births pipe (in order),
    then close the workers' ends and that pipe.

    A worker this fails to fork has 0 for its pid and its status pipe closed unwritten: the
    caller takes it for a worker that died starting, and replaces it.
    """
    for worker in first:
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid == 0:
            _become_first_worker(sock, wake_r, wake_w, first, births_w, worker)  # never returns
        if pid > 0:
            status_of[pid] = worker.status_w
        else:
            os.close(worker.status_w)
        try:
            _write_signed(births_w, max(pid, 0))
        except OSError:
            pass  # the caller is gone; its death ends us too
    os.close(births_w)
    for worker in first:
        for fd in worker.fds:
            os.close(fd)


def _become_first_worker(
    sock: socket.socket,
    wake_r: int,
    wake_w: int,
    first: Sequence[FirstWorker],
    births_w: int,
    me: FirstWorker,
) -> None:
    """In a first worker: drop the zygote's handles and the other workers' ends, then run."""
    code = 1
    try:
        _drop_zygote_signals()
        sock.close()
        for worker in first:
            for fd in (worker.status_w, *(worker.fds if worker is not me else ())):
                try:
                    os.close(fd)
                except OSError:
                    pass  # a sibling's status pipe that the zygote closed (it failed to fork)
        for fd in (wake_r, wake_w, births_w):
            os.close(fd)
        # as multiprocessing's fork start method runs a child
        process_obj: Any = me.process
        code = process_obj._bootstrap(parent_sentinel=me.parent_sentinel)
    except BaseException:
        _print_failure()
    finally:
        os._exit(code)


def _import_for_workers() -> None:
    """Import what a worker asked of the zygote runs on (multiprocessing's spawn and forkserver
    modules, and its heap, of which the worker's position mark is a block: protocol.Mark).
    Not when a worker dies: a cold script's first workers need none of it, and their exit codes
    reach the caller sooner at its exit (~2.5 ms) for it (see _write_signed)."""
    from multiprocessing import forkserver, heap, spawn  # noqa: F401


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
            try:
                _write_signed(status_w, os.waitstatus_to_exitcode(status))
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
        _drop_zygote_signals()
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
        _print_failure()
    finally:
        try:
            atexit._run_exitfuncs()
        finally:
            os._exit(code)


def _drop_zygote_signals() -> None:
    """In a new worker: the zygote's wake-up fd and SIGCHLD handler are not its own. (SIGINT
    stays ignored until worker_main leads its own process group: see above.)"""
    signal.set_wakeup_fd(-1)
    _signal.signal(signal.SIGCHLD, _signal.SIG_DFL)


def _print_failure() -> None:
    """In a new worker that failed before its task loop: the traceback, on its stderr."""
    try:
        sys.excepthook(*sys.exc_info())
        sys.stderr.flush()
    except BaseException:
        pass


class FirstWorker:
    """A worker that the zygote forks at its birth, made ready by the caller before it.

    ``target(*args)`` is what the worker runs, as a ``multiprocessing`` process named ``name``;
    ``fds`` are the worker's own ends of its pipes (the caller and the zygote close their
    copies, and so does every other first worker); ``parent_sentinel`` is the descriptor
    ``multiprocessing.parent_process()`` watches in the worker (one that ends with the caller).

    Example (no zygote was born with it: it is not started, and its status pipe is closed)::

        >>> import os
        >>> from conveyor.backends.process.zygote import FirstWorker
        >>> r, w = os.pipe()
        >>> worker = FirstWorker(print, (), "example", [r], r)
        >>> worker.adopt() is None
        True
        >>> os.close(r); os.close(w)
    """

    def __init__(
        self,
        target: Callable[..., object],
        args: tuple[Any, ...],
        name: str,
        fds: list[int],
        parent_sentinel: int,
    ) -> None:
        self.process = _FirstWorkerProcess(target=target, args=args, name=name)
        self.process._first = self  # what its Popen adopts
        self.fds = fds
        self.parent_sentinel = parent_sentinel
        # its exit code, written by the zygote when it dies (as for a worker asked of it)
        self.status_r, self.status_w = os.pipe()
        # set by _give_birth: where the zygote writes its pid, and its place there
        self.births: _Births | None = None
        self.index = 0

    @property
    def born(self) -> bool:
        """Whether a zygote was born with it (and so forked it, or failed to: see :attr:`pid`)."""
        return self.births is not None

    @property
    def pid(self) -> int | None:
        """Its pid, read from the zygote when first asked (``None``: the zygote failed to fork
        it, or died first; then its status pipe is closed too, and it is taken for dead)."""
        return self.births.pid(self.index) if self.births is not None else None

    def adopt(self) -> process.BaseProcess | None:
        """In the caller: the worker's process, started, if the zygote was born with it (its
        pid is read when first needed, see :attr:`pid`); else ``None``, and the caller starts
        it another way, with the same pipes. Never waits for the zygote."""
        if not self.born:
            self.discard()
            return None
        self.process.start()  # its Popen takes the status pipe (see _FirstWorkerPopen)
        return self.process

    def discard(self) -> None:
        """Close what the caller still has of its status pipe (the worker is not adopted: one
        that runs ends when the caller closes its lifeline). Idempotent."""
        fds = [fd for fd in (self.status_r, self.status_w if not self.born else -1) if fd >= 0]
        self.status_r = self.status_w = -1
        for fd in fds:
            os.close(fd)


class _Births:
    """The pids of the first workers, which the zygote writes in their order to one pipe.

    Read by the caller only when one is needed (to signal a worker, to report it): a cold map
    never waits for the zygote's forks. Any thread; the lock keeps the reads in order.
    """

    def __init__(self, count: int) -> None:
        self.r, self.w = os.pipe()
        self._count = count
        self._pids: list[int | None] = []
        self._lock = threading.Lock()

    def pid(self, index: int) -> int | None:
        with self._lock:
            while len(self._pids) <= index:
                pid = 0  # the zygote could not fork it (or died before): no process
                if self.r >= 0:
                    try:
                        pid = _read_signed(self.r)
                    except (OSError, EOFError):
                        self.close_read_end()
                self._pids.append(pid or None)
            if len(self._pids) == self._count:
                self.close_read_end()
            return self._pids[index]

    def close_read_end(self) -> None:
        if self.r >= 0:
            os.close(self.r)
            self.r = -1


class _FirstWorkerProcess(process.BaseProcess):
    _start_method = None  # (as _ZygoteProcess)
    _first: FirstWorker

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _FirstWorkerPopen(process_obj)


class _FirstWorkerPopen(_ForkPopen):
    """The ``Popen`` of a first worker: its exit code comes from the zygote on its status
    pipe (as for a worker asked of the zygote: ``ZygotePopen``); its pid when first asked."""

    method = "zygote"
    from_zygote = True  # it has the caller's __main__ as at the birth (FunctionCache.seed)
    returncode: int | None  # (set by multiprocessing's Popen.__init__)

    def _launch(self, process_obj: Any) -> None:
        self._first = process_obj._first
        self.sentinel = self._first.status_r
        self.finalizer = util.Finalize(self, util.close_fds, (self.sentinel,))

    @property
    def pid(self) -> int | None:
        return self._first.pid

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if self.returncode is None:
            from multiprocessing.connection import wait

            if not wait([self.sentinel], 0 if flag == os.WNOHANG else None):
                return None
            try:
                self.returncode = _read_signed(self.sentinel)
            except (OSError, EOFError):
                self.returncode = 255  # the zygote died (or never forked it): taken for dead
        return self.returncode

    def _send_signal(self, sig: int) -> None:
        if self.pid is not None:  # (None: there is no such process)
            super()._send_signal(sig)


def _write_signed(fd: int, number: int) -> None:
    """Send a pid or an exit code to the caller (multiprocessing.forkserver's format, which
    ZygotePopen reads with forkserver.read_signed: 8 bytes, signed, native order)."""
    data = _SIGNED.pack(number)
    while data:
        data = data[os.write(fd, data) :]


def _read_signed(fd: int) -> int:
    """A number the zygote wrote (multiprocessing.forkserver's format: 8 bytes, signed)."""
    data = b""
    while len(data) < _SIGNED.size:
        chunk = os.read(fd, _SIGNED.size - len(data))
        if not chunk:
            raise EOFError("the zygote closed a status pipe")
        data += chunk
    number: int = _SIGNED.unpack(data)[0]
    return number


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

    def ensure_zygote(self, first: Sequence[FirstWorker] = ()) -> bool:
        """Make the zygote now if there is none (forking ``first`` at its birth); whether one
        runs afterwards."""
        return _ensure_zygote(first) is not None


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
