"""The inline backend: runs each unit at once, in the calling thread.

``backend="auto"`` uses it for work so small that sending it anywhere would cost more than
running it: the whole call is expected to take a few milliseconds. It offers no isolation and
no timeouts, so ``auto`` never picks it when a ``timeout`` is set.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .._work import Unit, outcomes_of, run_items
from .base import Backend
from .queue import JobTicket

__all__ = ["InlineBackend"]


class InlineBackend(Backend):
    """Runs units synchronously inside :meth:`submit`.

    Example::

        >>> InlineBackend().workers
        1
    """

    name = "inline"

    def __init__(self) -> None:
        super().__init__(1)

    def submit(self, units: Sequence[Unit], ticket: JobTicket | None = None) -> None:
        for unit in units:
            delay = unit.not_before - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # a retry's backoff; the caller waits for it either way
            if not unit.sink.starting(unit):
                continue
            started = time.perf_counter()
            values, errors = run_items(unit.fn, unit.mode, unit.items)
            missing = len(unit.items) - len(values)
            if missing > 0:  # the function shortened the input list it runs over (a Span)
                lost = RuntimeError("the input list got shorter while the call ran over it")
                errors.update(dict.fromkeys(range(len(values), len(unit.items)), lost))
                values.extend([None] * missing)
            unit.sink.deliver(unit, 0, outcomes_of(values, errors), time.perf_counter() - started)

    def cancel(self, owner: object) -> None:
        pass

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        pass

    def terminate(self) -> None:
        pass
