"""Candidate generation and pair features for the learned rankers, over integer user and item indices.

The rankers never see an item's collaborative embedding directly: they see a user-item score computed through
one of two *views* of the item. The warm view uses the item's collaborative (ID) embedding and its popularity;
the cold view uses its content-mapped stand-in and no popularity, which is all a cold item has. Training presents
warm items through the cold view too (DropoutNet's idea), so the ranker learns what a cold item looks like.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import cache, cached_property

import numpy as np
import scipy.sparse as sp
import threadpoolctl

from ranker.ann import CandidateIndex, ann_candidates, build_candidate_index
from ranker.temporal import RequestTimes, TimeFeatures
from ranker.topk import top_mask

FEATURE_NAMES = (
    # The user's collaborative vector (their stand-in where they have no history) against the item's view.
    "cf_score",
    "text_profile",
    "text_max",
    "text_top3",
    "tfidf_profile",
    "tfidf_max",
    "log_popularity",
    "as_cold",
    "user_activity",
    "title_words",
    "text_rank",
    # From a time-ordered log (zero without times): the item's share of the events of the last 7, 14 and 28
    # days, its age in days, the user's events in the last 7 days.
    "recent_7d",
    "recent_14d",
    "recent_28d",
    "item_age",
    "user_recent",
    # Days since the item came out in the world (NaN where unknown): known for cold items too.
    "release_age",
    # How many given pairs (a judge's; in training, judge-like pairs of a warm item) warmed the item's cold view;
    # zero where the simulator or content alone made it, and in the warm view. Last: older rankers still load.
    "given_pairs",
)
# Item features read from the log, hidden (zero) when an item is presented as cold: a cold item has none.
ITEM_LOG_FEATURES = ("log_popularity", "recent_7d", "recent_14d", "recent_28d", "item_age")


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    """`matrix` itself where its rows are unit length or zero already (another RankerInputs' text, passed on by
    `replace`: copying it again was 768 MB at 500k items), else normalise_rows(matrix)."""
    if matrix.dtype == np.float32:
        squared = np.einsum("ij,ij->i", matrix, matrix)
        if bool(np.all((np.abs(squared - 1) < 1e-5) | (squared == 0))):
            return matrix
    return normalise_rows(matrix)


def _unit_sparse_rows(matrix: sp.csr_array) -> sp.csr_array:
    """`matrix` itself where it is float32 CSR with rows of unit length or empty already (TF-IDF rows are, and inputs
    over the same items share them), else _normalise_sparse_rows of it."""
    if isinstance(matrix, sp.csr_array) and matrix.dtype == np.float32:
        squared = np.bincount(
            np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr)),
            weights=np.square(matrix.data, dtype=np.float64),
            minlength=matrix.shape[0],
        )
        if bool(np.all((np.abs(squared - 1) < 1e-5) | (squared == 0))):
            return matrix
    return _normalise_sparse_rows(sp.csr_array(matrix, dtype=np.float32))


def _normalise_sparse_rows(matrix: sp.csr_array) -> sp.csr_array:
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return sp.csr_array(sp.diags_array(1.0 / np.maximum(norms, 1e-12)) @ matrix)


class _PoolIndexes:
    """The last `POOL_INDEXES` pools' ANN indexes of one `RankerInputs`, built once under a lock whoever asks
    first (evaluation scores batches from several threads). Not pickled: a Dask worker builds its own, since faiss
    indexes are not sent and rebuilding one (seconds) is cheaper than shipping it."""

    def __init__(self, standins_of: _PoolIndexes | None = None) -> None:
        self._lock = threading.Lock()
        self._built: OrderedDict[bytes, CandidateIndex] = OrderedDict()
        # The indexes of inputs that differ from these only in their item stand-ins (`with_item_standins`): an index
        # they built over the same pool lends its parts that read no stand-in (text, global orders, TF-IDF columns).
        self._standins_of = standins_of
        # The pool array last asked about and its key: a fit or an evaluation asks with the same array for every
        # batch, and sorting and hashing 500k items each time was 4% of a retrain at 500k items.
        self._last: tuple[np.ndarray, bytes] | None = None

    def get(self, inputs: RankerInputs, pool: np.ndarray) -> CandidateIndex:
        with self._lock:
            if self._last is not None and self._last[0] is pool and self._last[1] in self._built:
                return self._built[self._last[1]]
            items = np.unique(pool)  # ascending, as build_candidate_index wants
            key = hashlib.blake2b(items.astype(np.int64).tobytes(), digest_size=16).digest()
            if key not in self._built:
                self._built[key] = build_candidate_index(inputs, items, like=self._lent(key))
                while len(self._built) > POOL_INDEXES:
                    self._built.popitem(last=False)
            self._built.move_to_end(key)
            self._last = (pool, key)
            return self._built[key]

    def _lent(self, key: bytes) -> CandidateIndex | None:
        if self._standins_of is None:
            return None
        with self._standins_of._lock:
            return self._standins_of._built.get(key)

    def clear(self) -> None:
        with self._lock:
            self._built.clear()
            self._last = None

    def __reduce__(self) -> tuple[type[_PoolIndexes], tuple[()]]:
        return (_PoolIndexes, ())


# A fit learns from the warm items and stops early on its validation pool; evaluation scores one pool per split.
POOL_INDEXES = 2


@dataclass(frozen=True, eq=False)
class RankerInputs:
    """What the rankers know about users and items, row i of each item array being item index i.

    `history` is the binary (users x items) matrix of training interactions. `item_cf` rows of cold items are
    never read: a cold item is always seen through `item_standin`. For warm items `item_standin` should be
    out-of-fold (the mapper did not train on that item), or the ranker would learn to trust stand-ins too much.
    """

    history: sp.csr_array
    text: np.ndarray
    user_cf: np.ndarray
    item_cf: np.ndarray
    item_standin: np.ndarray
    popularity: np.ndarray
    title_words: np.ndarray
    tfidf: sp.csr_array | None = None
    # Multi-hot (items x categories) of each item's categories (genres...); None when the data set has none.
    categories: sp.csr_array | None = None
    # Recent popularity, item age and recent user activity as of the history's end; None for logs without times.
    time: TimeFeatures | None = None
    # Each user's stand-in [vector | 1] made from their attributes and text (training.UserStandInBuilder; out-of-fold
    # for users with history when training): a user without history is scored through it in place of `user_cf`.
    # None: no stand-ins (a zero vector, so only the item bias, as for a user the encoders never saw).
    user_standin: np.ndarray | None = None
    # Each user's attributes as numbers (training.AttributeEncoding: standardised numbers, then one-hot levels), what
    # the newcomer model (ranker.newcomers) weighs users by. None: no attributes (a users x 0 array).
    user_attributes: np.ndarray | None = None
    # ANN indexes over the first `candidates.n_items` items (ranker.build_candidate_index): where set, candidates
    # over the whole catalogue come from them (ranker.ann); None (below the serving threshold): exact brute force.
    candidates: CandidateIndex | None = None
    # How many given pairs warmed each item's stand-in (training.Warmed.given_pairs); None: none (zeros).
    item_given: np.ndarray | None = None
    # When each user asks (ranker.temporal.RequestTimes): the newcomer model's recent shares are those of the days
    # before each user's request. None: every user asks at the log's end (`time.now`), as in serving.
    request_times: RequestTimes | None = None
    # ANN indexes over pools (generate_candidates' `ann_min_items`), built on first use; a `replace` starts afresh.
    _pool_indexes: _PoolIndexes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n_users, n_items = self.history.shape
        for name, rows, expected in (
            ("text", self.text.shape[0], n_items),
            ("item_cf", self.item_cf.shape[0], n_items),
            ("item_standin", self.item_standin.shape[0], n_items),
            ("popularity", self.popularity.shape[0], n_items),
            ("title_words", self.title_words.shape[0], n_items),
            ("user_cf", self.user_cf.shape[0], n_users),
            ("user_standin", n_users if self.user_standin is None else self.user_standin.shape[0], n_users),
            ("user_attributes", n_users if self.user_attributes is None else self.user_attributes.shape[0], n_users),
            ("item_given", n_items if self.item_given is None else self.item_given.shape[0], n_items),
            ("request_times", n_users if self.request_times is None else self.request_times.at.shape[0], n_users),
        ):
            if rows != expected:
                raise ValueError(f"RankerInputs.{name} has {rows} rows; history implies {expected}.")
        if self.tfidf is not None and self.tfidf.shape[0] != n_items:
            raise ValueError(f"RankerInputs.tfidf has {self.tfidf.shape[0]} rows; history implies {n_items}.")
        if self.categories is not None and self.categories.shape[0] != n_items:
            raise ValueError(f"RankerInputs.categories has {self.categories.shape[0]} rows; history implies {n_items}.")
        if self.candidates is not None and self.candidates.n_items > n_items:
            raise ValueError(
                f"RankerInputs.candidates indexes {self.candidates.n_items} items; history implies {n_items}."
            )
        if self.time is not None and (self.time.recent.shape[0], self.time.user_recent.shape[0]) != (n_items, n_users):
            raise ValueError(
                f"RankerInputs.time covers {self.time.recent.shape[0]} items and {self.time.user_recent.shape[0]} "
                f"users; history implies {n_items} and {n_users}."
            )
        history = sp.csr_array((self.history > 0).astype(np.float32))
        object.__setattr__(self, "history", history)
        if self.user_standin is None:
            standin = np.zeros_like(np.asarray(self.user_cf))
            standin[:, -1] = 1.0
            object.__setattr__(self, "user_standin", standin)
        if self.user_attributes is None:
            object.__setattr__(self, "user_attributes", np.zeros((n_users, 0), dtype=np.float32))
        object.__setattr__(self, "text", _unit_rows(np.asarray(self.text, dtype=np.float32)))
        if self.tfidf is not None:
            object.__setattr__(self, "tfidf", _unit_sparse_rows(self.tfidf))
        object.__setattr__(self, "_pool_indexes", _PoolIndexes())

    # Derived on first use: the normalised sum of each user's item vectors (zero for users without history).
    @cached_property
    def text_profiles(self) -> np.ndarray:
        return normalise_rows(self.history @ self.text)

    @cached_property
    def tfidf_profiles(self) -> sp.csr_array | None:
        if self.tfidf is None:
            return None
        return _normalise_sparse_rows(sp.csr_array(self.history @ self.tfidf))

    def with_item_standins(self, standins: np.ndarray, given: np.ndarray | None) -> RankerInputs:
        """These inputs serving other item stand-ins (and counts of given pairs): nothing about users changes, so
        the users' profiles computed already are carried over (at scale M, 650 MB and seconds to compute again), and
        the pools' indexes share these inputs' parts that read no stand-in (the text index, a third of one)."""
        other = replace(self, item_standin=standins, item_given=given)
        for name in ("text_profiles", "tfidf_profiles"):
            if name in self.__dict__:
                other.__dict__[name] = self.__dict__[name]
        object.__setattr__(other, "_pool_indexes", _PoolIndexes(standins_of=self._pool_indexes))
        return other

    def pool_index(self, pool: np.ndarray) -> CandidateIndex:
        """The ANN index over the items of `pool` (any order), built on first use and kept with the last few. The
        same array asked again finds its index at once: a pool array must not change once asked about."""
        return self._pool_indexes.get(self, pool)

    def drop_pool_indexes(self) -> None:
        """Forget the pools' indexes (each is a quarter of the vectors it holds): for a phase that is done with
        them, so that the next phase's inputs do not sit beside them."""
        self._pool_indexes.clear()

    def without_history(self, users: np.ndarray) -> RankerInputs:
        """These inputs with `users` shown as users without history: their history rows emptied (so every feature
        read from a history is zero and they are scored through their stand-in) and no recent events. What a user
        without history looks like at serving, for training the ranker on warm users as if they were new."""
        keep = np.ones(self.n_users, dtype=np.float32)
        keep[users] = 0.0
        history = sp.csr_array(sp.diags_array(keep) @ self.history)
        history.eliminate_zeros()
        time = self.time
        if time is not None:
            time = replace(time, user_recent=np.where(keep > 0, time.user_recent, 0).astype(time.user_recent.dtype))
        blank = replace(self, history=history, time=time)
        # A pool's index holds item vectors, popularity and TF-IDF columns, none of which a user's history changes:
        # both inputs share the indexes (a second one over 450k warm items was gigabytes at scale M).
        object.__setattr__(blank, "_pool_indexes", self._pool_indexes)
        return blank

    @property
    def n_users(self) -> int:
        return int(self.history.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.history.shape[1])

    @property
    def is_cold(self) -> np.ndarray:
        return self.popularity == 0

    def item_view(self, items: np.ndarray, as_cold: np.ndarray) -> np.ndarray:
        """Collaborative vectors of items as seen by the ranker: stand-ins where cold (or presented as cold)."""
        as_cold = np.flatnonzero(as_cold | self.is_cold[items])
        # np.where(as_cold, stand-ins, item_cf) without gathering both tables for every item (half the time).
        view = self.item_cf[items].astype(np.result_type(self.item_standin, self.item_cf), copy=False)
        view[as_cold] = self.item_standin[items[as_cold]]
        return view

    @cached_property
    def user_has_history(self) -> np.ndarray:
        return np.diff(self.history.indptr) > 0

    def user_view(self, users: np.ndarray, as_cold: np.ndarray | None = None) -> np.ndarray:
        """Collaborative vectors of users as the ranker sees them: the stand-in for a user without history (or one
        presented as such), their own vector otherwise."""
        standin = ~self.user_has_history[users] if as_cold is None else as_cold | ~self.user_has_history[users]
        assert self.user_standin is not None
        # Gather one and overwrite the stand-in rows: a per-pair gather of both was a third of pair_features.
        view = self.user_cf[users].astype(np.result_type(self.user_standin, self.user_cf), copy=False)
        view[standin] = self.user_standin[users[standin]]
        return view

    def is_full(self, pool: np.ndarray) -> bool:
        """Whether `pool` is every item in index order (serving's pool): then the per-item arrays below, computed
        once per inputs, stand for the pool's rows, with the very same values."""
        return pool.size == self.n_items and bool(np.array_equal(pool, np.arange(self.n_items)))

    @cached_property
    def catalog_views(self) -> dict[bool, np.ndarray]:
        """`item_view` of every item, warm (False) and as cold (True); computed once per inputs, for scoring the
        whole catalogue by brute force (an index reads its own copies: ranker.ann)."""
        everything = np.arange(self.n_items)
        dtype = np.result_type(self.item_standin, self.item_cf)
        return {
            False: self.item_view(everything, np.zeros(everything.size, dtype=bool)),
            # Every item as cold is the stand-ins themselves: no copy (at 500k items and 256 factors, 514 MB).
            True: np.asarray(self.item_standin, dtype=dtype),
        }

    @cached_property
    def catalog_tfidf_t(self) -> sp.csr_array | None:
        """The TF-IDF matrix transposed (terms x items) as CSR, what `tfidf[pool].T` becomes in a product with a CSR
        matrix; computed once per inputs."""
        return sp.csr_array(self.tfidf.T) if self.tfidf is not None else None

    @cached_property
    def _log_popularity(self) -> np.ndarray:
        return np.log1p(self.popularity)

    def source_scores(
        self, users: np.ndarray, pool: np.ndarray, as_cold: bool, *, view_only: bool = False
    ) -> dict[str, np.ndarray]:
        """Dense (users x pool) scores of each candidate source. `view_only` leaves out the sources that read no
        item view (text and TF-IDF profiles score an item alike in both), for a caller that has them from the
        other view."""
        full = self.is_full(pool)
        view = self.catalog_views[as_cold] if full else self.item_view(pool, np.full(pool.size, as_cold))
        scores = {"cf": self.user_view(users) @ view.T}
        if not view_only:
            scores["text"] = self.text_profiles[users] @ (self.text if full else self.text[pool]).T
        if not view_only and self.tfidf is not None and self.tfidf_profiles is not None:
            columns = self.catalog_tfidf_t if full else self.tfidf[pool].T
            scores["tfidf"] = (self.tfidf_profiles[users] @ columns).toarray()
        if not as_cold:
            log_popularity = self._log_popularity if full else np.log1p(self.popularity[pool])
            scores["popularity"] = np.broadcast_to(log_popularity, (users.size, pool.size))
            if self.time is not None:
                # What the population rates now: the candidates a user without history is best served by.
                scores["recent"] = np.broadcast_to(self.time.recent[pool, -1], (users.size, pool.size))
                scores["recent_week"] = np.broadcast_to(self.time.recent[pool, 0], (users.size, pool.size))
        return scores


