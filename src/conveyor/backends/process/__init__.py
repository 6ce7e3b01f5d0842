"""conveyor's own process pool (see parent.py for the data flow).

The parent side (``parent.py``) loads on first use: a worker process imports this package too
(its entry point is :func:`.worker.worker_main`), and must not pay for the parent's imports.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .parent import ProcessBackend

__all__ = ["ProcessBackend"]


def __getattr__(name: str) -> Any:
    if name == "ProcessBackend":
        from .parent import ProcessBackend

        return ProcessBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
