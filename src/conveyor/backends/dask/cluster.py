"""Naming a Dask cluster: ``cluster=`` as an address, a ``distributed.Client``, or None.

``None`` starts a ``LocalCluster`` of worker processes listening on 127.0.0.1 only, owned by the
pool (closed with it). An address gets a ``Client`` of the pool's own (closed with it); a
``Client`` given by the caller is used and left open. A plaintext ``tcp://`` address that is not
loopback gets a warning: Dask runs pickled code, so anyone who can reach that port can run any
code on every worker, and read and change every result.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["CONNECT_TIMEOUT", "Connection", "connect", "require_distributed"]

#: seconds to reach a scheduler before giving up with an error naming the address
CONNECT_TIMEOUT = 5.0

_INSTALL_HINT = 'backend="dask" needs dask.distributed: pip install "conveyor[dask]"'


def require_distributed() -> Any:
    """Import ``distributed``, or raise an ImportError that says how to install it.

    Example::

        >>> require_distributed().__name__
        'distributed'
    """
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
    return distributed


@dataclass
class Connection:
    """A client, and what the pool owns of it (closed by :meth:`close`)."""

    client: Any
    cluster: Any = None  # the LocalCluster we started, if any
    owns_client: bool = False

    def close(self) -> None:
        """Close what the pool made; a client given by the caller stays open."""
        if self.owns_client:
            try:
                self.client.close(timeout=10)
            except Exception:
                pass
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=10)
            except Exception:
                pass


def connect(cluster: Any, workers: int | None, security: Any = None) -> Connection:
    """Resolve ``cluster=`` into a :class:`Connection`.

    Example::

        >>> connect(42, None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: cluster must be an address (...), a distributed.Client, or None, got 42 (...)
    """
    if cluster is not None and not isinstance(cluster, str) and not _is_client(cluster):
        raise TypeError(
            'cluster must be an address ("tcp://host:8786", "tls://..."), a distributed.Client, '
            f"or None, got {cluster!r} (of type {type(cluster).__name__})"
        )
    distributed = require_distributed()
    if cluster is None:
        return _local_cluster(distributed, workers, security)
    if isinstance(cluster, str):
        warn_if_exposed(cluster)
        try:
            client = distributed.Client(
                cluster, security=security, timeout=CONNECT_TIMEOUT, set_as_default=False
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"cannot reach the Dask scheduler at {cluster!r} within {CONNECT_TIMEOUT:g} s "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return Connection(client, owns_client=True)
    warn_if_exposed(str(cluster.scheduler.address))
    return Connection(cluster)


def _is_client(obj: Any) -> bool:
    try:
        from distributed import Client
    except ImportError:
        return False
    return isinstance(obj, Client)


def _local_cluster(distributed: Any, workers: int | None, security: Any) -> Connection:
    from ..._cpus import usable_cpus

    extra: dict[str, Any] = {} if security is None else {"security": security}
    local = distributed.LocalCluster(
        n_workers=workers or usable_cpus(),
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,  # conveyor reports the failures Dask logs
        # A worker that dies under a task fails the task at once (KilledWorker), as a process
        # worker's death does: the backend re-runs its items, charging only the one that kills.
        scheduler_kwargs={
            "allowed_failures": 0,
            # no dashboard, and the scheduler's HTTP endpoints on a free loopback port (by
            # default they take 8787, and a second cluster warns that it is taken)
            "dashboard": False,
            "dashboard_address": "127.0.0.1:0",
        },
        **extra,
    )
    try:
        client = distributed.Client(local, set_as_default=False)
    except BaseException:
        local.close()
        raise
    return Connection(client, cluster=local, owns_client=True)


def warn_if_exposed(address: str) -> None:
    """Warn when ``address`` is plaintext ``tcp://`` and not loopback.

    Example::

        >>> warn_if_exposed("tcp://127.0.0.1:8786")   # loopback: silent
    """
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme != "tcp" or _is_loopback(parts.hostname or ""):
        return
    warnings.warn(
        f"connecting to the Dask scheduler at {address} without encryption: Dask runs pickled "
        "code, so anyone who can reach that port can run any code on every worker and read or "
        "change every task and result. Use a tls:// address with security=distributed.Security"
        "(...) (mutual TLS), or keep the port reachable from trusted hosts only.",
        UserWarning,
        stacklevel=4,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return all(
            ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None)
        )
    except (OSError, ValueError):
        return False
