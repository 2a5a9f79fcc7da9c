"""Candidates from approximate nearest-neighbour indexes (faiss IVF) for catalogues too large to score whole.

`generate_candidates` scores every item of the pool for every source: several matrix products and argpartitions
over the catalogue per user, linear in it. Over a catalogue of at least `ANN_MIN_ITEMS` items, serving attaches a
`CandidateIndex` to its `RankerInputs` and the full-pool sources are read from it instead:

- the inner-product sources (the collaborative score through either item view, [vector | bias] against the
  user's [vector | 1]; the text profile against the normalised text embeddings) from one faiss IVF index each,
  by inner product: sqrt(n) lists from k-means on a sample, a 24th of them searched per query, the vectors held
  at one byte a coordinate (8-bit scalar quantiser: a quarter of IVF-Flat's memory, which at 500k items and
  ALS's 256 factors was 1.8 GB an index). (The classic reduction of inner product to Euclidean distance by one
  extra coordinate recalled less here: 0.88 against 0.97 at 500k items and 32 lists searched,
  benchmarks/ann_candidates.py's catalogue);
- the global sources (popularity, recent popularity) from their items sorted once: exact;
- TF-IDF profile similarity exactly, as a sparse product that keeps only each row's best (sparse_dot_topn's
  multithreaded C++; no dense row over the catalogue).

Exclusions (training history and `exclude`) are honoured by over-fetching: each user asks for per_source plus as
many items as they have excluded, rounded up to a power of two (users asking alike are searched together), and the
excluded are dropped after. Items appended after the index was built (`add_items` while serving) are scored
exactly and merged by score, so an index is never mutated once built and stays safe to share between threads.

Training and evaluation score pools of their own (the warm items a ranker learns from, a split's candidates): over
a pool of at least the ranker's `ann_min_items` items, `build_candidate_index(inputs, pool)` indexes that pool alone
(labels are positions in it, mapped back to items; nothing is appended to such an index), and
`RankerInputs.pool_index` keeps the last few built so that every batch of a fit or an evaluation shares one.

Below the threshold no index is built and candidates are the exact brute force, bit for bit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from encoders._ann import default_nprobe, faiss_module, inner_product_ivf, search_ivf

if TYPE_CHECKING:
    import scipy.sparse as sp

    from ranker.features import RankerInputs

# Light on purpose (numpy only; faiss on first use): the settings read this default at the CLI's start.
# Catalogues (and pools) of at least this many items take candidates from an index (WARMSTART_ANN_MIN_ITEMS);
# CiteULike-a (16,980) and MovieLens stay exact. At 100k items one user's brute-force candidates took p50 86 ms,
# the index's 8.5 ms (docs/scaling.md, "Candidates by an ANN index"); at scale size S (99,999 items, 73.5k of
# them warm) the brute force was 38% of a whole retrain, which 100k left below the threshold.
ANN_MIN_ITEMS = 50_000


@dataclass(frozen=True, eq=False)
class CandidateIndex:
    """ANN indexes over `items` of a `RankerInputs` (built by `build_candidate_index`)."""

    items: np.ndarray  # the indexed items, ascending: label i of every faiss index is item items[i]
    vectors: dict[str, Any]  # faiss IVF indexes (inner product) of "cf_warm", "cf_cold", "text"
    # Global sources: item indices by descending score, and those scores.
    orders: dict[str, tuple[np.ndarray, np.ndarray]]
    nprobe: int
    seconds: float  # what the build took
    # The catalogue's index (items 0..n-1): items appended to the inputs after the build are scored exactly beside
    # it. A pool's index (False) answers for its pool alone.
    extends: bool = True
    # The pool's TF-IDF columns (terms x indexed items) for a pool's index; None: the catalogue's.
    tfidf_t: sp.csr_array | None = None

    @property
    def n_items(self) -> int:
        """How many items the index holds."""
        return int(self.items.size)

    @property
    def nbytes(self) -> int:
        """Bytes the indexes hold (serialised faiss indexes plus the global orders)."""
        faiss = faiss_module()
        size = sum(int(faiss.serialize_index(index).nbytes) for index in self.vectors.values())
        return size + sum(int(items.nbytes + scores.nbytes) for items, scores in self.orders.values())

    def labels_to_items(self, labels: np.ndarray) -> np.ndarray:
        """Item indices of faiss labels (-1, nothing found, stays -1)."""
        if self.extends:
            return labels
        return np.where(labels >= 0, self.items[np.maximum(labels, 0)], -1)


def build_candidate_index(
    inputs: RankerInputs,
    pool: np.ndarray | None = None,
    *,
    nprobe: int | None = None,
    lists: int | None = None,
    seed: int = 0,
    quantised: bool = True,
    like: CandidateIndex | None = None,
) -> CandidateIndex:
    """Indexes for the full-pool candidate sources (see the module docstring) over every item of `inputs`, or over
    the items of `pool` alone (ascending item indices); IVF-Flat instead of 8-bit codes where not `quantised`.
    `like` is an index over the same items of inputs that differ from these in their item stand-ins alone: its
    text index, global orders and TF-IDF columns are these inputs' too, and are shared, not built again."""
    started = time.perf_counter()
    items = np.arange(inputs.n_items) if pool is None else np.asarray(pool, dtype=np.int64)
    if pool is not None and (items.size == 0 or np.any(np.diff(items) <= 0)):
        raise ValueError("build_candidate_index: a pool must be non-empty, ascending and without repeats.")
    subset = slice(None) if pool is None else items
    # Each view's rows gathered for the build alone (not RankerInputs.catalog_views, which would stay in memory).
    vectors = {
        f"cf_{'cold' if cold else 'warm'}": inner_product_ivf(
            inputs.item_view(items, np.full(items.size, cold)), lists, seed, quantised=quantised
        )
        for cold in (False, True)
    }
    if like is not None and not np.array_equal(like.items, items):
        raise ValueError("build_candidate_index: `like` indexes other items.")
    if like is not None:
        vectors["text"], orders, tfidf_t = like.vectors["text"], like.orders, like.tfidf_t
        return CandidateIndex(
            items, vectors, orders, nprobe or like.nprobe, time.perf_counter() - started, like.extends, tfidf_t
        )
    vectors["text"] = inner_product_ivf(inputs.text[subset], lists, seed, quantised=quantised)
    # Stable sorts: equal scores go to the lower item, whatever the brute force's argpartition picks among them.
    orders = {}
    for source in ("popularity", "recent", "recent_week") if inputs.time is not None else ("popularity",):
        scores = _global_scores(inputs, source, items)
        order = np.argsort(-scores, kind="stable")  # equal scores to the lower item (items ascend)
        orders[source] = (items[order], scores[order])
    if nprobe is None:
        nprobe = default_nprobe(vectors["text"])
    tfidf_t = None
    if pool is not None and inputs.tfidf is not None:
        import scipy.sparse  # light module above: see ANN_MIN_ITEMS

        tfidf_t = scipy.sparse.csr_array(inputs.tfidf[items].T)
    return CandidateIndex(
        items, vectors, orders, nprobe, time.perf_counter() - started, extends=pool is None, tfidf_t=tfidf_t
    )


