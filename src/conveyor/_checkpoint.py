"""Checkpointed maps: a journal of every item's outcome, so that a map resumes after a crash.

``conveyor.map(fn, items, checkpoint="run.db")`` keeps a SQLite journal beside the work. Each
item's result (or its :class:`~conveyor.Failure`) is written as it arrives and committed in
batches; running the same call again, after any crash of the caller (``kill -9`` included),
returns every result and computes only the items the journal does not hold.

Data flow (everything here runs in the caller's thread; the engine's workers never see the
journal)::

    input ──> _Scan: (position, item, hash of the item's pickled bytes)
                │  held in the journal?  yes: hash checked, position noted as "stored"
                │                        no:  (position, item) goes to the engine
                v
    engine map (on_error="return", fn wrapped as _AtPosition: returns (position, result))
                │
                v
    merge, in the caller: ordered maps hand out stored and fresh outcomes by position,
    unordered maps as they come; every fresh outcome goes to the _Writer, which commits
    rows every COMMIT_ROWS rows or COMMIT_SECONDS seconds, and when the map ends or stops

Guarantees, and what keeps them:

* **Nothing committed runs again.** A row is committed only with the outcome it records, and
  the scan sends an item to the engine only when no row holds its position. Rows that were not
  yet committed when the caller died are simply missing: those items run again.
* **Never a corrupt journal.** Large buffers are written to their files before the row that
  names them is committed; files that no committed row names (a crash between the two) are
  removed when the journal is opened. SQLite's own journal (WAL) makes each commit atomic.
* **One map per journal.** The journal is opened in SQLite's exclusive locking mode and the
  lock is taken at open: a second map on the same path (in this process or another) gets
  :class:`CheckpointInUse` at once, never interleaved rows. The lock dies with its process, so
  a ``kill -9`` leaves no stale lock.
* **The same work, or a clear refusal.** The journal records the function's identity (module,
  qualified name, and a digest of its code) and each item's digest; resuming with another
  function or other items raises :class:`CheckpointMismatch` naming what differs, unless the
  checkpoint says ``fresh=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import pickle
import sqlite3
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ._errors import Failure, PoolClosed

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointInUse",
    "CheckpointMismatch",
    "run_checkpointed",
]

FORMAT = "conveyor-checkpoint 1"
COMMIT_ROWS = 4096  # rows per commit: a commit's fixed cost spread thin over tiny items
COMMIT_SECONDS = 1.0  # ... or at least this often while results trickle in
WINDOW_ROWS = 2048  # rows read per query when scanning or handing out stored outcomes
BUFFER_FILE_BYTES = 64 * 1024  # out-of-band pickle buffers this big go to files of their own


class CheckpointError(Exception):
    """A checkpoint journal cannot be used (not writable, not a journal, a result unstorable).

    Example::

        >>> import conveyor
        >>> bad = "/proc/no/such/dir/run.db"
        >>> conveyor.map(abs, [1], checkpoint=bad)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        conveyor.CheckpointError: cannot open checkpoint '/proc/no/such/dir/run.db': ...
    """


class CheckpointInUse(CheckpointError):
    """Another map (in this process or another one) is using the same journal.

    Example::

        >>> import conveyor, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "run.db")
        >>> running = conveyor.imap(abs, range(10), checkpoint=path, backend="thread")
        >>> next(running)
        0
        >>> conveyor.map(abs, [1], checkpoint=path)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        conveyor.CheckpointInUse: checkpoint '...run.db' is in use by another map ...
        >>> running.close()
    """


class CheckpointMismatch(CheckpointError):
    """The journal was written by another function, or for other items.

    Pass ``checkpoint=conveyor.Checkpoint(path, fresh=True)`` to throw it away and start over.

    Example::

        >>> import conveyor, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "run.db")
        >>> conveyor.map(abs, [-1, -2], checkpoint=path, backend="thread")
        [1, 2]
        >>> conveyor.map(str, [-1], checkpoint=path)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        conveyor.CheckpointMismatch: checkpoint '...run.db' was written by builtins.abs, not ...
    """


class Checkpoint:
    """Where a map keeps its journal, and how to treat what the journal already holds.

    ``path`` is the SQLite file (created if missing; large results go to files in a folder
    named after it with ``.d`` appended). ``fresh=True`` discards what the journal holds and
    starts over. ``resume_failed=True`` runs again the items whose recorded outcome is a
    failure; otherwise a recorded failure is given back as it was recorded (raised, returned as
    a :class:`~conveyor.Failure` or skipped, as ``on_error`` says), like ``conveyor run
    --resume`` and ``--resume-failed``. A plain path means ``Checkpoint(path)``.

    Example::

        >>> import conveyor, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "run.db")
        >>> conveyor.map(abs, [-1, -2], checkpoint=conveyor.Checkpoint(path), backend="thread")
        [1, 2]
        >>> conveyor.map(abs, [-1, -2], checkpoint=path, backend="thread")  # from the journal
        [1, 2]
    """

    __slots__ = ("fresh", "path", "resume_failed")

    def __init__(
        self, path: str | os.PathLike[str], *, fresh: bool = False, resume_failed: bool = False
    ):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"checkpoint path must be a str or a path, got {path!r}")
        for name, flag in (("fresh", fresh), ("resume_failed", resume_failed)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        self.path = Path(os.fspath(path))
        self.fresh = fresh
        self.resume_failed = resume_failed

    def __repr__(self) -> str:
        return (
            f"Checkpoint({str(self.path)!r}, fresh={self.fresh}, "
            f"resume_failed={self.resume_failed})"
        )

    @classmethod
    def of(cls, value: Any) -> Checkpoint:
        """``value`` as a Checkpoint: a Checkpoint, or a path."""
        if isinstance(value, Checkpoint):
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls(value)
        raise TypeError(
            f"checkpoint must be a path or a conveyor.Checkpoint, got {value!r} "
            f"(of type {type(value).__name__})"
        )


# --------------------------------------------------------------------- identities


def function_identity(fn: Any) -> str:
    """A name for ``fn`` that stays the same across runs of the same program.

    The module and qualified name, plus a digest of the code for functions defined in Python
    (so editing a lambda's body is noticed); a ``functools.partial`` adds its arguments.

    Example::

        >>> function_identity(abs)
        'builtins.abs'
    """
    import functools

    if isinstance(fn, functools.partial):
        bound = hashlib.blake2b(_pickled((fn.args, fn.keywords)), digest_size=8).hexdigest()
        return f"partial({function_identity(fn.func)}, {bound})"
    if isinstance(fn, types.MethodType):
        return f"{function_identity(fn.__func__)} bound to {type(fn.__self__).__qualname__}"
    plain = (types.FunctionType, types.BuiltinFunctionType, type)
    target = fn if isinstance(fn, plain) else type(fn)
    name = f"{getattr(target, '__module__', None)}.{getattr(target, '__qualname__', '?')}"
    code = getattr(fn, "__code__", None) or getattr(type(fn).__call__, "__code__", None)
    if isinstance(code, types.CodeType):
        name += f" {_code_digest(code)}"
    return name


def _code_digest(code: types.CodeType) -> str:
    digest = hashlib.blake2b(digest_size=8)

    def feed(co: types.CodeType) -> None:
        digest.update(co.co_code)
        digest.update(repr(co.co_names).encode())
        for const in co.co_consts:
            if isinstance(const, types.CodeType):
                feed(const)
            else:
                digest.update(repr(const).encode())

    feed(code)
    return digest.hexdigest()


def _pickled(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps(value, protocol=5)


def item_digest(item: Any) -> bytes:
    """What an item is known by: its pickled bytes, hashed when longer than a hash.

    Example::

        >>> item_digest(7) == item_digest(7) != item_digest(8)
        True
    """
    pickled = _pickled(item)
    if len(pickled) <= 32:  # a small item is its own (exact, and cheaper) digest
        return pickled
    return hashlib.blake2b(pickled, digest_size=16).digest()


# --------------------------------------------------------------------- the journal


class Journal:
    """One open journal: the SQLite file, its buffer folder, and its exclusive lock."""

    def __init__(self, checkpoint: Checkpoint, function: str, mode: str):
        self.checkpoint = checkpoint
        self.path = checkpoint.path
        self.files = self.path.with_name(self.path.name + ".d")
        self._pending: list[tuple[int, bytes, int, bytes, int]] = []
        self._buffers: list[pickle.PickleBuffer] = []  # of the outcome being recorded
        self._last_commit = time.monotonic()
        try:
            self.db = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot open checkpoint {str(self.path)!r}: {exc}") from None
        try:
            self._lock()
            self._check_or_create(function, mode)
            self._remove_stray_files()
            last = self.db.execute("SELECT MAX(position) FROM outcomes").fetchone()[0]
        except BaseException:
            self.db.close()
            raise
        self._last_at_open = -1 if last is None else int(last)
        self._window: dict[int, tuple[bytes, bool]] = {}
        self._window_start = self._window_stop = 0

    def _lock(self) -> None:
        try:
            self.db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("BEGIN EXCLUSIVE")  # takes the lock now; kept until close
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise CheckpointInUse(
                    f"checkpoint {str(self.path)!r} is in use by another map "
                    "(one journal serves one map at a time)"
                ) from None
            raise CheckpointError(f"cannot open checkpoint {str(self.path)!r}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} is not a conveyor checkpoint journal ({exc})"
            ) from None

    def _check_or_create(self, function: str, mode: str) -> None:
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master")}
        if tables and not {"meta", "outcomes"} <= tables:
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} is a SQLite file but not a conveyor checkpoint "
                f"journal (it has tables {sorted(tables)}); give another path"
            )
        if tables:
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
            if meta.get("format") != FORMAT:
                raise CheckpointMismatch(
                    f"checkpoint {str(self.path)!r} has format {meta.get('format')!r}, this "
                    f"conveyor writes {FORMAT!r}; pass fresh=True to start over"
                )
            if self.checkpoint.fresh:
                self._clear()
            elif meta.get("function") != function or meta.get("mode") != mode:
                was = f"{meta.get('function')} ({meta.get('mode')})"
                raise CheckpointMismatch(
                    f"checkpoint {str(self.path)!r} was written by {was}, not by "
                    f"{function} ({mode}); pass conveyor.Checkpoint(path, fresh=True) to start "
                    "over"
                )
            else:
                return
        with self._transaction():
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS outcomes (position INTEGER PRIMARY KEY, "
                "item BLOB NOT NULL, failed INTEGER NOT NULL, payload BLOB NOT NULL, "
                "buffers INTEGER NOT NULL)"
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("format", FORMAT), ("function", function), ("mode", mode)],
            )

    def _clear(self) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM outcomes")
            self.db.execute("DELETE FROM meta")
        if self.files.is_dir():
            for entry in self.files.iterdir():
                entry.unlink()

    def _remove_stray_files(self) -> None:
        if not self.files.is_dir():
            return
        named = {
            _buffer_name(position, index)
            for position, count in self.db.execute(
                "SELECT position, buffers FROM outcomes WHERE buffers > 0"
            )
            for index in range(count)
        }
        for entry in self.files.iterdir():
            if entry.name not in named:
                entry.unlink()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------- reading

    def recorded(self, position: int) -> tuple[bytes, bool] | None:
        """(item digest, failed) of the row at ``position``, or None.

        Read a window of rows at a time, ahead of the scan (which asks for positions in
        increasing order): a query per item would cost more than the item. Rows written while
        the map runs are at positions the scan has passed, so a window never misses one.
        """
        if position > self._last_at_open:
            return None
        if not self._window_start <= position < self._window_stop:
            rows = self.db.execute(
                "SELECT position, item, failed FROM outcomes WHERE position >= ? "
                "ORDER BY position LIMIT ?",
                (position, WINDOW_ROWS),
            ).fetchall()
            self._window = {row[0]: (row[1], bool(row[2])) for row in rows}
            self._window_start = position
            self._window_stop = rows[-1][0] + 1 if len(rows) == WINDOW_ROWS else 1 << 62
        return self._window.get(position)

    def outcomes(self, start: int, stop: int) -> Iterator[tuple[int, bool, Any]]:
        """(position, failed, value) of the rows in [start, stop), in order, a page at a time."""
        while start < stop:
            rows = self.db.execute(
                "SELECT position, failed, payload, buffers FROM outcomes "
                "WHERE position >= ? AND position < ? ORDER BY position LIMIT ?",
                (start, stop, WINDOW_ROWS),
            ).fetchall()
            if not rows:
                return
            for position, failed, payload, count in rows:
                buffers = [self._map_buffer(position, index) for index in range(count)]
                yield position, bool(failed), pickle.loads(payload, buffers=buffers)
            start = rows[-1][0] + 1

    def _map_buffer(self, position: int, index: int) -> Any:
        path = self.files / _buffer_name(position, index)
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                return bytearray()
            # copy-on-write: the caller may change its array; the file stays as written
            return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)

    # ------------------------------------------------------------- writing

    def record(self, position: int, digest: bytes, failed: bool, value: Any) -> None:
        """Queue the outcome of one item; committed with the next batch."""
        buffers = self._buffers
        buffers.clear()
        out_of_band = self._out_of_band
        try:
            if type(value) in _PLAIN:
                payload = pickle.dumps(value, protocol=5)
            else:
                payload = pickle.dumps(value, protocol=5, buffer_callback=out_of_band)
        except Exception:
            try:
                import cloudpickle

                buffers.clear()
                payload = cloudpickle.dumps(value, protocol=5, buffer_callback=out_of_band)
            except Exception as exc:
                if failed:  # keep the failure, with an exception that can be stored
                    value = _storable_failure(value)
                    buffers.clear()
                    payload = pickle.dumps(value, protocol=5)
                else:
                    raise CheckpointError(
                        f"the result of item {position} cannot be stored in checkpoint "
                        f"{str(self.path)!r}: {type(exc).__name__}: {exc}"
                    ) from exc
        if buffers:
            self.files.mkdir(exist_ok=True)
            for index, buffer in enumerate(buffers):
                with open(self.files / _buffer_name(position, index), "wb") as file:
                    file.write(buffer.raw())
        self._pending.append((position, digest, int(failed), payload, len(buffers)))
        if (
            len(self._pending) >= COMMIT_ROWS
            or time.monotonic() - self._last_commit >= COMMIT_SECONDS
        ):
            self.commit()

    def _out_of_band(self, buffer: pickle.PickleBuffer) -> bool:
        """pickle's buffer_callback: a large buffer goes to a file of its own."""
        if buffer.raw().nbytes < BUFFER_FILE_BYTES:
            return True  # small: stays in the pickle
        self._buffers.append(buffer)
        return False

    def commit(self) -> None:
        """Commit the queued rows."""
        if self._pending:
            with self._transaction():
                self.db.executemany(
                    "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?)", self._pending
                )
            self._pending.clear()
        self._last_commit = time.monotonic()

    def close(self) -> None:
        """Commit what is queued and release the journal."""
        try:
            self.commit()
        finally:
            self.db.close()


_PLAIN = frozenset({int, float, str, bool, type(None), complex})  # no buffers to look for


def _buffer_name(position: int, index: int) -> str:
    return f"{position}.{index}.buf"


def _storable_failure(failure: Failure) -> Failure:
    exc = failure.exception
    stand_in = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    return Failure(failure.item, stand_in, failure.traceback, failure.attempts)


# --------------------------------------------------------------------- running a map


class _AtPosition:
    """``fn`` applied to the item of a ``(position, item)`` pair; gives ``(position, result)``.

    It travels to the workers in place of ``fn``, so that an unordered map's results (and a
    failure's item) still say which position they belong to.
    """

    __slots__ = ("fn", "star")

    def __init__(self, fn: Callable[..., Any], star: bool):
        self.fn = fn
        self.star = star

    def __call__(self, pair: tuple[int, Any]) -> tuple[int, Any]:
        position, item = pair
        return position, (self.fn(*item) if self.star else self.fn(item))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_AtPosition, (self.fn, self.star))


