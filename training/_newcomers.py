"""The newcomer model's weights, chosen on a holdout of training users: a seeded share of the users with more than
`max_events` events keep their first n in 0..max_events items (what a newcomer has) and the rest are the truth.
Which users are held out follows what the model will face: on a time-ordered log that serves users who arrive
now, the latest arrivals; for the cold-user and sparse-user protocols, which hold out users from any time, a
random share. On a log with times each held-out user asks when their first held-out event happened, and the
recent shares are those of the days before it, counted without any held-out event. Only training interactions
are read, so nothing is tuned on a split's test users.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import polars as pl
import scipy.sparse as sp

from catalog import Columns, has_times
from ranker.base import RankerBase, routed, seeded_sample
from ranker.evaluate import IN_TURN, EvalIndex, PartitionMap
from ranker.features import RankerInputs
from ranker.newcomers import NewcomerConfig, newcomer_terms
from ranker.temporal import RECENT_DAYS, RequestTimes, time_features
from ranker.topk import kth_largest

JSON = dict[str, object]
NUMERIC_SCALES = (0.25, 0.5, 1.0)
LEVEL_WEIGHTS = (0.0, 1.0)
# A newcomer's own events always count (a list that ignored them would not answer what the user just did).
HISTORY_WEIGHTS = (1.0, 3.0, 10.0)
RECENT_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
# Each over each window of ranker.temporal.RECENT_DAYS (the days before a user's request).


@dataclass(frozen=True)
class NewcomerChoice:
    """The newcomer model's weights chosen on the holdout, and NDCG at k of every setting tried there."""

    chosen: NewcomerConfig
    k: int
    users: int
    ndcg: dict[str, float]
    route: RouteChoice | None = None  # which newcomers it then serves, chosen on validation (`choose_route`)

    @property
    def served(self) -> NewcomerConfig | None:
        """What the ranker routes: these weights for the newcomers the route serves (all, without a route)."""
        if self.route is None:
            return self.chosen
        if self.route.config is None:
            return None
        route = self.route.config
        served = {"min_events": route.min_events, "max_events": route.max_events, "cold_items": route.cold_items}
        return self.chosen.model_copy(update=served)

    def as_dict(self) -> JSON:
        return {
            "chosen": self.chosen.model_dump(),
            "holdout_users": self.users,
            f"ndcg@{self.k}": {name: round(value, 4) for name, value in self.ndcg.items()},
            "route": self.route.as_dict() if self.route is not None else None,
        }


def first_seen(log: pl.DataFrame, index: EvalIndex, history: sp.csr_array) -> np.ndarray | None:
    """Per stored pair of `history` (in storage order), when the log first has it, as a sortable number (pairs
    the log lacks last); None for a log without times."""
    if not has_times(log):
        return None
    first = (
        log.select(
            pl.Series("key", index.users(log[Columns.user]) * history.shape[1] + index.items(log[Columns.item])),
            pl.col(Columns.ts).dt.epoch("us").alias("when"),
        )
        .group_by("key")
        .agg(pl.col("when").min())
        .sort("key")
    )
    keys, when = first["key"].to_numpy(), first["when"].to_numpy().astype(np.float64)
    rows = np.repeat(np.arange(history.shape[0]), np.diff(history.indptr))
    wanted = rows.astype(np.int64) * history.shape[1] + history.indices
    if keys.size == 0:
        return np.full(wanted.size, np.inf)
    at = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    return np.where(keys[at] == wanted, when[at], np.inf)


