"""Shared fixtures: a pool per backend, closed after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import conveyor


@pytest.fixture(params=["thread", "process"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pool(backend: str) -> Iterator[conveyor.Pool]:
    with conveyor.Pool(workers=2, backend=backend) as p:
        yield p
