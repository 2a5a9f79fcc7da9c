"""Warming cold items with simulated interactions (ColdLLM's mechanism, over frozen collaborative users).

A cold item has no ID embedding. A simulator proposes users who would take to it (stage one: the item's content
stand-in scored against every user's collaborative vector; stage two, optional: a language-model judge keeps the
likeliest), and those synthetic interactions train the item's own ID embedding with the users held fixed, so it
lands on the warm items' scale. The stand-in is both the starting point and the prior it is pulled back to:
an item with few or weak synthetic interactions stays close to its content, one with many moves toward them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field

from catalog import DataError
from encoders._ann import default_nprobe, inner_product_ivf, search_ivf

# Populations of at least this many users are searched through an index by the simulator (WarmingConfig).
ANN_MIN_USERS = 20_000


class WarmingConfig(BaseModel):
    """How synthetic interactions warm items. `per_item` 20 and `weight` 5 were chosen on CiteULike's hybrid_val
    from per_item {5, 20, 50} x weight {1, 5} x prior {0.01, 0.1} (benchmarks/warming.py, docs/benchmarks.md); the
    fold-in's optimiser settings mirror the user fold-in's."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    per_item: int = Field(20, ge=1)
    """Synthetic users the embedding simulator proposes per item (and the judge keeps at most)."""
    weight: float = Field(5.0, gt=0)
    """Weight of each synthetic interaction's BPR term against the pull back to the stand-in."""
    prior: float = Field(0.01, ge=0)
    """L2 weight pulling the warmed vector (and bias) back toward the item's stand-in."""
    steps: int = Field(100, ge=1)
    """Full-batch Adam steps of the fold-in."""
    lr: float = Field(0.05, gt=0)
    """Adam learning rate of the fold-in."""
    negatives: int = Field(8, ge=1)
    """Warm items drawn per synthetic interaction and step as BPR negatives."""
    seed: int = 0
    """Seeds the negative sampling: equal seeds, equal vectors."""
    simulate: bool = True
    """The embedding simulator proposes users for every item without given (judged) pairs, warm items' stand-ins
    included; off, only items with given pairs are warmed."""
    ann_min_users: int | None = Field(ANN_MIN_USERS, ge=1)
    """The simulator searches an ANN index over the users (faiss IVF, encoders._ann) for each item's best where
    there are at least this many (None: always every user): scoring every item against every user was most of the
    warming at 500k items and 200k users. CiteULike-a (5,551) and MovieLens stay exact."""
    given_share: float = Field(0.5, ge=0, le=1)
    """Share of warm items whose out-of-fold stand-in is warmed, in training, from pairs a judge might give (some
    naming the item's held-out takers, some not) in place of the simulator's, and marked as given: the ranker
    learns what a judge's pairs are worth (it saw only the simulator's pairs before, which add nothing beyond the
    text, and ignored even an oracle's: docs/benchmarks.md)."""


def simulate_users(
    item_vectors: np.ndarray,
    user_vectors: np.ndarray,
    per_item: int,
    *,
    exclude: sp.csr_array | None = None,
    block: int = 512,
    ann_min_users: int | None = None,
) -> sp.csr_array:
    """The embedding simulator: for each item row, the `per_item` users whose collaborative score
    `user_vectors @ item_vectors.T` is highest, as an (items x users) matrix holding those scores.

    `exclude` (items x users) masks pairs that must not be proposed (e.g. the item's real interactions). Without
    it, at least `ann_min_users` users are searched through an inner-product IVF index (approximate: the users
    found are among the best, not always the very best).
    """
    items = np.asarray(item_vectors, dtype=np.float32)
    users = np.asarray(user_vectors, dtype=np.float32)
    if items.ndim != 2 or users.ndim != 2 or items.shape[1] != users.shape[1]:
        raise DataError(f"simulate_users: item vectors {items.shape} and user vectors {users.shape} must match.")
    m = min(per_item, users.shape[0])
    if exclude is None and ann_min_users is not None and users.shape[0] >= ann_min_users:
        return _indexed_simulation(items, users, m)
    rows, cols, values = [], [], []
    for start in range(0, items.shape[0], block):
        scores = items[start : start + block] @ users.T
        if exclude is not None:
            masked = exclude[start : start + scores.shape[0]].toarray() > 0
            scores = np.where(masked, -np.inf, scores)
        # torch's top k: several times faster than numpy's argpartition over 50k users, and on every core.
        best = torch.topk(torch.from_numpy(scores), m, dim=1, sorted=False)
        top, chosen = best.indices.numpy(), best.values.numpy()
        keep = np.isfinite(chosen)
        rows.append(np.repeat(np.arange(start, start + scores.shape[0]), m)[keep.ravel()])
        cols.append(top.ravel()[keep.ravel()])
        values.append(chosen.ravel()[keep.ravel()])
    return _items_by_users(rows, cols, values, (items.shape[0], users.shape[0]))