def newcomer_holdout(
    inputs: RankerInputs,
    max_events: int,
    *,
    first: np.ndarray | None = None,
    arrivals: bool = False,
    share: float = 0.2,
    most_users: int = 2_000,
    seed: int = 0,
) -> tuple[RankerInputs, np.ndarray, sp.csr_array]:
    """(inputs with the held-out users' histories cut, the held-out users, their cut items as truth): `share` (at
    most `most_users`) of the users with more than max_events events, each keeping n in 0..max_events of their
    items (n uniform): their first n by `first` (`first_seen`: a newcomer has their first events), random ones
    without times. Held out are the latest arrivals by `first` where `arrivals`, a seeded draw otherwise."""
    history = inputs.history
    activity = np.diff(history.indptr)
    eligible = np.flatnonzero(activity > max_events)
    rng = np.random.default_rng(seed)
    size = min(round(share * eligible.size), most_users)
    if arrivals and first is not None:
        rows = np.repeat(np.arange(inputs.n_users), activity)
        arrived = np.full(inputs.n_users, np.inf)
        np.minimum.at(arrived, rows, first)
        held = np.sort(eligible[np.argsort(-arrived[eligible], kind="stable")[:size]])
    else:
        held = np.sort(rng.choice(eligible, size, replace=False))
    keep_n = np.zeros(inputs.n_users, dtype=np.int64)
    keep_n[held] = rng.integers(0, max_events + 1, held.size)
    is_held = np.zeros(inputs.n_users, dtype=bool)
    is_held[held] = True
    # Each stored pair's rank among its user's pairs (by time, ties and no times at random): the first keep_n stay.
    rows = np.repeat(np.arange(inputs.n_users), activity)
    shuffled = rng.random(rows.size)
    order = np.lexsort((shuffled, shuffled if first is None else first, rows))
    rank = np.empty(rows.size, dtype=np.int64)
    rank[order] = np.arange(rows.size) - history.indptr[rows[order]]
    cut = is_held[rows] & (rank >= keep_n[rows])

    def pairs(mask: np.ndarray) -> sp.csr_array:
        values = (np.ones(int(mask.sum()), dtype=np.float32), (rows[mask], history.indices[mask]))
        return sp.csr_array(values, shape=history.shape)

    return replace(inputs, history=pairs(~cut)), held, pairs(cut)


