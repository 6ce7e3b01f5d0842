"""conveyor's own process pool (see parent.py for the data flow)."""

from .parent import ProcessBackend

__all__ = ["ProcessBackend"]
