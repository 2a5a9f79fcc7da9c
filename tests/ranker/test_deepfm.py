"""DeepFM on a small real slice of CiteULike: cold items served through stand-ins, round trip, clear errors."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydantic
import pytest
import scipy.sparse as sp
import torch

from catalog import DataError, NotFittedError
from ranker.deepfm import DeepFMConfig, DeepFMRanker, head_items, ndcg_at_k
from ranker.features import RankerInputs, RankingTask
from tests.ranker.contract import RankerContract

CONFIG = DeepFMConfig(embedding_dim=16, hidden=(32,), epochs=6, patience=2, batch_size=256, threads=2)


@pytest.fixture(scope="module")
def fitted(slice_inputs: tuple, tasks: tuple) -> DeepFMRanker:
    inputs, _ = slice_inputs
    train, valid, _ = tasks
    return DeepFMRanker(CONFIG).fit(inputs, train, valid)


def test_not_fitted_is_a_clear_error(slice_inputs: tuple, tmp_path: Path) -> None:
    inputs, _ = slice_inputs
    ranker = DeepFMRanker()
    assert not ranker.is_fitted
    with pytest.raises(NotFittedError, match="call fit"):
        ranker.score(inputs, np.array([0]), np.array([0]))
    with pytest.raises(NotFittedError, match="call fit"):
        ranker.recommend(inputs, np.array([0]), 5)
    with pytest.raises(NotFittedError, match="call fit"):
        ranker.save(tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_cold_items_rank_far_above_random(
    fitted: DeepFMRanker, slice_inputs: tuple, tasks: tuple, recall_of: Callable
) -> None:
    inputs, _ = slice_inputs
    _, _, test = tasks
    assert fitted.is_fitted
    assert fitted.metadata["train_pairs"] > 1000
    assert 1 <= fitted.metadata["best_epoch"] <= CONFIG.epochs
    users, items, ranks = fitted.recommend(inputs, test.users, 20, pool=test.pool, exclude=test.exclude)
    assert test.exclude is not None
    assert not np.asarray(test.exclude[users, items]).any(), "excluded pairs are never recommended"
    assert ranks.max() == 20
    recall = recall_of(users, items, test, inputs.n_users)
    random_recall = 20 / test.pool.size  # a random ranking hits about 20 / (cold candidates) of them
    assert recall > 3 * random_recall, (recall, random_recall)

    # Each cold test positive against the user's other cold candidates: where random scoring puts it in the
    # middle (0.5), DeepFM puts it well above, from the user's history and the item's stand-in and text.
    scores = fitted.score(inputs, test.users, test.pool, exclude=test.exclude)
    assert test.positives is not None
    truth = test.positives[test.users][:, test.pool].toarray() > 0
    percentiles = []
    for row in np.flatnonzero(truth.any(axis=1)):
        finite = np.isfinite(scores[row])
        below = (scores[row][None, finite] < scores[row][truth[row]][:, None]).mean(axis=1)
        percentiles.extend(below.tolist())
    assert np.mean(percentiles) > 0.75, np.mean(percentiles)


def test_cold_items_are_scored_through_their_standins(fitted: DeepFMRanker, slice_inputs: tuple, tasks: tuple) -> None:
    inputs, _ = slice_inputs
    train, _, test = tasks
    # Cold: no training interaction and no training label (some of the slice's pool items are warm_val labels).
    assert train.positives is not None
    labelled = np.asarray(train.positives.sum(axis=0)).ravel() > 0
    cold = test.pool[~labelled[test.pool]]
    assert cold.size > 100 and not fitted.network.trained_items[torch.from_numpy(cold)].any()
    users = np.arange(20)
    before = fitted.score(inputs, users, cold)
    # A cold item's ID embedding is never read ...
    scrambled = copy.deepcopy(fitted)
    with torch.no_grad():
        scrambled.network.item_id.weight[torch.from_numpy(cold)] = torch.randn(cold.size, CONFIG.embedding_dim)
    np.testing.assert_array_equal(scrambled.score(inputs, users, cold), before)
    # ... its stand-in is: give the cold items each other's stand-ins and their scores move.
    standins = inputs.item_standin.copy()
    standins[cold] = standins[np.roll(cold, 1)]
    moved = fitted.score(_replace(inputs, item_standin=standins), users, cold)
    assert not np.allclose(moved, before)
    # Without stand-ins (the ablation), the same swap changes nothing.
    ablation = copy.deepcopy(fitted)
    ablation.config = CONFIG.model_copy(update={"use_standins": False})
    np.testing.assert_array_equal(
        ablation.score(_replace(inputs, item_standin=standins), users, cold),
        ablation.score(_replace(inputs), users, cold),  # rebuilt alike (RankerInputs renormalises the text)
    )


def _replace(inputs: RankerInputs, **changes: object) -> RankerInputs:
    fields = {
        name: getattr(inputs, name)
        for name in ("history", "text", "user_cf", "item_cf", "item_standin", "popularity", "title_words", "tfidf")
    }
    return RankerInputs(**(fields | changes))  # type: ignore[arg-type]


def test_save_load_round_trip_scores_identically(
    fitted: DeepFMRanker, slice_inputs: tuple, tasks: tuple, tmp_path: Path
) -> None:
    inputs, _ = slice_inputs
    _, _, test = tasks
    directory = fitted.save(tmp_path / "model")
    state = torch.load(directory / "model.pt", weights_only=True)  # tensors only: nothing pickled runs
    assert "item_id.weight" in state and "trained_items" in state
    metadata = json.loads((directory / "metadata.json").read_text())
    assert metadata["kind"] == "deepfm" and metadata["config"] == CONFIG.model_dump(mode="json")
    loaded = DeepFMRanker.load(directory)
    np.testing.assert_array_equal(
        loaded.score(inputs, test.users, test.pool, exclude=test.exclude),
        fitted.score(inputs, test.users, test.pool, exclude=test.exclude),
    )
    assert loaded.metadata["best_epoch"] == fitted.metadata["best_epoch"]

    # A model file that does not match its metadata is refused, not half-loaded.
    (directory / "model.pt").write_bytes((directory / "model.pt").read_bytes()[:-10])
    with pytest.raises(DataError, match="digest"):
        DeepFMRanker.load(directory)
    with pytest.raises(DataError, match="no saved DeepFM"):
        DeepFMRanker.load(tmp_path / "nothing")


def test_same_seed_same_model(fitted: DeepFMRanker, slice_inputs: tuple, tasks: tuple) -> None:
    inputs, _ = slice_inputs
    train, valid, test = tasks
    again = DeepFMRanker(CONFIG).fit(inputs, train, valid)
    users, pool = test.users, test.pool
    np.testing.assert_array_equal(again.score(inputs, users, pool), fitted.score(inputs, users, pool))
    assert again.metadata["epochs"][0]["loss"] == fitted.metadata["epochs"][0]["loss"]


def test_bad_input_is_a_clear_error(fitted: DeepFMRanker, slice_inputs: tuple, tasks: tuple) -> None:
    inputs, _ = slice_inputs
    train, valid, _ = tasks
    with pytest.raises(DataError, match="no positives"):
        DeepFMRanker(CONFIG).fit(inputs, RankingTask(train.users, train.pool), valid)
    with pytest.raises(DataError, match=r"users \(user indices\) must be integers"):
        DeepFMRanker(CONFIG).fit(inputs, RankingTask(train.users + 10_000, train.pool, train.positives), valid)
    with pytest.raises(DataError, match="shape"):
        DeepFMRanker(CONFIG).fit(inputs, RankingTask(train.users, train.pool, sp.csr_array((3, 3))), valid)
    with pytest.raises(DataError, match="item indices"):
        fitted.score(inputs, np.array([0]), np.array([inputs.n_items]))
    # Inputs over another index (fewer users) do not fit the trained ID embeddings.
    fewer = _replace(inputs, history=inputs.history[:100], user_cf=inputs.user_cf[:100])
    with pytest.raises(DataError, match="n_users"):
        fitted.score(fewer, np.array([0]), np.array([0]))
    with pytest.raises(pydantic.ValidationError):
        DeepFMConfig(embedding_dim=1)
    with pytest.raises(pydantic.ValidationError):
        DeepFMConfig(layers=3)  # type: ignore[call-arg]


def test_head_items_hold_the_head_share() -> None:
    # 10 interactions: items 0 and 1 hold 8 of them (80%); the rest are tail, item 4 has none.
    assert head_items(np.array([5, 3, 1, 1, 0]), 0.8).tolist() == [True, True, False, False, False]
    assert head_items(np.array([1, 5, 0]), 0.5).tolist() == [False, True, False]
    assert not head_items(np.zeros(3), 0.8).any()


def test_ndcg_at_k_by_hand() -> None:
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    positives = sp.csr_array(np.array([[0, 1, 0], [1, 0, 1]]))
    # Row 0: its positive at rank 2 -> (1 / log2 3) / 1. Row 1: positives at ranks 1 and 3, k = 2 keeps rank 1
    # -> 1 / (1 + 1 / log2 3).
    expected = [1 / np.log2(3), 1 / (1 + 1 / np.log2(3))]
    np.testing.assert_allclose(ndcg_at_k(scores, positives, 2), expected)


class TestDeepFMContract(RankerContract):
    @pytest.fixture
    def make(self) -> Callable[[], DeepFMRanker]:
        return lambda: DeepFMRanker(CONFIG)
