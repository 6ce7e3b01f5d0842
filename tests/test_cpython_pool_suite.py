"""CPython's own pool tests (``test._test_multiprocessing``) run against conveyor.multiprocessing.

The installed interpreter's ``test`` package holds the standard library's test cases for
``multiprocessing.Pool`` and ``ThreadPool``: ``_TestPool``, ``_TestPoolWorkerErrors`` and
``_TestPoolWorkerLifetime``. Here they run with the drop-in in place of the pool classes. Every
test that does not apply is listed in :data:`NOT_APPLICABLE` with the reason; the rest pass.
"""

from __future__ import annotations

import unittest
from typing import Any

import pytest

suite = pytest.importorskip("test._test_multiprocessing", reason="no installed test package")

import conveyor.multiprocessing  # noqa: E402

#: test name -> why it does not apply to conveyor's drop-in
NOT_APPLICABLE: dict[str, str] = {
    "test_make_pool": "reads the private list of multiprocessing.Process objects (Pool._pool); "
    "conveyor's workers are its own",
    "test_map_unplicklable": "an unpicklable argument raises conveyor.Unsendable (a TypeError "
    "naming the item, with the pickler's exception as its cause), not the pickler's exception",
    "test_traceback": "the worker's traceback is chained as conveyor's RemoteTraceback (the same "
    "text in .tb), not as multiprocessing.pool.RemoteTraceback",
    "test_imap_handle_iterable_exception": "with chunksize > 1 the standard library drops the "
    "whole chunk the failing input fell in; conveyor yields every item read before it "
    "(chunksize=1: the same, tested in test_multiprocessing_dropin)",
}


class _ConveyorProcesses(suite.ProcessesMixin):  # type: ignore[name-defined,misc]
    Pool = staticmethod(conveyor.multiprocessing.Pool)


class _ConveyorThreads(suite.ThreadsMixin):  # type: ignore[name-defined,misc]
    Pool = staticmethod(conveyor.multiprocessing.ThreadPool)


def _cases(base: Any) -> dict[str, type[unittest.TestCase]]:
    made = {}
    for kind, mixin in (("processes", _ConveyorProcesses), ("threads", _ConveyorThreads)):
        if kind not in base.ALLOWED_TYPES:
            continue
        name = f"TestConveyor{kind.capitalize()}{base.__name__[5:]}"
        case = type(name, (base, mixin, unittest.TestCase), {"__module__": __name__})
        for test, reason in NOT_APPLICABLE.items():
            if hasattr(case, test):
                setattr(case, test, unittest.skip(reason)(getattr(case, test)))
        made[name] = case
    return made


for _base in ("_TestPool", "_TestPoolWorkerErrors", "_TestPoolWorkerLifetime"):
    globals().update(_cases(getattr(suite, _base)))
