"""The embedding simulator and the fold-in that warms items from synthetic interactions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from catalog import DataError
from encoders import WarmingConfig, prepare_warming, simulate_users, simulated_interactions, warm_items
from encoders._warming import _fold_in


def _users(rng: np.random.Generator, n: int = 200, dim: int = 8) -> np.ndarray:
    """Collaborative user vectors with the constant 1 that carries an item's bias."""
    return np.c_[rng.normal(size=(n, dim)), np.ones(n)].astype(np.float32)


def _auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Share of (positive, other) user pairs the item's scores order correctly."""
    mask = np.zeros(scores.size, dtype=bool)
    mask[positives] = True
    return float((scores[mask][:, None] > scores[~mask][None, :]).mean())


def test_simulate_users_proposes_each_items_best_scored_users() -> None:
    rng = np.random.default_rng(0)
    users, items = _users(rng), rng.normal(size=(5, 9)).astype(np.float32)
    proposed = simulate_users(items, users, 7).toarray()
    scores = items @ users.T
    for row in range(5):
        chosen = np.flatnonzero(proposed[row])
        assert set(chosen) == set(np.argsort(-scores[row])[:7])
        np.testing.assert_allclose(proposed[row, chosen], scores[row, chosen], rtol=1e-5)


def test_simulate_users_never_proposes_an_excluded_pair() -> None:
    rng = np.random.default_rng(1)
    users, items = _users(rng, n=30), rng.normal(size=(2, 9)).astype(np.float32)
    best = np.argsort(-(items @ users.T), axis=1)[:, :3]
    exclude = sp.csr_array((np.ones(6), (np.repeat([0, 1], 3), best.ravel())), shape=(2, 30))
    proposed = simulate_users(items, users, 3, exclude=exclude).toarray()
    assert not (proposed[exclude.toarray() > 0]).any()
    assert (np.count_nonzero(proposed, axis=1) == 3).all()


def test_warming_moves_an_item_toward_its_synthetic_users_and_leaves_the_others() -> None:
    rng = np.random.default_rng(2)
    users, negatives = _users(rng), np.c_[rng.normal(size=(50, 8)), np.zeros(50)].astype(np.float32)
    prior = np.c_[rng.normal(scale=0.1, size=(3, 8)), np.zeros(3)].astype(np.float32)
    liked = np.array([3, 17, 40, 41, 99, 120, 150, 151, 170, 199])
    synthetic = sp.csr_array((np.ones(liked.size), (np.zeros(liked.size, int), liked)), shape=(3, 200))
    warmed = warm_items(synthetic, users, prior, negatives, WarmingConfig())
    np.testing.assert_array_equal(warmed[1:], prior[1:])  # no synthetic interaction: the stand-in as it was
    before, after = _auc(users @ prior[0], liked), _auc(users @ warmed[0], liked)
    assert after > max(before + 0.15, 0.7)
    again = warm_items(synthetic, users, prior, negatives, WarmingConfig())
    np.testing.assert_array_equal(again, warmed)  # seeded: equal inputs, equal vectors


def test_negatives_named_among_a_catalogue_are_those_gathered_first() -> None:
    """The caller names the warm items among the catalogue's vectors (`among`) instead of gathering them into a copy
    (a quarter of a gigabyte at 500k items, of which 1,024 rows are read): the same vectors bit for bit."""
    rng = np.random.default_rng(4)
    users = _users(rng)
    catalogue = np.c_[rng.normal(size=(80, 8)), rng.normal(size=80)].astype(np.float32)
    warm = np.sort(rng.choice(80, 50, replace=False))
    prior = np.c_[rng.normal(scale=0.1, size=(4, 8)), np.zeros(4)].astype(np.float32)
    synthetic = sp.random_array((4, 200), density=0.05, random_state=3, format="csr")
    gathered = warm_items(synthetic, users, prior, catalogue[warm], WarmingConfig(steps=10))
    named = warm_items(synthetic, users, prior, catalogue, WarmingConfig(steps=10), among=warm)
    assert not np.array_equal(gathered, prior)
    np.testing.assert_array_equal(named, gathered)
    every = warm_items(synthetic, users, prior, catalogue, WarmingConfig(steps=10))
    assert not np.array_equal(every, gathered)  # drawn among all 80 rows: other negatives


def test_items_warmed_in_runs_get_the_vectors_they_get_together() -> None:
    # With a single warm item to rank against, every negative draw is the same, so only the runs differ: each
    # item's loss reads its own vector alone, and Adam is coordinate-wise.
    rng = np.random.default_rng(5)
    users, negative = _users(rng), np.c_[rng.normal(size=(1, 8)), np.zeros(1)].astype(np.float32)
    prior = np.c_[rng.normal(scale=0.1, size=(12, 8)), np.zeros(12)].astype(np.float32)
    synthetic = sp.random_array((12, 200), density=0.05, random_state=6, format="csr")
    together = warm_items(synthetic, users, prior, negative, WarmingConfig(steps=20))
    in_runs = warm_items(synthetic, users, prior, negative, WarmingConfig(steps=20), most_pairs=15)
    assert not np.array_equal(together, prior)
    np.testing.assert_allclose(in_runs, together, atol=1e-6)


