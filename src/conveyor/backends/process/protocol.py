"""The messages between the dispatcher thread and a worker process, over that worker's own pipe.

Data flow::

    dispatcher thread (parent)                            worker process
    --------------------------                            --------------
    RUN  (stream, [unit, ...])  ------ pipe ------>       run each unit's items in order
                                <----- pipe -------       DONE (per unit results) once the batch
                                                          is finished, or, for a streamed batch
                                                          (units with a timeout), ITEM per item
    STOP                        ------ pipe ------>       exit
                                <----- pipe -------       INIT_FAILED (traceback) and exit

A unit on the wire is ``(unit_id, fn_key, fn_blob or None, mode, timeout, count, items_blob)``. The
function travels once per worker: the parent sends ``fn_blob`` only when the worker's function
cache does not hold ``fn_key``. Both sides keep that cache as an LRU of :data:`FN_CACHE_SIZE`
entries and update it in the same order (the parent replays what it sent), so they always agree
on what the worker holds without any message about it.

Exactly one RUN is outstanding per worker: the parent sends the next one only after the last
DONE (or final ITEM) of the previous batch. Neither side can then block writing while the other
also writes, so the pipe cannot deadlock, and the parent always knows what a worker holds: when
it dies, what it held is what is owed.
"""

from __future__ import annotations

import pickle
from typing import Any

from ..._work import Outcomes

__all__ = ["DONE", "FN_CACHE_SIZE", "INIT_FAILED", "ITEM", "RUN", "STOP", "decode", "encode"]

RUN = 1
STOP = 2
DONE = 3
ITEM = 4
INIT_FAILED = 5

FN_CACHE_SIZE = 64


def encode(message: tuple[Any, ...]) -> bytes:
    """One message as bytes (its nested blobs are bytes already)."""
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


decode = pickle.loads


def decode_outcomes(blob: bytes) -> Outcomes:
    """The ``(values, errors)`` of a DONE or ITEM blob, with remote tracebacks attached."""
    from ..._errors import attach_remote_traceback

    values, errors = pickle.loads(blob)
    return values, {pos: attach_remote_traceback(exc, tb) for pos, (exc, tb) in errors.items()}
