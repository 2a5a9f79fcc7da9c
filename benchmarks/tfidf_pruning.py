"""Could the exact TF-IDF candidate source be made cheaper by pruning? Users' TF-IDF profiles (the mean of their
items' rows, as `RankerInputs.tfidf_profiles`) scored against every item, pruned two ways, against the exact scores.

    .venv/bin/python benchmarks/tfidf_pruning.py --data /work/scale/M/data [--users 300] [--k 100] [--json F]

`--data` holds `items.parquet` (item_id, title) and `interactions.parquet` (user_id, item_id), as
benchmarks/scale.py writes them. The exact source's cost is the sparse product of a profile with every term's
postings. Pruned: (a) each profile keeps only its `keep` heaviest terms; (b) terms found in more than `cap` titles
are left out of the profiles (they carry the longest postings). For each, the share of the exact top `k` kept
(averaged over sampled users with a history) and the product's time for the sample.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine, write_report  # noqa: E402
from ranker.baselines import tfidf_item_vectors  # noqa: E402
from ranker.features import _normalise_sparse_rows  # noqa: E402


def top_sets(profiles: sp.csr_array, postings: sp.csr_array, k: int) -> tuple[list[set[int]], float]:
    """Each profile's top `k` items by TF-IDF score, and the product's seconds."""
    clock = time.perf_counter()
    scores = sp.csr_array(profiles @ postings)
    seconds = time.perf_counter() - clock
    tops = []
    for row in range(scores.shape[0]):
        part = slice(scores.indptr[row], scores.indptr[row + 1])
        tops.append(set(scores.indices[part][np.argsort(-scores.data[part])[:k]].tolist()))
    return tops, seconds


def heaviest_terms(profiles: sp.csr_array, keep: int) -> sp.csr_array:
    pruned = profiles.copy()
    for row in range(pruned.shape[0]):
        values = pruned.data[pruned.indptr[row] : pruned.indptr[row + 1]]
        if values.size > keep:
            values[np.argsort(-values)[keep:]] = 0
    pruned.eliminate_zeros()
    return pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    started = time.perf_counter()
    items = pl.read_parquet(args.data / "items.parquet", columns=["item_id", "title"])
    events = (
        pl.scan_parquet(args.data / "interactions.parquet")
        .select("user_id", "item_id")
        .join(items.lazy().select("item_id", pl.int_range(pl.len()).alias("item")), on="item_id")
        .with_columns(pl.col("user_id").rank("dense").cast(pl.Int64).alias("user") - 1)
        .select("user", "item")
        .unique()
        .collect()
    )
    tfidf = tfidf_item_vectors(items["title"])
    history = sp.csr_array(
        (np.ones(events.height, np.float32), (events["user"].to_numpy(), events["item"].to_numpy())),
        shape=(int(events["user"].max()) + 1, items.height),
    )
    rng = np.random.default_rng(0)
    users = rng.choice(history.shape[0], size=min(args.users, history.shape[0]), replace=False)
    profiles = _normalise_sparse_rows(sp.csr_array(history[users] @ tfidf))
    postings = sp.csr_array(tfidf.T)
    in_titles = np.diff(postings.indptr)
    print(machine(), f"load average {os.getloadavg()[0]:.1f}")
    print(
        f"{items.height:,} items, {postings.shape[0]:,} terms (in up to {in_titles.max():,} titles), "
        f"{profiles.nnz / len(users):.0f} terms a profile on average"
    )
    exact, seconds = top_sets(profiles, postings, args.k)
    results = [{"pruning": "none (exact)", "ms_a_user": round(seconds / len(users) * 1000, 2), "kept": 1.0}]
    variants = [(f"{keep} heaviest terms", heaviest_terms(profiles, keep)) for keep in (8, 16, 32, 64)]
    for cap in (5000, 2000, 1000):
        common = profiles.copy()
        common.data[in_titles[common.indices] > cap] = 0
        common.eliminate_zeros()
        variants.append((f"terms in at most {cap} titles", common))
    for name, pruned in variants:
        found, seconds = top_sets(pruned, postings, args.k)
        kept = float(np.mean([len(a & b) / len(b) for a, b in zip(found, exact, strict=True) if b]))
        results.append({"pruning": name, "ms_a_user": round(seconds / len(users) * 1000, 2), "kept": round(kept, 3)})
    for row in results:
        print(f"{row['pruning']:28} {row['ms_a_user']:7.2f} ms a user, {row['kept']:.3f} of the exact top {args.k}")
    if args.json:
        write_report(
            args.json, "tfidf_pruning", data=args.data, k=args.k, seconds=time.perf_counter() - started, results=results
        )


if __name__ == "__main__":
    main()
