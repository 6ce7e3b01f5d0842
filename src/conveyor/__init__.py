"""conveyor: run Python functions and shell commands in parallel, without the pitfalls.

Example::

    >>> import conveyor
    >>> conveyor.map(lambda x: x * x, range(5), backend="process")
    [0, 1, 4, 9, 16]
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._aio import acall, amap, amap_unordered, astarmap
    from ._api import as_completed, imap, imap_unordered, map, starmap
    from ._errors import Failure, TaskTimeout, WorkerCrashed
    from ._pool import Pool

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
    "Failure": "_errors",
    "TaskTimeout": "_errors",
    "WorkerCrashed": "_errors",
    "Pool": "_pool",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Failure",
    "Pool",
    "TaskTimeout",
    "WorkerCrashed",
    "acall",
    "amap",
    "amap_unordered",
    "as_completed",
    "astarmap",
    "imap",
    "imap_unordered",
    "map",
    "starmap",
]
__version__ = "0.1.0"
