"""The errors ``conveyor run`` reports as a one-line message with exit status 255."""

from __future__ import annotations

__all__ = ["CliError"]


class CliError(Exception):
    """A problem the user can fix: bad option, template, input or job log."""
