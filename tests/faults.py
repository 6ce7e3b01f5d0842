"""Fault injectors, and the checks that a fault left nothing behind.

The injectors are plain module-level functions, so worker processes import them by name and
they can be passed to ``map``/``submit`` like any task. Each does one real thing to the process
that runs it: a signal, an exit, a segfault, a memory wall, a blocked alarm, a child process.

The helpers wait on conditions with a deadline (never a fixed sleep as synchronization) and look
only at processes this test process started (its descendants) or at pids a test collected, so
they are safe under ``pytest -n``, where other tests run their own pools next door.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

# ============================================================================ injectors


def sigkill_self(_: object = None) -> None:
    """Die by SIGKILL, as the kernel's out-of-memory killer would kill a worker.

    This is the honest stand-in for the OOM killer: it sends exactly that signal, and it is
    what the parent sees (exit by SIGKILL, no chance to clean up), without exhausting the
    machine's memory to provoke the real thing.
    """
    os.kill(os.getpid(), signal.SIGKILL)


def sigint_self(_: object = None) -> None:
    """Send SIGINT to this very process (as ``kill -INT <worker pid>`` would), then wait."""
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)


def exit_with(code: int) -> None:
    """Leave the process at once with ``code``, skipping every handler (``os._exit``)."""
    os._exit(code)


def segfault(_: object = None) -> None:
    """Read address 0 from C: a real SIGSEGV."""
    ctypes.string_at(0)


def crash_on(x: int, bad: int, how: str = "sigkill") -> int:
    """``x * x``, except that item ``bad`` brings the worker down (``how``)."""
    if x == bad:
        if how == "sigkill":
            sigkill_self()
        elif how == "exit":
            exit_with(3)
        elif how == "segfault":
            segfault()
        else:
            raise ValueError(how)
    return x * x


class Poison:
    """An item that segfaults the process that unpickles it (the worker), not the one that
    pickles it: a death while the worker loads a chunk, before any of it runs."""

    def __init__(self, value: int):
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle_poison, (self.value,))


def _unpickle_poison(value: int) -> Poison:
    segfault()
    return Poison(value)  # never reached


def value_of(x: Any) -> int:
    """``x.value`` for a Poison-like object, ``x`` for a number."""
    return getattr(x, "value", x)


def blow_memory(limit: int = 512 * 1024 * 1024) -> int:
    """Allocate far past an address-space limit set just for this call: a real MemoryError.

    The limit (``RLIMIT_AS``) is set inside the task and restored before it returns, so the
    worker itself goes on; nothing close to the machine's memory is ever touched.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    usage = psutil.Process().memory_info().vms
    resource.setrlimit(resource.RLIMIT_AS, (usage + limit, hard))
    try:
        hog = []
        for _ in range(10_000):
            hog.append(bytearray(64 * 1024 * 1024))
        return len(hog)
    finally:
        hog = []
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


_held: list[bytes] = []


def hold_memory(megabytes: int) -> int:
    """Keep ``megabytes`` of touched memory alive in this worker; returns the worker's pid."""
    _held.append(b"\x01" * (megabytes * 1024 * 1024))
    return os.getpid()


def square(x: int) -> int:
    return x * x


def pid_of(_: object = None) -> int:
    """The pid of the process that ran it."""
    return os.getpid()


def pid_after(seconds: float) -> int:
    """Sleep ``seconds`` (an item that takes time), then return the worker's pid."""
    time.sleep(seconds)
    return os.getpid()


def sleep_ignoring_alarm(seconds: float) -> float:
    """Sleep with SIGALRM blocked: the worker's in-process alarm cannot interrupt it.

    Stands for C code that never returns to the interpreter; only the parent's hard deadline
    (killing the worker) ends it.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        time.sleep(seconds)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    return seconds


def nap(seconds: float, ignore_alarm: bool = False) -> float:
    """Sleep ``seconds`` (with SIGALRM blocked if ``ignore_alarm``); returns ``seconds``."""
    if ignore_alarm:
        return sleep_ignoring_alarm(seconds)
    time.sleep(seconds)
    return seconds


def swallow_timeouts(seconds: float) -> str:
    """Keep going for ``seconds`` whatever is raised at it (a broad ``except``), then return."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except Exception:
            pass
    return "finished"


