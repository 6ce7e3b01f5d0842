"""Shared fixtures: a pool per backend, closed after each test. The run's header names the
conveyor under test; with CONVEYOR_TEST_INSTALLED=1 (CI's wheel runs) it must be the one
installed in this Python's site-packages, never a source tree."""

from __future__ import annotations

import multiprocessing
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

import conveyor

# CI (.ci/run sets CONVEYOR_CI=1) draws the same examples on every run: its verdict depends on
# the code alone. Anywhere else each run draws new ones, which is how the fuzzers keep finding
# cases (a case found that way is then pinned with @example or a hostile value).
settings.register_profile("conveyor-ci-derandomized", derandomize=True)
if os.environ.get("CONVEYOR_CI"):
    settings.load_profile("conveyor-ci-derandomized")


def pytest_report_header() -> str:
    return f"conveyor {conveyor.__version__} from {Path(conveyor.__file__).parent}"


def pytest_sessionstart(session: pytest.Session) -> None:
    # The suite's process pools start their workers the default way, from conveyor's zygote
    # (backends/process/zygote.py), made here while this process still has one thread; made
    # later, after a test's thread pool, the first process pool would fall back on forkserver.
    # (Tests that ask for forkserver or spawn, and tests/test_zygote.py, cover the others.)
    from conveyor.backends.process import spawning

    spawning.get_context(None)
    # The standard library's own process pools and processes in the tests (the references the
    # drop-ins are compared with, an executor given as a backend, CPython's pool tests) start
    # from its fork server, Python 3.14's default on Linux, and never fork this process: it has
    # threads (every pool's dispatcher), and a child forked from a process with threads can
    # deadlock on a lock another thread held (Python 3.12 and later warn of it). Tests that ask
    # conveyor for start_method="fork" still fork, on purpose.
    multiprocessing.set_start_method("forkserver", force=True)
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
