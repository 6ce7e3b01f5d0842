"""The inline backend as auto uses it: a map job over a list runs on views of it (Span)."""

from __future__ import annotations

from typing import Any

import pytest

import conveyor
from conveyor._job import MapJob
from conveyor._options import JobOptions
from conveyor.backends.inline import InlineBackend


def _run(fn: Any, items: list[Any], **options: Any) -> list[Any]:
    return MapJob(InlineBackend(), fn, items, JobOptions(**options)).collect()


def test_failures_are_settled_at_their_positions() -> None:
    def inverse(x: int) -> float:
        return 1 / x

    out = _run(inverse, [1, 0, 2, 0], on_error="return", chunksize=3)
    assert out[0] == 1.0 and out[2] == 0.5
    assert [type(v) for v in out] == [float, conveyor.Failure, float, conveyor.Failure]
    assert out[1].item == 0 and out[3].item == 0
    assert _run(inverse, [1, 0, 2, 0], on_error="skip") == [1.0, 0.5]


def test_items_the_function_appends_to_its_input_are_run() -> None:
    items = [3, 2]

    def countdown(x: int) -> int:
        if x > 1:
            items.append(x - 1)
        return x

    assert _run(countdown, items, chunksize=2) == [3, 2, 2, 1, 1]


def test_an_input_shortened_by_the_function_fails_clearly_instead_of_hanging() -> None:
    items = [1, 2, 3, 4]

    def shrink(x: int) -> int:
        if x == 1:
            del items[2:]
        return x

    with pytest.raises(RuntimeError, match="got shorter"):
        _run(shrink, items, chunksize=4)


def test_a_retry_of_an_item_reads_it_from_the_view() -> None:
    seen: list[int] = []

    def flaky(x: int) -> int:
        seen.append(x)
        if seen.count(x) == 1 and x == 5:
            raise ValueError("first time")
        return x

    assert _run(flaky, [4, 5, 6], retries=1, chunksize=3) == [4, 5, 6]