def spawn_grandchild_and_hang(
    directory: str, tag: object = 0, new_session: bool = False, then: str = "hang"
) -> None:
    """Start ``sleep 1000`` (in a session of its own: out of reach of a kill of our process
    group), record its pid and ours in ``directory``, then hang (or ``then="sigkill"``: die)."""
    child = subprocess.Popen(["sleep", "1000"], start_new_session=new_session)
    # worker first: a test that waits for the grandchild files then finds both
    _write_atomically(Path(directory) / f"worker.{tag}", str(os.getpid()))
    _write_atomically(Path(directory) / f"grandchild.{tag}", str(child.pid))
    if then == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(1000)


def spawn_child(directory: str, tag: object = 0) -> int:
    """Start ``sleep 1000`` and return at once: a program an item leaves running."""
    child = subprocess.Popen(["sleep", "1000"])
    _write_atomically(Path(directory) / f"child.{tag}", str(child.pid))
    return child.pid


def hang_with_array(directory: str, tag: object, array: Any) -> None:
    """Record our pid in ``directory`` and hang, holding ``array`` (sent in shared memory)."""
    _write_atomically(Path(directory) / f"worker.{tag}", str(os.getpid()))
    time.sleep(1000 + float(array[0]) * 0)


def fail_times(directory: str, item: int, times: int) -> int:
    """Raise for the first ``times`` attempts at ``item``, then return it.

    Attempts are counted in a file, since each attempt may run in another worker process.
    """
    counter = Path(directory) / f"attempts.{item}"
    attempts = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempts))
    if attempts <= times:
        raise RuntimeError(f"attempt {attempts} at item {item} failed")
    return item


def crash_times(directory: str, item: int, times: int) -> int:
    """Like :func:`fail_times`, but the failing attempts kill the worker (SIGKILL)."""
    counter = Path(directory) / f"attempts.{item}"
    attempts = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempts))
    if attempts <= times:
        sigkill_self()
    return item


def fail_on(x: int, bad: int) -> int:
    """``x * x``, but item ``bad`` raises ValueError."""
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x * x


def wait_for_path(path: str, timeout: float = 60.0) -> bool:
    """Block until ``path`` exists (a task that needs the test's go-ahead)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def touch_and_wait(directory: str, tag: object, go: str, timeout: float = 60.0) -> object:
    """Say "started" (a file named after ``tag``), then wait for the file ``go``."""
    _write_atomically(Path(directory) / f"started.{tag}", str(os.getpid()))
    wait_for_path(go, timeout)
    return tag


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ============================================================================ waiting


def wait_until(
    condition: Callable[[], object],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.005,
) -> float:
    """Poll ``condition`` until true; returns the seconds it took, fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def read_pids(directory: Path | str, prefix: str) -> list[int]:
    """Pids recorded by tasks in files ``prefix.*`` (complete files only)."""
    return sorted(
        int(p.read_text())
        for p in Path(directory).glob(f"{prefix}.*")
        if not p.name.endswith(".tmp")
    )


# ============================================================================ processes


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def still_alive(pids: Iterable[int]) -> list[int]:
    return [pid for pid in pids if alive(pid)]


def wait_gone(pids: Iterable[int], timeout: float = 10.0, what: str = "processes") -> float:
    """Wait until none of ``pids`` runs; returns the seconds it took."""
    pids = list(pids)
    return wait_until(lambda: not still_alive(pids), timeout, f"{what} {still_alive(pids)} to exit")


def describe(pids: Iterable[int]) -> list[str]:
    """``pid (parent) command line`` of each pid, for failure messages."""
    out = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            out.append(
                f"{pid} (parent {proc.ppid()}, {proc.status()}) {' '.join(proc.cmdline())[:120]}"
            )
        except psutil.NoSuchProcess:
            out.append(f"{pid} (gone)")
    return out


