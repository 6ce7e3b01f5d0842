"""What a type checker infers for conveyor's public calls (checked by mypy in CI; never run).

Every ``assert_type`` states the type a user gets; mypy fails if the library's annotations drift.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future

from typing_extensions import assert_type

import conveyor


def square(x: int) -> int:
    return x * x


def label(x: int, suffix: str = "") -> str:
    return f"{x}{suffix}"


def check() -> None:
    assert_type(conveyor.map(square, [1, 2]), list[int])
    assert_type(conveyor.map(label, range(3), task_timeout=1.0, timeout=10), list[str])
    assert_type(conveyor.imap(square, iter([1])), Iterator[int])
    assert_type(conveyor.imap_unordered(label, [1]), Iterator[str])
    assert_type(conveyor.starmap(pow, [(2, 3)]), list[int])
    with conveyor.Pool(workers=2) as pool:
        assert_type(pool.submit(label, 1, suffix="s"), Future[str])
        assert_type(pool.map(square, [1, 2], timeout=5, chunksize=2, buffersize=4), Iterator[int])
        assert_type(pool.imap(square, [1]), Iterator[int])
        assert_type(pool.starmap(label, [(1, "s")]), list[str])
        assert_type(pool.options(task_timeout=5, retries=1).submit(square, 2), Future[int])
        for future in conveyor.as_completed([pool.submit(square, 2)]):
            assert_type(future, Future[int])
        # Errors mypy must report (the comments are checked: warn_unused_ignores is on).
        pool.submit(square, "x")  # type: ignore[arg-type]
        conveyor.map(square, ["x"])  # type: ignore[arg-type]
        pool.options(timeout=5)  # type: ignore[arg-type]
        conveyor.map(square, [1], timeout_per_item=5)  # type: ignore[call-arg]
