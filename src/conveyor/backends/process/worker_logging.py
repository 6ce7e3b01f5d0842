"""Logging in worker processes, re-emitted by the caller's logging.

Data flow::

    caller (parent)                                   worker process
    ---------------                                   --------------
    levels() at each worker's start  -- args ---->    install(levels, send): the worker's
      (root level, explicit logger levels,              loggers get the caller's levels, its
       logging.disable; None while logging              inherited handlers go, one handler
       is not imported: workers._log_levels)            ships each record it is given (levels
                                                        None: at the first unit it runs once
                                                        its logging exists, _logs_waiting)
    dispatcher thread: re-emit(record) <-- pipe --    LOG (record as a dict of plain values)
      filtered again by the caller's levels
      as they are now, then handled by
      logging.getLogger(record.name)

Guarantees:

* **Only records the caller would keep are shipped.** The worker's loggers get the levels the
  caller's had when the worker started, so a DEBUG record is not even made (let alone
  pickled) when the caller logs at WARNING; a map that does not log costs nothing. The caller
  may have changed its levels since: the parent filters again before handling.
* **A record survives the trip.** Its message is formatted with its arguments in the worker,
  its exception's traceback becomes ``exc_text`` and ``exc_info`` is dropped, and an ``extra``
  attribute that cannot be pickled travels as its ``repr``. ``processName``, ``process``,
  ``threadName`` and ``created`` stay the worker's.
* **Never a torn message.** Records may come from any thread of the worker, and from the main
  thread in the middle of a timed item: sends are serialized by the channel's lock, and the
  per-item alarm is held off while the main thread sends (see worker.py, ``_Alarm.hold``), so a
  TaskTimeout cannot interrupt a write half-way; it is raised right after.
* **Not re-entered.** A record logged while the worker is already shipping one in the same
  thread (a handler of the pipe's own code logging) is dropped rather than deadlocking.
* **A caller without logging pays nothing for it.** While the caller has not imported
  ``logging``, nothing can have configured it, and neither it nor its new workers import
  ``logging`` or this module for a map: such a worker ships its records from the first unit it
  runs once its own ``logging`` exists (a task's module imported it; see
  ``worker._logs_waiting``), with logging's default levels (:data:`DEFAULT_LEVELS`), the
  caller's at the worker's start.
* Records are re-emitted on the parent's dispatcher thread, never in a signal handler; a slow
  handler of the caller's delays the pool's dispatching as long as it runs.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable

TYPE_CHECKING = False  # typing is for type checkers only: a cold map must not pay its import
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DEFAULT_LEVELS", "Levels", "install", "levels", "reemit"]

#: what a worker needs to know of the caller's logging: (root level, {logger name: level set
#: explicitly}, the level given to ``logging.disable``)
Levels = tuple[int, dict[str, int], int]

#: a process's levels before anything set them (a caller that has not imported logging)
DEFAULT_LEVELS: Levels = (logging.WARNING, {}, 0)

#: attributes of a LogRecord that are never shipped (made plain, or rebuilt by the parent)
_DROPPED = ("args", "exc_info")


def levels() -> Levels:
    """The caller's logging levels, as the workers it starts now should use them.

    >>> root, named, disabled = levels()
    >>> root == logging.getLogger().level
    True
    """
    manager = logging.Logger.manager
    try:
        loggers = list(manager.loggerDict.items())
    except RuntimeError:  # another thread made a logger just now: take none but the root
        loggers = []
    named = {
        name: logger.level
        for name, logger in loggers
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET
    }
    return logging.getLogger().level, named, manager.disable


class _Shipper(logging.Handler):
    """The worker's handler: sends each record to the parent as a plain dict."""

    def __init__(self, send: Callable[[dict[str, Any]], None]):
        super().__init__()
        self._send = send
        self._busy = threading.local()

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: the send has one
        if getattr(self._busy, "on", False):
            return False
        self._busy.on = True
        try:
            if self.filter(record):
                self.emit(record)
            return True
        finally:
            self._busy.on = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            plain = plain_record(record)
        except Exception as exc:
            from ..._executor_errors import TaskTimeout  # (imported already if it is one)

            if isinstance(exc, TaskTimeout):
                raise  # the task's soft timeout came while the record was made: it is the task's
            self.handleError(record)
            return
        # Outside the try: a TaskTimeout held off during the send is raised as it ends (see
        # worker.py) and must reach the task, not logging's error handler.
        self._send(plain)


def plain_record(record: logging.LogRecord) -> dict[str, Any]:
    """``record`` as a dict that pickles: message formatted, traceback as text.

    >>> r = logging.LogRecord("app", logging.INFO, __file__, 1, "%d items", (3,), None)
    >>> d = plain_record(r)
    >>> d["msg"], d["args"]
    ('3 items', None)
    """
    plain = dict(record.__dict__)
    plain["msg"] = record.getMessage()
    if record.exc_info and not record.exc_text:
        plain["exc_text"] = logging.Formatter().formatException(record.exc_info)
    for name in _DROPPED:
        plain[name] = None
    plain.pop("message", None)  # set by a Formatter; the parent's formats anew
    for name, value in list(plain.items()):
        if not isinstance(value, (str, int, float, type(None))):
            try:
                pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            except Exception:
                plain[name] = repr(value)
    return plain


def install(caller_levels: Levels, send: Callable[[dict[str, Any]], None]) -> None:
    """Make this (worker) process's logging ship records to the parent (run at its start).

    Handlers inherited through ``fork`` are the caller's own: they are removed, or a record
    would be written twice (once here, once by the caller), and every logger propagates to the
    root's shipping handler (a logger that does not propagate in the caller still gets its
    records there: the caller's ``propagate`` applies when the record is handled again).
    """
    root_level, named, disabled = caller_levels
    manager = logging.Logger.manager
    for logger in list(manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    # Levels are set only where they differ (a forked worker has the caller's already): each
    # setting empties every logger's cache, costly in a new worker (copy-on-write faults).
    if root.level != root_level:
        root.setLevel(root_level)
    for name, level in named.items():
        logger = logging.getLogger(name)
        if logger.level != level:
            logger.setLevel(level)
    if manager.disable != disabled:
        logging.disable(disabled)
    root.addHandler(_Shipper(send))


def reemit(plain: dict[str, Any]) -> None:
    """Handle a worker's record with the caller's logging, if its levels (now) let it through.

    >>> r = logging.LogRecord("nobody.listens", logging.DEBUG, __file__, 1, "hi", None, None)
    >>> reemit(plain_record(r))  # below the root's WARNING: dropped
    """
    record = logging.makeLogRecord(plain)
    logger = logging.getLogger(record.name) if record.name != "root" else logging.getLogger()
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)
