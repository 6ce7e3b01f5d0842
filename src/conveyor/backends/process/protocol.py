"""The messages between the dispatcher thread and a worker process, over that worker's own pipe.

Data flow::

    dispatcher thread (parent)                            worker process
    --------------------------                            --------------
    fds of shared-memory segments -- fd socket -->        (one socket per worker, beside the pipe)
    RUN  (nfds, stream, [unit...], forget) -- pipe -->    run each unit's items in order
                                <----- pipe -------       DONE (per unit results) once the batch
                                                          is finished, or, for a streamed batch
                                                          (units with a timeout), ITEM per item
    STOP                        ------ pipe ------>       exit
                                <----- pipe -------       READY once the initializer ran, or
                                                          INIT_FAILED (traceback) and exit
    mark[0], mark[1] (shared)   <----- memory -----       what is running now (see below)

A unit on the wire is ``(unit_id, fn_key, fn or None, mode, timeout, count, items, exact)``
where ``fn`` and ``items`` are payloads ``(pickle stream, segment index or -1, buffer spans)``:
the segment index points into the descriptors sent on the worker's fd socket just before the
message (their number, ``nfds``, is the message's second field; likewise for DONE and ITEM going
back). DONE and ITEM end with the pool ids of pooled argument segments of which the worker holds
no view any more, RUN with the ids of pooled segments the parent closed (see
:mod:`conveyor._shm`). The function travels once per worker: the parent sends ``fn_blob`` only
when the worker's function cache does not hold ``fn_key``. Both sides keep that cache as an LRU
of :data:`FN_CACHE_SIZE` entries and update it in the same order (the parent replays what it
sent), so they always agree on what the worker holds without any message about it. ``exact``
asks the worker to mark each item it starts (see below).

Exactly one RUN is outstanding per worker: the parent sends the next one only after the last
DONE (or final ITEM) of the previous batch. Neither side can then block writing while the other
also writes, so the pipe cannot deadlock, and the parent always knows what a worker holds: when
it dies, what it held is what is owed.

The mark: which item a worker was on when it died
--------------------------------------------------
Each worker shares two 64-bit words with the parent (``mark``). The parent sets both to
:data:`IDLE` before sending a batch; the worker then writes, for unit ``j`` of the batch:

* ``mark[1] = IDLE`` and ``mark[0] = loading(j)`` before it loads the unit (unpickles its
  function and items), ``mark[0] = running(j)`` before it runs the unit's items;
* for an *exact* unit (one the parent sent back after a death, and every streamed unit)
  ``mark[1] = i`` before item ``i``. Ordinary units get no per-item write, so the hot loop over
  thousands of tiny items costs nothing extra.

When a worker dies, its last writes are what the parent reads (after the death: no race). So the
parent knows which unit was loading or running, and for an exact or one-item unit the very item,
and settles a death exactly (see ``ProcessBackend._settle_lost_batch``).
"""

from __future__ import annotations

import pickle
from typing import Any

from ..._serialize import Payload, loads_payload
from ..._shm import Segment, WorkerMappings
from ..._work import Outcomes

__all__ = [
    "DONE",
    "FN_CACHE_SIZE",
    "IDLE",
    "INIT_FAILED",
    "ITEM",
    "READY",
    "RUN",
    "STOP",
    "WirePayload",
    "decode",
    "decode_outcomes",
    "encode",
    "from_wire",
    "loading",
    "running",
    "to_wire",
]

RUN = 1
STOP = 2
DONE = 3
ITEM = 4
INIT_FAILED = 5
READY = 6

#: ``mark[0]`` / ``mark[1]`` before anything of a batch has started
IDLE = -1


FN_CACHE_SIZE = 64


def loading(unit_index: int) -> int:
    """``mark[0]`` while the worker loads unit ``unit_index`` of its batch."""
    return 2 * unit_index


def running(unit_index: int) -> int:
    """``mark[0]`` while the worker runs the items of unit ``unit_index`` of its batch."""
    return 2 * unit_index + 1


def encode(message: tuple[Any, ...]) -> bytes:
    """One message as bytes (its nested blobs are bytes already)."""
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


decode = pickle.loads


#: a payload on the wire: (pickle stream, index of its segment among the message's fds or -1,
#: the (offset, length) of each out-of-band buffer in that segment, the segment's pool id or -1)
WirePayload = tuple[bytes, int, list[tuple[int, int]], int]


def to_wire(payload: Payload, fds: list[int]) -> WirePayload:
    """The wire form of ``payload``, adding its segment's descriptor to ``fds``."""
    if payload.segment is None:
        return (payload.data, -1, [], -1)
    fds.append(payload.segment.fd)
    return (payload.data, len(fds) - 1, payload.spans, payload.segment.pool_id)


def from_wire(
    wire: WirePayload, segments: list[Segment], mappings: WorkerMappings | None = None
) -> Any:
    """Unpickle a wire payload; out-of-band buffers become views of the received segments."""
    data, index, spans, pool_id = wire
    segment = segments[index] if index >= 0 else None
    return loads_payload(data, segment, spans, pool_id, mappings)


def decode_outcomes(wire: WirePayload, segments: list[Segment]) -> Outcomes:
    """The ``(values, errors)`` of a DONE or ITEM payload, with remote tracebacks attached."""
    from ..._errors import attach_remote_traceback

    values, errors = from_wire(wire, segments)
    return values, {pos: attach_remote_traceback(exc, tb) for pos, (exc, tb) in errors.items()}
