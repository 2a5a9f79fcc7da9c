"""Candidates from approximate nearest-neighbour indexes (faiss IVF) for catalogues too large to score whole.

`generate_candidates` scores every item of the pool for every source: several matrix products and argpartitions
over the catalogue per user, linear in it. Over a catalogue of at least `ANN_MIN_ITEMS` items, serving attaches a
`CandidateIndex` to its `RankerInputs` and the full-pool sources are read from it instead:

- the inner-product sources (the collaborative score through either item view, [vector | bias] against the
  user's [vector | 1]; the text profile against the normalised text embeddings) from one faiss IVF-Flat index
  each. Maximum inner product becomes nearest neighbour by one extra coordinate (Bachrach et al., 2014): each item
  x gets sqrt(R^2 - |x|^2), R the largest norm, the query 0, so |q - x|^2 = |q|^2 + R^2 - 2 q.x orders items by
  q.x and the clustering works in a true metric;
- the global sources (popularity, recent popularity) from their items sorted once: exact;
- TF-IDF profile similarity exactly, as a sparse product (no dense row over the catalogue).

Exclusions (training history and `exclude`) are honoured by over-fetching: each user asks for per_source plus as
many items as they have excluded, rounded up to a power of two (users asking alike are searched together), and the
excluded are dropped after. Items appended after the index was built (`add_items` while serving) are scored
exactly and merged by score, so an index is never mutated once built and stays safe to share between threads.

Below the threshold no index is built and candidates are the exact brute force, bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from ranker.features import RankerInputs

# Catalogues of at least this many items get an index when served (WARMSTART_ANN_MIN_ITEMS); CiteULike-a (16,980)
# and MovieLens stay exact. At 100k items one user's brute-force candidates take tens of milliseconds
# (docs/scaling.md, "Candidates by an ANN index").
ANN_MIN_ITEMS = 100_000
# Searched inverted lists per query. With about 4 sqrt(n) lists this scans 1-2% of the catalogue;
# benchmarks/ann_candidates.py measures the recall it buys.
DEFAULT_NPROBE = 24


@dataclass(frozen=True)
class _VectorIndex:
    index: Any  # faiss.IndexIVFFlat over the augmented vectors
    radius2: float  # R^2 of the augmentation


@dataclass(frozen=True, eq=False)
class CandidateIndex:
    """ANN indexes over the first `n_items` items of a `RankerInputs` (built by `build_candidate_index`)."""

    n_items: int
    vectors: dict[str, _VectorIndex]  # "cf_warm", "cf_cold", "text"
    orders: dict[str, np.ndarray]  # global sources: item indices by descending score
    nprobe: int
    seconds: float  # what the build took

    @property
    def nbytes(self) -> int:
        """Bytes the indexes hold (serialised faiss indexes plus the global orders)."""
        faiss = _faiss()
        size = sum(int(faiss.serialize_index(v.index).nbytes) for v in self.vectors.values())
        return size + sum(int(o.nbytes) for o in self.orders.values())


def _faiss() -> Any:
    import faiss  # imported on first use: most runs never build an index

    return faiss


def _augmented(vectors: np.ndarray, radius2: float) -> np.ndarray:
    norms2 = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
    extra = np.sqrt(np.maximum(radius2 - norms2, 0.0))
    return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]), dtype=np.float32)


def _ivf(vectors: np.ndarray, lists: int | None, seed: int) -> _VectorIndex:
    faiss = _faiss()
    vectors = np.asarray(vectors, dtype=np.float32)
    radius2 = float(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64).max(initial=0.0))
    data = _augmented(vectors, radius2)
    n, dim = data.shape
    lists = lists or max(1, min(int(4 * np.sqrt(n)), n // 39))  # faiss wants about 39+ training points a list
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_L2)
    index.cp.seed = seed
    # k-means on a sample: 64 points a list is plenty for the centroids and bounds the build's time.
    sample = data if n <= 64 * lists else data[np.random.default_rng(seed).choice(n, 64 * lists, replace=False)]
    index.train(sample)
    index.add(data)
    return _VectorIndex(index, radius2)


def build_candidate_index(
    inputs: RankerInputs, *, nprobe: int = DEFAULT_NPROBE, lists: int | None = None, seed: int = 0
) -> CandidateIndex:
    """Indexes over every item of `inputs` for the full-pool candidate sources (see the module docstring)."""
    started = time.perf_counter()
    views = inputs.catalog_views
    vectors = {
        "cf_warm": _ivf(views[False], lists, seed),
        "cf_cold": _ivf(views[True], lists, seed),
        "text": _ivf(inputs.text, lists, seed),
    }
    # Stable sorts: equal scores go to the lower item, whatever the brute force's argpartition picks among them.
    orders = {"popularity": np.argsort(-np.log1p(inputs.popularity), kind="stable")}
    if inputs.time is not None:
        orders["recent"] = np.argsort(-inputs.time.recent[:, -1], kind="stable")
        orders["recent_week"] = np.argsort(-inputs.time.recent[:, 0], kind="stable")
    return CandidateIndex(inputs.n_items, vectors, orders, nprobe, time.perf_counter() - started)


def _known(inputs: RankerInputs, users: np.ndarray, exclude: sp.csr_array | None) -> sp.csr_array:
    known = inputs.history[users]
    if exclude is not None:
        known = known + exclude[users]
    return sp.csr_array(known)


def _codes(rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return rows.astype(np.int64) * n_items + items


def _best(
    labels: np.ndarray, scores: np.ndarray, known_codes: np.ndarray, n_items: int, per_source: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, items) of each row's `per_source` best-scored labels that are items (>= 0) and not known."""
    rows = np.broadcast_to(np.arange(labels.shape[0])[:, None], labels.shape)
    valid = (labels >= 0) & np.isfinite(scores)
    valid &= ~np.isin(_codes(rows, np.maximum(labels, 0), n_items), known_codes)
    scores = np.where(valid, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :per_source]
    chosen_labels = np.take_along_axis(labels, order, axis=1)
    chosen_valid = np.take_along_axis(valid, order, axis=1)
    return np.broadcast_to(np.arange(labels.shape[0])[:, None], order.shape)[chosen_valid], chosen_labels[chosen_valid]