@dataclass(frozen=True, eq=False)
class RankingTask:
    """Users to rank `pool` items for; `positives` (users x items) labels them, `exclude` masks known pairs."""

    users: np.ndarray
    pool: np.ndarray
    positives: sp.csr_array | None = None
    exclude: sp.csr_array | None = None


def _pool_columns(rows: sp.csr_array, pool: np.ndarray, full: bool) -> sp.csr_array:
    """`rows[:, pool]`; the rows themselves when the pool is every item (column indexing copies them slowly)."""
    return rows if full else rows[:, pool]


def generate_candidates(
    inputs: RankerInputs,
    users: np.ndarray,
    pool: np.ndarray,
    *,
    per_source: int,
    exclude: sp.csr_array | None = None,
    views: tuple[bool, ...] = (False, True),
    batch_size: int | None = None,
    ann_min_items: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Union of each source's top `per_source` items of `pool` per user, in both item views by default.

    Training interactions (and `exclude`) are never candidates. Returns (user indices, item indices) of the
    candidate pairs, grouped by user in the order of `users`. Users are scored `batch_size` at a time: by default
    512, fewer where the pool is so large that a batch's dense (users x pool) scores would pass 2^24 entries.

    The whole catalogue comes from the inputs' own ANN index where serving attached one (`inputs.candidates`); a
    pool of at least `ann_min_items` items from an index over that pool (`RankerInputs.pool_index`); anything
    else is the exact brute force.
    """
    pair_users, pair_items = [], []
    full = inputs.is_full(pool)
    if full and inputs.candidates is not None:
        return _indexed_candidates(inputs, inputs.candidates, users, per_source, exclude, views, batch_size or 512)
    if ann_min_items is not None and pool.size >= ann_min_items:
        index = inputs.pool_index(pool)
        return _indexed_candidates(inputs, index, users, per_source, exclude, views, batch_size or 512)
    batch_size = batch_size or max(1, min(512, 2**24 // max(pool.size, 1)))
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        known = _pool_columns(inputs.history[batch], pool, full).toarray() > 0
        if exclude is not None:
            known |= _pool_columns(exclude[batch], pool, full).toarray() > 0
        chosen = np.zeros((batch.size, pool.size), dtype=bool)
        for view, as_cold in enumerate(views):
            # The sources that read no item view choose the same items in every view: once is enough.
            for scores in inputs.source_scores(batch, pool, as_cold, view_only=view > 0).values():
                chosen |= top_mask(np.where(known, -np.inf, scores), per_source)
        rows, cols = np.nonzero(chosen)
        pair_users.append(batch[rows])
        pair_items.append(pool[cols])
    return np.concatenate(pair_users), np.concatenate(pair_items)


def _indexed_candidates(
    inputs: RankerInputs,
    index: CandidateIndex,
    users: np.ndarray,
    per_source: int,
    exclude: sp.csr_array | None,
    views: tuple[bool, ...],
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """generate_candidates' union from the ANN `index`: pairs grouped by user in the order of `users`, each
    user's items ascending (as np.nonzero gives them on the brute-force path)."""
    pair_users, pair_items = [], []
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        found = ann_candidates(inputs, index, batch, per_source=per_source, exclude=exclude, views=views)
        rows = np.concatenate([r for r, _ in found.values()] or [np.empty(0, np.int64)])
        items = np.concatenate([i for _, i in found.values()] or [np.empty(0, np.int64)])
        codes = np.unique(rows * inputs.n_items + items)  # sorted: by row, then item
        pair_users.append(batch[codes // inputs.n_items])
        pair_items.append(codes % inputs.n_items)
    if not pair_users:
        return np.empty(0, dtype=users.dtype), np.empty(0, dtype=np.int64)
    return np.concatenate(pair_users), np.concatenate(pair_items)


def group_starts(users: np.ndarray) -> np.ndarray:
    """Position of the first pair of each user's group, for pairs grouped by user (none for no pairs)."""
    if users.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, users[1:] != users[:-1]])


def _chunk_bounds(starts: np.ndarray, n: int, chunk_pairs: int) -> np.ndarray:
    """Boundaries (at group starts) of consecutive chunks of about `chunk_pairs` pairs; a group is never split."""
    bounds = [0]
    while bounds[-1] < n:
        # The first group start at or past a chunk's worth from here (or the end).
        following = np.searchsorted(starts, bounds[-1] + chunk_pairs)
        bounds.append(int(starts[following]) if following < starts.size else n)
    return np.asarray(bounds)


def pair_features(
    inputs: RankerInputs,
    users: np.ndarray,
    items: np.ndarray,
    as_cold: np.ndarray,
    *,
    chunk_pairs: int = 32_768,
) -> np.ndarray:
    """Feature matrix (pairs x FEATURE_NAMES) for (user, item) pairs grouped by user.

    `as_cold[p]` presents pair p's item through the cold view (cold items always are). Built a few users' groups
    at a time (about `chunk_pairs` pairs): each pair gathers four vectors (the user's and the item's collaborative
    and text ones, about 5 kB), which for all of CiteULike's 5,551 x 1,400 candidates at once was 8 GB. Every
    feature is a function of its own pair and group, so the chunks change no value.
    """
    as_cold = as_cold | inputs.is_cold[items]
    n = users.size
    out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    bounds = _chunk_bounds(group_starts(users), n, chunk_pairs)
    # One BLAS thread: the products here are one user's candidates x history (about 1,400 x 384 x tens), too small
    # to share, and a second thread's hand-offs cost more than they save: 4x the CPU and 3x the wall time on the
    # loaded 2-core VM, with bit-identical products (each entry is summed by one thread either way).
    with _blas_pools().limit(limits=1, user_api="blas"):
        for lo, hi in itertools.pairwise(bounds):
            out[lo:hi] = _chunk_features(inputs, users[lo:hi], items[lo:hi], as_cold[lo:hi])
    return out


@cache
def _blas_pools() -> threadpoolctl.ThreadpoolController:
    """The process's thread pools, found once: `threadpool_limits` looks through every loaded library on each call
    (1.2% of publishing's samples at 500k items, called per batch of users)."""
    return threadpoolctl.ThreadpoolController()


def _chunk_features(inputs: RankerInputs, users: np.ndarray, items: np.ndarray, as_cold: np.ndarray) -> np.ndarray:
    """`pair_features` of whole groups, all at once."""
    n = users.size
    out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    column = {name: j for j, name in enumerate(FEATURE_NAMES)}
    view = inputs.item_view(items, as_cold)
    out[:, column["cf_score"]] = np.einsum("ij,ij->i", inputs.user_view(users), view)
    item_text = inputs.text[items]
    out[:, column["text_profile"]] = np.einsum("ij,ij->i", inputs.text_profiles[users], item_text)
    out[:, column["log_popularity"]] = np.where(as_cold, 0.0, np.log1p(inputs.popularity[items]))
    out[:, column["as_cold"]] = as_cold
    if inputs.item_given is not None:
        out[:, column["given_pairs"]] = np.where(as_cold, np.log1p(inputs.item_given[items]), 0.0)
    activity = np.diff(inputs.history.indptr)
    out[:, column["user_activity"]] = np.log1p(activity[users])
    out[:, column["title_words"]] = inputs.title_words[items]
    if inputs.time is not None:
        shown = ~as_cold
        for j, name in enumerate(("recent_7d", "recent_14d", "recent_28d")):
            out[:, column[name]] = np.where(shown, np.log1p(inputs.time.recent[items, j]), 0.0)
        out[:, column["item_age"]] = np.where(shown, inputs.time.age_days[items], 0.0)
        out[:, column["user_recent"]] = np.log1p(inputs.time.user_recent[users])
        out[:, column["release_age"]] = inputs.time.release_age_days[items]

    # Similarity to each history item: max and mean of the best three, computed user by user.
    starts = group_starts(users)
    ends = np.r_[starts[1:], n]
    for start, end in zip(starts, ends, strict=True):
        user = users[start]
        history = inputs.history.indices[inputs.history.indptr[user] : inputs.history.indptr[user + 1]]
        if history.size == 0:
            continue
        # (candidates x history): the same products as history x candidates, in the orientation BLAS computes
        # 2.5x faster here, and rows to reduce along (contiguous) instead of columns.
        sims = item_text[start:end] @ inputs.text[history].T
        out[start:end, column["text_max"]] = sims.max(axis=1)
        best = -np.sort(-sims, axis=1)[:, :3]
        out[start:end, column["text_top3"]] = best.mean(axis=1)
        # Rank of the item among this user's candidates by text profile similarity (0 = best): the inverse of the
        # order, which is what a second argsort of it computed.
        profile = out[start:end, column["text_profile"]]
        order = np.argsort(-profile)
        rank = np.empty(order.size, dtype=np.intp)
        rank[order] = np.arange(order.size)
        out[start:end, column["text_rank"]] = rank / max(end - start, 1)
    if inputs.tfidf is not None:
        out[:, column["tfidf_max"]] = _tfidf_max(inputs.tfidf, inputs.history, users, items, starts, ends)
    if inputs.tfidf is not None and inputs.tfidf_profiles is not None:
        out[:, column["tfidf_profile"]] = _pair_dots(inputs.tfidf_profiles, inputs.tfidf, users, items)
    return out


def _pair_dots(left: sp.csr_array, right: sp.csr_array, left_rows: np.ndarray, right_rows: np.ndarray) -> np.ndarray:
    """Per pair j: the dot product of `left[left_rows[j]]` and `right[right_rows[j]]` (float32, summed in float64).
    Each of right's entries (a title's few terms) is looked up among its left row's entries: a pair's left row was
    copied and merged whole before, a user's profile of hundreds of terms once per candidate (8% of ranking every
    user at 500k items)."""
    n_columns, pairs = left.shape[1], left_rows.size
    owners, owner_of_pair = np.unique(left_rows, return_inverse=True)
    owned = left[owners]
    keys = np.repeat(np.arange(owners.size, dtype=np.int64), np.diff(owned.indptr)) * n_columns + owned.indices
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], owned.data[order]
    picked = right[right_rows]
    entry_pair = np.repeat(np.arange(pairs), np.diff(picked.indptr))
    if keys.size == 0 or entry_pair.size == 0:
        return np.zeros(pairs, dtype=np.float32)
    wanted = owner_of_pair.astype(np.int64)[entry_pair] * n_columns + picked.indices
    at = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    products = np.where(keys[at] == wanted, values[at].astype(np.float64) * picked.data, 0.0)
    return np.bincount(entry_pair, weights=products, minlength=pairs).astype(np.float32)


