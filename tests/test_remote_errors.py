"""Exceptions raised in a worker process come back as their own type (issue 16, item 6).

Python pickles an exception as ``type(exc)(*exc.args)`` plus its attributes, which fails for an
``__init__`` with other arguments, keyword-only arguments, or an attribute that cannot be
pickled; such exceptions used to arrive as ``RuntimeError('tasks.TwoArgError: 1-2')``, so
``except TwoArgError`` missed them.
"""

from __future__ import annotations

import threading

import pytest

import conveyor
from conveyor._errors import RemoteTraceback

import tasks


@pytest.fixture(scope="module")
def pool():
    with conveyor.Pool(workers=1, backend="process") as p:
        yield p


def _raised(pool: conveyor.Pool, kind: str) -> BaseException:
    error = pool.submit(tasks.raise_error, kind).exception(timeout=60)
    assert error is not None
    return error


def test_an_exception_whose_init_takes_other_arguments_keeps_its_type(pool) -> None:
    error = _raised(pool, "two")
    assert type(error) is tasks.TwoArgError
    assert (error.args, error.a, error.b) == (("1-2",), 1, 2)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "raise TwoArgError(1, 2)" in str(error.__cause__)


def test_an_exception_with_keyword_only_arguments_keeps_its_type(pool) -> None:
    with pytest.raises(tasks.KeywordOnlyError, match="code 7") as caught:
        pool.submit(tasks.raise_error, "kwonly").result(timeout=60)
    assert caught.value.code == 7


def test_an_unpicklable_attribute_is_left_behind_and_named(pool) -> None:
    error = _raised(pool, "locked")
    assert type(error) is tasks.LockedError
    assert str(error) == "held a lock" and error.detail == "kept"
    assert not hasattr(error, "lock")
    assert any("'lock'" in note for note in error.__notes__)


def test_an_oserror_subclass_keeps_its_type_and_fields(pool) -> None:
    error = _raised(pool, "oserror")
    assert type(error) is tasks.CustomOSError
    assert (error.errno, error.strerror, error.filename, error.where) == (
        2,
        "gone",
        "/nowhere",
        "/nowhere",
    )


def test_in_a_map_the_same_holds(pool) -> None:
    results = list(pool.imap(tasks.raise_error, ["two", "kwonly"], on_error="return"))
    assert [type(r.exception) for r in results] == [tasks.TwoArgError, tasks.KeywordOnlyError]


def test_a_class_defined_in_a_function_comes_back_by_value() -> None:
    class Local(Exception):
        def __init__(self, a: int, *, b: int):
            super().__init__(a + b)
            self.guard = threading.Lock()

    def fail() -> None:
        raise Local(1, b=2)

    with conveyor.Pool(workers=1, backend="process") as pool:
        error = pool.submit(fail).exception(timeout=60)
    # the class travelled by value: a copy of it, of the same name, with the same args
    assert type(error).__qualname__.endswith("Local") and error.args == (3,)
    assert isinstance(error, Exception) and not hasattr(error, "guard")


def test_what_truly_cannot_come_back_is_a_runtime_error_naming_it() -> None:
    class Odd(Exception):
        def __new__(cls, needed: int) -> Odd:  # a __new__ that needs its argument
            self = super().__new__(cls, needed)
            self.needed = needed
            return self

        def __init__(self, needed: int):
            super().__init__()
            self.lock = threading.Lock()

        def __reduce__(self):  # what pickle cannot make again
            raise TypeError("no")

    def fail() -> None:
        raise Odd(1)

    with conveyor.Pool(workers=1, backend="process") as pool:
        error = pool.submit(fail).exception(timeout=60)
    assert type(error) is RuntimeError
    assert "Odd" in str(error)
    assert "in fail" in str(error.__cause__)  # the worker's traceback
