"""The system's limits on a command line, checked before a job is started.

``execve`` fails with ``E2BIG`` ("Argument list too long") when the arguments plus the
environment exceed ``ARG_MAX`` (``sysconf(_SC_ARG_MAX)``; on Linux a quarter of the
stack limit), counting each string with its NUL and one pointer per string; on Linux
also when a single argument exceeds ``MAX_ARG_STRLEN`` (32 pages, 128 KiB). This module
computes both for an argument vector, so that ``conveyor run`` can name the job and the
limit instead of surfacing a raw ``OSError``.

>>> too_long(["/bin/sh", "-c", "true"]) is None
True
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import cache

__all__ = ["arg_max", "max_arg_strlen", "too_long"]

_POINTER = 8


@cache
def arg_max() -> int:
    """Bytes available to arguments and environment together (``sysconf(ARG_MAX)``)."""
    try:
        value = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError, AttributeError):
        value = -1
    return value if value > 0 else 131072


@cache
def max_arg_strlen() -> int | None:
    """Bytes one argument may have, including its NUL (Linux only; None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    return 32 * os.sysconf("SC_PAGE_SIZE")


def _size(text: str) -> int:
    return len(os.fsencode(text)) + 1 + _POINTER


@cache
def _environment_size() -> int:
    # The environment the jobs inherit is ours, fixed for the run (read once).
    return sum(_size(f"{k}={v}") for k, v in os.environ.items()) + _POINTER


def too_long(argv: Sequence[str]) -> str | None:
    """Why ``argv`` (with this process's environment) cannot be executed, or None."""
    per_arg = max_arg_strlen()
    total = _environment_size() + _POINTER
    for arg in argv:
        size = _size(arg)
        if per_arg is not None and size - _POINTER > per_arg:
            return (
                f"one argument of its command line is {size - _POINTER - 1} bytes; this "
                f"system allows at most {per_arg - 1} bytes per argument (MAX_ARG_STRLEN)"
            )
        total += size
    if total > arg_max():
        return (
            f"its command line and the environment take {total} bytes; this system "
            f"allows at most {arg_max()} (ARG_MAX)"
        )
    return None
