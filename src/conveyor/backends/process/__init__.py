"""conveyor's own process pool (see parent.py for the data flow).

The parent side (``parent.py``) loads on first use: a worker process imports this package too
(its entry point is :func:`.worker.worker_main`), and must not pay for the parent's imports.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is for type checkers only: a cold map must not pay its import
if TYPE_CHECKING:
    from typing import Any

    from .parent import ProcessBackend

__all__ = ["ProcessBackend"]


def __getattr__(name: str) -> Any:
    if name == "ProcessBackend":
        from .parent import ProcessBackend

        return ProcessBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
