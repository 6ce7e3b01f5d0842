"""One checked options object (conveyor._options.JobOptions) behind every map front door."""

from __future__ import annotations

from typing import Any

import pytest

import conveyor
from conveyor._options import BACKENDS, JobOptions

BAD = [
    ({"chunksize": 0}, ValueError, "chunksize must be"),
    ({"task_timeout": -1}, ValueError, "task_timeout must be"),
    ({"retries": -1}, ValueError, "retries must be"),
    ({"on_error": "ignore"}, ValueError, "on_error must be"),
    ({"stats": {}}, TypeError, "stats must be"),
]


@pytest.mark.parametrize(("option", "error", "message"), BAD)
def test_every_front_door_names_the_bad_option(
    option: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        conveyor.map(abs, [1], backend="thread", **option)
    with pytest.raises(error, match=message):
        conveyor.imap(abs, [1], backend="thread", **option)
    with conveyor.Pool(workers=1, backend="thread") as pool:
        with pytest.raises(error, match=message):
            pool.imap(abs, [1], **option)
        with pytest.raises(error, match=message):
            pool.starmap(pow, [(2, 3)], **option)


def test_ordered_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="ordered must be True or False"):
        JobOptions(ordered=1)  # type: ignore[arg-type]


def test_options_are_frozen_and_replace_checks_again() -> None:
    options = JobOptions(retries=2)
    with pytest.raises(AttributeError, match="frozen"):
        options.retries = 3  # type: ignore[misc]
    assert options.replace(on_error="skip").retries == 2
    with pytest.raises(ValueError, match="retries must be"):
        options.replace(retries=-1)


def test_every_accepted_backend_makes_a_pool_or_says_what_it_needs() -> None:
    for backend in BACKENDS:
        try:
            pool = conveyor.Pool(workers=1, backend=backend)
        except ImportError:  # dask without distributed installed: a clear error, not "unknown"
            continue
        pool.shutdown()


def test_the_options_view_zips_several_iterables() -> None:
    with conveyor.Pool(workers=2, backend="thread") as pool:
        limited = pool.options(task_timeout=5, retries=1)
        assert list(limited.imap(pow, [2, 3], [5, 2])) == [32, 9]
        assert sorted(limited.imap_unordered(pow, [2, 3], [5, 2])) == [9, 32]
        assert limited.starmap(pow, [(2, 5)]) == [32]