def _fetch_sizes(n_known: np.ndarray, per_source: int, n_items: int) -> np.ndarray:
    """Items each user asks the index for: per_source plus their excluded, rounded up to a power of two."""
    wanted = per_source + n_known
    return np.minimum(2 ** np.ceil(np.log2(np.maximum(wanted, 1))).astype(np.int64), n_items)


def _search(vector: _VectorIndex, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, inner products) of each query's k nearest indexed items (label -1 where fewer were found)."""
    faiss = _faiss()
    queries = np.ascontiguousarray(np.hstack([queries, np.zeros((queries.shape[0], 1))]), dtype=np.float32)
    distances, labels = vector.index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
    norms2 = np.einsum("ij,ij->i", queries, queries, dtype=np.float64)[:, None]
    # |q - x|^2 = |q|^2 + R^2 - 2 q.x
    return labels, ((norms2 + vector.radius2 - distances) / 2).astype(np.float32)


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
    known = _known(inputs, users, exclude)
    n_known = np.diff(known.indptr)
    known_coo = known.tocoo()
    known_codes = np.sort(_codes(known_coo.row, known_coo.col, n_items))
    tail = np.arange(n_indexed, n_items)  # items added after the build: scored exactly
    has_profile = inputs.user_has_history[users]
    queries: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}  # source -> (index name, user positions, vectors)
    everyone = np.arange(users.size)
    for as_cold in views:
        user_view = inputs.user_view(users)
        queries[f"cf_{'cold' if as_cold else 'warm'}"] = ("cf_cold" if as_cold else "cf_warm", everyone, user_view)
    if views:
        with_profile = np.flatnonzero(has_profile)
        queries["text"] = ("text", with_profile, inputs.text_profiles[users[with_profile]])

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sizes = _fetch_sizes(n_known, per_source, n_indexed)
    for source, (name, positions, vectors) in queries.items():
        tail_matrix = (inputs.catalog_views[name == "cf_cold"] if name != "text" else inputs.text)[tail]
        parts_rows, parts_items = [], []
        for size in np.unique(sizes[positions]):
            group = positions[sizes[positions] == size]
            group_vectors = vectors[np.searchsorted(positions, group)]  # positions are sorted
            labels, scores = _search(index.vectors[name], group_vectors, int(size), index.nprobe)
            if tail.size:
                labels = np.hstack([labels, np.broadcast_to(tail, (group.size, tail.size))])
                scores = np.hstack([scores, group_vectors @ tail_matrix.T])
            rows, items = _best(labels, scores, _group_codes(known, group, n_items), n_items, per_source)
            parts_rows.append(group[rows])
            parts_items.append(items)
        out[source] = _concat(parts_rows, parts_items)
    if False in views:
        for source, order in index.orders.items():
            out[source] = _global(inputs, source, order, tail, known, sizes, per_source)
    if views and inputs.tfidf is not None and inputs.tfidf_profiles is not None:
        out["tfidf"] = _tfidf(inputs, users, known_codes, per_source)
    return out


