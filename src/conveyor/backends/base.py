"""What every backend offers the pool front and the map jobs."""

from __future__ import annotations

import abc
import os
import sys
import weakref
from collections.abc import Sequence

from .._chunking import TARGET_SECONDS
from .._work import Unit, errors_of
from .queue import JobTicket

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .._stats import PoolStats

__all__ = ["Backend", "copied_bytes", "fail_units", "rough_size"]

# Every backend of this process, so that a forked child can disown them (see _after_fork).
_instances: weakref.WeakSet[Backend] = weakref.WeakSet()


class Backend(abc.ABC):
    """Runs units on ``workers`` workers and hands outcomes to each unit's sink.

    Guarantees every backend keeps:

    * every unit given to :meth:`submit` gets exactly one outcome per item through its sink,
      unless it is cancelled (:meth:`cancel`, or the sink's ``starting`` returned False) or the
      backend is terminated (then its sink gets an error outcome for each item still owed);
    * outcomes of one unit arrive in item order (a unit may be delivered in several pieces);
    * :meth:`submit` raises in the caller's thread for work that cannot be sent (unpicklable);
    * once shut down it refuses new work, but takes the units of a job whose ticket is open
      (:meth:`begin_job`) and retries (:data:`~.queue.FOLLOW_UP`), and stays up for them;
    * in a process forked from the one that made it, it refuses everything with
      :class:`~conveyor.PoolClosed` and its shutdown and terminate return at once, touching
      nothing of the parent's (its workers and threads serve the parent only).
    """

    #: "thread", "process" or "dask"
    name: str = ""
    #: seconds of work a map's chunk is sized to (see conveyor._chunking)
    chunk_seconds: float = TARGET_SECONDS
    #: whether it sends a worker several short units (``Unit.coalesce``) in one message
    coalesces: bool = False
    #: whether a task is stopped in place on timeout (process) or only abandoned (thread)
    stops_timed_out_tasks: bool = False

    def __init__(self, workers: int):
        self.workers = workers
        self.owner_pid = os.getpid()
        _instances.add(self)

    @abc.abstractmethod
    def submit(self, units: Sequence[Unit], ticket: JobTicket | None = None) -> None:
        """Queue units to run (a retry after its backoff: at its ``not_before``).

        ``ticket``: the units continue a job (or a task) begun before a shutdown.
        """

    def begin_job(self) -> JobTicket | None:
        """Register a map job that starts now; raises PoolClosed once shut down."""
        return None

    def end_job(self, ticket: JobTicket | None) -> None:  # noqa: B027 (optional to override)
        """The job of ``ticket`` has ended: a shutdown need not wait for it any more."""

    def forget_after_fork(self) -> None:  # noqa: B027 (optional to override)
        """Called in a forked child: disown the parent's workers, refuse all use (override)."""

    def fork_error(self) -> str:
        """Why a forked child cannot use this backend."""
        return (
            f"this pool belongs to the parent process {self.owner_pid}, from which this "
            f"process ({os.getpid()}) was forked; its workers serve the parent only. "
            f"Make a new Pool in this process"
        )

    @abc.abstractmethod
    def cancel(self, owner: object) -> None:
        """Drop the queued units whose sink belongs to ``owner``; running ones finish."""

    @abc.abstractmethod
    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Finish queued work (or drop it), then stop the workers; idempotent."""

    @abc.abstractmethod
    def terminate(self) -> None:
        """Stop now: kill the workers, fail what is owed; for Ctrl-C and interpreter exit."""

    def interrupt(self, owner: object, wait: bool = True) -> None:
        """Cancel ``owner``'s queued units and stop its running ones where the backend can.

        Called on Ctrl-C, and by the asyncio front when an awaiting task is cancelled, so that
        nothing keeps running behind the caller's back; the backend stays usable. The running
        units' outcomes are not delivered. ``wait=False`` returns once the stop is under way
        (the process backend then reaps the killed workers in its dispatcher thread).
        """
        self.cancel(owner)

    def payload_size(self, items: Sequence[Any]) -> int:
        """About how many bytes sending ``items`` to a worker copies (``backend="auto"`` weighs
        it against the work). 0 for a backend whose workers share the caller's memory
        (threads, inline): the default. The process backend returns :func:`copied_bytes`.

        Example::

            >>> from conveyor.backends.inline import InlineBackend
            >>> InlineBackend().payload_size([bytes(1000)])
            0
        """
        return 0

    def stats(self) -> PoolStats:
        """Its workers' figures (see conveyor.Pool.stats); none for a backend without workers."""
        from .._stats import PoolStats

        return PoolStats.merged([])

    @property
    def alive(self) -> bool:
        """False once shut down or terminated."""
        return True


def fail_units(units: Sequence[Unit], error: BaseException) -> None:
    """Deliver ``error`` as the outcome of every item of each of ``units`` (any thread).

    What a backend does with units it can no longer run: dropped by a shutdown, held by workers
    that a terminate killed, or refused (an item that cannot be pickled).
    """
    for unit in units:
        unit.sink.deliver(unit, 0, errors_of(len(unit.items), error), 0.0)


def rough_size(obj: Any) -> int:
    """About how many bytes ``obj`` holds (shallow; arrays by their buffers).

    Example::

        >>> rough_size(bytes(1000)) >= 1000
        True
    """
    nbytes = getattr(obj, "nbytes", None)  # numpy arrays, memoryview
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(obj, (tuple, list)) and len(obj) <= 16:  # a starmap item, a call's args
        return sum(rough_size(part) for part in obj)
    try:
        return sys.getsizeof(obj)
    except Exception:
        return 64


def copied_bytes(items: Sequence[Any]) -> int:
    """About how many bytes sending ``items`` to a worker process copies (their
    :func:`rough_size`): what :meth:`Backend.payload_size` is for a backend that copies.

    Example::

        >>> copied_bytes([bytes(1000), bytes(1000)]) >= 2000
        True
    """
    return sum(rough_size(item) for item in items)


def _after_fork() -> None:
    for backend in list(_instances):
        backend.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
