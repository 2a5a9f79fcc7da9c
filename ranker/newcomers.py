"""Users with no or few events (newcomers), served by a model of their own: what users like them took.

A learned ranker trained on users with long histories ranks a newcomer below plain popularity (MovieLens-100K's
cold-user protocol: 0.3588 NDCG@20 against 0.4666), and showing it warm users with their history hidden does not
cure it: the item side (popularity, ID vectors, recent shares) was fitted on those users' own events, so the
trees learn labels they can read off the items. This model has nothing fitted on the user it scores.

For a user u with attributes a_u (numeric ones standardised, categorical ones one-hot: `training.AttributeEncoding`)
and a few items H_u, item i scores

    log(share_u(i) + eps) + history_weight * sum_{j in H_u} cos(i, j) / sqrt(|H_u|) + recent_weight * log(r_i + e)

where share_u(i) is the kernel-weighted share of the reference users (those with more than `max_events` events)
who took i, each reference v weighing exp(-sum_numeric |a_u - a_v| / numeric_scale - level_weight * levels not
shared); cos(i, j) is the cosine of the two items' columns over the reference users (item-kNN); eps is half a
user's share. Without attributes every reference weighs the same: popularity among them, plus item-kNN. The
similarities are summed over sqrt(|H_u|) so that more items weigh more, less than linearly: on MovieLens-100K's
sparse-user validation (users with 1, 3, 5 items) one weight then suited every n, where the mean's best weight
went from 3 (n = 1) to 10 (n = 3, 5) (docs/benchmarks.md). On a log with times, r_i is the item's share of the
events of the `recent_days` days before the user asks (e half the smallest share): a user takes what the
population takes when they arrive. A served user asks now (the log's end: `TimeFeatures.recent`); a held-out user
of the protocols over users asks when their first held-out event happened (`RankerInputs.request_times`), and
only events strictly before that moment count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ranker.features import RankerInputs
from ranker.temporal import RECENT_DAYS


class NewcomerConfig(BaseModel):
    """Who is a newcomer and how the newcomer model weighs what they have (chosen on a user holdout:
    `training.choose_newcomers`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_events: int = Field(5, ge=0, description="Users with at most this many training events are newcomers...")
    min_events: int = Field(0, ge=0, description="...and at least this many (1: users without history stay ranked).")
    numeric_columns: int = Field(
        0, ge=0, description="How many of the user-attribute columns are numbers (first); the rest are one-hot levels."
    )
    numeric_scale: float = Field(0.5, gt=0, description="Kernel width over numeric attributes, in standard units.")
    level_weight: float = Field(0.0, ge=0, description="Log-weight a reference loses per level it does not share.")
    history_weight: float = Field(3.0, ge=0, description="Weight of the item-kNN similarity to the user's items.")
    recent_weight: float = Field(
        0.0, ge=0, description="Weight of the log of the item's recent share before the request (logs with times)."
    )
    recent_days: int = Field(14, description="Days before the request whose events make the recent share.")
    most_references: int = Field(20_000, ge=1, description="Most reference users (a seeded sample beyond).")
    cold_items: bool = Field(
        True,
        description="Whether items without history stay candidates (below every warm item, the ranker's cold places "
        "lifting the best); False: never recommended to newcomers (chosen on validation: `training.choose_route`).",
    )

    @field_validator("recent_days")
    @classmethod
    def _known_window(cls, days: int) -> int:
        if days not in RECENT_DAYS:
            raise ValueError(f"recent_days must be one of {RECENT_DAYS} (the windows a version keeps), not {days}.")
        return days


def _references(inputs: RankerInputs, config: NewcomerConfig) -> np.ndarray:
    """Users the model learns from: those with more than max_events events (a seeded sample of most_references);
    every user with an event where none has that many (a log of short histories)."""
    activity = np.diff(inputs.history.indptr)
    references = np.flatnonzero(activity > config.max_events)
    if references.size == 0:
        references = np.flatnonzero(activity > 0)
    if references.size > config.most_references:
        chosen = np.random.default_rng(0).choice(references, config.most_references, replace=False)
        references = np.sort(chosen)
    return references


def _kernel(attributes: np.ndarray, users: np.ndarray, references: np.ndarray, config: NewcomerConfig) -> np.ndarray:
    """(users x references) weights exp(-distance), the distance accumulated one attribute column at a time."""
    distance = np.zeros((users.size, references.size), dtype=np.float32)
    for column in range(attributes.shape[1]):
        values = attributes[:, column]
        gap = np.abs(values[users, None] - values[None, references])
        # A one-hot column differs by 1 on each side of a level not shared: half the level weight each.
        distance += gap / config.numeric_scale if column < config.numeric_columns else gap * config.level_weight / 2
    if references.size:
        distance -= distance.min(axis=1, keepdims=True)  # the nearest weighs 1: no underflow, same shares
    return np.exp(-distance)


@dataclass(frozen=True)
class NewcomerTerms:
    """The three terms of the newcomer model's scores (users x items): each user's log kernel share, the
    similarity to their items, the item's log recent share before each user's request by window in days (zero
    without times)."""

    log_share: np.ndarray
    similarity: np.ndarray
    recency: dict[int, np.ndarray]

    def scores(self, config: NewcomerConfig) -> np.ndarray:
        out = self.log_share + config.history_weight * self.similarity
        return out + config.recent_weight * self.recency[config.recent_days] if config.recent_weight else out


def log_recent(inputs: RankerInputs, users: np.ndarray, items: np.ndarray, days: int) -> np.ndarray:
    """(users x items) log(r + e): r each item's share of the events of the `days` days before each user asks
    (`RankerInputs.request_times`; the log's end for users without a time of their own), e half the smallest
    share of the user's row (1 where none); zeros for a log without times."""
    if inputs.time is None:
        return np.zeros((users.size, items.size), dtype=np.float32)
    at_end = _log_shares(inputs.time.recent[None, :, RECENT_DAYS.index(days)], items)[0]
    if inputs.request_times is None:
        return np.broadcast_to(at_end, (users.size, items.size))
    shares = inputs.request_times.recent(users, days, inputs.n_items)
    own = ~np.isnan(shares[:, 0])
    out = np.empty((users.size, items.size), dtype=np.float32)
    out[~own] = at_end
    if own.any():
        out[own] = _log_shares(shares[own], items)
    return out


def _log_shares(shares: np.ndarray, items: np.ndarray) -> np.ndarray:
    """log(r + e) of each row's shares at `items`, e half the row's smallest positive share over every item (1
    where it has none)."""
    positive = np.where(shares > 0, shares, np.inf).min(axis=1, keepdims=True)
    floors = np.where(np.isfinite(positive), 0.5 * positive, 1.0)
    return np.log(shares[:, items] + floors).astype(np.float32)


def newcomer_terms(
    inputs: RankerInputs,
    users: np.ndarray,
    items: np.ndarray,
    config: NewcomerConfig,
    windows: tuple[int, ...] | None = None,
) -> NewcomerTerms:
    """The terms of `newcomer_scores` (the kernel's settings from `config`; its weights are not read), the recent
    shares over each of `windows` (default: config.recent_days)."""
    references = _references(inputs, config)
    taken = sp.csr_array(inputs.history[references])
    n_references = max(references.size, 1)
    norms = np.sqrt(np.asarray(taken.sum(axis=0)).ravel())
    columns = sp.csr_array(taken @ sp.diags_array(1.0 / np.maximum(norms, 1e-12)))
    attributes = inputs.user_attributes
    assert attributes is not None
    log_share = np.empty((users.size, items.size), dtype=np.float32)
    similarity = np.zeros((users.size, items.size), dtype=np.float32)
    # Users a block at a time, so that the dense (users x references) and (users x items) arrays stay bounded.
    block = max(1, 2**22 // max(references.size, inputs.n_items, 1))
    for start in range(0, users.size, block):
        batch = users[start : start + block]
        weights = _kernel(attributes, batch, references, config)
        share = np.asarray((taken.T @ weights.T).T) / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        log_share[start : start + block] = np.log(share + 0.5 / n_references)[:, items]
        history = inputs.history[batch]
        counts = np.diff(history.indptr)
        if counts.any():
            similar = sp.csr_array((history @ columns.T) @ columns)[:, items].toarray()
            similarity[start : start + block] = similar / np.sqrt(np.maximum(counts, 1))[:, None]
    if windows is None:
        windows = (config.recent_days,) if config.recent_weight else ()
    recency = {days: log_recent(inputs, users, items, days) for days in windows}
    return NewcomerTerms(log_share, similarity, recency)


def newcomer_scores(inputs: RankerInputs, users: np.ndarray, items: np.ndarray, config: NewcomerConfig) -> np.ndarray:
    """(users x items) scores of the newcomer model (items a user already took are not excluded here)."""
    return newcomer_terms(inputs, users, items, config).scores(config).astype(np.float32)
