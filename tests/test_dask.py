"""The Dask backend on real clusters: a ``dask scheduler`` and two ``dask worker`` processes
started from the command line (shared by the module), and conveyor's own LocalCluster.

The command-line workers run in a scratch directory without the tests on their path, so a
function that reached them by reference (by module name) would fail to load: the functions
below are made in a ``__main__``-like namespace (:data:`MAIN`), as if typed into a script or a
notebook, and must travel by value.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import conveyor

import faults

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.dask, pytest.mark.timeout(120)]

#: the map option that limits each item's run time
ITEM_TIMEOUT = "task_timeout"

MAIN_SOURCE = """
import os, signal, time, uuid

def square(x):
    return x * x

def inverse(x):
    return 1 / x

def token(_):
    return uuid.uuid4().hex

def busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds

def nap(seconds):
    time.sleep(seconds)
    return seconds

def kill_worker_on(x, bad):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10

def worker_pid(_=None):
    return os.getpid()

def init_env(directory, token):
    os.environ["CONVEYOR_TEST_INIT"] = token
    with open(os.path.join(directory, f"init.{os.getpid()}.{uuid.uuid4().hex}"), "w"):
        pass

def read_env(_=None):
    return os.environ.get("CONVEYOR_TEST_INIT")
"""


def _main_namespace() -> SimpleNamespace:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(MAIN_SOURCE, "<main>", "exec"), namespace)
    return SimpleNamespace(**namespace)


MAIN = _main_namespace()


def _dask_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dask", *args]


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, torn down after."""
    yield from command_line_cluster(tmp_path_factory.mktemp("dask"))