def _known(inputs: RankerInputs, users: np.ndarray, exclude: sp.csr_array | None) -> sp.csr_array:
    known = inputs.history[users]
    if exclude is not None:
        known = known + exclude[users]
    return known.tocsr()


def _codes(rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return rows.astype(np.int64) * n_items + items


def _best(
    positions: np.ndarray, labels: np.ndarray, scores: np.ndarray, known_codes: np.ndarray, n_items: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(positions, items) of each row's `k` best-scored labels that are items (>= 0) and not known; row r is the
    user at `positions[r]` of the batch whose known pairs `known_codes` holds."""
    rows = np.broadcast_to(positions[:, None], labels.shape)
    valid = (labels >= 0) & np.isfinite(scores)
    valid &= ~np.isin(_codes(rows, np.maximum(labels, 0), n_items), known_codes)
    order = np.argsort(-np.where(valid, scores, -np.inf), axis=1, kind="stable")[:, :k]
    chosen = np.take_along_axis(valid, order, axis=1)
    return np.broadcast_to(positions[:, None], order.shape)[chosen], np.take_along_axis(labels, order, axis=1)[chosen]


def _fetch_sizes(n_known: np.ndarray, per_source: int, n_items: int) -> np.ndarray:
    """Items each user asks the index for: per_source plus their excluded, rounded up to a power of two."""
    wanted = per_source + n_known
    return np.minimum(2 ** np.ceil(np.log2(np.maximum(wanted, 1))).astype(np.int64), n_items)


def ann_candidates(
    inputs: RankerInputs,
    index: CandidateIndex,
    users: np.ndarray,
    *,
    per_source: int,
    exclude: sp.csr_array | None = None,
    views: tuple[bool, ...] = (False, True),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each source's (user positions in `users`, item indices) of its top `per_source` items over the whole
    catalogue, training history and `exclude` left out: what generate_candidates takes the union of.

    Users without history have no text or TF-IDF profile (all their scores tie at 0): those sources give them
    nothing here, where the brute force gives arbitrary tied items."""
    n_items, n_indexed = inputs.n_items, index.n_items
    known_rows = _known(inputs, users, exclude)
    known = known_rows.tocoo()
    known_codes = np.sort(_codes(known.row, known.col, n_items))  # (position in users, item)
    sizes = _fetch_sizes(np.diff(known_rows.indptr), per_source, n_indexed)
    # Items added after the catalogue's index was built: scored exactly.
    tail = np.arange(n_indexed, n_items) if index.extends else np.empty(0, dtype=np.int64)
    everyone = np.arange(users.size)
    user_view = inputs.user_view(users)
    # Each query: the users' positions, their vectors, the tail's item vectors (the view's rows of those items only:
    # the whole catalogue's views are never built where an index answers, 514 MB each at 500k items).
    queries = {
        f"cf_{'cold' if cold else 'warm'}": (everyone, user_view, inputs.item_view(tail, np.full(tail.size, cold)))
        for cold in views
    }
    if views:
        with_profile = np.flatnonzero(inputs.user_has_history[users])
        queries["text"] = (with_profile, inputs.text_profiles[users[with_profile]], inputs.text[tail])

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for source, (positions, vectors, tail_vectors) in queries.items():
        parts = []
        for size in np.unique(sizes[positions]):
            chosen = np.flatnonzero(sizes[positions] == size)
            group, group_vectors = positions[chosen], vectors[chosen]
            labels, scores = search_ivf(index.vectors[source], group_vectors, int(size), index.nprobe)
            labels = index.labels_to_items(labels)
            if tail.size:
                labels = np.hstack([labels, np.broadcast_to(tail, (group.size, tail.size))])
                scores = np.hstack([scores, group_vectors @ tail_vectors.T])
            parts.append(_best(group, labels, scores, known_codes, n_items, per_source))
        out[source] = _concat(parts)
    if False in views:
        for source, (order, ordered) in index.orders.items():
            tail_scores = _global_scores(inputs, source, tail)
            parts = []
            for size in np.unique(sizes):
                group = np.flatnonzero(sizes == size)
                shape = (group.size, size + tail.size)
                labels = np.broadcast_to(np.r_[order[:size], tail], shape)
                scores = np.broadcast_to(np.r_[ordered[:size], tail_scores], shape)
                parts.append(_best(group, labels, scores, known_codes, n_items, per_source))
            out[source] = _concat(parts)
    if views and inputs.tfidf is not None and inputs.tfidf_profiles is not None:
        out["tfidf"] = _tfidf(inputs, index, users, known_rows, known_codes, per_source)
    return out


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return tuple(np.concatenate(column).astype(np.int64) for column in zip(*parts, strict=True))  # type: ignore[return-value]


def _global_scores(inputs: RankerInputs, source: str, items: np.ndarray) -> np.ndarray:
    """The score every user gives `items` in a global source (what source_scores broadcasts)."""
    if source == "popularity":
        return np.log1p(inputs.popularity[items])
    assert inputs.time is not None
    return inputs.time.recent[items, -1 if source == "recent" else 0]


def _tfidf(
    inputs: RankerInputs,
    index: CandidateIndex,
    users: np.ndarray,
    known: sp.csr_array,
    known_codes: np.ndarray,
    per_source: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact TF-IDF profile similarity: each user's positive products with the indexed items, of which a sparse
    product keeps only the best `_fetch_sizes` per row (per_source plus the user's known items, which are dropped
    after). Scipy's full product kept every item sharing a term with the profile (93k a user at 500k items, 5.3 ms)
    and a Python loop took each row's best: a quarter of a retrain at that size."""
    from sparse_dot_topn import sp_matmul_topn  # light module above: see ANN_MIN_ITEMS

    assert inputs.tfidf_profiles is not None
    columns = _csr_matrix(inputs.catalog_tfidf_t if index.tfidf_t is None else index.tfidf_t)
    profiles = _csr_matrix(inputs.tfidf_profiles[users])
    sizes = _fetch_sizes(np.diff(known.indptr), per_source, index.n_items)
    parts = []
    for size in np.unique(sizes):
        group = np.flatnonzero(sizes == size)
        best = sp_matmul_topn(profiles[group], columns, top_n=int(size), threshold=0.0, n_threads=_threads())
        # Each row's best, padded to `size` (nothing found: label -1, score -inf), for `_best` to drop the known.
        counts = np.diff(best.indptr)
        at = np.arange(best.nnz) - np.repeat(best.indptr[:-1], counts)
        rows = np.repeat(np.arange(group.size), counts)
        labels = np.full((group.size, size), -1, dtype=np.int64)
        scores = np.full((group.size, size), -np.inf, dtype=np.float32)
        labels[rows, at], scores[rows, at] = best.indices, best.data
        parts.append(_best(group, index.labels_to_items(labels), scores, known_codes, inputs.n_items, per_source))
    return _concat(parts)


def _csr_matrix(matrix: sp.csr_array) -> sp.csr_matrix:
    """The same arrays as the csr_matrix sparse_dot_topn takes (no copy)."""
    import scipy.sparse  # light module above: see ANN_MIN_ITEMS

    return scipy.sparse.csr_matrix((matrix.data, matrix.indices, matrix.indptr), shape=matrix.shape)


def _threads() -> int | None:
    """Threads for sparse_dot_topn: one per core this process may use (None: its sequential kernel). It holds the
    GIL while it runs, so two callers on threads of their own take turns; each turn uses every core."""
    cores = len(os.sched_getaffinity(0))
    return cores if cores > 1 else None
