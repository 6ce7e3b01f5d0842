"""Progress bars for map calls: tqdm.auto, so a notebook gets a widget and a terminal a bar."""

from __future__ import annotations

# typing is imported by type checkers only: a short script must not pay for it at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


__all__ = ["Progress"]


class Progress:
    """A progress bar counting finished items, with failures and retries beside the rate
    once there are any, or nothing when disabled.

    ``progress`` is what the user passed: True for a default bar, a dict of tqdm keyword
    arguments, or False.

    Example::

        >>> bar = Progress(True, total=3, desc="squares")
        >>> bar.update(2); bar.note(failures=1, retries=2); bar.update(1); bar.close()
    """

    def __init__(self, progress: bool | dict[str, Any], total: int | None, desc: str):
        self._bar: Any = None
        if not progress:
            return
        from tqdm.auto import tqdm

        options: dict[str, Any] = {"total": total, "desc": desc, "unit": "item", "smoothing": 0.1}
        if isinstance(progress, dict):
            options.update(progress)
        self._bar = tqdm(**options)

    def update(self, count: int) -> None:
        """Count ``count`` more finished items."""
        if self._bar is not None and count:
            self._bar.update(count)

    def note(self, failures: int, retries: int) -> None:
        """Show the failures and retries so far next to the rate (when there are any)."""
        if self._bar is not None and (failures or retries):
            self._bar.set_postfix(failed=failures, retried=retries, refresh=False)

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