def _per_pair_fold_in(
    synthetic: sp.coo_array, users: np.ndarray, prior: np.ndarray, negative_scores: torch.Tensor, config: WarmingConfig
) -> np.ndarray:
    """The fold-in written pair by pair (each pair gathers its item's vector): what the batched one must equal."""
    counts = np.bincount(synthetic.row, minlength=prior.shape[0]).astype(np.float32)
    weights = torch.from_numpy(synthetic.data.astype(np.float32) * config.weight / counts[synthetic.row])
    rows, pair_users = (
        torch.from_numpy(synthetic.row.astype(np.int64)),
        torch.from_numpy(synthetic.col.astype(np.int64)),
    )
    gathered, start = torch.from_numpy(users[synthetic.col]), torch.from_numpy(prior)
    vectors = start.clone().requires_grad_()
    optimizer = torch.optim.Adam([vectors], lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.steps):
        drawn = torch.randint(negative_scores.shape[1], (rows.shape[0], config.negatives), generator=generator)
        margin = (gathered * vectors[rows]).sum(dim=1, keepdim=True) - negative_scores[pair_users[:, None], drawn]
        fit = -(torch.nn.functional.logsigmoid(margin).mean(dim=1) * weights).sum()
        loss = fit + config.prior * (vectors - start).square().sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return vectors.detach().numpy()


def test_the_batched_fold_in_equals_the_fold_in_written_pair_by_pair() -> None:
    # Items with one to seven users each and uneven weights: the padded (items x pairs x dim) block must neither
    # lose a pair nor let a padding slot count.
    rng = np.random.default_rng(7)
    users, prior = _users(rng, n=300), np.c_[rng.normal(size=(40, 8)), np.zeros(40)].astype(np.float32)
    counts = rng.integers(1, 8, size=40)
    rows = np.repeat(np.arange(40), counts)
    cols = np.concatenate([rng.choice(300, size=count, replace=False) for count in counts])
    synthetic = sp.coo_array(sp.csr_array((rng.uniform(0.2, 1.0, rows.size), (rows, cols)), shape=(40, 300)))
    negatives = np.c_[rng.normal(size=(64, 8)), np.zeros(64)].astype(np.float32)
    negative_scores = torch.from_numpy(users @ negatives.T)
    config = WarmingConfig(steps=30)
    batched = _fold_in(synthetic, users, prior, negative_scores, 64, config, seed=config.seed)
    assert np.abs(batched - prior).max() > 0.05
    np.testing.assert_allclose(batched, _per_pair_fold_in(synthetic, users, prior, negative_scores, config), atol=1e-5)


def test_a_stronger_prior_keeps_the_item_closer_to_its_stand_in() -> None:
    rng = np.random.default_rng(3)
    users, negatives = _users(rng), np.c_[rng.normal(size=(50, 8)), np.zeros(50)].astype(np.float32)
    prior = np.c_[rng.normal(size=(1, 8)), np.zeros(1)].astype(np.float32)
    synthetic = sp.csr_array((np.ones(5), (np.zeros(5, int), np.arange(5))), shape=(1, 200))
    loose = warm_items(synthetic, users, prior, negatives, WarmingConfig(prior=0.001))
    tight = warm_items(synthetic, users, prior, negatives, WarmingConfig(prior=1.0))
    assert np.linalg.norm(tight - prior) < np.linalg.norm(loose - prior)


def test_warming_rejects_mismatched_inputs() -> None:
    rng = np.random.default_rng(4)
    users, prior = _users(rng, n=10), np.zeros((2, 9), dtype=np.float32)
    synthetic = sp.csr_array((2, 10), dtype=np.float32)
    with pytest.raises(DataError, match="synthetic matrix"):
        warm_items(synthetic, users[:5], prior, users, WarmingConfig())
    with pytest.raises(DataError, match="needs warm items"):
        warm_items(synthetic, users, prior, users[:0], WarmingConfig())
    with pytest.raises(DataError, match="must match"):
        simulate_users(prior[:, :4], users, 3)


def test_simulated_interactions_are_the_simulators_users_with_weight_one() -> None:
    rng = np.random.default_rng(5)
    users, items = _users(rng), rng.normal(size=(4, 9)).astype(np.float32)
    proposed, interactions = simulate_users(items, users, 6), simulated_interactions(items, users, 6)
    np.testing.assert_array_equal(interactions.toarray() > 0, proposed.toarray() != 0)
    assert set(interactions.data) == {1.0}


def test_prepare_warming_runs_the_fold_in_once_on_a_tiny_item() -> None:
    # A server calls it at start so its first added item does not pay torch's first-run set-up; it must not need
    # any data of the version to do so.
    assert prepare_warming() is None


def test_an_index_over_many_users_finds_nearly_the_simulators_best() -> None:
    # Users around 30 topic centres (the shape collaborative vectors have), items near the topics.
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(30, 16))
    users = (centres[rng.integers(0, 30, 6_000)] + 0.5 * rng.normal(size=(6_000, 16))).astype(np.float32)
    items = (centres[rng.integers(0, 30, 300)] + 0.5 * rng.normal(size=(300, 16))).astype(np.float32)
    exact = simulate_users(items, users, 20)
    found = simulate_users(items, users, 20, ann_min_users=5_000)  # 6,000 users: searched through the index
    assert (np.diff(found.indptr) == 20).all()  # every item still gets its 20 users
    rows = np.repeat(np.arange(300), np.diff(found.indptr))
    np.testing.assert_allclose(found.data, np.einsum("ij,ij->i", items[rows], users[found.indices]), rtol=1e-4)
    shared = exact.multiply(found > 0).nnz / exact.nnz
    assert 0.9 <= shared < 1.0, shared  # approximate, and close (measured 0.9997 here)
    # Below the threshold, the exact simulator bit for bit.
    below = simulate_users(items, users, 20, ann_min_users=6_001)
    np.testing.assert_array_equal(below.toarray(), exact.toarray())
