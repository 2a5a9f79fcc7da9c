"""Issue 12: synthetic interactions reach the trained model, change how a cold item is scored, and never enter
evaluation. On a MovieLens-100K backfill window (90 days, tested on the next 30), with small real encoders."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from catalog import Columns, Dataset
from encoders import BPRConfig, WarmingConfig
from ranker.evaluate import ProtocolSplit, interaction_matrix, temporal_split
from ranker.features import RankingTask
from ranker.registry import load_ranker
from serving import load_serving_inputs, save_serving_inputs
from training import (
    DESCRIPTIONS,
    JUDGED_PAIRS,
    EvaluationPlan,
    FittedRanker,
    ModelSettings,
    OutputUse,
    TimedChoices,
    choose_cold_slots,
    fit_ranker,
    holdout_plan,
    synthetic_matrix,
    synthetic_precision,
    use_outputs,
    with_descriptions,
)
from training._audit import audit_descriptions, audit_judged_pairs, simulator_at_same_count
from training._standins import judged_like_pairs, warmed_standins


@pytest.fixture(scope="module")
def split(ml100k: Dataset) -> ProtocolSplit:
    first = ml100k.interactions[Columns.ts].min()
    end = first + timedelta(days=90)  # type: ignore[operator]
    return temporal_split(ml100k.interactions, ml100k.items, cut=end, end=end + timedelta(days=30))


@pytest.fixture(scope="module")
def settings() -> ModelSettings:
    defaults = ModelSettings.seeded(0)
    # timed=None: the simulator warms every item here, as on a log without times (the defaults for logs with
    # times warm judged items only: tested below).
    return replace(defaults, cf=BPRConfig(dim=32, epochs=20, seed=0), warming=WarmingConfig(per_item=10), timed=None)


def _cold_items(plan: EvaluationPlan) -> np.ndarray:
    index = plan.split.index
    seen = index.items(plan.split.train[Columns.item].unique())
    return np.setdiff1d(np.arange(index.n_items), seen)


@pytest.fixture(scope="module")
def judged(split: ProtocolSplit, settings: ModelSettings, cache_dir: Path) -> tuple[FittedRanker, pl.DataFrame]:
    """The model trained with 'judged' synthetic interactions for the cold items the window's truth names: each
    such item's real later users (an oracle judge, so the effect is known), plus one pair of a warm item."""
    plan = holdout_plan(split)
    cold_ids = set(plan.split.index.item_ids.gather(_cold_items(plan)).to_list())
    oracle = split.truth.filter(pl.col(Columns.item).is_in(list(cold_ids))).select(Columns.user, Columns.item)
    warm_item = split.train[Columns.item][0]
    synthetic = pl.concat(
        [oracle, pl.DataFrame({Columns.user: [split.train[Columns.user][0]], Columns.item: [warm_item]})]
    ).with_columns(pl.lit(0.9).alias("weight"))
    fitted = fit_ranker(replace(plan, synthetic=synthetic), cache_dir=cache_dir, settings=settings)
    return fitted, oracle


def test_a_cold_item_with_synthetic_interactions_scores_differently(
    judged: tuple[FittedRanker, pl.DataFrame], split: ProtocolSplit
) -> None:
    fitted, oracle = judged
    index, inputs = split.index, fitted.served.inputs
    unwarmed = fitted.without_warming()
    users, items = index.pairs(oracle)
    assert fitted.served.warming is not None and fitted.served.warming.items[items].all()
    assert fitted.served.warming.judged[items].all()
    # The item's ID embedding moved toward the users who took to it ...
    before = np.einsum("ij,ij->i", inputs.user_cf[users], unwarmed.served.inputs.item_standin[items])
    after = np.einsum("ij,ij->i", inputs.user_cf[users], inputs.item_standin[items])
    assert (after > before).mean() > 0.8
    # ... and the trained ranker scores the same cold item differently with it than without it.
    task = RankingTask(users=np.unique(users), pool=np.unique(items))
    scored = {name: model.ranker.score_task(model.served.inputs, task) for name, model in
              (("with", fitted), ("without", unwarmed))}  # fmt: skip
    assert not np.allclose(scored["with"][2], scored["without"][2])


