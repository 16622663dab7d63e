"""How many CPUs this process may run on (its affinity mask, which containers and `taskset` narrow)."""

from __future__ import annotations

import os


def available_cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