#: What the engine is asked to run: (wrapped fn, iterable of (position, item), ordered) ->
#: iterator of ``(position, result)`` pairs or Failures (the engine runs with on_error="return").
StartEngine = Callable[[Callable[..., Any], Iterable[tuple[int, Any]], bool], Iterator[Any]]

_STORED, _FRESH = 0, 1


class _Run:
    """One checkpointed map: the scan that feeds the engine, and the merge that hands out."""

    def __init__(
        self, journal: Journal, iterable: Iterable[Any], resume_failed: bool, ordered: bool
    ):
        self.journal = journal
        self.ordered = ordered
        self.input = iter(iterable)
        self.resume_failed = resume_failed
        self.digests: dict[int, bytes] = {}  # sent to the engine, not yet recorded
        # What the scan has seen and the merge has not handed out: [_STORED, start, stop] runs
        # of positions the journal holds and, for an ordered map, [_FRESH, position] for the
        # items sent to the engine (an unordered map hands fresh outcomes out as they come).
        self.order: deque[list[int]] = deque()

    def scan(self) -> Iterator[tuple[int, Any]]:
        """The engine's input: the items the journal does not hold, with their positions."""
        for position, item in enumerate(self.input):
            digest = item_digest(item)
            recorded = self.journal.recorded(position)
            if recorded is not None:
                if recorded[0] != digest:
                    raise CheckpointMismatch(
                        f"checkpoint {str(self.journal.path)!r} was written for other items: "
                        f"the item at position {position} ({_short(item)}) differs from the one "
                        "recorded; pass conveyor.Checkpoint(path, fresh=True) to start over"
                    )
                if not (recorded[1] and self.resume_failed):
                    last = self.order[-1] if self.order else None
                    if last is not None and last[0] == _STORED and last[2] == position:
                        last[2] = position + 1
                    else:
                        self.order.append([_STORED, position, position + 1])
                    continue
            if self.ordered:
                self.order.append([_FRESH, position])
            self.digests[position] = digest
            yield position, item

    def settle(self, outcome: Any) -> tuple[int, bool, Any]:
        """Record one outcome from the engine; returns (position, failed, value)."""
        if isinstance(outcome, Failure):
            position, item = outcome.item
            value: Any = Failure(item, outcome.exception, outcome.traceback, outcome.attempts)
            failed = True
        else:
            position, value = outcome
            failed = False
        if not (failed and isinstance(value.exception, PoolClosed)):
            self.journal.record(position, self.digests.pop(position), failed, value)
        return position, failed, value

    def stored(self, start: int, stop: int) -> Iterator[tuple[int, bool, Any]]:
        return self.journal.outcomes(start, stop)


