"""Doctests: every ``>>>`` example in ``src/conveyor`` runs with ``conveyor`` imported."""

from __future__ import annotations

from typing import Any

import pytest

import conveyor


@pytest.fixture(autouse=True)
def _conveyor_in_doctests(doctest_namespace: dict[str, Any]) -> None:
    doctest_namespace["conveyor"] = conveyor
