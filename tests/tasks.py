"""Module-level task functions for the tests (importable by worker processes by name)."""

from __future__ import annotations

import os
import threading
import time


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def where(_: object = None) -> tuple[int, int]:
    """(pid, thread id) of the worker that ran it."""
    return os.getpid(), threading.get_ident()


def slow_identity(x: float) -> float:
    time.sleep(x)
    return x


class Counted:
    """Counts how often it is unpickled in this process."""

    loads = 0

    def __init__(self, payload: bytes = b""):
        self.payload = payload

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_counted, (self.payload,))

    def __call__(self, x: int) -> int:
        return Counted.loads


def _rebuild_counted(payload: bytes) -> Counted:
    Counted.loads += 1
    return Counted(payload)


class TwoArgError(Exception):
    """An exception whose ``__init__`` takes other arguments than its ``args``."""

    def __init__(self, a: int, b: int):
        super().__init__(f"{a}-{b}")
        self.a = a
        self.b = b


class KeywordOnlyError(ValueError):
    """An exception built with a keyword-only argument."""

    def __init__(self, *, code: int):
        super().__init__(f"code {code}")
        self.code = code


class LockedError(RuntimeError):
    """An exception holding an attribute that cannot be pickled."""

    def __init__(self, message: str):
        super().__init__(message)
        self.lock = threading.Lock()
        self.detail = "kept"


class CustomOSError(OSError):
    """An OSError subclass with its own ``__init__`` (OSError's ``__new__`` is special)."""

    def __init__(self, path: str):
        super().__init__(2, "gone", path)
        self.where = path


def raise_error(kind: str) -> None:
    """Raise one of the awkward exceptions above."""
    if kind == "two":
        raise TwoArgError(1, 2)
    if kind == "kwonly":
        raise KeywordOnlyError(code=7)
    if kind == "locked":
        raise LockedError("held a lock")
    if kind == "oserror":
        raise CustomOSError("/nowhere")
    raise AssertionError(kind)


class Traveller:
    """Counts, in this process, how often it is pickled (sent) and unpickled (arrived)."""

    sent = 0
    arrived = 0

    def __init__(self, value: int):
        self.value = value

    def __reduce__(self) -> tuple[object, ...]:
        Traveller.sent += 1
        return (_rebuild_traveller, (self.value,))


def _rebuild_traveller(value: int) -> Traveller:
    Traveller.arrived += 1
    return Traveller(value)


def bump(t: Traveller) -> Traveller:
    return Traveller(t.value + 1)