def test_synthetic_interactions_never_enter_history_truth_or_exclusions(
    judged: tuple[FittedRanker, pl.DataFrame], split: ProtocolSplit
) -> None:
    fitted, oracle = judged
    # The synthetic pairs are real held-out pairs here (the oracle judge): if they had leaked into the history or
    # the exclusions, the evaluation could not count them as hits, and the model would have trained on truth.
    history = fitted.served.inputs.history
    users, items = split.index.pairs(oracle)
    assert not history.toarray()[users, items].any()
    assert history.nnz == interaction_matrix(split.train, split.index).nnz
    assert oracle.join(split.exclude, on=[Columns.user, Columns.item], how="semi").is_empty()
    assert oracle.join(split.truth, on=[Columns.user, Columns.item], how="semi").height == oracle.height


def test_the_model_report_names_what_warmed_it(judged: tuple[FittedRanker, pl.DataFrame]) -> None:
    fitted, oracle = judged
    warming = fitted.report.served_warming
    # Every cold item the oracle named was judged; the warm item's synthetic pair was left out (real data wins).
    assert warming["cold_items_judged"] == oracle[Columns.item].n_unique()
    assert warming["cold_items_warmed"] >= warming["cold_items_judged"]
    assert warming["per_item"] == 10


def test_synthetic_precision_counts_the_judge_and_the_simulator_apart(
    judged: tuple[FittedRanker, pl.DataFrame], split: ProtocolSplit
) -> None:
    fitted, _ = judged
    assert fitted.served.warming is not None
    precision = synthetic_precision(fitted.served.warming, interaction_matrix(split.truth, split.index))
    assert precision["judge"] == 1.0  # the oracle's pairs are the truth itself
    assert precision["simulator"] is not None and 0.0 <= precision["simulator"] < 1.0


def test_cold_places_are_chosen_on_a_split_and_saved_with_the_model(
    judged: tuple[FittedRanker, pl.DataFrame], split: ProtocolSplit, tmp_path: Path
) -> None:
    fitted, _ = judged
    chosen = choose_cold_slots(fitted, split, grid=(0, 3))
    try:
        assert chosen is not None and chosen.k == 20
        ndcg = chosen.ndcg
        assert chosen.chosen == max((0, 3), key=lambda slots: (ndcg[slots], -slots))
        assert fitted.evaluate(split, 20).value("ndcg") == pytest.approx(ndcg[chosen.chosen], abs=5e-5)
        assert chosen.as_dict()["ndcg@20"] == {str(slots): round(value, 4) for slots, value in ndcg.items()}
        fitted.ranker.save(tmp_path / "model")
        assert load_ranker(tmp_path / "model").config.cold_slots == chosen.chosen  # type: ignore[attr-defined]
    finally:
        fitted.ranker.with_cold_slots(0)  # type: ignore[attr-defined]


