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
    re-emit it (worker_logging.py) <-- pipe -------       LOG (record as a dict), at any
                                                          time, from any thread of the worker
    pulling on or off (_pull.py)   <-- pipe -------       PROBED, once, on the first RUN that
                                                          carries shared memory
    mark[0], mark[1] (shared)   <----- memory -----       what is running now (see below)

Every message is a NamedTuple below (:class:`Run`, :class:`Stop`, :class:`Done`, :class:`Item`,
:class:`Ready`, :class:`InitFailed`, :class:`Log`, :class:`Probed`), read and written by field name;
one framing rule holds for all: the first field, ``nfds``, is the number of descriptors sent on the
worker's fd socket just before the message (the segments of shared memory its payloads point into; 0
for most messages). :func:`encode` and :func:`decode` are the only code that knows how they are laid
out on the wire. A RUN's units are :data:`WireUnit` tuples, whose ``fn`` and ``items`` are payloads
``(pickle stream, segment index or -1, buffer spans, ...)`` (see :data:`WirePayload`): the segment
index points into the descriptors sent ahead. DONE (per unit) and ITEM carry how many of their items
raised (for Pool.stats), and the pool ids of pooled argument segments of which the worker holds
no view any more (``released``); RUN carries the ids of pooled segments the parent closed
(``forget``, see :mod:`conveyor._shm`). The function travels once per worker: the parent sends
``fn`` only when the worker's function cache does not hold ``fn_key``. Both sides keep that cache
as an LRU of :data:`FN_CACHE_SIZE` entries and update it in the same order (the parent replays
what it sent), so they always agree on what the worker holds without any message about it.
``exact`` asks the worker to mark each item it starts (see below).

LOG messages may come at any time, also while the worker is idle (a thread of a task) or
between the messages of a batch; the parent reads them wherever it reads the pipe, and the
worker's sends are serialized, so they never split another message. They do not change the
argument below: the parent reads its pipes whenever it is not writing, and it writes only
messages that fit the socket's buffer to a worker that is running (prefetch) or one that is
idle and therefore reading.

Exactly one RUN is outstanding per worker: the parent sends the next one only after the last
DONE (or final ITEM) of the previous batch. Neither side can then block writing while the other
also writes, so the pipe cannot deadlock, and the parent always knows what a worker holds: when
it dies, what it held is what is owed.

