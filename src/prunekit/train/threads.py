"""How many CPU threads a run uses for training and timing: by default one per physical core that is not
already busy.

Hyper-threads share a core's arithmetic units, and cores other processes keep busy are not ours, so more
intra-op threads only add contention (the demo on the shared 2-core development machine: 213 s with
torch's default against 38 s with one thread per process under load). The choice is recorded in every
run's config and summary.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunekit.errors import ConfigError


def physical_cores(sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """Physical cores among the CPUs this process may run on (Linux sysfs topology: hyper-threads of one
    core list the same siblings); else the CPU count."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        siblings = sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list"
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))  # no topology exposed (some containers): count the CPU as a core
    return max(1, len(cores))


def default_threads() -> int:
    """The physical cores this process's share (torchrun's `LOCAL_WORLD_SIZE` ranks split them), less the
    cores other work already keeps busy (the 1-minute load average), at least one: on a loaded machine
    extra threads only wait for each other (docs/benchmarks.md, "Threads": 2 threads 9.5× slower than 1
    at load 15 on 2 cores)."""
    cores = max(1, physical_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    try:
        busy = int(os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average on this platform
        busy = 0
    return max(1, min(cores, physical_cores() - busy))


def check_threads(threads: int | None) -> int:
    """The thread count to use: `threads`, or `default_threads()` when None; refused when below one."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"--threads must be a whole number ≥ 1, got {threads!r}")
    return threads


def use_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count for this process; returns the count used."""
    import torch

    n = check_threads(threads)
    torch.set_num_threads(n)
    return n
