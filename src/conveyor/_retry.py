"""The retry policy: whether a failed item runs again, and after how long.

One pure rule for every front that retries (``Pool.submit``'s futures, ``Pool.map``'s tasks and
the map jobs): the caller counts attempts and submits the retry; this module only decides.
"""

from __future__ import annotations

from ._errors import PoolClosed, Unsendable

__all__ = ["RetryPolicy", "retry_backoff"]


def retry_backoff(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): 50 ms doubling, at most 2 s.

    Example::

        >>> [retry_backoff(n) for n in (1, 2, 3, 10)]
        [0.05, 0.1, 0.2, 2.0]
    """
    return min(2.0, 0.05 * 2 ** (attempt - 1))


class RetryPolicy:
    """Up to ``retries`` more runs of a failed item, each after :func:`retry_backoff`.

    Never retried, whatever ``retries`` says: an item that cannot be sent
    (:class:`~conveyor.Unsendable`, a mistake in the call) and one whose pool was shut down or
    terminated under it (:class:`~conveyor.PoolClosed`).

    Example::

        >>> policy = RetryPolicy(2)
        >>> [policy.delay(attempts, ValueError()) for attempts in (1, 2, 3)]
        [0.05, 0.1, None]
        >>> policy.delay(1, PoolClosed()) is None
        True
    """

    __slots__ = ("retries",)

    def __init__(self, retries: int):
        self.retries = retries

    @classmethod
    def of(cls, retries: int) -> RetryPolicy:
        """The (shared) policy for ``retries``: a submit makes none of its own.

        Example::

            >>> RetryPolicy.of(0) is RetryPolicy.of(0)
            True
        """
        policy = _POLICIES.get(retries)
        if policy is None:
            policy = _POLICIES[retries] = cls(retries)
        return policy

    def delay(self, attempts: int, error: BaseException) -> float | None:
        """After ``attempts`` runs that failed, the last with ``error``: the seconds to wait
        before the next run, or None when the item is not to run again."""
        if attempts > self.retries or isinstance(error, (PoolClosed, Unsendable)):
            return None
        return retry_backoff(attempts)


_POLICIES: dict[int, RetryPolicy] = {}