def _group_codes(known: sp.csr_array, group: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted codes (row in `group`, item) of the known pairs of the users at positions `group`."""
    rows = sp.csr_array(known[group]).tocoo()
    return np.sort(_codes(rows.row, rows.col, n_items))


def _concat(rows: list[np.ndarray], items: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(items).astype(np.int64)


def _global_scores(inputs: RankerInputs, source: str) -> np.ndarray:
    if source == "popularity":
        return np.log1p(inputs.popularity)
    assert inputs.time is not None
    return inputs.time.recent[:, -1 if source == "recent" else 0]


def _global(
    inputs: RankerInputs,
    source: str,
    order: np.ndarray,
    tail: np.ndarray,
    known: sp.csr_array,
    sizes: np.ndarray,
    per_source: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A source every user scores alike: the first items of its order (and the tail), the known left out."""
    scores = _global_scores(inputs, source)
    parts_rows, parts_items = [], []
    for size in np.unique(sizes):
        group = np.flatnonzero(sizes == size)
        head = np.r_[order[:size], tail]
        labels = np.broadcast_to(head, (group.size, head.size))
        rows, items = _best(
            labels,
            np.broadcast_to(scores[head], labels.shape),
            _group_codes(known, group, inputs.n_items),
            inputs.n_items,
            per_source,
        )
        parts_rows.append(group[rows])
        parts_items.append(items)
    return _concat(parts_rows, parts_items)


def _tfidf(
    inputs: RankerInputs, users: np.ndarray, known_codes: np.ndarray, per_source: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact TF-IDF profile similarity over the items that share a term with the profile (a sparse product)."""
    assert inputs.tfidf_profiles is not None
    product = sp.csr_array(inputs.tfidf_profiles[users] @ inputs.catalog_tfidf_t)
    rows = np.repeat(np.arange(users.size), np.diff(product.indptr))
    items, scores = product.indices.astype(np.int64), product.data
    keep = ~np.isin(_codes(rows, items, inputs.n_items), known_codes) & (scores > 0)
    rows, items, scores = rows[keep], items[keep], scores[keep]
    # Per row, the per_source highest scores: sort by (row, -score, item) and keep each row's first per_source.
    order = np.lexsort((items, -scores, rows))
    rows, items = rows[order], items[order]
    rank = np.arange(rows.size) - np.searchsorted(rows, rows, side="left")
    return rows[rank < per_source], items[rank < per_source]
