"""implicit's ALS on one and two OpenMP threads, with BLAS on one thread or on as many (what `ImplicitMF` pins):
wall and CPU seconds of a few iterations on the first events of a log.

    .venv/bin/python benchmarks/als_threads.py --data /work/scale/M/data [--events 1500000] [--factors 256]
        [--iterations 2]

`--data` holds `interactions.parquet` (user_id, item_id), as benchmarks/scale.py writes it. Each setting runs
twice in the order (1, 1), (2, 1), (2, 2), (1, 1), (2, 1) (threads, BLAS threads); the vectors of one and two
threads with BLAS on one are compared bit for bit.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the product sets it (flows/__init__.py)

import numpy as np
import polars as pl
import scipy.sparse as sp
import threadpoolctl
from implicit.cpu.als import AlternatingLeastSquares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--events", type=int, default=1_500_000)
    parser.add_argument("--factors", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()
    log = pl.read_parquet(args.data / "interactions.parquet", columns=["user_id", "item_id"]).head(args.events)
    users = log["user_id"].cast(pl.Categorical).to_physical().to_numpy()
    items = log["item_id"].cast(pl.Categorical).to_physical().to_numpy()
    matrix = sp.csr_matrix((np.ones(users.size, np.float32), (users, items)))
    matrix.sum_duplicates()
    matrix.data[:] = 1
    print(f"{matrix.shape[0]:,} users x {matrix.shape[1]:,} items, {matrix.nnz:,} pairs", flush=True)
    vectors = {}
    for threads, blas in ((1, 1), (2, 1), (2, 2), (1, 1), (2, 1)):
        with threadpoolctl.threadpool_limits(blas, user_api="blas"):
            model = AlternatingLeastSquares(
                factors=args.factors,
                regularization=0.01,
                alpha=40.0,
                iterations=args.iterations,
                num_threads=threads,
                random_state=0,
            )
            started, cpu = time.perf_counter(), time.process_time()
            model.fit(matrix, show_progress=False)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        vectors[threads, blas] = model.item_factors
        print(f"threads {threads}, BLAS {blas}: {wall:.1f} s wall, {cpu:.1f} s CPU, load {os.getloadavg()[0]:.1f}")
    print("one and two threads (BLAS on one) give the same vectors:", np.array_equal(vectors[1, 1], vectors[2, 1]))


if __name__ == "__main__":
    main()
