"""How many CPUs this process may really use: affinity and cgroup quota, not the machine's total."""

from __future__ import annotations

import os

__all__ = ["usable_cpus"]


def usable_cpus() -> int:
    """The number of CPUs this process may run on.

    Takes the smallest of the CPU affinity mask (``os.sched_getaffinity``, or
    ``os.process_cpu_count`` on 3.13+) and a cgroup v2/v1 CPU quota, so a container limited to two
    CPUs on a 64-core host gets 2, not 64.

    Example::

        >>> from conveyor._cpus import usable_cpus
        >>> usable_cpus() >= 1
        True
    """
    if hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    elif hasattr(os, "process_cpu_count"):
        count = os.process_cpu_count() or 1
    else:
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, -int(-quota // 1)))  # (math.ceil, without importing math)
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by the cgroup this process is in, or None when unlimited or unknown."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "max 100000" or "200000 100000"
            quota, period = f.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None