def _tfidf_max(
    tfidf: sp.csr_array,
    history: sp.csr_array,
    users: np.ndarray,
    items: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    chunk_columns: int = 4_000_000,
) -> np.ndarray:
    """Per pair (grouped by user: group g is pairs starts[g]:ends[g]): the item's largest TF-IDF product with one of
    the user's history items, 0 without history. What `(tfidf[history] @ tfidf[targets].T).toarray().max(axis=0)`
    gives user by user, for many users per scipy call: about `chunk_columns` / terms users at a time."""
    best = np.zeros(items.size, dtype=tfidf.dtype)
    per_chunk = max(1, chunk_columns // max(tfidf.shape[1], 1))
    for first in range(0, starts.size, per_chunk):
        begin, stop = starts[first : first + per_chunk], ends[first : first + per_chunk]
        pairs = slice(begin[0], stop[-1])
        best[pairs] = _tfidf_max_of_groups(tfidf, history, users[begin], items[pairs], stop - begin)
    return best


def _tfidf_max_of_groups(
    tfidf: sp.csr_array, history: sp.csr_array, group_users: np.ndarray, items: np.ndarray, sizes: np.ndarray
) -> np.ndarray:
    """`_tfidf_max` for consecutive groups, in one product of block-diagonal matrices: group g's history rows and
    candidate rows use the terms' columns of block g, so the product holds only pairs of one group, and each entry
    is the very sum the user's own product computes (scipy's CSR product adds a row's terms in stored order)."""
    groups = np.arange(group_users.size)
    histories = history[group_users]
    lengths = np.diff(histories.indptr)
    taken, candidates = tfidf[histories.indices], tfidf[items]
    # Only the terms these rows use, renumbered in order (a row's entries keep their stored order, so each sum is
    # added as before): blocks of the whole vocabulary (millions of columns at 622k terms) made scipy's transpose of
    # the right side two thirds of the feature's time.
    used = np.zeros(tfidf.shape[1], dtype=bool)
    used[taken.indices], used[candidates.indices] = True, True
    renumbered = np.cumsum(used, dtype=np.int64) - 1
    n_terms = int(renumbered[-1]) + 1 if used.size else 0
    taken = sp.csr_array((taken.data, renumbered[taken.indices], taken.indptr), shape=(taken.shape[0], n_terms))
    candidates = sp.csr_array(
        (candidates.data, renumbered[candidates.indices], candidates.indptr), shape=(candidates.shape[0], n_terms)
    )
    left = _in_blocks(taken, np.repeat(groups, lengths), n_terms, groups.size)
    right = _in_blocks(candidates, np.repeat(groups, sizes), n_terms, groups.size)
    product = sp.csc_array(left @ right.T)  # (history rows x pairs); absent entries are 0
    stored = np.diff(product.indptr)
    best = np.zeros(items.size, dtype=product.dtype)
    has = stored > 0
    if has.any():
        best[has] = np.maximum.reduceat(product.data, product.indptr[:-1][has])
    # A pair with fewer stored products than the user has history items also has a 0 among them.
    return np.where(stored < np.repeat(lengths, sizes), np.maximum(best, 0), best)


def _in_blocks(matrix: sp.csr_array, block_of_row: np.ndarray, width: int, blocks: int) -> sp.csr_array:
    """`matrix` (width columns) with row r moved to the columns of block `block_of_row[r]` of `blocks`."""
    offsets = np.repeat(block_of_row.astype(np.int64) * width, np.diff(matrix.indptr))
    return sp.csr_array((matrix.data, matrix.indices + offsets, matrix.indptr), shape=(matrix.shape[0], width * blocks))
