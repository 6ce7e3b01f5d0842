"""What every backend offers the pool front and the map jobs."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from .._work import Unit

__all__ = ["Backend"]


class Backend(abc.ABC):
    """Runs units on ``workers`` workers and hands outcomes to each unit's sink.

    Guarantees every backend keeps:

    * every unit given to :meth:`submit` gets exactly one outcome per item through its sink,
      unless it is cancelled (:meth:`cancel`, or the sink's ``starting`` returned False) or the
      backend is terminated (then its sink gets an error outcome for each item still owed);
    * outcomes of one unit arrive in item order (a unit may be delivered in several pieces);
    * :meth:`submit` raises in the caller's thread for work that cannot be sent (unpicklable).
    """

    #: "thread" or "process"
    name: str = ""
    #: whether a task is stopped in place on timeout (process) or only abandoned (thread)
    stops_timed_out_tasks: bool = False

    def __init__(self, workers: int):
        self.workers = workers

    @abc.abstractmethod
    def submit(self, units: Sequence[Unit]) -> None:
        """Queue units to run (held back until each one's ``not_before``)."""

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

    @property
    def alive(self) -> bool:
        """False once shut down or terminated."""
        return True
