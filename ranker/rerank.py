"""Calibrated tail exposure: re-rank a scorer's top k so that each user sees about their own share of tail items.

A ranker trained for accuracy on a popularity-skewed log fills the top k with head items (APLT near 0 on
MovieLens). Calibration (Steck, "Calibrated recommendations", RecSys 2018; Abdollahpouri et al.'s calibrated
popularity) asks instead that the share of tail items in a user's list follow the share in their history: a user
who rates obscure films gets some, a user who rates blockbusters keeps blockbusters. Here the target is a quota:
`round(strength * target_u * k)` tail items in user u's top k, where target_u is u's historical tail share shrunk
toward the population's (users without history get the population's). The best-scored tail items outside the top k
replace the worst-scored head items inside it; nothing else moves, so strength 0 is the scorer itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

__all__ = ["tail_quota_rerank", "tail_rerank_scorer", "tail_share_targets"]


def tail_share_targets(history: sp.csr_array, is_tail: np.ndarray, prior_weight: float = 10.0) -> np.ndarray:
    """Each user's target share of tail items: (tail interactions + prior_weight * p) / (interactions +
    prior_weight), p being the population's tail share of all interactions; users without history get p.

    `history` is the binary (users x items) training matrix and `is_tail` a boolean mask over its items.
    """
    if is_tail.shape != (history.shape[1],):
        raise ValueError(f"is_tail has shape {is_tail.shape}; history has {history.shape[1]} items.")
    if prior_weight < 0:
        raise ValueError(f"prior_weight must be >= 0, got {prior_weight}.")
    binary = sp.csr_array(history > 0, dtype=np.float32)
    counts = np.asarray(binary.sum(axis=1)).ravel()
    tail_counts = binary @ is_tail.astype(np.float32)
    population = float(tail_counts.sum() / max(counts.sum(), 1.0))
    return ((tail_counts + prior_weight * population) / np.maximum(counts + prior_weight, 1e-12)).astype(np.float32)


def tail_quota_rerank(
    scores: np.ndarray,
    is_tail: np.ndarray,
    targets: np.ndarray,
    k: int,
    strength: float,
    protect: np.ndarray | None = None,
) -> np.ndarray:
    """New scores (users x items, same shape) whose top k holds each user's tail quota where the scores allow it.

    Quota: round(strength * targets[u] * k) tail items. Only finite scores are eligible (-inf stays never
    recommended). Lifted tail items rank below the items kept, in their own score order; a user whose top k
    already meets the quota is left as scored. Items of the boolean mask `protect` (e.g. the cold items a
    scorer placed on purpose) are never displaced.
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}.")
    if scores.ndim != 2 or scores.shape[1] != is_tail.size or targets.size != scores.shape[0]:
        raise ValueError(
            f"scores {scores.shape}, is_tail {is_tail.shape} and targets {targets.shape} do not agree (users x items)."
        )
    out = np.array(scores, dtype=np.float32)
    quotas = np.rint(strength * np.clip(targets, 0, 1) * max(k, 0)).astype(int)
    for row in np.flatnonzero(quotas > 0):
        values = out[row]
        finite = np.flatnonzero(np.isfinite(values))
        top = _best(values, finite, k)
        # max(..., 0): a top k holding more than the quota must lift nothing.
        wanted = max(quotas[row] - int(is_tail[top].sum()), 0)
        if wanted == 0:
            continue
        tail = finite[is_tail[finite]]
        lifted = _best(values, tail[~np.isin(tail, top)], wanted)  # the best tail items below the top k
        if lifted.size == 0:
            continue
        replaceable = ~is_tail[top] if protect is None else ~is_tail[top] & ~protect[top]
        dropped = top[replaceable][::-1][: lifted.size]  # the worst-scored replaceable items of the top k
        lifted = lifted[: dropped.size]
        if lifted.size == 0:
            continue
        kept = top[~np.isin(top, dropped)]  # still best first
        # The new top k: kept items, then lifted tail items, each in score order, above every other item.
        chosen = np.r_[kept, lifted]
        values[chosen] = float(values[top[0]]) + np.arange(chosen.size, 0, -1, dtype=np.float32)
    return out


def _best(values: np.ndarray, items: np.ndarray, count: int) -> np.ndarray:
    """The `count` best of `items` (ascending item indices) by `values`, best first, equal values to the lower
    item index: a partition first, so a row where the newcomer model scored every warm item (400k+ finite values)
    sorts only its best, not all of them."""
    if items.size > count:
        cut = np.partition(values[items], items.size - count)[items.size - count]  # the count-th best value
        items = items[values[items] >= cut]  # every item tied at the cut stays for the sort to order
    return items[np.lexsort((items, -values[items]))][:count]


def tail_rerank_scorer(
    scorer: Callable[[np.ndarray, np.ndarray], np.ndarray],
    is_tail: np.ndarray,
    targets: np.ndarray,
    *,
    k: int,
    strength: float,
    exclude: sp.csr_array | None = None,
    protect: np.ndarray | None = None,
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A `ranker.evaluate.Scorer` that re-ranks `scorer`'s scores with `tail_quota_rerank`.

    `is_tail` and `targets` are indexed by item and user index; `exclude` (users x items) pairs are set to -inf
    before the quota is filled, so an item the evaluation masks never takes a tail slot; `protect` (by item index)
    marks items never displaced.
    """

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        raw = np.array(scorer(users, items), dtype=np.float32)
        if exclude is not None:
            raw[exclude[users][:, items].toarray() > 0] = -np.inf
        shielded = protect[items] if protect is not None else None
        return tail_quota_rerank(raw, is_tail[items], targets[users], k, strength, shielded)

    return score
