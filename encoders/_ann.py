"""Inner-product IVF indexes (faiss) shared by the candidate indexes (ranker.ann) and the embedding simulator
(encoders._warming): sqrt(n) inverted lists from k-means on a sample, a share of them searched per query.

Light on purpose (numpy only; faiss on first use): the settings read ranker.ann's threshold at the CLI's start.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Share of the inverted lists searched per query (at least MIN_NPROBE), with sqrt(n) lists. At 500k items 1/12
# recalled all of the brute force's top 100 in 38 ms a user (p50, load 5); 1/24 recalled 0.95-1.0 a source and
# 0.99 of the union in 32 ms (load 3.5; docs/scaling.md).
PROBE_SHARE = 1 / 24
MIN_NPROBE = 16
# Quantised vectors are padded with zero coordinates to a multiple of this: faiss decodes 8-bit codes with SIMD
# only then, and ALS's 256 factors plus a bias (257) scanned 5x slower than IVF-Flat (7.3 against 1.6 ms a query
# at 500k items); padded to 272, 0.9 ms, with the same recall (inner products are unchanged by zeros).
SIMD_WIDTH = 16


def faiss_module() -> Any:
    import faiss  # imported on first use: most runs never build an index

    return faiss


def inner_product_ivf(vectors: np.ndarray, lists: int | None = None, seed: int = 0, *, quantised: bool = False) -> Any:
    """A faiss IVF index of `vectors` by inner product: `lists` inverted lists (sqrt(n) by default) from k-means on
    a seeded sample of 40 points a list, which places the centroids well enough and bounds the build. The lists
    hold the vectors themselves (IVF-Flat), or where `quantised` one byte a coordinate (8-bit scalar quantiser,
    each coordinate's range learnt on the same sample): a quarter of the memory, approximate inner products."""
    faiss = faiss_module()
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    n = data.shape[0]
    dim = -(-data.shape[1] // SIMD_WIDTH) * SIMD_WIDTH if quantised else data.shape[1]
    lists = lists or max(1, min(int(np.sqrt(n)), n // 39))  # faiss wants 39+ training points a list
    coarse = faiss.IndexFlatIP(dim)
    if quantised:
        index = faiss.IndexIVFScalarQuantizer(
            coarse, dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    else:
        index = faiss.IndexIVFFlat(coarse, dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    sample = data if n <= 40 * lists else data[np.random.default_rng(seed).choice(n, 40 * lists, replace=False)]
    index.train(_padded(sample, dim))
    # Padded a block at a time: a padded copy of every vector was half a gigabyte beside the vectors at 500k items.
    # Each vector is listed and encoded on its own, so the index is the one a single add builds.
    for start in range(0, n, ADD_BLOCK):
        index.add(_padded(data[start : start + ADD_BLOCK], dim))
    return index


# Rows added to an index at once (padded a block at a time).
ADD_BLOCK = 2**16


def default_nprobe(index: Any) -> int:
    """Lists searched per query: PROBE_SHARE of them, at least MIN_NPROBE."""
    return max(MIN_NPROBE, round(index.nlist * PROBE_SHARE))


def search_ivf(index: Any, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, inner products) of each query's k best indexed rows (label -1 where fewer were found)."""
    faiss = faiss_module()
    queries = _padded(np.ascontiguousarray(queries, dtype=np.float32), index.d)
    scores, labels = index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
    return labels, scores


def _padded(matrix: np.ndarray, width: int) -> np.ndarray:
    """`matrix` with zero columns appended up to `width` (itself where it is that wide)."""
    if matrix.shape[1] >= width:
        return matrix
    return np.ascontiguousarray(np.pad(matrix, ((0, 0), (0, width - matrix.shape[1]))))
