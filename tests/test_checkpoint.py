"""Checkpointed maps: a journal that survives the caller's crash, and refuses to mix work."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor
from conveyor import _checkpoint

from faults import no_leftovers, start_child


def record_and_square(directory: str, x: int) -> int:
    """Square ``x``, appending ``x`` to a log first, so that executions can be counted."""
    with open(os.path.join(directory, "executions"), "a") as log:
        log.write(f"{x}\n")
    return x * x


def executions(directory: Path) -> list[int]:
    path = directory / "executions"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def committed_positions(path: Path) -> set[int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {row[0] for row in db.execute("SELECT position FROM outcomes")}


def one_over(x: int) -> float:
    return 1 / x


# ---------------------------------------------------------------------------- resume


@pytest.mark.parametrize("call", ["map", "imap", "imap_unordered"])
def test_rerun_returns_every_result_and_computes_nothing_again(
    tmp_path: Path, backend: str, call: str
) -> None:
    import functools

    fn = functools.partial(record_and_square, str(tmp_path))
    journal = tmp_path / "run.db"
    run = getattr(conveyor, call)
    first = list(run(fn, range(50), checkpoint=journal, backend=backend))
    assert sorted(first) == [x * x for x in range(50)]
    assert sorted(executions(tmp_path)) == list(range(50))
    again = list(run(fn, range(50), checkpoint=journal, backend=backend))
    assert again == first if call != "imap_unordered" else sorted(again) == sorted(first)
    assert len(executions(tmp_path)) == 50  # nothing ran the second time


def test_a_longer_input_computes_only_the_new_items(tmp_path: Path, backend: str) -> None:
    import functools

    fn = functools.partial(record_and_square, str(tmp_path))
    journal = tmp_path / "run.db"
    conveyor.map(fn, range(10), checkpoint=journal, backend=backend)
    assert conveyor.map(fn, range(15), checkpoint=journal, backend=backend) == [
        x * x for x in range(15)
    ]
    assert sorted(executions(tmp_path)) == list(range(15))


def test_caller_killed_mid_map_resumes_without_running_committed_items_again(
    tmp_path: Path,
) -> None:
    """kill -9 of the caller part-way: the re-run runs only what had not been committed."""
    journal = tmp_path / "run.db"
    script = f"""
        import functools, json
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_checkpoint import record_and_square
        fn = functools.partial(record_and_square, {str(tmp_path)!r})
        for count, value in enumerate(
            conveyor.imap(fn, range(6000), checkpoint={str(journal)!r}, backend="process",
                          workers=2, chunksize=4), 1):
            if count == {_checkpoint.COMMIT_ROWS + 100}:  # past the first commit
                print("READY " + json.dumps({{}}), flush=True)
                threading.Event().wait()  # and stay in the middle of the map
    """
    child = start_child(script, tmp_path)
    child.wait_ready(timeout=120)
    child.signal_and_time(signal.SIGKILL, group=True)
    committed = committed_positions(journal)
    ran_before = set(executions(tmp_path))
    assert committed, "nothing was committed before the kill"
    assert committed <= ran_before
    (tmp_path / "executions").unlink()
    import functools

    fn = functools.partial(record_and_square, str(tmp_path))
    with no_leftovers():
        results = conveyor.map(fn, range(6000), checkpoint=journal, backend="process")
    assert results == [x * x for x in range(6000)]
    ran_again = set(executions(tmp_path))
    assert not ran_again & committed, "items whose results were committed ran again"
    assert ran_again | committed == set(range(6000))


# ---------------------------------------------------------------------------- refusals


def test_another_function_is_refused_and_fresh_starts_over(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    assert conveyor.map(abs, [-1, -2], checkpoint=journal, backend="thread") == [1, 2]
    with pytest.raises(conveyor.CheckpointMismatch, match=r"builtins\.abs.*builtins\.str"):
        conveyor.map(str, [-1, -2], checkpoint=journal, backend="thread")
    fresh = conveyor.Checkpoint(journal, fresh=True)
    assert conveyor.map(str, [-1, -2], checkpoint=fresh, backend="thread") == ["-1", "-2"]
    assert conveyor.map(str, [-1, -2], checkpoint=journal, backend="thread") == ["-1", "-2"]


def test_an_edited_lambda_is_another_function(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    conveyor.map(lambda x: x + 1, [1], checkpoint=journal, backend="thread")
    conveyor.map(lambda x: x + 1, [1], checkpoint=journal, backend="thread")  # same code: fine
    with pytest.raises(conveyor.CheckpointMismatch):
        conveyor.map(lambda x: x + 2, [1], checkpoint=journal, backend="thread")


def test_other_items_are_refused_naming_the_position(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    conveyor.map(abs, [1, 2, 3], checkpoint=journal, backend="thread")
    with pytest.raises(conveyor.CheckpointMismatch, match=r"position 1 \(20\)"):
        conveyor.map(abs, [1, 20, 3], checkpoint=journal, backend="thread")
    with pytest.raises(conveyor.CheckpointMismatch, match=r"written by builtins\.abs \(map\)"):
        conveyor.starmap(abs, [(1,)], checkpoint=journal, backend="thread")


def test_two_maps_on_one_journal_at_once_are_refused(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    running = conveyor.imap(abs, iter(range(10**9)), checkpoint=journal, backend="thread")
    assert next(running) == 0
    with pytest.raises(conveyor.CheckpointInUse, match="in use by another map"):
        conveyor.map(abs, [1], checkpoint=journal, backend="thread")
    running.close()  # lets go of the journal
    assert conveyor.map(abs, [0, -1], checkpoint=journal, backend="thread") == [0, 1]


def test_a_journal_in_use_by_another_process_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    script = f"""
        running = conveyor.imap(abs, iter(range(10**9)), checkpoint={str(journal)!r},
                                backend="thread")
        next(running)
        print("READY {{}}", flush=True)
        threading.Event().wait()
    """
    child = start_child(script)
    try:
        child.wait_ready()
        with pytest.raises(conveyor.CheckpointInUse):
            conveyor.map(abs, [1], checkpoint=journal, backend="thread")
    finally:
        child.signal_and_time(signal.SIGKILL, group=True)
    # the lock died with its process: no stale lock after kill -9
    assert conveyor.map(abs, [0, -1], checkpoint=journal, backend="thread") == [0, 1]


def test_bad_paths_and_files_get_clear_errors_before_anything_runs(tmp_path: Path) -> None:
    ran: list[int] = []
    with pytest.raises(conveyor.CheckpointError, match="cannot open checkpoint"):
        conveyor.map(ran.append, [1], checkpoint=tmp_path / "no" / "such" / "run.db")
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(conveyor.CheckpointError, match="not a conveyor checkpoint"):
        conveyor.map(ran.append, [1], checkpoint=not_sqlite, backend="thread")
    assert not_sqlite.read_text().startswith("these are my notes")
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE customers (name TEXT)")
    with pytest.raises(conveyor.CheckpointError, match=r"tables \['customers'\]"):
        conveyor.map(ran.append, [1], checkpoint=other, backend="thread")
    with pytest.raises(TypeError, match=r"checkpoint must be a path or a conveyor\.Checkpoint"):
        conveyor.map(ran.append, [1], checkpoint=42)
    with pytest.raises(TypeError, match="fresh must be True or False"):
        conveyor.Checkpoint(tmp_path / "x.db", fresh="yes")  # type: ignore[arg-type]
    assert ran == []


def test_an_unstorable_result_names_the_item_and_leaves_the_journal_usable(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "run.db"

    def lock_for(x: int) -> object:
        return threading.Lock() if x == 3 else x

    with pytest.raises(conveyor.CheckpointError, match="the result of item 3 cannot be stored"):
        conveyor.map(lock_for, range(6), checkpoint=journal, backend="thread")
    # the items before it were kept; the journal opens and finishes the work
    assert conveyor.map(lock_for, range(3), checkpoint=journal, backend="thread") == [0, 1, 2]


# ---------------------------------------------------------------------------- failures


def test_recorded_failures_follow_on_error_and_resume_failed_runs_them_again(
    tmp_path: Path, backend: str
) -> None:
    journal = tmp_path / "run.db"
    first = conveyor.map(one_over, [1, 0, 2], checkpoint=journal, on_error="return")
    assert first[0] == 1.0 and isinstance(first[1], conveyor.Failure) and first[2] == 0.5
    assert first[1].item == 0 and isinstance(first[1].exception, ZeroDivisionError)
    again = conveyor.map(one_over, [1, 0, 2], checkpoint=journal, on_error="return")
    assert isinstance(again[1], conveyor.Failure) and again[1].item == 0
    assert conveyor.map(one_over, [1, 0, 2], checkpoint=journal, on_error="skip") == [1.0, 0.5]
    with pytest.raises(ZeroDivisionError):
        conveyor.map(one_over, [1, 0, 2], checkpoint=journal, backend=backend)
    retried = conveyor.Checkpoint(journal, resume_failed=True)
    with pytest.raises(ZeroDivisionError):  # ran again, failed again
        conveyor.map(one_over, [1, 0, 2], checkpoint=retried, backend=backend)


def test_a_crashed_item_is_recorded_as_a_failure_and_retried_on_request(tmp_path: Path) -> None:
    import functools

    from faults import crash_on

    journal = tmp_path / "run.db"
    fn = functools.partial(crash_on, bad=2)
    out = conveyor.map(fn, range(4), checkpoint=journal, backend="process", on_error="return")
    assert isinstance(out[2], conveyor.Failure)
    assert isinstance(out[2].exception, conveyor.WorkerCrashed)
    assert [out[i] for i in (0, 1, 3)] == [0, 1, 9]
    again = conveyor.map(fn, range(4), checkpoint=journal, backend="process", on_error="skip")
    assert again == [0, 1, 9]
    retried = conveyor.Checkpoint(journal, resume_failed=True)
    out = conveyor.map(fn, range(4), checkpoint=retried, backend="process", on_error="return")
    assert isinstance(out[2].exception, conveyor.WorkerCrashed)  # ran, and crashed, again


# ---------------------------------------------------------------------------- large results


def test_large_results_are_files_beside_the_journal_read_back_mapped(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    journal = tmp_path / "run.db"

    def block(i: int) -> object:
        return np.full(1_000_000, i, dtype=np.int32)

    first = conveyor.map(block, range(3), checkpoint=journal, backend="process")
    files = sorted(p.name for p in (tmp_path / "run.db.d").iterdir())
    assert files == ["0.0.buf", "1.0.buf", "2.0.buf"]
    with contextlib.closing(sqlite3.connect(journal)) as db:
        (largest,) = db.execute("SELECT MAX(LENGTH(payload)) FROM outcomes").fetchone()
    assert largest < 4096  # the arrays are in the files, not pickled into the database
    again = conveyor.map(block, range(3), checkpoint=journal, backend="process")
    for i, (a, b) in enumerate(zip(first, again)):
        assert (a == b).all() and int(b[0]) == i
    again[0][:] = 7  # writable, copy-on-write: the journal keeps what was computed
    third = conveyor.map(block, range(3), checkpoint=journal, backend="process")
    assert int(third[0][0]) == 0


def test_stray_buffer_files_from_a_crash_are_removed(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    conveyor.map(abs, [1], checkpoint=journal, backend="thread")
    (tmp_path / "run.db.d").mkdir()
    stray = tmp_path / "run.db.d" / "5.0.buf"
    stray.write_bytes(b"x" * 100)
    conveyor.map(abs, [1], checkpoint=journal, backend="thread")
    assert not stray.exists()


# ---------------------------------------------------------------------------- pools, starmap


def test_pool_maps_and_starmap_take_a_checkpoint(tmp_path: Path, pool: conveyor.Pool) -> None:
    assert list(pool.imap(abs, [-1, -2], checkpoint=tmp_path / "a.db")) == [1, 2]
    assert sorted(pool.imap_unordered(abs, [-1, -2, -3], checkpoint=tmp_path / "a.db")) == [
        1,
        2,
        3,
    ]
    assert pool.starmap(pow, [(2, 5), (3, 2)], checkpoint=tmp_path / "s.db") == [32, 9]
    assert conveyor.starmap(pow, [(2, 5), (3, 2)], checkpoint=tmp_path / "s.db") == [32, 9]


# ---------------------------------------------------------------------------- searching


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    items=st.lists(st.integers(-50, 50), max_size=40),
    stops=st.lists(st.integers(0, 45), max_size=3),
    ordered=st.booleans(),
)
def test_any_sequence_of_interrupted_runs_then_a_full_run_gives_the_plain_result(
    tmp_path_factory: pytest.TempPathFactory, items: list[int], stops: list[int], ordered: bool
) -> None:
    """Runs broken off after any number of results, in any order mode, then one run to the
    end: the result is the plain map's, and no item whose outcome was kept ran again."""
    directory = tmp_path_factory.mktemp("journal")
    journal = directory / "run.db"
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def counted(pair: tuple[int, int]) -> int:
        with lock:
            counts[pair[0]] = counts.get(pair[0], 0) + 1
        return pair[1] * 3 if pair[1] % 7 else -pair[1]

    work = list(enumerate(items))
    run = conveyor.imap if ordered else conveyor.imap_unordered
    kept: dict[int, int] = {}  # position -> how often it had run when its outcome was kept
    for stop in stops:
        results = run(counted, work, checkpoint=journal, backend="thread", workers=3)
        for count, _ in enumerate(results):
            if count >= stop:
                break
        results.close()
        for position in committed_positions(journal) - set(kept):
            kept[position] = counts[position]
    final = conveyor.map(counted, work, checkpoint=journal, backend="thread", ordered=ordered)
    expected = [x * 3 if x % 7 else -x for x in items]
    assert (final if ordered else sorted(final)) == (expected if ordered else sorted(expected))
    assert set(counts) == set(range(len(items)))
    ran_again = {p for p, n in kept.items() if counts[p] != n}
    assert not ran_again, f"items whose outcomes were kept ran again: {ran_again}"
