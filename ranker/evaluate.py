"""Evaluation protocols: who is evaluated, which items they are ranked against, which known positives are masked.

A protocol is a `ProtocolSplit`: the training interactions a model is fitted on, the held-out positives (`truth`),
the candidate items, and the known positives excluded from ranking, all keyed by one `EvalIndex` (string ids <->
contiguous ints). `evaluate(split, scorer, k)` scores the evaluated users in batches (numpy), masks the excluded
pairs, takes each user's top k and computes the metrics of `ranker.metrics` (spec: docs/metrics.md).

Builders (CiteULike's ALDI split for the first three, any timestamped log for the last):

- `cold_item_split`: users with positives in the evaluated cold split, ranked against all cold items (both cold
  splits); their positives in the other cold split are excluded. ALDI's protocol.
- `warm_split`: users with positives in warm_test (or warm_val), ranked against the warm items; their training and
  other warm-split positives are excluded.
- `hybrid_split`: every item is a candidate; truth is warm_test + cold_item_test (or both val splits).
- `temporal_split`: train before a cut, test after it; items first seen after the cut are cold, and so are users.

Builders for users without (or with little) history, on any data set with a users table:

- `cold_user_split`: a seeded share of users held out whole; their attributes are known, every interaction of
  theirs is the truth, none trains.
- `sparse_user_split`: a seeded share of users keep their first n interactions (by time) in training; the rest are
  the truth.

Evaluated users are labelled by their training interactions (`user_segments`): cold_user (none), sparse_user
(1..sparse_max, catalog.SPARSE_MAX by default, the rule segment detection applies to users and items) or warm_user.

Typical use: build a split, fit a model on `split.train` (ids mapped through `split.index`), evaluate it::

    split = cold_item_split(dataset, "cold_item_val")
    model = PopularityScorer().fit(split.train, split.index)
    result = evaluate(split, model, k=20)
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import ClassVar, Literal, Protocol, TypeVar

import numpy as np
import polars as pl
import scipy.sparse as sp

from catalog import (
    ALDI_SPLITS,
    SPARSE_MAX,
    Columns,
    DataError,
    Dataset,
    Segments,
    fully_timed,
    has_times,
    popularity_segments,
)
from ranker.metrics import MetricInputError, accuracy_metrics, evaluate_ranking
from ranker.temporal import RequestTimes
from ranker.topk import kth_largest

__all__ = [
    "COLD_ITEM",
    "COLD_USER",
    "COLD_USERS",
    "EVAL_BATCH_SIZE",
    "EVAL_SCORES",
    "HYBRID",
    "IN_TURN",
    "SPARSE_USER",
    "SPARSE_USERS",
    "TEMPORAL",
    "USER_SEGMENT_ORDER",
    "WARM",
    "WARM_USER",
    "BatchKeys",
    "EvalIndex",
    "EvalResult",
    "InThreads",
    "InTurn",
    "PartitionMap",
    "ProtocolSplit",
    "Scorer",
    "batch_bounds",
    "cold_item_split",
    "cold_user_split",
    "eval_batch_size",
    "evaluate",
    "frames_split",
    "hold_out_labels",
    "hybrid_split",
    "interaction_matrix",
    "sparse_user_split",
    "split_validation",
    "temporal_split",
    "warm_split",
]

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(user indices, item indices) into an `EvalIndex` -> float32 scores of shape (n_users, n_items); higher is better.

A score of -inf means "never recommend"; NaN and +inf are errors.
"""


