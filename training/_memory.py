"""Freed memory given back to the system between the phases of a fit or a cycle."""

from __future__ import annotations

import ctypes
import gc
import platform


def release_memory() -> None:
    """Collect reference cycles, then have glibc hand its heaps' free pages back (`malloc_trim(0)`). glibc keeps
    blocks freed below its mmap threshold (which rises to 32 MB as large blocks are freed: most of numpy's medium
    arrays) resident, while a phase's arrays at 500k items are large enough to be mapped afresh beside them (a
    fold-in left 0.42 of 0.99 GB resident after it returned: benchmarks/fold_in.py; the refit at scale M began at
    6.9 GB, how much of it freed blocks not measured). Elsewhere than glibc, collection alone."""
    gc.collect()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