def _indexed_simulation(items: np.ndarray, users: np.ndarray, m: int, block: int = 8192) -> sp.csr_array:
    """simulate_users' matrix from an IVF index over the users, items searched `block` at a time."""
    index = inner_product_ivf(users)
    nprobe = default_nprobe(index)
    rows, cols, values = [], [], []
    for start in range(0, items.shape[0], block):
        labels, scores = search_ivf(index, items[start : start + block], m, nprobe)
        found = labels >= 0
        rows.append(np.broadcast_to(np.arange(start, start + labels.shape[0])[:, None], labels.shape)[found])
        cols.append(labels[found])
        values.append(scores[found])
    return _items_by_users(rows, cols, values, (items.shape[0], users.shape[0]))


def _items_by_users(
    rows: list[np.ndarray], cols: list[np.ndarray], values: list[np.ndarray], shape: tuple[int, int]
) -> sp.csr_array:
    """The simulator's (items x users) matrix from its blocks' (item, user, score) triples."""
    return sp.csr_array(
        sp.coo_array((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=shape)
    )


def simulated_interactions(
    item_vectors: np.ndarray, user_vectors: np.ndarray, per_item: int, *, ann_min_users: int | None = None
) -> sp.csr_array:
    """The embedding simulator's proposals as (items x users) interactions of weight 1: its scores choose the
    users, they are not confidences (a judge's P(yes) is). `ann_min_users` as simulate_users'."""
    proposed = simulate_users(item_vectors, user_vectors, per_item, ann_min_users=ann_min_users)
    proposed.data = np.ones_like(proposed.data)
    return proposed


def warm_items(
    synthetic: sp.csr_array,
    user_vectors: np.ndarray,
    prior: np.ndarray,
    negatives: np.ndarray,
    config: WarmingConfig,
    *,
    most_pairs: int = 2**19,
    among: np.ndarray | None = None,
) -> np.ndarray:
    """Item vectors (with the bias as last column, like `prior`) trained from weighted synthetic interactions.

    `synthetic` is (items x users) of weights; `user_vectors` (users x dim+1) are frozen and carry a constant 1
    in the last column; `prior` (items x dim+1) are the stand-ins each row starts from and is pulled back to;
    `negatives` (n x dim+1) are the warm items' collaborative vectors that the synthetic users must rank the
    item above (BPR); `among` names the rows of `negatives` that are (a catalogue's vectors and its warm items:
    gathering the warm items' rows first copied a quarter of a gigabyte at 500k items to read 1,024 of them). Rows
    without a synthetic interaction come back equal to their prior.

    Each item's loss reads only its own vector, and Adam updates each coordinate from its own gradients, so items
    are trained in runs of at most `most_pairs` pairs (whole items): memory holds one run's gathered user vectors and
    their gradients (about 3 GB at 2^20 pairs of 257 floats, which put a fit at scale M at 9.6 GB; half that at the
    2^19 default), not every pair's (10 GB at 500k items x 20). Runs after the first draw their negatives from their
    own seed; a log that fits one run gets the vectors it always got (CiteULike-a's 340k pairs do).
    """
    synthetic = sp.coo_array(synthetic)
    if prior.shape[0] != synthetic.shape[0] or user_vectors.shape[0] != synthetic.shape[1]:
        raise DataError(
            f"warm_items: {synthetic.shape} synthetic matrix against {prior.shape[0]} items and "
            f"{user_vectors.shape[0]} users."
        )
    candidates = negatives.shape[0] if among is None else among.size
    if candidates == 0:
        raise DataError("warm_items needs warm items to rank synthetic interactions above; there are none.")
    warmed = np.array(prior, dtype=np.float32, copy=True)
    if synthetic.nnz == 0:
        return warmed
    user_table = np.asarray(user_vectors, dtype=np.float32)
    # A negative's score u.v_j does not depend on the item being trained: score every user against a sample of
    # warm items once, then draw from those columns each step.
    rng = np.random.default_rng(config.seed)
    sample = rng.choice(candidates, size=min(1024, candidates), replace=False)
    rows = sample if among is None else np.asarray(among)[sample]
    negative_scores = torch.from_numpy(user_table @ np.asarray(negatives[rows], dtype=np.float32).T)
    pairs = sp.csr_array(synthetic)  # rows in item order: a run of items is a slice of the pairs
    per_item = np.diff(pairs.indptr)
    touched = np.flatnonzero(per_item)
    for run, items in enumerate(_runs(touched, per_item[touched], most_pairs)):
        run_pairs = sp.coo_array(pairs[items])
        warmed[items] = _fold_in(
            run_pairs, user_table, warmed[items], negative_scores, sample.size, config, seed=config.seed + run
        )
    return warmed


def _runs(touched: np.ndarray, counts: np.ndarray, most_pairs: int) -> list[np.ndarray]:
    """`touched` items cut into consecutive runs of at most `most_pairs` pairs (`counts` per item), at least one
    item each."""
    runs, first, size = [], 0, 0
    for position, count in enumerate(counts.tolist()):
        if size and size + count > most_pairs:
            runs.append(touched[first:position])
            first, size = position, 0
        size += count
    runs.append(touched[first:])
    return runs


def _fold_in(
    synthetic: sp.coo_array,
    user_table: np.ndarray,
    pulled_to: np.ndarray,
    negative_scores: torch.Tensor,
    n_negatives: int,
    config: WarmingConfig,
    *,
    seed: int,
) -> np.ndarray:
    """The vectors of `synthetic`'s rows (every row has a pair; pairs in row order), trained from `pulled_to` by
    `config.steps` full-batch Adam steps of weighted BPR over the synthetic users against sampled warm items, pulled
    back to `pulled_to`.

    Each item's users sit in a padded (items x pairs x dim) block, so a step's positive scores are one batched
    product with the items' vectors and their gradient another: gathering every pair's item vector and adding every
    pair's gradient back moved five times the data (the fold-in was 11 of a fit's 45 minutes at 500k items). Items
    are padded to the power of two at or above their pairs (at most the most pairs of an item), one block per width:
    padded to the most pairs of any item, a run's block was mostly zeros where most items have a few pairs."""
    local = synthetic.row
    n_items = pulled_to.shape[0]
    counts = np.bincount(local, minlength=n_items)
    slot = np.arange(local.size) - np.repeat(np.cumsum(counts) - counts, counts)  # each pair's place in its item
    widths = np.minimum(2 ** np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64), counts.max())
    blocks, order = [], []
    for width in np.unique(widths).tolist():
        items = np.flatnonzero(widths == width)
        position = np.zeros(n_items, dtype=np.int64)
        position[items] = np.arange(items.size)
        pairs = np.flatnonzero(widths[local] == width)
        users = torch.zeros((items.size, width, user_table.shape[1]))
        for place in range(width):  # one place of every item at a time: no copy of every pair's user vector
            at = pairs[slot[pairs] == place]
            users[torch.from_numpy(position[local[at]]), place] = torch.from_numpy(user_table[synthetic.col[at]])
        where = (torch.from_numpy(position[local[pairs]]), torch.from_numpy(slot[pairs]))
        blocks.append((torch.from_numpy(items), users, where))
        order.append(pairs)
    # The blocks' positive scores come out grouped by width: back to the pairs' order.
    in_pair_order = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
    prior = torch.from_numpy(np.asarray(pulled_to, dtype=np.float32))
    # Each item's synthetic terms average to `weight`, so the pull to the prior weighs the same for every item.
    weights = torch.from_numpy(synthetic.data.astype(np.float32) * config.weight / counts[local].astype(np.float32))
    pair_users = torch.from_numpy(synthetic.col.astype(np.int64))
    vectors = prior.clone().requires_grad_()
    optimizer = torch.optim.Adam([vectors], lr=config.lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(config.steps):
        drawn = torch.randint(n_negatives, (local.size, config.negatives), generator=generator)
        scored = [torch.bmm(users, vectors[items].unsqueeze(2)).squeeze(2)[where] for items, users, where in blocks]
        positive = torch.cat(scored)[in_pair_order].unsqueeze(1)
        margin = positive - negative_scores[pair_users[:, None], drawn]
        fit = -(torch.nn.functional.logsigmoid(margin).mean(dim=1) * weights).sum()
        loss = fit + config.prior * (vectors - prior).square().sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return vectors.detach().numpy()


def prepare_warming() -> None:
    """Fold in one tiny item, once: the fold-in's first run in a process pays about a second of torch's one-time
    set-up (autograd and the optimiser's first step), which a long-running server pays at start rather than on
    the first item it is asked to add."""
    one = np.ones((1, 2), dtype=np.float32)
    warm_items(sp.csr_array(one[:, :1]), one, one, one, WarmingConfig(steps=1))
