"""Large data: buffers travel through shared memory, are views on the other side, never leak."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import pytest

import conveyor
from conveyor import _shm

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.skipif(not _shm.AVAILABLE, reason="memory files are Linux-only")

MB = 1 << 20


def mapping_of(address: int) -> str:
    """The /proc/self/maps path of the mapping holding ``address`` in this process."""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                return " ".join(fields[5:])
    return ""


def where_is(array) -> str:
    return mapping_of(array.__array_interface__["data"][0])


def total(array) -> float:
    return float(array.sum())


def block_sum(data, bounds: tuple[int, int]) -> tuple[float, str, int]:
    low, high = bounds
    return float(data[low:high].sum()), where_is(data), data.__array_interface__["data"][0]


def make_array(n: int):
    return np.arange(n, dtype=np.float64)


def echo(value):
    return value


def memfd_fds() -> list[str]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("/memfd:conveyor"):
            found.append(target)
    return found


@pytest.fixture
def pool():
    with conveyor.Pool(workers=2, backend="process") as p:
        yield p


def test_an_array_argument_is_a_view_of_shared_memory_in_the_worker(pool) -> None:
    data = np.random.default_rng(0).random(4 * MB // 8)
    halves = np.array_split(data, 2)
    places = list(pool.imap(where_is, halves))
    assert all(place.startswith("/memfd:conveyor") for place in places), places
    assert list(pool.imap(total, halves)) == pytest.approx([h.sum() for h in halves])


def test_small_arrays_stay_in_the_pipe(pool) -> None:
    assert not next(pool.imap(where_is, [np.ones(10)])).startswith("/memfd:")


def test_a_result_array_is_a_view_of_shared_memory_here(pool) -> None:
    result = pool.submit(make_array, 2 * MB).result()
    assert where_is(result).startswith("/memfd:conveyor")
    assert result[-1] == 2 * MB - 1
    result[0] = 42.0  # writable: copy-on-write, private to us


def test_bytes_bytearray_and_memoryview_round_trip(pool) -> None:
    blob = os.urandom(MB)
    values = [blob, bytearray(blob), memoryview(blob)]
    back = list(pool.imap(echo, values, chunksize=1))
    assert back[0] == blob and type(back[0]) is bytes
    assert back[1] == bytearray(blob) and type(back[1]) is bytearray
    assert bytes(back[2]) == blob


def test_a_captured_array_is_shared_once_per_pool(pool) -> None:
    data = np.arange(8 * MB // 8, dtype=np.float64)
    summer = functools.partial(block_sum, data)
    bounds = [(i * len(data) // 8, (i + 1) * len(data) // 8) for i in range(8)]
    before = len(memfd_fds())
    first = list(pool.imap(summer, bounds, chunksize=1))
    after_first = len(memfd_fds())
    second = list(pool.imap(summer, bounds, chunksize=1))
    assert sum(r[0] for r in first) == pytest.approx(data.sum())
    assert all(r[1].startswith("/memfd:conveyor") for r in first + second)
    # every task of both calls saw the array at the address it was first mapped at in its
    # worker: at most one mapping per worker, not one per task or per call
    assert len({r[2] for r in first + second}) <= 2
    # the pool holds one descriptor for the cached function's segment, nothing per task or call
    assert after_first == before + 1
    assert len(memfd_fds()) == after_first


def busy_segments(pool) -> int:
    return pool._backend._segments.counts()[0]


def test_no_descriptor_is_left_after_tasks_and_shutdown() -> None:
    before = memfd_fds()
    with conveyor.Pool(workers=2, backend="process") as p:
        results = list(p.imap(make_array, [MB] * 4, chunksize=1))
        list(p.imap(total, results))
        del results
        # argument segments are kept for reuse, but none is held once the tasks are done
        assert busy_segments(p) == 0
    assert memfd_fds() == before


@pytest.mark.parametrize("fault", ["raise", "timeout", "hard_timeout", "crash"])
def test_no_descriptor_or_mapping_is_left_after_a_fault(pool, fault: str) -> None:
    data = np.ones(2 * MB)
    task = {
        "raise": _raise,
        "timeout": _sleep,
        "hard_timeout": _sleep_deaf_to_alarm,
        "crash": _sigkill_self,
    }[fault]
    out = list(pool.imap(task, [data], task_timeout=1.0, on_error="return"))
    assert isinstance(out[0], conveyor.Failure)
    del out
    # every segment is free again: no unit and no worker holds it
    assert busy_segments(pool) == 0
    # and once the pool is gone, so is every descriptor and every worker's mapping
    pids = pool._backend.worker_pids()
    pool.shutdown()
    assert memfd_fds() == []
    assert not any(os.path.exists(f"/proc/{pid}") and _maps_of(pid) for pid in pids)


def _maps_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return [line for line in f if "/memfd:conveyor" in line]
    except OSError:
        return []


def _raise(_):
    raise ValueError("fails")


def _sleep(_):
    import time

    time.sleep(60)


def _sleep_deaf_to_alarm(_):
    import signal
    import time

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(60)


def _sigkill_self(_):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _memfd_mappings(_: int) -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if "/memfd:conveyor" in line]


def test_dev_shm_is_untouched(pool) -> None:
    before = set(os.listdir("/dev/shm"))
    list(pool.imap(total, np.array_split(np.ones(4 * MB), 4)))
    list(pool.imap(make_array, [MB] * 2))
    assert set(os.listdir("/dev/shm")) == before


def test_the_parent_does_not_hold_a_copy() -> None:
    # In a fresh interpreter: summing slices of a 400 MB array on the process backend must not
    # raise the parent's peak resident memory by anything like the array's size.
    script = textwrap.dedent("""
        import resource, numpy as np, conveyor
        data = np.ones(50_000_000)  # 400 MB
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with conveyor.Pool(workers=2, backend="process") as pool:
            sums = list(pool.imap(float, [s.sum() for s in []]))  # start-up
            sums = list(pool.imap(np.sum, np.array_split(data, 8), chunksize=1))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert abs(sum(sums) - 50_000_000) < 1
        print((after - before) // 1024)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    grew_mb = int(out.stdout.strip())
    assert grew_mb < 100, f"the parent's peak RSS grew by {grew_mb} MB"


# --------------------------------------------------------------------------- worker-side copy
# A map's large arguments are copied into their segment by the worker that runs them, straight
# out of this process's memory (conveyor._pull); a submit's are copied here, at once.


def test_a_map_chunk_is_copied_by_its_worker_into_shared_memory(pool) -> None:
    data = np.arange(4 * MB, dtype=np.float64)
    before = pool._backend._segments.counts()
    for round_ in range(3):  # segments are recycled; every round must see its own data
        data[::MB] += 1.0
        sums = list(pool.imap(total, np.array_split(data, 4), chunksize=1))
        assert sums == [float(part.sum()) for part in np.array_split(data, 4)], round_
    assert pool._backend._pull_ok is True
    where = list(pool.imap(where_is, [data[:MB]]))
    assert "/memfd:conveyor" in where[0]
    assert pool._backend._segments.counts()[0] == before[0]  # nothing still held


def test_a_submitted_array_is_copied_before_submit_returns(pool) -> None:
    data = np.ones(2 * MB)
    future = pool.submit(total, data)
    data[:] = 0.0  # the task still sees what was passed
    assert future.result(timeout=60) == 2.0 * MB


def test_a_worker_that_cannot_read_the_parent_gets_a_copy(monkeypatch) -> None:
    from conveyor import _pull

    pid, address, expected = _pull.probe_args()
    # The probe really runs in each worker and fails: the bytes it reads are not the ones named.
    monkeypatch.setattr(_pull, "probe_args", lambda: (pid, address, bytes(len(expected))))
    with conveyor.Pool(workers=2, backend="process") as pool:
        data = np.arange(2 * MB, dtype=np.float64)
        assert list(pool.imap(total, np.array_split(data, 4))) == [
            float(part.sum()) for part in np.array_split(data, 4)
        ]
        assert pool._backend._pull_ok is False


def test_probe_refuses_what_cannot_be_read() -> None:
    from conveyor import _pull

    pid, address, expected = _pull.probe_args()
    assert _pull.probe(pid, address, expected)
    assert not _pull.probe(pid, 8, expected)  # not mapped
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert not _pull.probe(int(dead.stdout), address, expected)