def test_on_a_log_with_times_only_the_judged_items_are_warmed_by_default(
    judged: tuple[FittedRanker, pl.DataFrame],
    split: ProtocolSplit,
    settings: ModelSettings,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    # The defaults for logs with times (ModelSettings.timed, chosen on MovieLens-100K's validation window) turn the
    # embedding simulator off: the judge's pairs still reach the model, nothing else is warmed.
    _, oracle = judged
    synthetic = oracle.with_columns(pl.lit(0.9).alias("weight"))
    fitted = fit_ranker(
        replace(holdout_plan(split), synthetic=synthetic),
        cache_dir=cache_dir,
        settings=replace(settings, timed=TimedChoices()),
    )
    warming = fitted.report.served_warming
    assert warming["simulate"] is False and warming["warm_items_simulated"] == 0
    assert warming["cold_items_warmed"] == warming["cold_items_judged"] == oracle[Columns.item].n_unique()
    assert fitted.served.warming is not None
    assert synthetic_precision(fitted.served.warming, interaction_matrix(split.truth, split.index))["simulator"] is None
    assert fitted.ranker.config.prior_weight == 2.0 and fitted.ranker.config.cold_slots == 1  # type: ignore[attr-defined]
    # A saved version marks the judged items as warmed, so serving names their source (synthetic-warmed embedding).
    index = split.index
    save_serving_inputs(
        tmp_path, fitted.served.inputs, index.user_ids, index.item_ids, warmed=fitted.served.warming.items
    )
    warmed_ids = set(index.item_ids.filter(pl.Series(load_serving_inputs(tmp_path).warmed)).to_list())
    assert warmed_ids == set(oracle[Columns.item].to_list())


# ------------------------------------------------------------------------------------------------ the audit


def test_the_audit_scores_judged_pairs_against_the_simulator_and_the_next_cycle_follows_its_interval(
    judged: tuple[FittedRanker, pl.DataFrame], split: ProtocolSplit
) -> None:
    fitted, oracle = judged
    first = OutputUse(False, "off: no earlier audit measured it")
    row = audit_judged_pairs(fitted, split, oracle.with_columns(pl.lit(0.9).alias("weight")), k=20, use=first)
    assert row is not None and row.output == JUDGED_PAIRS and row.metric == "overall/ndcg@20"
    assert row.entities == oracle[Columns.item].n_unique() and row.users > 0
    assert row.delta is not None and row.low is not None and row.high is not None
    assert row.low <= row.delta <= row.high
    assert not row.used and row.reason == first.reason  # what this run did, decided before it
    # An oracle's pairs (the window's own truth) beat the simulator's: the ranker learned in training what pairs
    # naming real takers are worth (WarmingConfig.given_share), so the next cycle uses them.
    assert row.helps, row
    uses = use_outputs(pl.DataFrame([row.as_dict()]))
    assert uses[JUDGED_PAIRS].used and uses[JUDGED_PAIRS].reason.startswith("used: overall/ndcg@20 +")
    helped = use_outputs(pl.DataFrame([row.as_dict() | {"delta": 0.03, "low": 0.01, "high": 0.05}]))
    reason = "used: overall/ndcg@20 +0.0300 [+0.0100, +0.0500] in the audit before"
    assert helped[JUDGED_PAIRS] == OutputUse(True, reason)
    assert not uses[DESCRIPTIONS].used and "no earlier audit" in uses[DESCRIPTIONS].reason


def test_a_judge_that_names_random_users_is_left_off(
    judged: tuple[FittedRanker, pl.DataFrame], split: ProtocolSplit
) -> None:
    fitted, oracle = judged
    rng = np.random.default_rng(0)
    users = split.index.user_ids.gather(rng.integers(split.index.n_users, size=oracle.height))
    guessed = oracle.with_columns(users.alias(Columns.user), pl.lit(0.9).alias("weight"))
    row = audit_judged_pairs(fitted, split, guessed, k=20, use=OutputUse(False, "off"))
    assert row is not None and row.delta is not None and not row.helps
    assert not use_outputs(pl.DataFrame([row.as_dict()]))[JUDGED_PAIRS].used


def test_warm_items_learn_from_pairs_a_judge_of_unknown_quality_might_give() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 200, 400
    takers = sp.csr_array(rng.random((n_users, n_items)) < 0.02, dtype=np.float32)  # (users x items) labels
    proposed = sp.csr_array(rng.random((n_items, n_users)) < 0.1, dtype=np.float32)  # the simulator's, per item
    warm = np.arange(0, n_items, 2)
    config = WarmingConfig(per_item=10, given_share=0.5)
    pairs = judged_like_pairs(takers, proposed, warm, config)
    given = np.flatnonzero(np.diff(pairs.indptr))
    assert np.isin(given, warm).all() and 0.4 < given.size / warm.size < 0.6
    assert np.diff(pairs.indptr).max() <= config.per_item
    # Each pair names a taker or a user the simulator proposed; both kinds occur, and so do items without takers
    # (being given pairs must not tell the ranker that an item has takers).
    rows, cols = pairs.nonzero()
    right = np.asarray(takers.T.tocsr()[rows, cols]).ravel() > 0
    assert (right | (np.asarray(proposed[rows, cols]).ravel() > 0)).all()
    assert 0.1 < right.mean() < 0.9
    assert (np.diff(takers.T.tocsr().indptr)[given] == 0).any()
    np.testing.assert_array_equal(judged_like_pairs(takers, proposed, warm, config).toarray(), pairs.toarray())


def test_the_simulator_control_proposes_as_many_users_per_item_as_the_judge(
    judged: tuple[FittedRanker, pl.DataFrame], split: ProtocolSplit
) -> None:
    fitted, oracle = judged
    inputs = fitted.served.inputs
    given = synthetic_matrix(oracle, split.index, np.flatnonzero(inputs.popularity > 0))
    assert fitted.served.warming is not None
    control = simulator_at_same_count(fitted.served.warming.content, inputs.user_cf, given)
    assert np.array_equal(np.diff(control.indptr), np.diff(given.indptr))
    item = int(np.flatnonzero(np.diff(given.indptr))[0])
    scores = inputs.user_cf @ fitted.served.warming.content[item]
    chosen = control.indices[control.indptr[item] : control.indptr[item + 1]]
    assert scores[chosen].min() >= np.sort(scores)[-chosen.size]  # the simulator's top users by the stand-in


def test_descriptions_are_audited_on_the_described_cold_items_and_join_the_encoded_text(
    judged: tuple[FittedRanker, pl.DataFrame], split: ProtocolSplit, cache_dir: Path
) -> None:
    fitted, oracle = judged
    cold = oracle[Columns.item].unique().sort().head(3).to_list()
    warm = split.train[Columns.item][0]
    descriptions = pl.DataFrame(
        {Columns.item: [*cold, warm], "description": ["A film about space travel and aliens."] * 4}
    )
    row = audit_descriptions(
        fitted, split, split.items, descriptions, k=20, cache_dir=cache_dir, use=OutputUse(False, "off")
    )
    assert row is not None and row.output == DESCRIPTIONS and row.entities == 3  # the warm item is not audited
    assert row.delta is not None and row.low is not None and row.low <= row.delta <= row.high
    texts = with_descriptions(split.items, descriptions).filter(pl.col(Columns.item).is_in(cold))
    assert texts.height == 3 and texts[Columns.text].str.ends_with("space travel and aliens.").all()
    assert with_descriptions(split.items, None) is split.items


def test_the_simulators_index_threshold_reaches_warming() -> None:
    """WarmingConfig.ann_min_users decides how warmed_standins' simulator finds users: over the threshold through
    an index (other users for some items, nearly the same), below it the exact search, bit for bit."""
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(30, 16))
    user_cf = (centres[rng.integers(0, 30, 6_000)] + 0.5 * rng.normal(size=(6_000, 16))).astype(np.float32)
    item_cf = (centres[rng.integers(0, 30, 300)] + 0.5 * rng.normal(size=(300, 16))).astype(np.float32)
    standins = (item_cf + 0.3 * rng.normal(size=item_cf.shape)).astype(np.float32)
    warm = np.arange(200)  # items 200-299 are cold
    config = WarmingConfig(steps=5, given_share=0)
    exact = warmed_standins(standins, user_cf, item_cf, warm, None, config.model_copy(update={"ann_min_users": None}))
    indexed = warmed_standins(
        standins, user_cf, item_cf, warm, None, config.model_copy(update={"ann_min_users": 5_000})
    )
    below = warmed_standins(standins, user_cf, item_cf, warm, None, config.model_copy(update={"ann_min_users": 6_001}))
    np.testing.assert_array_equal(below.standins, exact.standins)
    assert (exact.synthetic != indexed.synthetic).nnz > 0  # the index's path was taken
    shared = exact.synthetic.multiply(indexed.synthetic > 0).nnz / exact.synthetic.nnz
    assert shared >= 0.9, shared
    assert not np.array_equal(indexed.standins, exact.standins)
