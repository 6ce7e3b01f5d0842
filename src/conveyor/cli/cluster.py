"""``conveyor run --cluster ADDRESS``: each job's command runs on a Dask worker.

The runner keeps everything else (inputs, templates, order, retries, --halt, output, the job
log): only the place where one attempt runs changes. A job's argv (``/bin/sh -c SCRIPT sh
VALUES...``, built and checked here as for a local run) is sent to the cluster as one Dask task;
the task runs it on the worker's machine with the same code a local run uses
(:func:`conveyor.cli.process.run_command`: own process group, ``--timeout`` kills the group,
output captured), and sends back the status, the output and the worker's address.

Data flow for one attempt::

    runner slot thread                  Dask scheduler     Dask worker (one of its threads)
    ------------------                  --------------     --------------------------------
    client.submit(run_remote, argv,
       timeout, stop event name) -----> schedules -------> run_remote: run_command(argv) in a
    poll(): done pipe (written by the                        new session on that machine;
            future's done callback),                         watcher thread: Event(name).wait()
            stop pipe (StopSignal)                           with a 1 s horizon, sets the job's
      stop (Ctrl-C, --halt now):                             StopSignal when the event is set
        Event(name).set() --------------------------------->   -> the group gets TERM, then KILL
    <-------------- (status, stdout, stderr, start, duration, worker address) ---

Guarantees, and where they are kept:

* At most ``-j`` jobs run at once, as locally: one attempt per slot thread. Without ``-j`` the
  number of slots is the cluster's total worker threads (``Client.nthreads``), read when the run
  starts, so each worker runs at most as many jobs as it has threads.
* A stop reaches every running remote job: the stop is one ``distributed.Event`` per run, set
  once; each remote job watches it. The runner waits for the stopped jobs' answers
  (``STOP_WAIT`` seconds at most, then cancels their tasks), so Ctrl-C returns within seconds.
* Every call is its own task (``pure=False``): Dask would otherwise merge two jobs with equal
  command lines into one.
* A worker lost under a job: the scheduler runs the task again elsewhere (Dask's own
  ``allowed_failures``), or, once it gives up, the attempt fails with status 255 and a message
  naming the job, and ``--retries`` applies as for any failed attempt.

Requirements: conveyor (the same version) installed on the workers, since the task calls its
``run_command``; the commands and their files must exist on the workers' machines.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable

from conveyor.cli.errors import CliError
from conveyor.cli.process import (
    DEFAULT_TERMSEQ,
    Captured,
    Completed,
    Sink,
    StopSignal,
    TermSeq,
    run_command,
)

__all__ = ["STOP_WAIT", "ClusterError", "ClusterRunner", "run_remote"]

#: seconds the runner waits for stopped remote jobs to answer before cancelling their tasks
STOP_WAIT = 10.0

#: the variables of a job's environment that go with it to the worker
_JOB_VARIABLES = ("PARALLEL_SEQ", "PARALLEL_JOBSLOT", "PARALLEL_PID")

#: seconds between a remote job's checks that the run still wants it (one request each)
_WATCH_HORIZON = 1.0


class ClusterError(CliError):
    """The cluster named by ``--cluster`` cannot be used (the message says why)."""


def run_remote(
    argv: list[str],
    timeout: float | None,
    stop_name: str,
    env: dict[str, str] | None = None,
    termseq: TermSeq = DEFAULT_TERMSEQ,
) -> tuple[int, bool, bool, bytes, bytes, float, float, int, str]:
    """One attempt of one job, inside a Dask worker: run ``argv`` with ``run_command``.

    Returns (returncode, timed_out, stopped, stdout, stderr, start, duration, received, host)
    where host is the worker's address.

    Example (outside a worker the stop watch is skipped and host is this machine's name)::

        >>> run_remote(["/bin/sh", "-c", "echo hi"], None, "")[:4]
        (0, False, False, b'hi\\n')
    """
    stop = StopSignal()
    finished = threading.Event()
    host = socket.gethostname()
    watcher: threading.Thread | None = None
    try:
        from distributed import Event, get_client, get_worker

        host = get_worker().address
    except (ImportError, ValueError):
        pass  # not in a Dask worker (a test, a doctest): nothing to watch
    else:
        # The client is found here, in the task's thread: the watcher thread is outside
        # the task's context, where Dask cannot find the worker's client by itself.
        event = Event(stop_name, client=get_client())

        def watch() -> None:
            # A bounded wait, repeated: the thread ends soon after the job does.
            while not finished.is_set():
                try:
                    if event.wait(timeout=_WATCH_HORIZON):
                        stop.set()
                        return
                except BaseException:  # e.g. the scheduler is unreachable:
                    if finished.wait(_WATCH_HORIZON):  # try again; the job's end decides
                        return

        watcher = threading.Thread(target=watch, name="conveyor-run-remote-stop", daemon=True)
        watcher.start()
    try:
        result = run_command(
            argv,
            timeout=timeout,
            stop=stop,
            env=dict(os.environ, **env) if env else None,
            termseq=termseq,
        )
    finally:
        finished.set()
        if watcher is not None:
            watcher.join()
        stop.close()
    return (
        result.returncode,
        result.timed_out,
        result.stopped,
        result.stdout.getvalue(),
        result.stderr.getvalue(),
        result.start,
        result.duration,
        result.received,
        host,
    )


class ClusterRunner:
    """A connection to the cluster for one ``conveyor run``, and how one attempt runs there.

    Thread-safety: :meth:`run` is called from every slot thread at once; the client is
    thread-safe, and the only shared state is the stop event, set at most once under a lock.
    """

    def __init__(self, address: str) -> None:
        try:
            from conveyor.backends.dask.cluster import connect
        except ImportError as e:  # pragma: no cover - the module itself has no hard imports
            raise ClusterError(str(e)) from None
        try:
            self._connection = connect(address, None)
        except ImportError:
            raise ClusterError(
                '--cluster needs dask.distributed: pip install "conveyor[dask]"'
            ) from None
        except (ConnectionError, OSError, TimeoutError, ValueError, TypeError) as e:
            raise ClusterError(f"--cluster {address}: {e}") from None
        from distributed import Event

        self._client = self._connection.client
        self._stop_name = f"conveyor-run-stop-{uuid.uuid4().hex}"
        self._stop_event = Event(self._stop_name, client=self._client)
        self._stop_lock = threading.Lock()
        self._stopped = False

    def slots(self) -> int:
        """The cluster's worker threads in all (at least 1): the default ``-j``."""
        try:
            return max(1, sum(self._client.nthreads().values()))
        except Exception as e:
            raise ClusterError(f"--cluster: cannot ask the scheduler for its workers: {e}") from e

    def _stop_remote(self) -> None:
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self._stop_event.set()
        except BaseException as e:  # reported; the tasks are cancelled later
            print(
                f"conveyor run: warning: could not tell the cluster to stop its jobs "
                f"({type(e).__name__}: {e}); they are cancelled in {STOP_WAIT:g} s",
                file=sys.stderr,
            )

    def run(
        self,
        argv: list[str],
        *,
        timeout: float | Callable[[], float | None] | None,
        stop: StopSignal,
        sink: Sink | None = None,
        stdin: object = None,
        env: dict[str, str] | None = None,
        executable: str | None = None,
        termseq: TermSeq = DEFAULT_TERMSEQ,
        kill: StopSignal | None = None,
    ) -> Completed:
        """Run one attempt of a job on the cluster and wait for it (a slot thread).

        The arguments are :func:`~conveyor.cli.process.run_command`'s. ``sink``, ``stdin`` and
        ``kill`` must be None: output arrives whole when the remote job ends, and the options
        that need the others (``--line-buffer``, ``-u``, ``--pipe``, ``--memfree``) are refused
        with ``--cluster``. A ``timeout`` given as a function (``--timeout N%``) is read when
        the job is sent. Of ``env`` only the job's own variables go (the worker keeps its
        environment), and a program run without a shell is found on the worker's PATH.
        """
        assert sink is None and stdin is None and kill is None, "refused with --cluster"
        del executable  # a path on this machine: the worker looks argv[0] up itself
        own = {k: v for k, v in (env or {}).items() if k in _JOB_VARIABLES}
        limit = timeout() if callable(timeout) else timeout
        submitted = time.time()
        future = self._client.submit(
            run_remote, argv, limit, self._stop_name, own, tuple(termseq), pure=False
        )
        done = _DonePipe()
        future.add_done_callback(done.wake)
        try:
            poller = select.poll()
            poller.register(done.fileno(), select.POLLIN)
            poller.register(stop.fileno(), select.POLLIN)
            deadline: float | None = None
            while not future.done():
                if stop.is_set() and deadline is None:
                    self._stop_remote()
                    deadline = time.monotonic() + STOP_WAIT
                    poller.unregister(stop.fileno())
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if wait == 0.0:
                    future.cancel()
                    return _lost(submitted, stopped=True, why="")
                poller.poll(None if wait is None else int(wait * 1000) + 1)
        finally:
            done.close()
        try:
            answer = future.result()
        except BaseException as e:  # a lost worker, a cancelled task, an unpicklable answer
            return _lost(submitted, stopped=stop.is_set(), why=f"{type(e).__name__}: {e}")
        code, timed_out, stopped, out, err, start, duration, received, host = answer
        stdout, stderr = Captured(), Captured()
        stdout.write(out)
        stderr.write(err)
        return Completed(
            code,
            timed_out,
            stopped or stop.is_set(),
            stdout,
            stderr,
            start,
            duration,
            received,
            host,
        )

    def close(self) -> None:
        """Drop the stop event and the connection (after the last attempt)."""
        self._connection.close()


class _DonePipe:
    """A pipe that a future's done callback (on the client's thread) makes readable.

    Race: the callback can run after the waiter gave up and closed the pipe; the lock and the
    ``closed`` flag make sure it never writes to a closed descriptor number, which the process
    may have reused for another file by then.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._lock = threading.Lock()
        self._closed = False

    def fileno(self) -> int:
        """The read end (readable once the future is done)."""
        return self._read

    def wake(self, _future: object = None) -> None:
        """Make the read end readable (any thread; a no-op once closed)."""
        with self._lock:
            if not self._closed:
                os.write(self._write, b"x")

    def close(self) -> None:
        """Close both ends (the waiter, once)."""
        with self._lock:
            self._closed = True
            os.close(self._read)
            os.close(self._write)


def _lost(submitted: float, *, stopped: bool, why: str) -> Completed:
    """An attempt with no answer from the cluster: status 255 and the reason on stderr."""
    stderr = Captured()
    if why:
        stderr.write(f"conveyor run: the cluster lost this job: {why}\n".encode())
    return Completed(255, False, stopped, Captured(), stderr, submitted, time.time() - submitted)
