"""The fold-in that warms items from synthetic interactions (`encoders.warm_items`) at a chosen shape: seconds per
Adam step and the memory it adds, so a change to how it batches or cuts its runs is measured where it matters.

    .venv/bin/python benchmarks/fold_in.py [--items 500000] [--users 200000] [--dim 257] [--per-item 20]
        [--zipf A] [--steps 5] [--most-pairs 524288] [--json F]

Scale M's shape is the default (500k items with 20 synthetic users each, 200k users of 256 factors plus the bias
column). With `--zipf A`, each item's pairs are drawn from a Zipf law of exponent A, at most --per-item (a label
window's takers: most items have a few; the fold-in pads items to blocks). Users' and items' vectors are standard
normal (the fold-in's cost does not depend on their values); the negatives are the first 80% of the items. Peak
memory is the process's (`ru_maxrss`) after the inputs are built against after the fold-in; the resident set is read
again once it returns, after `gc.collect()` and after glibc's `malloc_trim(0)` (what the allocator keeps from the
fold-in's freed blocks).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine, write_report  # noqa: E402
from encoders import WarmingConfig, warm_items  # noqa: E402

GIB = 2**30


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def resident_gib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=500_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=257, help="Factors plus the bias column.")
    parser.add_argument("--per-item", type=int, default=20)
    parser.add_argument("--zipf", type=float, help="Pairs per item from a Zipf law of this exponent (> 1).")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--most-pairs", type=int, default=2**19)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    users = rng.standard_normal((args.users, args.dim), dtype=np.float32)
    users[:, -1] = 1
    prior = rng.standard_normal((args.items, args.dim), dtype=np.float32)
    per_item = np.minimum(rng.zipf(args.zipf, args.items), args.per_item) if args.zipf else args.per_item
    rows = np.repeat(np.arange(args.items), per_item)
    cols = rng.integers(0, args.users, rows.size)
    synthetic = sp.csr_array((np.ones(rows.size, np.float32), (rows, cols)), shape=(args.items, args.users))
    synthetic.sum_duplicates()
    negatives = prior[: int(args.items * 0.8)]
    before = peak_gib()

    start, cpu = time.perf_counter(), time.process_time()
    warmed = warm_items(synthetic, users, prior, negatives, WarmingConfig(steps=args.steps), most_pairs=args.most_pairs)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    result = {
        "items": args.items,
        "users": args.users,
        "dim": args.dim,
        "pairs": int(synthetic.nnz),
        "zipf": args.zipf,
        "most_pairs_of_an_item": int(np.diff(synthetic.indptr).max()),
        "steps": args.steps,
        "most_pairs": args.most_pairs,
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / args.steps, 2),
        "cpu_seconds": round(cpu, 1),
        "inputs_peak_gib": round(before, 2),
        "added_peak_gib": round(peak_gib() - before, 2),
        "resident_after_gib": round(resident_gib(), 2),
    }
    del warmed
    gc.collect()
    result["resident_after_gc_gib"] = round(resident_gib(), 2)
    if platform.libc_ver()[0] == "glibc":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        result["resident_after_malloc_trim_gib"] = round(resident_gib(), 2)
    result["machine"] = machine()
    result["load_average"] = round(os.getloadavg()[0], 1)
    for key, value in result.items():
        print(f"{key:32} {value}")
    if args.json:
        write_report(args.json, "fold_in", data=Path("synthetic"), k=0, seconds=seconds, results=[result])


if __name__ == "__main__":
    main()
