"""One query's scan of an inner-product IVF index (encoders._ann): IVF-Flat against the 8-bit scalar quantiser,
with and without padding to a multiple of `SIMD_WIDTH` coordinates, on clustered vectors of ALS's shape.

    .venv/bin/python benchmarks/ivf_scan.py [--items 500000] [--dim 257] [--queries 200] [--json F]

The vectors are 1,000 Gaussian centres plus noise (0.7 a coordinate); queries are drawn the same way. Each index
has `inner_product_ivf`'s sqrt(n) lists (707 at 500k) with `default_nprobe` of them searched (29). Per index:
one query's search time (mean over the queries, one call each), all queries in one call, the share of the exact
top 128 found, and the serialised index's size. Unpadded SQ8 is built by hand here, as `inner_product_ivf` built it
before it padded (faiss decodes 8-bit codes with SIMD only at widths that are multiples of 16).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine, write_report  # noqa: E402
from encoders._ann import default_nprobe, faiss_module, inner_product_ivf, search_ivf  # noqa: E402

K = 128


def unpadded_sq8(vectors: np.ndarray, lists: int, seed: int = 0) -> object:
    """An 8-bit IVF index over the vectors as they are (257 coordinates), trained like `inner_product_ivf`'s."""
    faiss = faiss_module()
    dim = vectors.shape[1]
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim), dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.seed = seed
    index.train(vectors[np.random.default_rng(seed).choice(len(vectors), 40 * lists, replace=False)])
    index.add(vectors)
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=257)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, args.dim)).astype(np.float32)

    def draw(n: int) -> np.ndarray:
        return (centres[rng.integers(0, 1000, n)] + 0.7 * rng.normal(size=(n, args.dim))).astype(np.float32)

    vectors, queries = draw(args.items), draw(args.queries)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
    print(machine(), f"load average {os.getloadavg()[0]:.1f}")
    started, results = time.perf_counter(), []
    flat = inner_product_ivf(vectors)
    indexes = {
        "IVF-Flat": flat,
        "IVF-SQ8, 257 coordinates": unpadded_sq8(vectors, flat.nlist),
        "IVF-SQ8, padded to a multiple of 16 (inner_product_ivf)": inner_product_ivf(vectors, quantised=True),
    }
    faiss = faiss_module()
    for name, index in indexes.items():
        nprobe = default_nprobe(index)
        search_ivf(index, queries[:5], K, nprobe)  # warm-up
        clock = time.perf_counter()
        for row in range(len(queries)):
            search_ivf(index, queries[row : row + 1], K, nprobe)
        one = (time.perf_counter() - clock) / len(queries) * 1000
        clock = time.perf_counter()
        labels, _ = search_ivf(index, queries, K, nprobe)
        together = (time.perf_counter() - clock) * 1000
        recall = float(
            np.mean([np.intersect1d(found, best).size / K for found, best in zip(labels, exact, strict=True)])
        )
        row = {
            "index": name,
            "lists": int(index.nlist),
            "nprobe": nprobe,
            "one_query_ms": round(one, 2),
            "all_queries_ms": round(together),
            f"recall_of_exact_top_{K}": round(recall, 3),
            "index_mb": round(faiss.serialize_index(index).nbytes / 2**20),
            "load_average": round(os.getloadavg()[0], 1),
        }
        results.append(row)
        print(row, flush=True)
    if args.json:
        write_report(
            args.json, "ivf_scan", data=Path("synthetic"), k=K, seconds=time.perf_counter() - started, results=results
        )


if __name__ == "__main__":
    main()