class BatchKeys:
    """Keys of scored batches, for scores kept per batch: the batch's users and a digest of its candidate items,
    computed once for the array every batch of a split passes (the items' own bytes were 4 MB a key at 500k items,
    2.4 GB over an evaluation's 600 batches). Safe from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: np.ndarray | None = None
        self._digest = b""

    def __call__(self, users: np.ndarray, items: np.ndarray) -> tuple[bytes, bytes]:
        with self._lock:
            if items is not self._items:
                self._items = items
                self._digest = hashlib.blake2b(np.ascontiguousarray(items).data, digest_size=16).digest()
            return users.tobytes(), self._digest


_Part = TypeVar("_Part")
_Result = TypeVar("_Result")


class PartitionMap(Protocol):
    """Where per-partition work runs: `fn` applied to each of `parts`, the results in the order of `parts`. `fn`
    and the parts may be shipped to other processes (a Dask cluster: flows.runners.OnCluster; `ships` says so), so
    both must pickle; `workers` says how many run at once, so a caller cuts at least that many parts."""

    @property
    def workers(self) -> int: ...

    @property
    def ships(self) -> bool: ...

    def __call__(self, fn: Callable[[_Part], _Result], parts: Sequence[_Part], /) -> list[_Result]: ...


@dataclass(frozen=True)
class InTurn:
    """The PartitionMap of one process: each part in turn, here."""

    workers: int = 1
    ships: ClassVar[bool] = False

    def __call__(self, fn: Callable[[_Part], _Result], parts: Sequence[_Part], /) -> list[_Result]:
        return [fn(part) for part in parts]


IN_TURN = InTurn()


@dataclass(frozen=True)
class InThreads:
    """The PartitionMap of one process on several cores: `workers` parts at once, each on a thread of this process,
    nothing copied. Ranking a part is numpy, scipy, faiss and LightGBM work that lets go of the GIL, so the threads
    run side by side (every user's top k at 500k items ran on one core of two before)."""

    workers: int
    ships: ClassVar[bool] = False

    def __call__(self, fn: Callable[[_Part], _Result], parts: Sequence[_Part], /) -> list[_Result]:
        if self.workers < 2 or len(parts) < 2:
            return [fn(part) for part in parts]
        with ThreadPoolExecutor(min(self.workers, len(parts)), thread_name_prefix="warmstart-part") as pool:
            return list(pool.map(fn, parts))


# Users `evaluate` scores at once, by default.
EVAL_BATCH_SIZE = 1024
EVAL_SCORES = 2**24

COLD_ITEM = "cold_item"
WARM = "warm"
HYBRID = "hybrid"
TEMPORAL = "temporal"

# Protocols over users: some held out whole (their attributes known), or held out but for their first n events.
COLD_USERS = "cold_users"
SPARSE_USERS = "sparse_users"

# User segments of evaluated users (item segments are head/tail/cold from catalog.Segments). Metric rows hold item
# and user segments in one column, hence the suffix: catalog's detection labels users cold/sparse/tail/head by the
# same counts, and cold_user/sparse_user are its cold/sparse; warm_user is its tail and head together.
COLD_USER = "cold_user"
SPARSE_USER = "sparse_user"
WARM_USER = "warm_user"
USER_SEGMENT_ORDER = (COLD_USER, SPARSE_USER, WARM_USER)

_ID = "_id"
_IDX = "_idx"
_PAIR = [Columns.user, Columns.item]
_EXAMPLES = 5


# ------------------------------------------------------------------------------------------------- index


def _id_series(values: Sequence[str] | pl.Series, name: str) -> pl.Series:
    series = values if isinstance(values, pl.Series) else pl.Series(list(values), dtype=pl.String)
    if series.dtype != pl.String:
        raise DataError(f"EvalIndex {name} ids must be strings, got {series.dtype}; cast them with .cast(pl.String).")
    if series.null_count():
        raise DataError(f"EvalIndex {name} ids hold {series.null_count()} null(s).")
    repeated = series.filter(series.is_duplicated()).unique().sort()
    if repeated.len():
        raise DataError(f"EvalIndex {name} ids repeat: {repeated.head(_EXAMPLES).to_list()}; each id once.")
    return series.rename(name)


@dataclass(frozen=True, eq=False)
class EvalIndex:
    """String ids <-> contiguous ints: user index u is `user_ids[u]`, item index i is `item_ids[i]`."""

    user_ids: pl.Series
    item_ids: pl.Series

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_ids", _id_series(self.user_ids, Columns.user))
        object.__setattr__(self, "item_ids", _id_series(self.item_ids, Columns.item))

    @property
    def n_users(self) -> int:
        return self.user_ids.len()

    @property
    def n_items(self) -> int:
        return self.item_ids.len()

    def users(self, ids: Sequence[str] | pl.Series) -> np.ndarray:
        """Indices (int64) of user ids; an unknown id is a DataError."""
        return _lookup(self.user_ids, ids, "user")

    def items(self, ids: Sequence[str] | pl.Series) -> np.ndarray:
        """Indices (int64) of item ids; an unknown id is a DataError."""
        return _lookup(self.item_ids, ids, "item")

    def pairs(self, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(user indices, item indices) of the rows of a (user_id, item_id) frame."""
        return self.users(frame[Columns.user]), self.items(frame[Columns.item])


def interaction_matrix(pairs: pl.DataFrame, index: EvalIndex) -> sp.csr_array:
    """Binary (users x items) matrix of (user_id, item_id) pairs in `index` order; repeats count once."""
    users, items = index.pairs(pairs.select(Columns.user, Columns.item).unique())
    data = np.ones(users.size, dtype=np.float32)
    return sp.csr_array((data, (users, items)), shape=(index.n_users, index.n_items))


def _lookup(known: pl.Series, ids: Sequence[str] | pl.Series, kind: str) -> np.ndarray:
    query = pl.DataFrame({_ID: ids if isinstance(ids, pl.Series) else pl.Series(list(ids), dtype=pl.String)})
    table = pl.DataFrame({_ID: known}).with_row_index(_IDX)
    found = query.cast({_ID: pl.String}).join(table, on=_ID, how="left", maintain_order="left")
    missing = found.filter(pl.col(_IDX).is_null())[_ID]
    if missing.len():
        raise DataError(
            f"{missing.n_unique()} {kind} id(s) are not in the evaluation index, e.g. "
            f"{missing.unique().sort().head(_EXAMPLES).to_list()}. Fit and score with the split's own index."
        )
    return found[_IDX].cast(pl.Int64).to_numpy()


# ------------------------------------------------------------------------------------------------ splits


@dataclass(frozen=True, eq=False)
class ProtocolSplit:
    """Everything a protocol fixes; fit a model on `train` (through `index`), then call `evaluate`.

    `items` has one row per index item, in index order (row i is item i), with its title/text for content models.
    `exclude` holds only pairs of evaluated users and candidate items. `item_segments` labels every index item
    head/tail/cold by its `train` count; `user_segments`, when set, labels evaluated users (cold_user, sparse_user or
    warm_user). `users_table`, when the data set has a users table, holds one row per index user in index order
    (user_id, attributes: a JSON object as text, null where unknown): what is known of a user without history.
    """

    protocol: str
    name: str
    index: EvalIndex
    items: pl.DataFrame
    train: pl.DataFrame
    truth: pl.DataFrame
    exclude: pl.DataFrame
    candidates: np.ndarray
    item_segments: pl.DataFrame
    user_segments: pl.DataFrame | None = None
    users_table: pl.DataFrame | None = None
    # (user_id, ts): when each evaluated user asks, for protocols whose users arrive at their own times (cold-user,
    # sparse-user on a timed log: the time of their first held-out event). None: every user asks at the end of
    # `train` (the temporal cut's "now").
    requested_at: pl.DataFrame | None = None

    @property
    def users(self) -> np.ndarray:
        """Sorted indices of the evaluated users: those with a held-out positive."""
        return np.unique(self.index.users(self.truth[Columns.user]))

    @property
    def n_users(self) -> int:
        return self.truth[Columns.user].n_unique()

    def request_times(self) -> RequestTimes | None:
        """When each user asks (`requested_at`), over `train`'s events: None where every user asks at its end."""
        if self.requested_at is None or not has_times(self.train):
            return None
        return RequestTimes.of(self.train, self.index.user_ids, self.index.item_ids, self.requested_at)

    def item_popularity(self) -> pl.DataFrame:
        """(item_id, n_interactions): training interactions per item, 0 for items without any."""
        counts = self.train.group_by(Columns.item).agg(pl.len().cast(pl.Int64).alias(Columns.n_interactions))
        return (
            self.items.select(Columns.item)
            .join(counts, on=Columns.item, how="left", maintain_order="left")
            .with_columns(pl.col(Columns.n_interactions).fill_null(0))
        )


def _pairs(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(_PAIR).unique(maintain_order=True)


def _make_split(
    *,
    protocol: str,
    name: str,
    index: EvalIndex,
    items: pl.DataFrame,
    train: pl.DataFrame,
    truth: pl.DataFrame,
    known: pl.DataFrame,
    candidates: pl.Series,
    user_segments: pl.DataFrame | None = None,
) -> ProtocolSplit:
    """Shared tail of the builders: exclusions = known positives that are not held out, for evaluated users only."""
    truth = _pairs(truth)
    if truth.height == 0:
        raise DataError(f"{name}: no held-out positives, so there is no user to evaluate.")
    candidate_frame = pl.DataFrame({Columns.item: candidates}).unique()
    outside = truth.join(candidate_frame, on=Columns.item, how="anti")[Columns.item]
    if outside.len():
        raise DataError(
            f"{name}: {outside.n_unique()} held-out item(s) are not candidates, e.g. "
            f"{outside.unique().sort().head(_EXAMPLES).to_list()}; they could never be hit."
        )
    exclude = (
        _pairs(known)
        .join(truth, on=_PAIR, how="anti")
        .join(truth.select(Columns.user).unique(), on=Columns.user, how="semi")
        .join(candidate_frame, on=Columns.item, how="semi")
        .sort(_PAIR)
    )
    return ProtocolSplit(
        protocol=protocol,
        name=name,
        index=index,
        items=items,
        train=train,
        truth=truth.sort(_PAIR),
        exclude=exclude,
        candidates=np.sort(index.items(candidate_frame[Columns.item])),
        item_segments=popularity_segments(train, items.select(Columns.item)),
        user_segments=user_segments,
    )


def _aldi_split(
    dataset: Dataset, *, protocol: str, name: str, truth: Sequence[str], candidates: Sequence[str] | None
) -> ProtocolSplit:
    """Shared body of the ALDI builders: train on warm_emb, hold out the `truth` splits, rank the items of the
    `candidates` splits (every item when None); every other known positive is excluded."""
    missing = [s for s in ALDI_SPLITS if s not in dataset.splits]
    if missing:
        raise DataError(
            f"dataset '{dataset.name}' lacks split(s) {missing}; the ALDI protocols need {list(ALDI_SPLITS)} "
            "(load it with catalog.load_citeulike)."
        )
    parts = {s: _pairs(dataset.splits[s]) for s in ALDI_SPLITS}
    pool = (
        dataset.items[Columns.item]
        if candidates is None
        else pl.concat([parts[s].select(Columns.item) for s in candidates]).unique()[Columns.item]
    )
    return _make_split(
        protocol=protocol,
        name=name,
        index=EvalIndex(dataset.users[Columns.user], dataset.items[Columns.item]),
        items=dataset.items,
        train=parts["warm_emb"],
        truth=pl.concat([parts[s] for s in truth]),
        known=pl.concat(list(parts.values())),
        candidates=pool,
    )


def cold_item_split(
    dataset: Dataset, eval_split: Literal["cold_item_test", "cold_item_val"] = "cold_item_test"
) -> ProtocolSplit:
    """ALDI's item cold-start protocol on a data set with the ALDI splits (catalog.load_citeulike).

    Users: those with positives in `eval_split`. Candidates: every cold item (cold_item_val + cold_item_test).
    Excluded: each user's positives outside `eval_split` (among candidates: their other cold split). Train: warm_emb.
    """
    if eval_split not in ("cold_item_test", "cold_item_val"):
        raise DataError(f"cold_item_split: eval_split must be 'cold_item_test' or 'cold_item_val', got {eval_split!r}.")
    return _aldi_split(
        dataset, protocol=COLD_ITEM, name=eval_split, truth=[eval_split], candidates=["cold_item_val", "cold_item_test"]
    )


def warm_split(dataset: Dataset, eval_split: Literal["warm_test", "warm_val"] = "warm_test") -> ProtocolSplit:
    """Warm protocol: users with positives in `eval_split`, ranked against the warm items (warm_emb/val/test).

    Excluded: their training (warm_emb) positives and their positives in the other warm split. Train: warm_emb.
    """
    if eval_split not in ("warm_test", "warm_val"):
        raise DataError(f"warm_split: eval_split must be 'warm_test' or 'warm_val', got {eval_split!r}.")
    return _aldi_split(
        dataset, protocol=WARM, name=eval_split, truth=[eval_split], candidates=["warm_emb", "warm_val", "warm_test"]
    )


def hybrid_split(dataset: Dataset, eval_split: Literal["test", "val"] = "test") -> ProtocolSplit:
    """Hybrid protocol: every item is a candidate; truth = warm_<eval_split> + cold_item_<eval_split>.

    Users: everyone with a positive in either (ALDI's code keeps only users in both; we keep all). Excluded: all
    other known positives (warm_emb and the other stage's splits). Segments head/tail/cold from warm_emb.
    """
    if eval_split not in ("test", "val"):
        raise DataError(f"hybrid_split: eval_split must be 'test' or 'val', got {eval_split!r}.")
    truth = [f"warm_{eval_split}", f"cold_item_{eval_split}"]
    return _aldi_split(dataset, protocol=HYBRID, name=f"hybrid_{eval_split}", truth=truth, candidates=None)


def _user_segments(truth: pl.DataFrame, train: pl.DataFrame, sparse_max: int = SPARSE_MAX) -> pl.DataFrame:
    """Evaluated users labelled by their training rows, counted as segment detection counts them: cold_user (none),
    sparse_user (1..`sparse_max`) or warm_user (more)."""
    if sparse_max < 0:
        raise DataError(f"sparse_max must be >= 0, got {sparse_max}.")
    counts = train.group_by(Columns.user).agg(pl.len().alias(Columns.n_interactions))
    return (
        truth.select(Columns.user)
        .unique()
        .join(counts, on=Columns.user, how="left")
        .select(
            Columns.user,
            pl.when(pl.col(Columns.n_interactions).is_null())
            .then(pl.lit(COLD_USER))
            .when(pl.col(Columns.n_interactions) <= sparse_max)
            .then(pl.lit(SPARSE_USER))
            .otherwise(pl.lit(WARM_USER))
            .alias(Columns.segment),
        )
        .sort(Columns.user)
    )


def frames_split(
    train: pl.DataFrame,
    test: pl.DataFrame,
    items: pl.DataFrame,
    *,
    protocol: Literal["cold_item", "warm", "hybrid"] = HYBRID,
    valid: pl.DataFrame | None = None,
    users: pl.Series | None = None,
    sparse_max: int = SPARSE_MAX,
) -> ProtocolSplit:
    """A split given as frames (e.g. files): train, test, items (and validation positives, known but not evaluated).

    Items without a training interaction are cold. Candidates: the cold items (`cold_item`), the warm items
    (`warm`) or every item (`hybrid`); test positives outside the candidates are dropped, as ALDI's protocols do.
    Excluded: the evaluated users' train and validation positives. Users without training rows are cold users, those
    with 1..`sparse_max` sparse users.
    """
    known = [train, *([valid] if valid is not None else [])]
    log = pl.concat([f.select(_PAIR) for f in [*known, test]])
    user_ids = users if users is not None else log[Columns.user].unique().sort()
    index = EvalIndex(user_ids, items[Columns.item])
    index.users(log[Columns.user])  # every user of every frame must be known
    index.items(log[Columns.item])
    warm = train.select(Columns.item).unique()
    candidates = {
        COLD_ITEM: items.join(warm, on=Columns.item, how="anti"),
        WARM: items.join(warm, on=Columns.item, how="semi"),
        HYBRID: items,
    }
    if protocol not in candidates:
        raise DataError(f"frames_split: protocol must be one of {sorted(candidates)}, got {protocol!r}.")
    pool = candidates[protocol][Columns.item]
    truth = _pairs(test).join(pl.DataFrame({Columns.item: pool}), on=Columns.item, how="semi")
    return _make_split(
        protocol=protocol,
        name=f"{protocol}_files",
        index=index,
        items=items,
        # Times, when the train frame has them, stay: a holdout of each user's latest events needs them.
        train=train.select([c for c in (*_PAIR, Columns.ts) if c in train.columns]).unique(_PAIR, maintain_order=True),
        truth=truth,
        known=pl.concat([f.select(_PAIR) for f in known]),
        candidates=pool,
        user_segments=_user_segments(truth, train, sparse_max),
    )


def hold_out_labels(train: pl.DataFrame, *, share: float = 0.2, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(history, labels): positives held out of `train` for the ranker to learn from and for BPR-MF to stop on,
    chosen so that every model has something to validate on even when users have only 2-6 interactions.

    With a time on every row, the events of the latest `share` of the training period are the labels (one cut for
    every user, like a temporal split's own), so users first seen after the cut are users without history, as
    most of a temporal test window's users are (holding out each user's latest events instead showed the ranker no
    such user). Without times, each user with two or more interactions gives up max(1, floor(`share` x n))
    of them, random (seeded) among pairs of items others have too; an item never gives up its last training
    interaction (a label on an item the encoders never saw teaches the ranker nothing and cannot validate
    BPR-MF). Raises DataError when nothing can be held out (every user has a single interaction).
    """
    if fully_timed(train):
        return _hold_out_after_cut(train, share)
    n_user, n_item = pl.len().over(Columns.user), pl.len().over(Columns.item)
    # Random, with the pairs of shared items last, so that they are the ones held out.
    order = pl.lit(pl.Series(np.random.default_rng(seed).random(train.height))) + (n_item >= 2).cast(pl.Float64)
    ranked = train.with_columns(_order=order).with_columns(
        _candidate=(n_user >= 2)
        & (pl.col("_order").rank("ordinal").over(Columns.user) > n_user - (n_user * share).floor().clip(1)),
    )
    # Among an item's candidate rows (latest or random first), all but one may go: the item stays warm.
    held = pl.col("_candidate") & (
        pl.col("_order").rank("ordinal", descending=True).over(Columns.item, "_candidate") <= n_item - 1
    )
    labels = ranked.filter(held).select(_PAIR)
    if labels.height == 0:
        raise DataError(
            "no training interaction can be held out for the ranker to learn from: every user has a single "
            "interaction (or only items nobody else has). Give a validation file (--valid) of held-out pairs."
        )
    return ranked.filter(~held).drop("_order", "_candidate"), labels


def _hold_out_after_cut(train: pl.DataFrame, share: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(history before the cut, pairs first seen at or after it): the cut leaves `share` of the events after it."""
    times = train[Columns.ts].sort()
    cut = times[min(int((1 - share) * times.len()), times.len() - 1)]
    history = train.filter(pl.col(Columns.ts) < cut)
    if history.height == 0:
        raise DataError(f"every training event is at or after the label cut {cut}: there is no history to learn from.")
    later = train.filter(pl.col(Columns.ts) >= cut).select(_PAIR).unique()
    labels = later.join(history, on=_PAIR, how="anti")
    if labels.height == 0:
        raise DataError(f"no new pair after the label cut {cut} for the ranker to learn from.")
    return history, labels


def split_validation(valid: pl.DataFrame, train: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(warm, other): validation pairs whose user and item both have training interactions, which
    collaborative models can validate on; and the rest (cold items, as ALDI-style splits ship them, or cold
    users), which only the content path can rank, so they stop the ranker's training early."""
    pairs = _pairs(valid)
    known = pl.col(Columns.user).is_in(train[Columns.user].unique().implode()) & pl.col(Columns.item).is_in(
        train[Columns.item].unique().implode()
    )
    return pairs.filter(known), pairs.filter(~known)


def _default_cut(ts: pl.Series, quantile: float) -> datetime:
    if not 0 < quantile < 1:
        raise DataError(f"temporal_split: quantile must be in (0, 1), got {quantile}.")
    ordered = ts.sort()
    return ordered[min(int(quantile * ordered.len()), ordered.len() - 1)]


def whole_log_split(interactions: pl.DataFrame, items: pl.DataFrame, users: pl.Series | None = None) -> ProtocolSplit:
    """Every event of a timestamped log trains and nothing is held out: the split a model judged on a temporal
    split is refit on before it serves (its figures are that judgement's). Users: the log's and `users` (known
    users without an event yet are served as users without history); items and segments as temporal_split's."""
    if interactions.height == 0 or not fully_timed(interactions):
        raise DataError(f"a whole-log split needs interactions with a '{Columns.ts}' on every row.")
    train = interactions.select(Columns.user, Columns.item, Columns.ts)
    known = train[Columns.user] if users is None else pl.concat([train[Columns.user], users.cast(pl.String)])
    index = EvalIndex(known.unique().sort(), items[Columns.item])
    index.items(train[Columns.item])  # every logged item must be a known item
    empty = train.clear().select(_PAIR)
    return ProtocolSplit(
        protocol=TEMPORAL,
        name=f"whole@{train[Columns.ts].max().isoformat()}",
        index=index,
        items=items,
        train=train,
        truth=empty,
        exclude=empty,
        candidates=np.arange(index.n_items),
        item_segments=popularity_segments(train, items.select(Columns.item)),
        user_segments=None,
    )


def temporal_split(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    *,
    cut: datetime | None = None,
    end: datetime | None = None,
    quantile: float = 0.8,
    sparse_max: int = SPARSE_MAX,
) -> ProtocolSplit:
    """Temporal protocol for a timestamped log: train on ts < cut, test on cut <= ts (< end, when given).

    `cut` defaults to the time of the event at `quantile` of the log (80%: about 80% of events train). Candidates:
    every item of `items`; items without a training interaction are cold. Truth: test pairs not already in
    training (a repeat cannot be recommended, since training positives are excluded). Users without a training
    interaction are `cold_user`, with 1..`sparse_max` `sparse_user`, others `warm_user` (`ProtocolSplit.user_segments`).
    """
    if Columns.ts not in interactions.columns or interactions[Columns.ts].null_count():
        raise DataError(
            f"temporal_split needs a '{Columns.ts}' on every interaction; "
            f"{interactions[Columns.ts].null_count() if Columns.ts in interactions.columns else 'all'} lack one. "
            "Use a protocol with a fixed split for logs without times."
        )
    if interactions.height == 0:
        raise DataError("temporal_split got no interactions.")
    cut = cut if cut is not None else _default_cut(interactions[Columns.ts], quantile)
    if end is not None and end <= cut:
        raise DataError(f"temporal_split: end ({end}) must be after cut ({cut}).")
    log = interactions.select(Columns.user, Columns.item, Columns.ts)
    train = log.filter(pl.col(Columns.ts) < cut)
    test = log.filter(pl.col(Columns.ts) >= cut)
    if end is not None:
        test = test.filter(pl.col(Columns.ts) < end)
    if train.height == 0:
        raise DataError(f"temporal_split: no interaction before the cut {cut}; move the cut later.")
    index = EvalIndex(log[Columns.user].unique().sort(), items[Columns.item])
    index.items(log[Columns.item])  # every logged item must be a known item
    truth = _pairs(test).join(_pairs(train), on=_PAIR, how="anti")
    return _make_split(
        protocol=TEMPORAL,
        name=f"temporal@{cut.isoformat()}",
        index=index,
        items=items,
        train=train,
        truth=truth,
        known=train,
        candidates=items[Columns.item],
        user_segments=_user_segments(truth, train, sparse_max),
    )


# ------------------------------------------------------------------------------------------- user splits


def _held_out_users(candidates: pl.Series, share: float, seed: int, name: str) -> pl.DataFrame:
    """A seeded `share` (at least one, never all) of the distinct `candidates`, drawn from their sorted ids so that
    the draw depends on the seed and the ids only, never on the order of the log."""
    if not 0 < share < 1:
        raise DataError(f"{name}: share must be in (0, 1), got {share}.")
    ids = candidates.unique().sort()
    if ids.len() < 2:
        raise DataError(f"{name}: {ids.len()} user(s) to draw from; holding users out needs at least 2.")
    n = min(max(round(share * ids.len()), 1), ids.len() - 1)
    chosen = np.sort(np.random.default_rng(seed).permutation(ids.len())[:n])
    return pl.DataFrame({Columns.user: ids.gather(chosen)})


def _user_protocol_parts(dataset: Dataset) -> tuple[pl.DataFrame, EvalIndex, pl.DataFrame]:
    """(log, index over every user of the users table and every item, users table in index order)."""
    columns = [c for c in (Columns.user, Columns.item, Columns.ts) if c in dataset.interactions.columns]
    log = dataset.interactions.select(columns)
    if log.height == 0:
        raise DataError(f"dataset '{dataset.name}' has no interactions to hold users out of.")
    users = dataset.users.select(Columns.user, Columns.attributes).unique(Columns.user).sort(Columns.user)
    index = EvalIndex(users[Columns.user], dataset.items[Columns.item])
    index.users(log[Columns.user])  # every logged user must be in the users table
    index.items(log[Columns.item])
    return log, index, users


def cold_user_split(
    dataset: Dataset, share: float = 0.2, seed: int = 0, *, sparse_max: int = SPARSE_MAX
) -> ProtocolSplit:
    """Cold-user protocol: a seeded `share` of the users with interactions is held out whole. None of their
    interactions trains; all of them are the truth; their attributes (the users table) are all a model knows of
    them (`ProtocolSplit.users_table`). Every item is a candidate (items only they had are cold); nothing is
    excluded, since they have no known positive. Every evaluated user is a cold_user."""
    log, index, users = _user_protocol_parts(dataset)
    held = _held_out_users(log[Columns.user], share, seed, "cold_user_split")
    split = _make_split(
        protocol=COLD_USERS,
        name=f"{COLD_USERS}@{share:g}/seed{seed}",
        index=index,
        items=dataset.items,
        train=log.join(held, on=Columns.user, how="anti"),
        truth=log.join(held, on=Columns.user, how="semi"),
        known=log.clear(),
        candidates=dataset.items[Columns.item],
    )
    return replace(
        split,
        user_segments=_user_segments(split.truth, split.train, sparse_max),
        users_table=users,
        requested_at=_first_times(log.join(held, on=Columns.user, how="semi")),
    )


def _first_times(rows: pl.DataFrame) -> pl.DataFrame | None:
    """(user_id, ts) each user's first time among `rows` (None for a log without times; users without a time
    are left out): when a held-out user asks."""
    if not has_times(rows):
        return None
    first = rows.drop_nulls(Columns.ts).group_by(Columns.user).agg(pl.col(Columns.ts).min())
    return first.sort(Columns.user)


def sparse_user_split(
    dataset: Dataset, history_n: int, share: float = 0.2, seed: int = 0, *, sparse_max: int = SPARSE_MAX
) -> ProtocolSplit:
    """Sparse-user protocol: a seeded `share` of the users with more than `history_n` interactions keep their first
    `history_n` (by time; ties by item id) in training, beside every interaction of the other users; the rest of
    theirs is the truth (less repeats of a kept pair), their kept pairs are excluded. With `history_n` <=
    `sparse_max` every evaluated user is a sparse_user."""
    if history_n < 1:
        raise DataError(f"sparse_user_split: history_n must be >= 1, got {history_n} (use cold_user_split for 0).")
    log, index, users = _user_protocol_parts(dataset)
    if not fully_timed(log):
        raise DataError(
            f"sparse_user_split keeps each user's first {history_n} interactions by time: every interaction of "
            f"'{dataset.name}' needs a '{Columns.ts}'."
        )
    position = pl.int_range(pl.len()).over(Columns.user)
    ordered = log.sort(Columns.user, Columns.ts, Columns.item).with_columns(position.alias("_position"))
    eligible = ordered.filter(pl.col("_position") == history_n)[Columns.user]  # users with > history_n rows
    held = _held_out_users(eligible, share, seed, "sparse_user_split")
    theirs = ordered.join(held, on=Columns.user, how="semi")
    kept = theirs.filter(pl.col("_position") < history_n).drop("_position")
    train = pl.concat([log.join(held, on=Columns.user, how="anti"), kept])
    split = _make_split(
        protocol=SPARSE_USERS,
        name=f"{SPARSE_USERS}@{history_n}/{share:g}/seed{seed}",
        index=index,
        items=dataset.items,
        train=train,
        truth=_pairs(theirs.filter(pl.col("_position") >= history_n)).join(_pairs(kept), on=_PAIR, how="anti"),
        known=kept,
        candidates=dataset.items[Columns.item],
    )
    return replace(
        split,
        user_segments=_user_segments(split.truth, split.train, sparse_max),
        users_table=users,
        requested_at=_first_times(theirs.filter(pl.col("_position") >= history_n)),
    )


# ---------------------------------------------------------------------------------------------- evaluate


@dataclass(frozen=True, eq=False)
class EvalResult:
    """Metrics (segment, metric, k, value) of one scorer on one split, the users evaluated and the top-k lists."""

    metrics: pl.DataFrame
    n_users: int
    seconds: float
    recs: pl.DataFrame

    def value(self, metric: str, segment: str = Segments.overall) -> float:
        """One metric's value, e.g. result.value("recall")."""
        row = self.metrics.filter((pl.col(Columns.metric) == metric) & (pl.col(Columns.segment) == segment))
        if row.height != 1:
            have = self.metrics.select(Columns.segment, Columns.metric).rows()
            raise KeyError(f"no metric {metric!r} for segment {segment!r}; have {have}")
        return float(row["value"].item())


def _checked_scores(raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    # A copy: the masking below writes into it, and a scorer may return a view of its own state.
    scores = np.array(raw, dtype=np.float32)
    if scores.shape != shape:
        raise MetricInputError(f"the scorer returned scores of shape {scores.shape}; expected {shape} (users, items).")
    highest = scores.max(initial=-np.inf)  # NaN where any is NaN: one pass instead of isnan's and isposinf's
    if np.isnan(highest) or highest == np.inf:
        raise MetricInputError("the scorer returned NaN or +inf scores; use -inf for items it must never recommend.")
    return scores


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, rank) of each row's k best finite scores; ties go to the lower column (item index)."""
    n_cols = scores.shape[1]
    keep = scores > -np.inf
    # The exact sort below orders by (score, column) and cuts at k: any superset of each row's top k gives the same
    # lists. A learned ranker scores its candidates alone (hundreds of a row's thousands), which sort faster than
    # a partition of the whole row finds the kth; dense rows are cut to the kth score first.
    if k < n_cols and np.count_nonzero(keep) * 8 > keep.size:
        kth = kth_largest(scores, k)
        keep &= scores >= kth[:, None]  # ties at the boundary are all kept, then cut after the exact sort
    # A flat scan (rows and columns from the positions) is several times faster than 2-D np.nonzero on a dense
    # 33 x 500k batch, where a learned ranker's rows are nearly all -inf.
    rows, cols = np.divmod(np.flatnonzero(keep), n_cols)
    order = np.lexsort((cols, -scores[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    rank = np.arange(rows.size) - np.searchsorted(rows, rows, side="left") + 1
    top = rank <= k
    return rows[top], cols[top], rank[top]


def eval_batch_size(n_candidates: int, most_scores: int = EVAL_SCORES) -> int:
    """Users per evaluation batch: EVAL_BATCH_SIZE, or fewer so that a batch's dense (users x candidates) scores
    hold at most `most_scores` entries (2^24: 64 MB of float32; 167 users over 100,000 candidates)."""
    return max(1, min(EVAL_BATCH_SIZE, most_scores // max(n_candidates, 1)))


def batch_bounds(n: int, batch_size: int = EVAL_BATCH_SIZE, workers: int = 1) -> list[int]:
    """Boundaries of batches of at most `batch_size` of `n` rows: consecutive full batches for one worker, else at
    least one batch per worker (equal sizes, within one)."""
    if workers <= 1:
        return [*range(0, n, batch_size), n] if n else [0]
    batches = min(max(-(-n // batch_size), workers), n)
    return [n * b // batches for b in range(batches + 1)] if n else [0]


def _ranked_batch(
    scorer: Scorer, candidates: np.ndarray, k: int, batch: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, rank) of the top k of one batch of users (users, and the rows and columns of their excluded
    pairs)."""
    users, ex_rows, ex_cols = batch
    scores = _checked_scores(scorer(users, candidates), (users.size, candidates.size))
    scores[ex_rows, ex_cols] = -np.inf
    rows, cols, rank = _top_k(scores, k)
    return users[rows], candidates[cols], rank


def evaluate(
    split: ProtocolSplit,
    scorer: Scorer,
    k: int = 20,
    *,
    batch_size: int | None = None,
    partitions: PartitionMap = IN_TURN,
) -> EvalResult:
    """Rank the split's candidates for each evaluated user with `scorer` and compute every metric at k.

    Excluded pairs get -inf before ranking; equal scores go to the lower item index. Metrics: ranker.metrics'
    evaluate_ranking (accuracy overall and per item segment; coverage and Gini over the candidates; APLT, ARP and
    novelty from training popularity, novelty's user count = distinct training users), plus accuracy per user
    segment when the split has user segments.

    Users are scored and ranked `batch_size` at a time (by default `eval_batch_size` of the candidates), each
    batch a part of `partitions` (in turn here by default; on threads here, the same batches; on a Dask cluster, on
    its workers, in at least as many batches as it has workers): a user's list depends on the user alone, so the
    lists, and the metrics computed from them here, are the same either way.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise MetricInputError(f"k must be a positive int, got {k!r}")
    users, candidates = split.users, split.candidates
    batch_size = eval_batch_size(candidates.size) if batch_size is None else batch_size
    if batch_size < 1:
        raise MetricInputError(f"batch_size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    ex_users, ex_items = split.index.pairs(split.exclude)
    ex_rows = np.searchsorted(users, ex_users)  # position among evaluated users (exclude holds only those)
    ex_cols = np.searchsorted(candidates, ex_items)
    order = np.argsort(ex_rows, kind="stable")
    ex_rows, ex_cols = ex_rows[order], ex_cols[order]

    # Batches are cut for the workers only where the work ships: in this process (threads) a line ranked in turn
    # afterwards asks for the very batches whose scores were kept (tail-calibrated, the audit).
    batches, workers = [], partitions.workers if partitions.ships else 1
    for start, stop in itertools.pairwise(batch_bounds(users.size, batch_size, workers)):
        lo, hi = np.searchsorted(ex_rows, [start, stop])
        batches.append((users[start:stop], ex_rows[lo:hi] - start, ex_cols[lo:hi]))
    parts = partitions(functools.partial(_ranked_batch, scorer, candidates, k), batches)
    user_idx, item_idx, rank = (np.concatenate(p) for p in zip(*parts, strict=True))
    recs = pl.DataFrame(
        {
            Columns.user: split.index.user_ids.gather(user_idx),
            Columns.item: split.index.item_ids.gather(item_idx),
            Columns.rank: rank.astype(np.int64),
        }
    )

    metrics = evaluate_ranking(
        recs,
        split.truth,
        k,
        item_segments=split.item_segments,
        catalog_items=split.index.item_ids.gather(candidates),
        item_popularity=split.item_popularity(),
        n_users=max(split.train[Columns.user].n_unique(), 1),
    )
    if split.user_segments is not None:
        metrics = pl.concat([metrics, _user_segment_metrics(recs, split.truth, split.user_segments, k)])
    return EvalResult(metrics=metrics, n_users=users.size, seconds=time.perf_counter() - started, recs=recs)


def _user_segment_metrics(recs: pl.DataFrame, truth: pl.DataFrame, user_segments: pl.DataFrame, k: int) -> pl.DataFrame:
    """Overall accuracy restricted to the users of each user segment, labelled with the segment's name."""
    frames = []
    for segment in USER_SEGMENT_ORDER:
        members = user_segments.filter(pl.col(Columns.segment) == segment).select(Columns.user)
        if members.height == 0:
            continue
        rows = accuracy_metrics(
            recs.join(members, on=Columns.user, how="semi"), truth.join(members, on=Columns.user, how="semi"), k
        )
        frames.append(rows.with_columns(pl.lit(segment).alias(Columns.segment)))
    return pl.concat(frames)
