"""Publishing's threads: every user's top k ranked on a thread per core (`InThreads`), with the native libraries'
own thread pools (faiss's and LightGBM's OpenMP, BLAS) left as they are or held to one thread each while the
partition threads run. Each partition thread calling a library that starts its own threads put twice as many
threads as cores to work, and OpenMP's idle threads wait by spinning.

    .venv/bin/python benchmarks/publish_threads.py --workspace WS --cache-dir CACHE [--users 4000] [--json F]

Loads the workspace's current version once, ranks the first `--users` users' top 20 both ways (in turn, each
twice, alternating; a half of the users per thread, as `flows.stages.recommendations` parts them), and reports
wall and CPU seconds of each and whether the lists are the same.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import polars as pl
import threadpoolctl

from benchmarks._report import machine
from ranker.evaluate import InThreads
from serving import Recommender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    started = time.perf_counter()
    recommender = Recommender.load(args.workspace, cache_dir=args.cache_dir)
    print(f"loaded in {time.perf_counter() - started:.1f} s", flush=True)
    users = recommender.user_ids.head(args.users)
    threads = InThreads(len(os.sched_getaffinity(0)))

    def rank(one_thread_libraries: bool) -> tuple[float, float, pl.DataFrame]:
        wall, cpu = time.perf_counter(), time.process_time()
        limits = threadpoolctl.threadpool_limits(1) if one_thread_libraries else None
        try:
            parts = [users.slice(start, stop - start) for start, stop in itertools.pairwise(_halves(users.len()))]
            frame = pl.concat(threads(lambda part: recommender.recommend(part, args.k), parts))
        finally:
            if limits is not None:
                limits.restore_original_limits()
        return time.perf_counter() - wall, time.process_time() - cpu, frame

    rank(False)  # warm: first-use costs (indexes, caches) out of both measurements
    rows, frames = [], {}
    for repeat, one in itertools.product(range(2), (False, True)):
        wall, cpu, frame = rank(one)
        frames[one] = frame
        row = {"libraries": "one thread each" if one else "as they are", "repeat": repeat}
        row |= {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load": [round(x, 2) for x in os.getloadavg()]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    same = frames[False].equals(frames[True])
    print(f"the same lists both ways: {same}", flush=True)
    if args.json:
        report = {
            "users": users.len(),
            "threads": threads.workers,
            "rows": rows,
            "same_lists": same,
            "machine": machine(),
            "library_pools": threadpoolctl.threadpool_info(),
        }
        args.json.write_text(json.dumps(report, indent=2, default=str))


def _halves(n: int) -> list[int]:
    return [0, n // 2, n]


if __name__ == "__main__":
    main()
