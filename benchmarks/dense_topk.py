"""Evaluation's work on one dense batch of scores (`ranker.evaluate`): the NaN / +inf check and the top k, on a batch
shaped like scale M's (33 users x 500k items, each row -inf but for a learned ranker's ~600 candidates).

    .venv/bin/python benchmarks/dense_topk.py [--users 33] [--items 500000] [--candidates 600] [--repeats 5]

Also timed: finding the finite scores with 2-D `np.nonzero` (what `_top_k` did before 0e583d2) against the flat
scan it uses now, both on the same mask; and the cold places (`tail_quota_rerank`, 8 of 20 places) on those rows
and on rows where every item has a score (a newcomer's: the newcomer model scores every warm item, 90% of them,
and the cold ones are placed below).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine  # noqa: E402
from ranker.evaluate import _checked_scores, _top_k  # noqa: E402
from ranker.rerank import tail_quota_rerank  # noqa: E402


def milliseconds(work: Callable[[], object], repeats: int) -> float:
    work()
    clock = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - clock) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=33)
    parser.add_argument("--items", type=int, default=500_000)
    parser.add_argument("--candidates", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    scores = np.full((args.users, args.items), -np.inf, dtype=np.float32)
    chosen = rng.integers(0, args.items, (args.users, args.candidates))
    scores[np.arange(args.users)[:, None], chosen] = rng.random((args.users, args.candidates))
    keep = scores > -np.inf
    # A newcomer's row: every warm item scored by the newcomer model, the cold tenth placed below them all.
    is_cold, quota = rng.random(args.items) < 0.1, np.full(args.users, 8 / 20, dtype=np.float32)
    dense = rng.random((args.users, args.items)).astype(np.float32) - 2 * is_cold
    print(machine(), f"load average {os.getloadavg()[0]:.1f}")
    print(f"a batch of {args.users} users x {args.items:,} items, {args.candidates} finite scores a row:")
    for name, work in (
        ("_checked_scores (copy and one-pass check)", lambda: _checked_scores(scores, scores.shape)),
        ("_top_k, k = 20", lambda: _top_k(scores, 20)),
        ("finite scores by 2-D np.nonzero", lambda: np.nonzero(keep)),
        ("finite scores by a flat scan", lambda: np.divmod(np.flatnonzero(keep), keep.shape[1])),
        ("cold places, candidates' rows", lambda: tail_quota_rerank(scores, is_cold, quota, 20, strength=1.0)),
        ("cold places, newcomers' rows", lambda: tail_quota_rerank(dense, is_cold, quota, 20, strength=1.0)),
    ):
        print(f"  {name:44} {milliseconds(work, args.repeats):7.1f} ms")


if __name__ == "__main__":
    main()
