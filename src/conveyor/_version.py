"""conveyor's version, read from the installed package's metadata.

``pyproject.toml``'s ``version`` is the one source: installing writes it into the package
metadata, and both ``conveyor.__version__`` and ``conveyor --version`` read it from there.
Loaded on first use only (``importlib.metadata`` costs a few milliseconds to import).

Example::

    >>> import importlib.metadata
    >>> conveyor.__version__ == importlib.metadata.version("conveyor")
    True
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("conveyor")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
