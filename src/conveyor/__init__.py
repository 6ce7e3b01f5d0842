"""conveyor: run Python functions and shell commands in parallel, without the pitfalls.

Example::

    >>> import conveyor
    >>> conveyor.map(lambda x: x * x, range(5), backend="process")
    [0, 1, 4, 9, 16]
"""

from ._api import as_completed, imap, imap_unordered, map, starmap
from ._errors import Failure, TaskTimeout, WorkerCrashed
from ._pool import Pool

__all__ = [
    "Failure",
    "Pool",
    "TaskTimeout",
    "WorkerCrashed",
    "as_completed",
    "imap",
    "imap_unordered",
    "map",
    "starmap",
]
__version__ = "0.1.0"