The mark: which item a worker was on when it died
--------------------------------------------------
Each worker shares two 64-bit words with the parent (``mark``), :data:`IDLE` at first; the
worker writes, for unit ``j`` of batch number ``n`` (RUN's ``seq``):

* ``mark[1] = IDLE`` and ``mark[0] = loading(j, n)`` before it loads the unit (unpickles its
  function and items), ``mark[0] = running(j, n)`` before it runs the unit's items;
* for an *exact* unit (one the parent sent back after a death, and every streamed unit)
  ``mark[1] = i`` before item ``i``. Ordinary units get no per-item write, so the hot loop over
  thousands of tiny items costs nothing extra.

When a worker dies, its last writes are what the parent reads (after the death: no race). So the
parent knows which unit was loading or running, and for an exact or one-item unit the very item,
and settles a death exactly (see ``ProcessBackend._settle_lost_batch``). A mark naming an earlier
batch than the one the parent counts as running means the worker had not started it.

Prefetch: a worker may hold one batch more than it runs. The parent sends the next batch of
untimed work while the worker still runs its current one, so the worker goes from one batch to
the next without waiting a round trip (what keeps a map of 100,000 tiny items at
multiprocessing.Pool's speed). Such a message is small (at most :data:`PREFETCH_BYTES`; large
buffers travel in shared memory), so it fits in the socket's buffer and the parent's write
cannot block while the worker is busy writing its answer: still no deadlock. The worker only
starts it after it has sent the DONE of the batch before, so after a death the parent knows which
of the two it was on.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence

from ..._serialize import Payload, loads_payload
from ..._shm import Segment, WorkerMappings
from ..._work import Outcomes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    from ..._records import NamedTuple

__all__ = [
    "DONE",
    "FN_CACHE_SIZE",
    "IDLE",
    "INIT_FAILED",
    "ITEM",
    "LOG",
    "PREFETCH_BYTES",
    "PROBED",
    "READY",
    "RUN",
    "STOP",
    "Done",
    "InitFailed",
    "Item",
    "Log",
    "Mark",
    "Message",
    "Probed",
    "Ready",
    "Run",
    "Stop",
    "WirePayload",
    "WireUnit",
    "decode",
    "decode_outcomes",
    "encode",
    "from_wire",
    "loading",
    "read_mark",
    "running",
    "to_wire",
]

RUN = 1
STOP = 2
DONE = 3
ITEM = 4
INIT_FAILED = 5
READY = 6
LOG = 7
PROBED = 8

#: ``mark[0]`` / ``mark[1]`` before anything of a batch has started
IDLE = -1


FN_CACHE_SIZE = 64
#: a batch is sent ahead only if its message is at most this large
PREFETCH_BYTES = 64 * 1024


#: batches are numbered per worker (RUN carries the number) and ``mark[0]`` names its batch, so
#: a batch sent ahead (see the parent's prefetch) is never mistaken for the one before it
SEQ_STRIDE = 1 << 20


class Mark:
    """The two shared 64-bit words of a worker (see "The mark" above), ``IDLE`` at first.

    Read and written as ``mark[0]``, ``mark[1]`` through a memoryview: each is one aligned
    8-byte store. Two kinds of memory:

    * ``forked=True``, for a worker forked from this process or from a zygote born after the
      mark was made (it inherits the mapping): an anonymous shared ``mmap``. It cannot be
      pickled (the error says so), and a cold map's caller never imports multiprocessing's
      heap nor makes the heap's first arena (a file under /dev/shm), ~0.3 ms.
    * otherwise memory from multiprocessing's heap (a file under /dev/shm that is unlinked as
      soon as it is made, so nothing can be left there), sent to the worker in its start
      arguments (the heap's descriptor travels with them).

    Not ``RawArray``: its ctypes import (~3 ms) would be paid by a cold process map in the
    caller and again in every worker.

    Example::

        >>> mark = Mark()
        >>> mark[0], mark[1]
        (-1, -1)
        >>> mark[1] = 7
        >>> mark[1]
        7
        >>> Mark(forked=True)[0]
        -1
    """

    __slots__ = ("_memory", "_words", "_wrapper")

    def __init__(self, wrapper: Any = None, forked: bool = False) -> None:
        fresh = wrapper is None
        self._memory: Any = None
        if forked:
            import mmap

            self._memory = mmap.mmap(-1, 16)  # MAP_SHARED | MAP_ANONYMOUS: kept across fork
            self._words = memoryview(self._memory).cast("q")
        else:
            if fresh:
                from multiprocessing.heap import BufferWrapper

                wrapper = BufferWrapper(16)
            self._words = wrapper.create_memoryview().cast("q")
        self._wrapper = wrapper
        if fresh:
            self._words[0] = self._words[1] = IDLE

    def __getitem__(self, index: int) -> int:
        word: int = self._words[index]
        return word

    def __setitem__(self, index: int, value: int) -> None:
        self._words[index] = value

    def __reduce__(self) -> tuple[Any, ...]:
        if self._wrapper is None:
            raise TypeError("a Mark made with forked=True is inherited through fork, not sent")
        return Mark, (self._wrapper,)


def loading(unit_index: int, seq: int) -> int:
    """``mark[0]`` while the worker loads unit ``unit_index`` of batch ``seq``."""
    return seq * SEQ_STRIDE + 2 * unit_index


def running(unit_index: int, seq: int) -> int:
    """``mark[0]`` while the worker runs the items of unit ``unit_index`` of batch ``seq``."""
    return seq * SEQ_STRIDE + 2 * unit_index + 1


def read_mark(state: int) -> tuple[int, int, bool]:
    """``(batch number, unit index, running)`` of a ``mark[0]`` that is not :data:`IDLE`."""
    seq, rest = divmod(state, SEQ_STRIDE)
    index, odd = divmod(rest, 2)
    return seq, index, odd == 1


#: a payload on the wire: (pickle stream, index of its segment among the message's fds or -1,
#: the (offset, length) of each out-of-band buffer in that segment, the segment's pool id or -1,
#: and for a segment the receiver fills itself, (sender's pid, [(address, length), ...]) or None)
if TYPE_CHECKING:
    WirePayload = tuple[bytes, int, Sequence[tuple[int, int]], int, Any]
else:
    WirePayload = tuple


# ----------------------------------------------------------------------------- messages
#
# One framing rule: every message goes over the pipe as the plain tuple ``(kind, nfds, *fields)``,
# ``nfds`` being how many descriptors were sent just before it on the fd socket (0 for most).
# Each message is a NamedTuple (its fields in wire order, ``nfds`` first; its kind is its class,
# see _KINDS), made and read by name on both sides; :func:`encode` and :func:`decode` are the
# only code that knows the tuple layout. Per unit there is no record object: a RUN's units are
# typed plain tuples (WireUnit), a DONE has a column per field. A ``submit`` is a unit, and a
# record per unit (NamedTuples built, converted for pickle, rebuilt on the way in) measured
# +0.47 us per unit against +0.07 us for these.


#: A unit in a RUN, a plain tuple (one per ``submit``: no record class to make, pickle and read):
#: ``(unit_id, fn_key, fn, mode, timeout, n_items, items, exact)``, where ``fn`` is None when
#: the worker caches ``fn_key``, and ``exact`` asks it to mark each item before running it (see
#: "The mark" above). Made by ``packing.Packer.wire_units`` and read, by unpacking all eight
#: fields at once, by ``worker._run_unit`` only; the type checker holds both to this layout.
if TYPE_CHECKING:
    WireUnit = tuple[int, int, WirePayload | None, int, float | None, int, WirePayload, bool]
else:
    WireUnit = tuple


class Run(NamedTuple):
    """Parent to worker: run these units, in order (the batch numbered ``seq``)."""

    nfds: int
    stream: bool  # send an ITEM per item (timed units) instead of one DONE
    units: list[WireUnit]
    forget: list[int]  # pooled segments the parent closed: unmap them
    seq: int


class Stop(NamedTuple):
    """Parent to worker: exit."""

    nfds: int = 0


class Done(NamedTuple):
    """Worker to parent: the outcomes of a whole (unstreamed) batch, one column per field, one
    row per unit of the batch, in order (columns: no record per unit to make and read)."""

    nfds: int
    unit_ids: list[int]
    payloads: list[WirePayload]  # each unit's (values, errors)
    elapsed: list[float]  # each unit's run time
    failed: list[int]  # how many of each unit's items raised
    rss: int  # resident bytes, when the parent limits memory (else 0)
    released: list[int]  # pooled argument segments it holds no view of any more


class Item(NamedTuple):
    """Worker to parent: the outcome of one item of a streamed batch."""

    nfds: int
    unit_id: int
    position: int
    payload: WirePayload
    elapsed: float
    rss: int
    released: list[int]
    failed: int


class Ready(NamedTuple):
    """Worker to parent: the initializer ran (``pull_ok``: unused, always None; see Probed)."""

    nfds: int
    pull_ok: bool | None = None


class Probed(NamedTuple):
    """Worker to parent: whether it could read the parent's memory (see conveyor._pull).

    Sent once, on the first RUN that carries shared memory, before that batch's outcomes: the
    probe loads ctypes (~3 ms), which a worker that never sees large arguments never needs.
    Until a worker has said it, the parent copies large arguments instead of letting them be
    read (pulled)."""

    nfds: int
    pull_ok: bool


class InitFailed(NamedTuple):
    """Worker to parent: the initializer raised (its traceback as text); the worker exits."""

    nfds: int
    traceback: str


class Log(NamedTuple):
    """Worker to parent: a log record (see :mod:`.worker_logging`), at any time."""

    nfds: int
    record: dict[str, Any]


Message = Run | Stop | Done | Item | Ready | InitFailed | Log | Probed


def encode(message: Message) -> bytes:
    """``message`` as bytes: the plain tuple ``(kind, nfds, *fields)`` pickled.

    Example::

        >>> decode(encode(Ready(0, True)))
        Ready(nfds=0, pull_ok=True)
    """
    return _dumps((_KINDS[type(message)], *message), pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> Message:
    """The message that :func:`encode` made ``data`` of.

    Made with ``tuple.__new__``: a NamedTuple's own ``__new__`` and ``_make`` are Python code,
    several times slower (once per batch; ITEM: once per timed item).
    """
    fields = _loads(data)
    message: Message = _new(_CLASSES[fields[0]], fields[1:])
    return message


_dumps = pickle.dumps
_loads = pickle.loads
_new = tuple.__new__


#: each message's kind, the first field on the wire
_KINDS: dict[type[Any], int] = {
    Run: RUN,
    Stop: STOP,
    Done: DONE,
    Item: ITEM,
    InitFailed: INIT_FAILED,
    Ready: READY,
    Log: LOG,
    Probed: PROBED,
}
#: each kind's message class
_CLASSES: dict[int, Any] = {kind: cls for cls, kind in _KINDS.items()}


def to_wire(payload: Payload, fds: list[int]) -> WirePayload:
    """The wire form of ``payload``, adding its segment's descriptor to ``fds``."""
    if payload.segment is None:
        return (payload.data, -1, [], -1, None)
    fds.append(payload.segment.fd)
    return (payload.data, len(fds) - 1, payload.spans, payload.segment.pool_id, payload.pull)


def from_wire(
    wire: WirePayload, segments: list[Segment], mappings: WorkerMappings | None = None
) -> Any:
    """Unpickle a wire payload; out-of-band buffers become views of the received segments.

    A reserved segment is filled first, from the sender's memory (see conveyor._pull).
    """
    data, index, spans, pool_id, pull = wire
    segment = segments[index] if index >= 0 else None
    if pull is not None and segment is not None and mappings is not None:
        mappings.fill(pool_id, segment, spans, *pull)
    return loads_payload(data, segment, spans, pool_id, mappings)


def decode_outcomes(wire: WirePayload, segments: list[Segment]) -> Outcomes:
    """The ``(values, errors)`` of a DONE or ITEM payload, with remote tracebacks attached."""
    values, errors = from_wire(wire, segments)
    if not errors:  # the common case: no import, no new dict (once per submit's outcome)
        return values, errors
    from ..._errors import attach_remote_traceback

    return values, {pos: attach_remote_traceback(exc, tb) for pos, (exc, tb) in errors.items()}
