"""Doctests: every ``>>>`` example in ``src/conveyor`` runs with ``conveyor`` imported.

Also: the tests that interrupt a child with SIGINT (Ctrl-C) need it not to be ignored.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

import conveyor

# A shell starts a background job (``cmd &``, ``nohup``) with SIGINT ignored, and an ignored
# signal stays ignored across exec: every child a test sends Ctrl-C to would then ignore it
# too. A handled signal is reset to its default in a child, so handling it here fixes both.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _conveyor_in_doctests(doctest_namespace: dict[str, Any]) -> None:
    doctest_namespace["conveyor"] = conveyor
