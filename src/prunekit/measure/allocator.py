"""Keep freed memory in the process while timing, so a latency measures the model, not page faults.

glibc's malloc serves large blocks (a batch-64 ResNet-56 activation is 4 MB) with fresh ``mmap`` pages and
returns them on ``free``, so every forward faults its activations in again, and its dynamic thresholds
move with what the process did before. Measured on one CPU thread (2026-11-30, `docs/benchmarks.md`): the
dense ResNet-56 at batch 64 took 222-274 ms with the default allocator and 176-186 ms with freed memory
kept; one pruned model measured 0.43-0.61 of the dense latency in three back-to-back measurements with the
default allocator and 0.60-0.63 with memory kept. The faults scale with activation size, not MACs, so
they flattered wide models' speed-ups and made batch-64 budgets wander.

Servers that care about CPU latency run a caching allocator (jemalloc, tcmalloc: PyTorch's CPU
performance guide recommends them) and so see the steady numbers; `steady_allocator` gives glibc the same
behaviour with ``mallopt``: no ``mmap`` below the largest threshold glibc accepts, no trimming. The
setting lasts for the rest of the process (glibc has no way back to its dynamic thresholds); the cost is
that memory freed by the process stays reserved to it. Other C libraries are left alone and reported as
such.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import cache

#: glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Thresholds tried in turn: glibc before 2.26 refused an mmap threshold above 32 MiB on 64-bit machines.
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int

#: What `steady_allocator` reports.
STEADY = "steady"  # glibc, freed memory kept in the process
UNCHANGED = "unchanged"  # not glibc (or mallopt refused): the C library's own behaviour


@cache
def steady_allocator() -> str:
    """Set glibc's malloc to keep freed memory (once per process); `STEADY` if it did, `UNCHANGED` if this
    C library is not glibc or refused the setting. Every latency measurement of prunekit calls it."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return UNCHANGED
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return UNCHANGED
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not any(mallopt(M_MMAP_THRESHOLD, value) == 1 for value in MMAP_THRESHOLDS):
        return UNCHANGED
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return UNCHANGED
    return STEADY
