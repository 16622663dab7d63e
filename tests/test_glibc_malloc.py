"""Keeping freed blocks in glibc's heap: a large block freed and allocated again is not page-faulted in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = 96 << 20

# Run in a child: the thresholds are process-wide and would stay set in the test process.
CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np

    BLOCK = 96 << 20
    from operators.glibc_malloc import keep_freed_blocks

    if sys.argv[1] == "keep":
        assert keep_freed_blocks()

    def faults_of_cycles():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            # 96 MiB: above glibc's largest dynamic mmap threshold (32 MiB)
            block = np.ones(BLOCK, dtype=np.uint8)
            del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    def resident():
        return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()

    before = resident()
    faults_of_cycles()  # first touch of the block counts in both runs
    print(faults_of_cycles(), resident() - before)
    """
)


def _faults_and_kept_bytes(mode: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], cwd=REPO, capture_output=True, text=True, check=True
    )
    faults, kept = out.stdout.split()
    return int(faults), int(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_blocks_are_reused_without_page_faults() -> None:
    huge_pages = BLOCK // (2 << 20)  # NumPy asks for transparent huge pages on large arrays
    default_faults, default_kept = _faults_and_kept_bytes("default")
    faults, kept = _faults_and_kept_bytes("keep")
    # glibc's default maps every 96 MiB block anew and unmaps it on free: each of the 5 cycles faults its
    # pages in again (one fault per page at best, a 2 MiB huge page), and nothing stays resident
    assert default_faults >= 5 * huge_pages
    assert default_kept < (8 << 20)
    # kept: the freed block is reused from the heap and stays resident
    assert faults < huge_pages
    assert kept >= BLOCK * 0.9