def forkserver_pid() -> int | None:
    """The pid of this process's multiprocessing fork server, if it runs."""
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


def infrastructure_pids() -> set[int]:
    """multiprocessing's fork server and resource tracker, conveyor's zygote: they serve the
    whole session."""
    from multiprocessing import resource_tracker

    pids = {forkserver_pid(), getattr(resource_tracker._resource_tracker, "_pid", None)}
    if sys.platform.startswith("linux"):
        from conveyor.backends.process import zygote

        pids.add(zygote.pid())
    return {pid for pid in pids if pid is not None}


def descendants(pid: int | None = None) -> set[int]:
    """Pids of every living descendant of ``pid`` (default: this process)."""
    try:
        children = psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    return {c.pid for c in children if alive(c.pid)}


def default_pool_pids() -> set[int]:
    """Workers of conveyor's default pools (kept for the whole session on purpose)."""
    from conveyor import _api

    pids: set[int] = set()
    for pool in list(_api._defaults.values()):
        pids.update(getattr(pool._backend, "worker_pids", lambda: [])())
    return pids


@contextlib.contextmanager
def no_leftovers(timeout: float = 10.0) -> Iterator[None]:
    """Assert that every process started inside the block (and its children) is gone after it.

    multiprocessing's fork server and resource tracker and the workers of conveyor's default
    pools live on by design; anything else that a pool, a task or a test started must have
    exited within ``timeout``.
    """
    before = descendants()
    shm_before = shm_entries()
    yield

    def leftovers() -> set[int]:
        return descendants() - before - default_pool_pids() - infrastructure_pids()

    try:
        wait_until(lambda: not leftovers(), timeout, "processes started by the test to exit")
    except AssertionError:
        raise AssertionError(f"processes left behind: {describe(leftovers())}") from None
    assert_no_shm_leak(shm_before)


# ============================================================================ /dev/shm

SHM = Path("/dev/shm")
#: names that conveyor or the standard library (shared_memory, multiprocessing's heap and
#: semaphores) give to what they put in /dev/shm; other programs on the machine make their own
#: entries there at any time, and those are not ours to judge
OUR_SHM_PREFIXES = ("psm_", "wnsm_", "pym-", "mp-", "sem.mp-", "conveyor")


def shm_entries() -> set[str]:
    """Names of the files in /dev/shm that conveyor or the standard library may have made."""
    try:
        return {
            p.name
            for p in SHM.iterdir()
            if (p.name.startswith(OUR_SHM_PREFIXES) or "conveyor" in p.name) and not p.is_dir()
        }
    except OSError:
        return set()


def _shm_in_use() -> set[str]:
    """Names under /dev/shm that some process still maps or holds open."""
    used: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            with open(proc / "maps") as f:
                for line in f:
                    if "/dev/shm/" in line:
                        used.add(line.rsplit("/dev/shm/", 1)[1].split()[0])
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("/dev/shm/"):
                    used.add(target[len("/dev/shm/") :].split()[0])
        except OSError:
            continue
    return used


def assert_no_shm_leak(before: set[str], timeout: float = 5.0) -> None:
    """No /dev/shm entry made since ``before`` may outlive every process that uses it.

    Entries still mapped or open by a living process belong to work still running (other
    tests under ``pytest -n``); an entry nobody holds is a leak, unless it goes away in time.
    """

    def leaked() -> set[str]:
        new = shm_entries() - before
        return new - _shm_in_use() if new else set()

    wait_until(lambda: not leaked(), timeout, f"/dev/shm entries {sorted(leaked())} to go")


# ============================================================================ child interpreters

