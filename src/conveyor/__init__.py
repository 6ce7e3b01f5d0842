"""conveyor: run Python functions and shell commands in parallel, without the pitfalls.

Example::

    >>> import conveyor
    >>> conveyor.map(lambda x: x * x, range(5), backend="process")
    [0, 1, 4, 9, 16]
"""

from __future__ import annotations

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._aio import acall, amap, amap_unordered, astarmap
    from ._api import as_completed, imap, imap_unordered, map, starmap
    from ._checkpoint import Checkpoint, CheckpointError, CheckpointInUse, CheckpointMismatch
    from ._errors import Failure, PoolClosed, RemoteTraceback, Unsendable
    from ._executor_errors import TaskStopped, TaskTimeout, WorkerCrashed, WorkerInitError
    from ._executor_pool import Pool
    from ._pipeline import pipeline
    from ._stats import MapStats, PoolStats, WorkerStats
    from ._version import __version__ as __version__

# The names load on first use, so that `conveyor run` and `import conveyor` stay quick.
_WHERE = {
    "acall": "_aio",
    "amap": "_aio",
    "amap_unordered": "_aio",
    "astarmap": "_aio",
    "as_completed": "_api",
    "imap": "_api",
    "imap_unordered": "_api",
    "map": "_api",
    "starmap": "_api",
    "Checkpoint": "_checkpoint",
    "CheckpointError": "_checkpoint",
    "CheckpointInUse": "_checkpoint",
    "CheckpointMismatch": "_checkpoint",
    "Failure": "_errors",
    "PoolClosed": "_errors",
    "RemoteTraceback": "_errors",
    "TaskStopped": "_executor_errors",
    "TaskTimeout": "_executor_errors",
    "Unsendable": "_errors",
    "WorkerCrashed": "_executor_errors",
    "WorkerInitError": "_executor_errors",
    "Pool": "_executor_pool",
    "MapStats": "_stats",
    "PoolStats": "_stats",
    "WorkerStats": "_stats",
    "__version__": "_version",  # the installed package's metadata (pyproject.toml's version)
    "pipeline": "_pipeline",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    import sys

    __import__(f"{__name__}.{module}")  # (not importlib: a cold script would import it too)
    value = getattr(sys.modules[f"{__name__}.{module}"], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointInUse",
    "CheckpointMismatch",
    "Failure",
    "MapStats",
    "Pool",
    "PoolClosed",
    "PoolStats",
    "RemoteTraceback",
    "TaskStopped",
    "TaskTimeout",
    "Unsendable",
    "WorkerCrashed",
    "WorkerInitError",
    "WorkerStats",
    "acall",
    "amap",
    "amap_unordered",
    "as_completed",
    "astarmap",
    "imap",
    "imap_unordered",
    "map",
    "pipeline",
    "starmap",
]
