"""Users just past the sparse users' bound on a real MovieLens-100K slice (issue 29): with 8 events each, the
LightGBM ranker (trained on the log's latest events) ranked them far below popularity. The newcomer model's route
is widened to them only on the training users' own validation, which records every bound it tried, and the
product then does not score them below popularity on the test users."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import training
from catalog import Columns, Dataset
from ranker.evaluate import SPARSE_USERS
from ranker.metrics import per_user_accuracy
from training._newcomers import _ndcg_sum

USERS = 200  # of 943: a fifth (40) are tested, and a fifth of the rest (32) validate the route (20 are enough)


@pytest.fixture(scope="module")
def evaluation(ml100k: Dataset, cache_dir: Path) -> training.UserEvaluation:
    users = ml100k.users.sort(Columns.user).head(USERS)
    sliced = Dataset(
        name=ml100k.name,
        interactions=ml100k.interactions.join(users, on=Columns.user, how="semi"),
        items=ml100k.items,
        users=users,
    )
    plan = training.user_plan(sliced, SPARSE_USERS, history_n=8)
    settings = training.ModelSettings.capped(0, 5)
    # A short ranker on one thread: a few seconds; it is the route's choice, not the ranker, that is tested.
    settings = replace(settings, ranker=settings.ranker.model_copy(update={"n_estimators": 30, "num_threads": 1}))
    # The share of users shown without history is given: choosing it (three more fits) is not what is tested.
    return training.evaluate_users(plan, k=20, cache_dir=cache_dir, settings=settings, cold_user_share=0.2)


def test_the_route_past_the_sparse_users_is_chosen_on_validation_and_recorded(
    evaluation: training.UserEvaluation,
) -> None:
    newcomers = evaluation.report.models.newcomers
    assert newcomers is not None and newcomers.route is not None
    route = newcomers.route.as_dict()
    past = route["past"]
    # The validation users (training users keeping their first 8 events) are past the sparse users' 5.
    assert past["users"] >= 20 and route["sparse"]["users"] == 0
    tried = past["ndcg@20"]
    # Bounds past 10 are not tried: no validation user has more than 8 events.
    assert set(tried) == {"ranker", "newcomer model to 10"}
    best = max(tried, key=lambda name: (tried[name], name == "ranker"))
    assert route["served"][1] == (5 if best == "ranker" else 10)
    ranker = evaluation.fitted.ranker
    assert ranker.newcomers is not None and ranker.newcomers.max_events == route["served"][1]


def test_users_just_past_the_sparse_bound_are_not_scored_below_popularity(
    evaluation: training.UserEvaluation,
) -> None:
    truth = evaluation.split.truth
    ndcg = {
        name: per_user_accuracy(result.recs, truth, 20)["ndcg"].to_numpy()
        for name, result in evaluation.results.items()
    }
    tested = pl.Series(evaluation.split.index.users(truth[Columns.user])).unique().len()
    assert ndcg["product"].size == tested == 40
    # Before the route reached them (63593fb), the ranker served these users: 0.2532 against popularity's 0.3738.
    assert np.mean(ndcg["product"]) >= np.mean(ndcg["popularity"])


def test_the_routes_ndcg_ranks_each_rows_top_k_as_a_full_stable_sort_does() -> None:
    # (A partition then a sort of the best: the route is chosen over a 100k-item catalogue too.)
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(40, 300)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.5] = -np.inf
    scores[0, 3:] = -np.inf  # fewer finite scores than k
    truth = (rng.random(scores.shape) < 0.1).astype(np.float32)
    truth[:, 0] = 1
    discounts = 1.0 / np.log2(np.arange(2, 22))
    for k in (1, 5, 20):
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ideal = np.cumsum(discounts[:k])[np.minimum(truth.sum(axis=1).astype(int), k) - 1]
        expected = ((np.take_along_axis(truth, top, axis=1) * discounts[:k]).sum(axis=1) / ideal).sum()
        assert _ndcg_sum(scores, truth, k) == pytest.approx(expected, rel=1e-12)