CHILD_PRELUDE = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    sys.path.insert(0, {tests!r})
    # The test runner may ignore SIGINT (pytest-xdist workers do) and an ignored SIGINT is
    # inherited: give this interpreter Python's usual KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import conveyor, faults

    def announce_when(directory, prefix, count, **extra):
        # Print one READY line once `count` tasks have recorded themselves.
        def watch():
            faults.wait_until(lambda: len(faults.read_pids(directory, prefix)) >= count, 60)
            info = dict(extra, pids=faults.read_pids(directory, prefix),
                        infrastructure=sorted(faults.infrastructure_pids()),
                        descendants=sorted(faults.descendants()))
            print("READY " + json.dumps(info), flush=True)
        threading.Thread(target=watch, daemon=True).start()
    """
)


@dataclass
class Child:
    """A Python interpreter running a test script, in its own session (like a terminal job)."""

    process: subprocess.Popen[bytes]
    directory: Path | None = None  # where its tasks record their pids
    ready: dict[str, Any] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    exit_seconds: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Read stdout until the script prints ``READY {json}``; returns the json."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                for line in buffer.split(b"\n")[:-1]:
                    if line.startswith(b"READY "):
                        self.stdout += buffer.decode(errors="replace")
                        self.ready = json.loads(line[len(b"READY ") :])
                        return self.ready
                left = deadline - time.monotonic()
                chunk = os.read(fd, 65536) if left > 0 and selector.select(left) else b""
                if not chunk:  # out of time, or the child closed stdout (exited)
                    self.stdout += buffer.decode(errors="replace")
                    self.finish(kill=True)
                    raise AssertionError(
                        f"the child never said READY\nstdout: {self.stdout}\nstderr: {self.stderr}"
                    )
                buffer += chunk

    def signal_and_time(self, signum: int, group: bool = False, timeout: float = 30.0) -> float:
        """Send ``signum`` (to the whole process group if ``group``: what a terminal's Ctrl-C
        does) and return the seconds until the interpreter has exited."""
        # A pidfd becomes readable the moment the process exits (Popen.wait polls, in steps of
        # up to 50 ms): the figure is the real one.
        pidfd = os.pidfd_open(self.pid) if hasattr(os, "pidfd_open") else None
        started = time.monotonic()
        if group:
            os.killpg(self.pid, signum)
        else:
            os.kill(self.pid, signum)
        try:
            if pidfd is not None:
                select.select([pidfd], [], [], timeout)
                self.exit_seconds = time.monotonic() - started
            self.process.wait(timeout)
        finally:
            if pidfd is not None:
                os.close(pidfd)
            else:
                self.exit_seconds = time.monotonic() - started
            self.finish(kill=True)
        return self.exit_seconds

    def finish(self, kill: bool = False, timeout: float = 30.0) -> None:
        """Collect the output; kill the child (and its session) first if ``kill`` and alive.

        Its stdout and stderr reach end-of-file only when every process that inherited them
        (workers, their children) has exited: if that does not happen in ``timeout``, the
        processes it left are killed (so the failure does not spread) and named.
        """
        if kill and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            left = still_alive(self.known_pids())
            names = describe(left)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            out, err = self.process.communicate(timeout=timeout)
            self.stdout += out.decode(errors="replace")
            self.stderr += err.decode(errors="replace")
            raise AssertionError(
                f"processes of the child still held its output {timeout:g} s after it "
                f"exited: {names}\nstderr: {self.stderr}"
            ) from None
        self.stdout += out.decode(errors="replace")
        self.stderr += err.decode(errors="replace")

    def known_pids(self) -> set[int]:
        """Every pid the child reported or its tasks recorded (itself excluded)."""
        pids = set(self.ready.get("descendants", [])) | set(self.ready.get("infrastructure", []))
        if self.directory is not None:
            for prefix in ("worker", "grandchild"):
                pids.update(read_pids(self.directory, prefix))
        return pids


def start_child(script: str, directory: Path | None = None) -> Child:
    """Run ``CHILD_PRELUDE + script`` in a new interpreter, in a session of its own.

    ``directory`` is where its tasks record pids (for the clean-up after a failure).
    """
    tests = str(Path(__file__).resolve().parent)
    code = CHILD_PRELUDE.format(tests=tests) + textwrap.dedent(script)
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    return Child(process, directory)
