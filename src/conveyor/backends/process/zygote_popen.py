"""The ``Popen`` of a worker asked of the zygote (see :mod:`.zygote`).

Data flow (one worker)::

    caller (Process.start)                    zygote                     new worker
    ----------------------                    ------                     ----------
    request: socket, with the worker's  --->  fork  ------------------>  (a fork of the
    data pipe's read end, status pipe's                                   zygote)
    write end and the descriptors the
    Process's pickle names (DupFd)
    pid  <------------------------------ status pipe: the pid
    preparation data + pickled Process  ------- data pipe ----------->  spawn._main: run it
    exit code  <------------------------ status pipe, when it dies

Its own module, imported on first use: it builds on multiprocessing's forkserver ``Popen``,
whose modules (with the fork server's and ``spawn``'s) a cold map never needs: the zygote forks
the first workers at its birth (see :mod:`.zygote`, "First workers"), and a pool made while the
caller has one thread forks its workers itself (see ``ProcessBackend``).
"""

from __future__ import annotations

import io
import os
from multiprocessing import forkserver, popen_forkserver, reduction, spawn
from multiprocessing import util as _util
from multiprocessing.context import set_spawning_popen

from . import zygote

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ZygotePopen"]

util: Any = _util
_ForkServerPopen: Any = popen_forkserver.Popen


class ZygotePopen(_ForkServerPopen):
    """multiprocessing's forkserver ``Popen``, asking our zygote instead of its server."""

    method = "zygote"
    #: the worker is a fork of the zygote (False: the fork server started it, the zygote being
    #: dead); only such a worker has the caller's ``__main__`` (see packing.FunctionCache.seed)
    from_zygote = False

    def _launch(self, process_obj: Any) -> None:
        server = zygote._ensure_zygote()
        if server is None:  # it died: the standard fork server takes over
            super()._launch(process_obj)
            return
        prep_data = spawn.get_preparation_data(process_obj._name)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        data_r, data_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            with zygote._lock:  # (rebound in a forked child: read it here)
                server.request([data_r, status_w, *self._fds])
        except OSError:
            os.close(status_r)
            os.close(data_w)
            server.died()
            super()._launch(process_obj)
            return
        finally:
            os.close(data_r)
            os.close(status_w)
        # The pid first: it comes once the zygote has forked, so nothing is ever written into a
        # pipe that no process will read (the zygote may die before it forks: then EOF here).
        try:
            self.pid = forkserver.read_signed(status_r)
        except (OSError, EOFError):
            os.close(status_r)
            os.close(data_w)
            server.died()
            super()._launch(process_obj)
            return
        self.sentinel = status_r
        self.from_zygote = True
        # The worker's sentinel of its parent (multiprocessing.parent_process()): our copy of
        # the data pipe's write end, kept open for as long as this Popen lives.
        parent_w = os.dup(data_w)
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
        with open(data_w, "wb", closefd=True) as data:
            data.write(buf.getbuffer())
