"""How many CPU cores this process may use, and how many of them are free right now.

`usable_cores`: the process's affinity where the OS has one (a container or `taskset` can allow
fewer than the machine has), capped by a cgroup CPU quota (`docker run --cpus 2`), else the
machine's count. `free_cores`: of those, the ones other work is not using now, sampled from
/proc/stat; the train stage runs that many threads, because OpenMP threads that share a busy
core spin against it (docs/performance.md, "Threads").
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max ..."
PROC_STAT = Path("/proc/stat")
BUSY_SHARE = 0.75  # a core counts as taken when other work keeps it this busy


def _quota_cores() -> int | None:
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2, "max" (no quota), or an unexpected format
        return None


def usable_cores() -> int:
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    quota = _quota_cores()
    return max(1, min(cores, quota) if quota else cores)


def _cpu_times() -> dict[str, tuple[int, int]]:
    """Per CPU (`cpu0`, ...): (busy, total) clock ticks since boot, from /proc/stat."""
    times = {}
    for line in PROC_STAT.read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in fields[:8]]
            idle = ticks[3] + ticks[4]  # idle, iowait
            times[name] = (sum(ticks) - idle, sum(ticks))
    return times


def free_cores(window_s: float = 0.1) -> int:
    """The usable cores not taken by other work, measured over `window_s` (at least 1); where
    /proc/stat cannot be read, every usable core."""
    usable = usable_cores()
    allowed = ({f"cpu{i}" for i in os.sched_getaffinity(0)}
               if hasattr(os, "sched_getaffinity") else None)
    try:
        before = _cpu_times()
        time.sleep(window_s)
        after = _cpu_times()
    except (OSError, ValueError, IndexError):
        return usable
    busy = 0.0
    for name, (busy_after, total_after) in after.items():
        if (allowed is not None and name not in allowed) or name not in before:
            continue
        elapsed = total_after - before[name][1]
        if elapsed > 0:
            busy += (busy_after - before[name][0]) / elapsed
    taken = math.floor(busy + (1 - BUSY_SHARE))
    return max(1, usable - taken)


def threads_for(setting: int | str) -> int:
    """The thread count `execution.threads` asks for: a number as given, `auto` the free cores."""
    return setting if isinstance(setting, int) else free_cores()
