"""The Dask backend: conveyor's map calls and futures on a Dask distributed cluster.

Example::

    >>> from conveyor.backends.dask import DaskBackend
    >>> DaskBackend.name
    'dask'
"""

from .backend import DaskBackend

__all__ = ["DaskBackend"]