def command_line_cluster(scratch: Path) -> Iterator[str]:
    """Start a scheduler and two workers from the command line; yield the scheduler's address,
    then kill them all (also used by tests/test_cli_cluster.py)."""
    scheduler_file = scratch / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    common = dict(cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processes = [
        subprocess.Popen(
            _dask_command(
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                str(scheduler_file),
            ),
            start_new_session=True,
            **common,  # type: ignore[arg-type]
        )
    ]
    try:
        faults.wait_until(scheduler_file.exists, 60, "the scheduler to write its file")
        for _ in range(2):
            processes.append(
                subprocess.Popen(
                    _dask_command(
                        "worker",
                        "--scheduler-file",
                        str(scheduler_file),
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--dashboard-address",
                        "127.0.0.1:0",
                        "--memory-limit",
                        "0",
                    ),
                    start_new_session=True,
                    **common,  # type: ignore[arg-type]
                )
            )
        with distributed.Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            yield str(client.scheduler.address)
    finally:
        for process in processes:  # each leads its session: the group holds nanny and worker
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(30)


@pytest.fixture(scope="module")
def pool(address: str) -> Iterator[conveyor.Pool]:
    with conveyor.Pool(backend="dask", cluster=address) as p:
        yield p


def _client(pool: conveyor.Pool) -> Any:
    return pool._backend.client  # type: ignore[attr-defined]


def _worker_pids(pool: conveyor.Pool) -> dict[str, int]:
    return dict(_client(pool).run(os.getpid))


# ============================================================================ results


def test_function_from_main_runs_on_command_line_workers(pool: conveyor.Pool) -> None:
    offset = 7  # captured by a closure: travels with the function

    assert list(pool.imap(MAIN.square, range(2000))) == [x * x for x in range(2000)]
    assert list(pool.imap(lambda x: x + offset, range(10))) == list(range(7, 17))
    table = bytes(range(256)) * 1024  # 256 kB captured: copied to each worker once, not inline
    assert list(pool.imap(lambda i: table[i * 1000], range(200))) == [
        table[i * 1000] for i in range(200)
    ]
    assert pool.starmap(pow, [(2, 5), (3, 2)]) == [32, 9]


def test_unordered_gives_every_result(pool: conveyor.Pool) -> None:
    got = list(pool.imap_unordered(MAIN.nap, [0.3, 0.0, 0.0, 0.0], chunksize=1))
    assert sorted(got) == [0.0, 0.0, 0.0, 0.3]
    assert got[0] == 0.0  # not held back behind the slow first item


def test_infinite_input_is_read_lazily_and_break_stops_it(pool: conveyor.Pool) -> None:
    pulled = 0

    def numbers() -> Iterator[int]:
        nonlocal pulled
        for n in itertools.count():
            pulled = n + 1
            yield n

    for result in pool.imap(MAIN.square, numbers()):
        if result >= 300**2:
            break
    at_break = pulled
    assert at_break < 1_000_000  # bounded: nowhere near "materialize everything"
    assert pulled == at_break  # nothing more is read after the break
    assert list(pool.imap(MAIN.square, [3])) == [9]  # the pool is still fine


def test_every_call_runs_even_with_equal_arguments(pool: conveyor.Pool) -> None:
    first = list(pool.imap(MAIN.token, [0] * 50, chunksize=1))
    second = list(pool.imap(MAIN.token, [0] * 50, chunksize=1))
    assert len(set(first + second)) == 100  # pure=False: no merged tasks, no cached results
    # and nothing stays behind on the cluster once the results are in
    faults.wait_until(lambda: not _task_keys(pool), 30, "the results to leave the cluster")


def _task_keys(pool: conveyor.Pool) -> list[str]:
    """Keys of conveyor's tasks (not its function pickles) that the scheduler still holds."""
    return _client(pool).run_on_scheduler(  # type: ignore[no-any-return]
        lambda dask_scheduler: [
            str(k)
            for k in dask_scheduler.tasks
            if str(k).startswith("conveyor-") and not str(k).startswith("conveyor-fn-")
        ]
    )


def test_errors_become_failures(pool: conveyor.Pool) -> None:
    results = list(pool.imap(MAIN.inverse, [1, 0, 2], on_error="return"))
    assert results[0] == 1.0 and results[2] == 0.5
    failure = results[1]
    assert isinstance(failure, conveyor.Failure)
    assert isinstance(failure.exception, ZeroDivisionError)
    assert "inverse" in failure.traceback  # the worker's traceback came along
    with pytest.raises(ZeroDivisionError):
        list(pool.imap(MAIN.inverse, [1, 0]))


def test_progress_bar_counts_every_item(pool: conveyor.Pool) -> None:
    out = io.StringIO()
    list(pool.imap(MAIN.square, range(500), progress={"file": out, "mininterval": 0}))
    assert "500/500" in out.getvalue()


def test_submit_as_completed_and_asyncio(pool: conveyor.Pool) -> None:
    futures = [pool.submit(MAIN.square, x) for x in range(5)]
    assert sorted(f.result(60) for f in conveyor.as_completed(futures, timeout=60)) == [
        0,
        1,
        4,
        9,
        16,
    ]

    async def main() -> int:
        return await asyncio.get_running_loop().run_in_executor(pool, MAIN.square, 12)

    assert asyncio.run(main()) == 144


# ============================================================================ timeouts


def test_timeout_stops_a_busy_loop_and_the_worker_lives_on(pool: conveyor.Pool) -> None:
    pids = _worker_pids(pool)
    started = time.monotonic()
    results = list(
        pool.imap(
            MAIN.busy, [0.0, 60.0, 0.0], chunksize=3, on_error="return", **{ITEM_TIMEOUT: 1.0}
        )
    )
    assert time.monotonic() - started < 30
    assert results[0] == 0.0 and results[2] == 0.0
    assert isinstance(results[1].exception, conveyor.TaskTimeout)
    assert _worker_pids(pool) == pids  # stopped in place: no restart


def test_timeout_of_a_call_blocked_in_c_restarts_its_worker(pool: conveyor.Pool) -> None:
    started = time.monotonic()
    results = list(
        pool.imap(
            MAIN.nap, [0.0, 600.0, 0.0], chunksize=3, on_error="return", **{ITEM_TIMEOUT: 1.0}
        )
    )
    assert time.monotonic() - started < 30
    assert results[0] == 0.0 and results[2] == 0.0
    assert isinstance(results[1].exception, conveyor.TaskTimeout)
    client = _client(pool)
    client.wait_for_workers(2, timeout=60)
    # the stuck thread went with its worker: no worker is still running a task
    faults.wait_until(lambda: not any(client.processing().values()), 60, "the workers to idle")
    assert list(pool.imap(MAIN.square, range(4))) == [0, 1, 4, 9]


# ============================================================================ faults


def test_sigkilled_worker_mid_map_costs_nothing_with_retries(pool: conveyor.Pool) -> None:
    client = _client(pool)
    client.wait_for_workers(2, timeout=60)
    victim = next(iter(_worker_pids(pool).values()))
    results = []
    for n, value in enumerate(pool.imap(MAIN.nap, [0.05] * 80, chunksize=2, retries=2)):
        results.append(value)
        if n == 10:
            os.kill(victim, signal.SIGKILL)
    assert results == [0.05] * 80
    assert not faults.alive(victim)
    client.wait_for_workers(2, timeout=60)  # the nanny started a new one


def test_bad_address_is_a_clear_error_within_seconds() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        conveyor.Pool(backend="dask", cluster=f"tcp://127.0.0.1:{port}")
    assert time.monotonic() - started < 20


# ============================================================================ own cluster


@pytest.mark.timeout(300)  # each crash waits for Dask to start a worker: slow on a busy machine
def test_own_cluster_is_loopback_isolates_a_crash_and_leaves_nothing() -> None:
    others = faults.descendants()  # the module's command-line cluster, for one
    with faults.no_leftovers(timeout=30), conveyor.Pool(workers=2, backend="dask") as pool:
        client = _client(pool)
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(a.startswith("tcp://127.0.0.1:") for a in client.nthreads())
        assert _listening_addresses(others) <= {"127.0.0.1"}  # no port open beyond loopback
        results = list(
            pool.imap(MAIN.kill_worker_on, range(8), [5] * 8, chunksize=4, on_error="return")
        )
        assert [r for i, r in enumerate(results) if i != 5] == [i * 10 for i in range(8) if i != 5]
        assert isinstance(results[5].exception, conveyor.WorkerCrashed)


def _listening_addresses(others: set[int]) -> set[str]:
    """The addresses this process and its descendants but ``others`` listen on (TCP)."""
    import psutil

    pids = {os.getpid(), *faults.descendants()} - others
    return {
        c.laddr.ip
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


def test_one_shot_map_with_a_cluster(address: str) -> None:
    assert conveyor.map(MAIN.square, range(5), backend="dask", cluster=address) == [
        0,
        1,
        4,
        9,
        16,
    ]


# ============================================================================ errors, security


def test_plaintext_address_off_loopback_warns() -> None:
    from conveyor.backends.dask.cluster import warn_if_exposed

    with pytest.warns(UserWarning, match="anyone who can reach that port can run any code"):
        warn_if_exposed("tcp://10.11.12.13:8786")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_exposed("tcp://127.0.0.1:8786")
        warn_if_exposed("tls://10.11.12.13:8786")  # encrypted: the user chose security


def test_without_distributed_the_error_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r'pip install "conveyor\[dask\]"'):
        conveyor.Pool(backend="dask")


def test_cluster_needs_the_dask_backend() -> None:
    with pytest.raises(ValueError, match='needs backend="dask"'):
        conveyor.Pool(backend="thread", cluster="tcp://127.0.0.1:8786")
    with pytest.raises(TypeError, match="cluster must be an address"):
        conveyor.Pool(backend="dask", cluster=Path("/tmp"))
    with pytest.raises(ValueError, match="max_tasks_per_worker=5 is for the process backend"):
        conveyor.Pool(backend="dask", max_tasks_per_worker=5)


# ============================================================================ Ctrl-C


def test_ctrl_c_returns_within_seconds_and_releases_the_tasks(
    address: str, pool: conveyor.Pool, tmp_path: Path
) -> None:
    child = faults.start_child(
        f"""
directory = {str(tmp_path)!r}

def task(i):
    open(os.path.join(directory, f"started-{{i}}"), "w").close()
    time.sleep(3)
    return i

def announce():
    faults.wait_until(lambda: len(os.listdir(directory)) >= 2, 60)
    print("READY {{}}", flush=True)

threading.Thread(target=announce, daemon=True).start()
conveyor.map(task, range(40), backend="dask", cluster={address!r}, chunksize=1)
""",
    )
    child.wait_ready(timeout=90)
    seconds = child.signal_and_time(signal.SIGINT)
    print(f"\n  dask backend: exit {seconds:.3f} s after SIGINT")
    assert child.stderr.rstrip().endswith("KeyboardInterrupt"), child.stderr
    assert seconds < 10
    faults.wait_until(lambda: not _task_keys(pool), 30, "the scheduler to drop the tasks")
    assert len(os.listdir(tmp_path)) < 40  # the rest never started


def test_an_unpicklable_item_is_named(pool: conveyor.Pool) -> None:
    import threading

    with pytest.raises(TypeError, match="item 1"):
        list(pool.imap(len, [[1], [threading.Lock()], [3]], chunksize=1))
    with pytest.raises(TypeError, match="argument 0"):
        pool.submit(len, threading.Lock())
    assert list(pool.imap(len, [[1]])) == [1]


# ============================================================================ initializer


def test_initializer_runs_once_in_each_worker_process(address: str, tmp_path: Path) -> None:
    token = os.urandom(8).hex()
    with conveyor.Pool(
        backend="dask", cluster=address, initializer=MAIN.init_env, initargs=(str(tmp_path), token)
    ) as pool:
        assert set(pool.imap(MAIN.read_env, range(40), chunksize=1)) == {token}
        assert pool.submit(MAIN.read_env).result() == token
    runs = list(tmp_path.glob("init.*"))
    pids = {path.name.split(".")[1] for path in runs}
    assert len(runs) == len(pids) <= 2  # two worker processes, each initialized once


def test_failing_initializer_is_a_worker_init_error(address: str) -> None:
    with conveyor.Pool(backend="dask", cluster=address, initializer=int, initargs=("x",)) as pool:
        with pytest.raises(conveyor.WorkerInitError, match="initializer int failed"):
            pool.submit(abs, -1).result(timeout=60)
        results = pool.imap(abs, [-1, -2], on_error="return")
        assert all(isinstance(r, conveyor.Failure) for r in results)
