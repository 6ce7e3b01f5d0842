"""Shared fixtures: a pool per backend, closed after each test. The run's header names the
conveyor under test; with CONVEYOR_TEST_INSTALLED=1 (CI's wheel runs) it must be the one
installed in this Python's site-packages, never a source tree."""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor


def pytest_report_header() -> str:
    return f"conveyor {conveyor.__version__} from {Path(conveyor.__file__).parent}"


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("CONVEYOR_TEST_INSTALLED"):
        site = Path(sysconfig.get_path("purelib")).resolve()
        where = Path(conveyor.__file__).resolve()
        if site not in where.parents:
            raise pytest.UsageError(
                f"CONVEYOR_TEST_INSTALLED is set, but conveyor was imported from {where}, "
                f"not from the installed package in {site}"
            )


@pytest.fixture(params=["thread", "process"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pool(backend: str) -> Iterator[conveyor.Pool]:
    with conveyor.Pool(workers=2, backend=backend) as p:
        yield p
