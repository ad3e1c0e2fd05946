"""`measure.allocator.steady_allocator`: latency is timed with freed memory kept in the process."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from prunekit.measure import allocator
from prunekit.measure.latency_table import machine_fingerprint

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Minor page faults of twenty fresh 40 MiB activations, written to as a conv output is (at batch 64 a
# 64-channel 56x56 feature map is 49 MiB).
FAULTS = """
import json, resource, sys, torch
if sys.argv[1] == "steady":
    from prunekit.measure.allocator import steady_allocator
    print(steady_allocator(), file=sys.stderr)
torch.empty(10 << 20).fill_(1.0)  # warm-up: glibc's dynamic threshold moves after the first free
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(10 << 20).fill_(1.0)  # 10M floats = 40 MiB = 10240 pages of 4 KiB
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return int(json.loads(done.stdout))


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_steady_allocator_stops_page_faults_of_fresh_activations() -> None:
    # glibc's default maps a block above 32 MiB afresh on each allocation and unmaps it on free (smaller
    # ones too, depending on the process's history): each of the twenty rounds faults in its 10240 pages
    # again (fewer with transparent huge pages, never near zero).
    assert _faults("default") >= 20 * 10240 // 4
    # kept in the heap, the block is reused: at most one more growth of the heap after the warm-up (a
    # small allocation may land above the freed block once)
    assert _faults("steady") <= 2 * 10240


def test_steady_allocator_reports_what_it_did(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = allocator.STEADY if GLIBC else allocator.UNCHANGED
    assert allocator.steady_allocator() == expected
    assert machine_fingerprint("cpu")["allocator"] == expected  # a table timed otherwise is not reused
    # another C library is left alone, and said to be
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.steady_allocator.__wrapped__() == allocator.UNCHANGED