def _ndcg_sum(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Sum over rows of binary NDCG at k of each row's top k (equal scores to the lower item index)."""
    k = min(k, scores.shape[1])
    negated = -scores
    # Each row's k-th best score, then a stable sort of the items at least that good: the top k of a full stable
    # sort, without sorting every item (a 100k-item catalogue).
    kth = -kth_largest(scores, k)
    top = np.empty((scores.shape[0], k), dtype=np.intp)
    for row, (values, bound) in enumerate(zip(negated, kth, strict=True)):
        best = np.flatnonzero(values <= bound)
        top[row] = best[np.argsort(values[best], kind="stable")[:k]]
    gains = np.take_along_axis(truth, top, axis=1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(truth.sum(axis=1).astype(np.int64), k) - 1]
    return float(((gains * discounts).sum(axis=1) / ideal).sum())


def _arriving(
    inputs: RankerInputs,
    history: sp.csr_array,
    log: pl.DataFrame,
    index: EvalIndex,
    truth: sp.csr_array,
    first: np.ndarray,
) -> RankerInputs:
    """`inputs` whose held-out users (those with a row in `truth`) ask when their first held-out pair happened
    (`first`: `first_seen` of the uncut `history`'s pairs), their recent shares counted from the log without any
    held-out pair (as the protocols' test users are in no training log), and the log's-end shares likewise."""
    if inputs.time is None:
        return inputs
    coo = sp.coo_array(truth)
    held = pl.DataFrame({Columns.user: index.user_ids[coo.row], Columns.item: index.item_ids[coo.col]})
    rest = log.join(held, on=[Columns.user, Columns.item], how="anti")
    recent = time_features(rest, index.user_ids, index.item_ids, now=inputs.time.now).recent
    # The held-out pairs' first times, by (user, item) of the full history's storage order.
    rows = np.repeat(np.arange(inputs.n_users), np.diff(history.indptr))
    keys = rows.astype(np.int64) * inputs.n_items + history.indices
    order = np.argsort(keys, kind="stable")
    wanted = coo.row.astype(np.int64) * inputs.n_items + coo.col
    when = first[order[np.searchsorted(keys[order], wanted)]]
    at = np.full(inputs.n_users, np.inf)
    np.minimum.at(at, coo.row, when)
    users = np.flatnonzero(np.isfinite(at))
    requested = pl.DataFrame(
        {
            Columns.user: index.user_ids.gather(users),
            Columns.ts: pl.Series(at[users].astype(np.int64)).cast(pl.Datetime("us", "UTC")),
        }
    )
    times = RequestTimes.of(rest, index.user_ids, index.item_ids, requested)
    return replace(inputs, time=replace(inputs.time, recent=recent), request_times=times)


def choose_newcomers(
    inputs: RankerInputs,
    max_events: int,
    *,
    numeric_columns: int,
    log: pl.DataFrame | None = None,
    index: EvalIndex | None = None,
    arrivals: bool = False,
    k: int = 20,
    seed: int = 0,
) -> NewcomerChoice:
    """The newcomer weights with the best NDCG at k on a holdout of `inputs`' users (`newcomer_holdout`, their
    first events by `log`'s times where it has them; ties to the earlier setting of the grid: narrower kernels,
    no level weight, less history and recency weight). Weights over attributes or times the inputs do not have
    are not tried."""
    timed = log is not None and index is not None and has_times(log)
    first = first_seen(log, index, inputs.history) if timed else None  # type: ignore[arg-type]
    cut, held, truth = newcomer_holdout(inputs, max_events, first=first, arrivals=arrivals, seed=seed)
    if timed:
        cut = _arriving(cut, inputs.history, log, index, truth, first)  # type: ignore[arg-type]
    width = cut.user_attributes.shape[1] if cut.user_attributes is not None else 0
    kernels = list(
        itertools.product(
            NUMERIC_SCALES if numeric_columns else NUMERIC_SCALES[1:2],
            LEVEL_WEIGHTS if width > numeric_columns else LEVEL_WEIGHTS[:1],
        )
    )
    recent = [(0.0, RECENT_DAYS[1])]  # weight 0: no window read (named by the default, 14 days)
    if cut.time is not None:
        recent += [(weight, days) for days in RECENT_DAYS for weight in RECENT_WEIGHTS if weight]
    weights = list(itertools.product(HISTORY_WEIGHTS, recent))
    configs = {
        _setting_name(scale, level, history, weight, days): NewcomerConfig(
            max_events=max_events,
            numeric_columns=numeric_columns,
            numeric_scale=scale,
            level_weight=level,
            history_weight=history,
            recent_weight=weight,
            recent_days=days,
        )
        for (scale, level), (history, (weight, days)) in itertools.product(kernels, weights)
    }
    totals = dict.fromkeys(configs, 0.0)
    items = np.arange(inputs.n_items)
    # Held-out users a block at a time: each block's terms are (users x items) arrays.
    for users in _blocks(held, inputs.n_items):
        kept = cut.history[users].toarray() > 0
        wanted = truth[users].toarray()
        for kernel in kernels:
            group = {name: c for name, c in configs.items() if (c.numeric_scale, c.level_weight) == kernel}
            windows = RECENT_DAYS if cut.time is not None else ()
            terms = newcomer_terms(cut, users, items, next(iter(group.values())), windows)  # the kernel's, once
            for name, config in group.items():
                scores = terms.scores(config)
                scores[kept] = -np.inf
                totals[name] += _ndcg_sum(scores, wanted, k)
    ndcg = {name: total / max(held.size, 1) for name, total in totals.items()}
    best = max(ndcg, key=lambda name: (ndcg[name], -list(ndcg).index(name)))
    return NewcomerChoice(configs[best], k, int(held.size), ndcg)


def _setting_name(scale: float, level: float, history: float, weight: float, days: int) -> str:
    window = f",days={days}" if weight else ""
    return f"scale={scale:g},level={level:g},history={history:g},recent={weight:g}{window}"


@dataclass(frozen=True)
class RouteChoice:
    """Which newcomers the newcomer model serves, chosen on the validation users without history ('cold'), with
    1 to max_events events ('sparse') and with more, up to the largest bound tried ('past'): NDCG at k of the ranker
    and of the newcomer model for the first two (None: too few validation users to tell, and the newcomer model
    serves them), and for 'past' of the product serving them by the ranker and by the newcomer model up to each
    bound (None: too few to tell, or the ranker kept the sparse users, and the ranker serves them)."""

    config: NewcomerConfig | None
    k: int
    users: dict[str, int]
    ndcg: dict[str, dict[str, float] | None]

    def as_dict(self) -> JSON:
        served = None if self.config is None else [self.config.min_events, self.config.max_events]
        cold_items = None if self.config is None else self.config.cold_items
        return {"served": served, "cold_items": cold_items} | {
            name: {"users": self.users[name], f"ndcg@{self.k}": self.ndcg[name]} for name in self.users
        }


def choose_route(
    ranker: RankerBase,
    inputs: RankerInputs,
    config: NewcomerConfig,
    labels: sp.csr_array,
    pool: np.ndarray,
    exclude: sp.csr_array | None,
    *,
    k: int = 20,
    min_users: int = 20,
    bounds: tuple[int, ...] = (),
    max_users: int | None = None,
    seed: int = 0,
    partitions: PartitionMap = IN_TURN,
) -> RouteChoice:
    """Serve users without history, and users with 1 to max_events events, by the newcomer model only where it
    ranks `labels` (validation positives among `pool`) at least as well as `ranker` does for such users of
    `inputs` (ranker and inputs fitted without the labels); where fewer than `min_users` are there, it serves.
    The items without history it cannot score stay below its warm items for the ranker's cold places to lift, unless
    leaving them out (`NewcomerConfig.cold_items`) ranks the served validation newcomers better in all.

    Where it serves the sparse users, users with more events up to one of `bounds` may be served by it too: the
    bound (or none, the ranker keeping them) with the best NDCG at k over the validation users with more than
    max_events and at most max(bounds) events (ties to the lower bound), trying no bound past the first that holds
    the most events among them; with fewer than `min_users` such users, none. (A ranker trained on a log's latest
    events can rank a user with a few events far below popularity: docs/benchmarks.md, issue 29.)

    Each kind of user is judged on at most `max_users` of them (a seeded sample; None: all), `users_of` counting
    those judged. Their blocks are scored on `partitions` (the sums added in the blocks' order, as in turn)."""
    activity = np.diff(inputs.history.indptr)
    truth = sp.csr_array(labels[:, pool])
    labelled = np.flatnonzero(np.diff(truth.indptr) > 0)
    served = ranker.newcomers
    users_of: dict[str, int] = {}
    ndcg: dict[str, dict[str, float] | None] = {}
    routes: dict[str, bool] = {}
    without_cold = config.model_copy(update={"cold_items": False})
    gains: list[float] = []
    for name, (low, high) in {"cold": (0, 0), "sparse": (1, config.max_events)}.items():
        users = seeded_sample(labelled[(activity[labelled] >= low) & (activity[labelled] <= high)], max_users, seed)
        users_of[name] = int(users.size)
        if users.size < min_users:
            ndcg[name], routes[name] = None, True
            continue
        # The ranker scores each block once; each way of serving the block is placed from those scores.
        ways = {"ranker": None, NEWCOMER: config, WITHOUT_COLD: without_cold}
        sums = _block_sums(ranker, inputs, exclude, truth, users, pool, ways, k, partitions)
        values = {way: round(total / users.size, 4) for way, total in sums.items()}
        ndcg[name], routes[name] = values, max(values[NEWCOMER], values[WITHOUT_COLD]) >= values["ranker"]
        if routes[name]:
            gains.append(sums[WITHOUT_COLD] - sums[NEWCOMER])
    # Items without history for newcomers: kept (below every warm item, the ranker's cold places lifting the best)
    # unless leaving them out ranks the validation newcomers the route serves better over all of them.
    if gains and sum(gains) > 0:
        config = without_cold
    high = config.max_events if routes["sparse"] else 0
    wider = sorted(bound for bound in bounds if bound > config.max_events)
    if wider:
        users = labelled[(activity[labelled] > config.max_events) & (activity[labelled] <= wider[-1])]
        users = seeded_sample(users, max_users, seed)
        users_of["past"], ndcg["past"] = int(users.size), None
        if routes["sparse"] and users.size >= min_users:
            # No further than the first bound that holds the most events seen among them: beyond, nothing was seen.
            reach = next(bound for bound in wider if bound >= activity[users].max())
            tried = [bound for bound in wider if bound <= reach]
            by_bound = _past_ndcg(ranker, inputs, config, truth, users, pool, exclude, tried, k, partitions)
            high = max(by_bound, key=lambda bound: (by_bound[bound], -bound))
            ndcg["past"] = {_past_name(bound, config): value for bound, value in by_bound.items()}
    ranker.with_newcomers(served)
    low = 0 if routes["cold"] else 1
    chosen = config.model_copy(update={"min_events": low, "max_events": high}) if low <= high else None
    return RouteChoice(chosen, k, users_of, ndcg)


NEWCOMER = "newcomer model"
WITHOUT_COLD = "newcomer model without items without history"


def _past_name(bound: int, config: NewcomerConfig) -> str:
    return "ranker" if bound == config.max_events else f"newcomer model to {bound}"


def _past_ndcg(
    ranker: RankerBase,
    inputs: RankerInputs,
    config: NewcomerConfig,
    truth: sp.csr_array,
    users: np.ndarray,
    pool: np.ndarray,
    exclude: sp.csr_array | None,
    bounds: list[int],
    k: int,
    partitions: PartitionMap = IN_TURN,
) -> dict[int, float]:
    """Mean NDCG at k of `users` (all with more than config.max_events events; `truth` their rows of positives among
    `pool`) by the highest events the newcomer model serves: config.max_events (the ranker serves them) and each of
    `bounds` (the newcomer model's reference users then those with more events than that); the ranker scores each
    block of users once."""
    ways = {
        bound: config.model_copy(update={"min_events": config.max_events + 1, "max_events": bound})
        for bound in [config.max_events, *bounds]
    }
    totals = _block_sums(ranker, inputs, exclude, truth, users, pool, ways, k, partitions)
    return {bound: round(total / users.size, 4) for bound, total in totals.items()}


_Way = TypeVar("_Way")


def _block_sums(
    ranker: RankerBase,
    inputs: RankerInputs,
    exclude: sp.csr_array | None,
    truth: sp.csr_array,
    users: np.ndarray,
    pool: np.ndarray,
    ways: dict[_Way, NewcomerConfig | None],
    k: int,
    partitions: PartitionMap,
) -> dict[_Way, float]:
    """Per way of routing newcomers: the NDCG at k summed over `users` (`truth` their positives among `pool`), the
    ranker scoring each block of users once on `partitions` and each way placed from those scores."""
    model = ranker.with_newcomers(None).scorer(inputs, exclude, placed=False)

    def sums_of(block: np.ndarray) -> dict[_Way, float]:
        scored, wanted = model(block, pool), truth[block].toarray()
        return {
            way: _ndcg_sum(_served(ranker, scored, inputs, exclude, route, block, pool), wanted, k)
            for way, route in ways.items()
        }

    totals = dict.fromkeys(ways, 0.0)
    for block_sums in partitions(sums_of, list(_blocks(users, pool.size))):
        for way, total in block_sums.items():
            totals[way] += total
    return totals


def _served(
    ranker: RankerBase,
    scored: np.ndarray,
    inputs: RankerInputs,
    exclude: sp.csr_array | None,
    route: NewcomerConfig | None,
    users: np.ndarray,
    pool: np.ndarray,
) -> np.ndarray:
    """The ranker's own `scored` (users x pool) as it serves them with newcomers routed by `route` (None: none),
    cold places included: what `ranker.with_newcomers(route).scorer(inputs, exclude)` gives, without scoring again."""
    scores = scored.copy() if route is None else routed(lambda *_: scored.copy(), inputs, exclude, route)(users, pool)
    return ranker.place(scores, inputs, pool)


def _blocks(users: np.ndarray, n_items: int) -> Iterator[np.ndarray]:
    """`users` a block at a time, each block's (users x items) arrays about 4M entries (16 MB of float32)."""
    size = max(1, 2**22 // max(n_items, 1))
    for start in range(0, users.size, size):
        yield users[start : start + size]