def run_checkpointed(
    checkpoint: Any,
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    *,
    star: bool,
    ordered: bool,
    on_error: str,
    start_engine: StartEngine,
) -> Iterator[Any]:
    """Run a map through a journal; yields results as the map would (see the module's doc).

    Opening the journal (and so every error about it) happens at the call, before any item
    runs; the results come as the returned iterator is consumed.
    """
    point = Checkpoint.of(checkpoint)
    journal = Journal(point, function_identity(fn), "starmap" if star else "map")
    try:
        run = _Run(journal, iterable, point.resume_failed, ordered)
    except BaseException:
        journal.close()
        raise
    return _results(run, fn, star, ordered, on_error, start_engine)


def _results(
    run: _Run,
    fn: Callable[..., Any],
    star: bool,
    ordered: bool,
    on_error: str,
    start_engine: StartEngine,
) -> Iterator[Any]:
    engine = start_engine(_AtPosition(fn, star), run.scan(), ordered)
    try:
        for outcome in engine:
            position, failed, value = run.settle(outcome)
            # Hand out what the scan found stored before this outcome: in order, the stored
            # runs ahead of this position (the next fresh entry must be this one); unordered,
            # every stored run seen so far.
            while run.order and run.order[0][0] == _STORED:
                _kind, start, stop = run.order.popleft()
                yield from _handed_out(run.stored(start, stop), on_error)
            if ordered:
                entry = run.order.popleft()
                if entry != [_FRESH, position]:
                    raise AssertionError(f"engine gave position {position}, expected {entry}")
            if not failed or on_error == "return":
                yield value
            elif on_error == "raise":
                value.reraise()
        while run.order:
            _kind, start, stop = run.order.popleft()
            yield from _handed_out(run.stored(start, stop), on_error)
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
        run.journal.close()


def _handed_out(outcomes: Iterator[tuple[int, bool, Any]], on_error: str) -> Iterator[Any]:
    for _position, failed, value in outcomes:
        if not failed or on_error == "return":
            yield value
        elif on_error == "raise":
            value.reraise()
        # "skip": nothing


def _short(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 60 else text[:57] + "..."
