"""Serving latency of a workspace's promoted version: one user's top k in-process, every user as a batch, stated
text, and an item added with no retraining until it is served by `users_for_item`.

    .venv/bin/python benchmarks/serving_latency.py --workspace WORKSPACE [--cache-dir CACHE] [--k 20] [--users 200]

Wall times on whatever else the machine runs: the script prints the load average beside them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import polars as pl

from catalog import Columns
from serving import Recommender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "warmstart")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--users", type=int, default=200, help="Users timed one by one.")
    args = parser.parse_args()

    started = time.perf_counter()
    recommender = Recommender.load(args.workspace, cache_dir=args.cache_dir)
    load = time.perf_counter() - started
    users = recommender.user_ids.to_list()
    recommender.recommend(users[:1], k=args.k)  # warm-up
    single = []
    for user in users[: args.users]:
        started = time.perf_counter()
        recommender.recommend([user], k=args.k)
        single.append(time.perf_counter() - started)
    started = time.perf_counter()
    recommender.recommend(users, k=args.k)
    batch = time.perf_counter() - started
    recommender.recommend_text("warm-up", k=args.k)
    texts = []
    for query in ("space adventure", "romantic comedy in paris", "gangster film", "animated family movie"):
        started = time.perf_counter()
        recommender.recommend_text(query, k=args.k)
        texts.append(time.perf_counter() - started)
    new = pl.DataFrame(
        {Columns.item: ["bench-new"], Columns.title: ["A benchmark item"], Columns.text: ["added while serving"]}
    )
    started = time.perf_counter()
    added = recommender.add_items(new)
    added.users_for_item("bench-new", k=args.k)
    add = time.perf_counter() - started

    ms = 1000
    print(
        f"{recommender.ranker_name} {recommender.version}: {recommender.inputs.n_users:,} users x "
        f"{recommender.inputs.n_items:,} items, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
        f"load {load:.2f} s | one user top {args.k}: p50 {np.percentile(single, 50) * ms:.0f} ms, "
        f"p95 {np.percentile(single, 95) * ms:.0f} ms ({len(single)} users) | all {len(users):,} users: {batch:.1f} s"
        f" | stated text p50 {np.percentile(texts, 50) * ms:.0f} ms | add an item -> users_for_item {add:.2f} s"
    )


if __name__ == "__main__":
    main()
