"""``capture_output=True``: each item's ``print`` output, kept with the item.

A task's function is wrapped in :class:`CapturedCall`, which travels to the worker like any
function (threads, processes, Dask). While the item runs, what its thread writes to
``sys.stdout`` and ``sys.stderr`` goes to buffers of that item; when the item ends:

* it succeeded: the output is written to the worker's real streams, each whole in one write, so
  the output of items running at the same time never interleaves line by line;
* it failed: the output is attached to the exception and readable as :attr:`Failure.stdout` /
  :attr:`Failure.stderr` (``on_error="return"``); on Python 3.11+ it is also a note of the
  exception, so a traceback shows it.

Data flow inside one worker process (or the caller's process, on threads)::

    item thread A: print(...) --> sys.stdout = _Router --> A's buffer (A is capturing)
    item thread B: print(...) --> sys.stdout = _Router --> B's buffer
    other thread:  print(...) --> sys.stdout = _Router --> the stream it replaced

Guarantees and races:

* The routers replace ``sys.stdout``/``sys.stderr`` only while some item captures (a count
  under ``_lock``): the last item to end puts the original streams back, unless someone else
  replaced them meanwhile (then theirs stay).
* Output is routed by thread: what a task writes from threads of its own, from C code or from
  child processes (file descriptor 1 and 2) is not captured. An item that times out or whose
  worker dies loses its captured output with it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["CapturedCall", "output_of"]

_local = threading.local()
_lock = threading.Lock()
_active = 0
_installed: tuple[_Router, _Router] | None = None

#: the attribute of an exception that holds its item's (stdout, stderr)
OUTPUT_ATTRIBUTE = "_conveyor_output"


class _Router:
    """Writes of a capturing thread go to its buffer, all others to the replaced stream."""

    def __init__(self, real: TextIO, name: str):
        self._real = real
        self._name = name

    def write(self, text: str) -> int:
        buffer = getattr(_local, self._name, None)
        if buffer is not None:
            buffer.append(text)
            return len(text)
        return self._real.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if getattr(_local, self._name, None) is None:
            self._real.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer, ...
        return getattr(self._real, name)


def _install() -> None:
    global _active, _installed
    with _lock:
        _active += 1
        if _installed is None:
            routers = (_Router(sys.stdout, "stdout"), _Router(sys.stderr, "stderr"))
            sys.stdout, sys.stderr = routers  # type: ignore[assignment,unused-ignore]
            _installed = routers


def _uninstall() -> None:
    global _active, _installed
    with _lock:
        _active -= 1
        if _active or _installed is None:
            return
        out, err = _installed
        if sys.stdout is out:
            sys.stdout = out._real
        if sys.stderr is err:
            sys.stderr = err._real
        _installed = None


class CapturedCall:
    """``fn`` run with its thread's output captured (see the module docstring).

    Example::

        >>> def shout(x):
        ...     print("working on", x)
        ...     if x < 0:
        ...         raise ValueError(x)
        ...     return x
        >>> CapturedCall(shout)(2)
        working on 2
        2
        >>> try:
        ...     CapturedCall(shout)(-1)
        ... except ValueError as e:
        ...     print(repr(output_of(e)))
        ('working on -1\\n', '')
    """

    __slots__ = ("func",)

    def __init__(self, func: Callable[..., Any]):
        self.func = func  # named as functools.partial's: function_key() finds the real one

    def __reduce__(self) -> tuple[Any, ...]:
        return CapturedCall, (self.func,)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out: list[str] = []
        err: list[str] = []
        outer = (getattr(_local, "stdout", None), getattr(_local, "stderr", None))
        _local.stdout, _local.stderr = out, err
        _install()
        try:
            result = self.func(*args, **kwargs)
        except BaseException as exc:
            _local.stdout, _local.stderr = outer
            _uninstall()
            _attach(exc, "".join(out), "".join(err))
            raise
        _local.stdout, _local.stderr = outer
        _uninstall()
        if out:
            sys.stdout.write("".join(out))
        if err:
            sys.stderr.write("".join(err))
        return result

    def __repr__(self) -> str:
        return f"CapturedCall({self.func!r})"


def _attach(exc: BaseException, stdout: str, stderr: str) -> None:
    try:
        setattr(exc, OUTPUT_ATTRIBUTE, (stdout, stderr))
    except (AttributeError, TypeError):  # an exception type with __slots__ and no __dict__
        return
    add_note = getattr(exc, "add_note", None)  # Python 3.11+
    if add_note is not None:
        for name, text in (("stdout", stdout), ("stderr", stderr)):
            if text:
                add_note(f"captured {name} of the item:\n{text.rstrip()}")


def output_of(exc: BaseException) -> tuple[str, str]:
    """The (stdout, stderr) captured while the item that raised ``exc`` ran ('' if none).

    Example::

        >>> output_of(ValueError("no capture"))
        ('', '')
    """
    value = getattr(exc, OUTPUT_ATTRIBUTE, None)
    if isinstance(value, tuple) and len(value) == 2:
        return value
    return "", ""
