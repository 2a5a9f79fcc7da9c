"""Freed memory handed back to the system between phases (training.release_memory)."""

from __future__ import annotations

import platform
import resource
from pathlib import Path

import numpy as np
import pytest

from training import release_memory


def _resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_blocks_are_handed_back() -> None:
    """Blocks of 4 MB freed under one still in use stay resident (glibc's mmap threshold has risen past them once a
    30 MB block was freed, so they were carved from its heap); released, they leave."""
    np.ones(30 * 2**20 // 8)  # allocated and freed: the threshold rises to 30 MB
    blocks = [np.ones(4 * 2**20 // 8) for _ in range(100)]
    kept = blocks[-1]  # the heap's top stays in use: freeing the others cannot shrink it
    del blocks
    before = _resident_mb()
    release_memory()
    assert before - _resident_mb() > 200, "400 MB freed, still resident"
    assert kept.sum() == kept.size
