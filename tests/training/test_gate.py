"""Issue 13, the frozen gate: on a MovieLens-100K backfill window the newly trained ranker must serve the window's
users without history (most of its users) about as well as popularity does, not by accident of its trees."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from catalog import Columns, Dataset
from encoders import BPRConfig
from monitor import GateConfig, GateMetric
from ranker.baselines import PopularityScorer, RecentPopularityScorer
from ranker.evaluate import (
    COLD_USER,
    InThreads,
    InTurn,
    ProtocolSplit,
    evaluate,
    interaction_matrix,
    temporal_split,
)
from training import (
    EVALUATED,
    TIMED_ALTERNATIVES,
    FittedRanker,
    Incumbent,
    ModelSettings,
    alternative_lines,
    choose_newcomers_for,
    encode_plan,
    evaluate_metrics,
    fit_ranker,
    gate_evidence,
    gate_user_values,
    holdout_plan,
    incumbent_on_same_data,
    served_history_view,
    served_inputs,
    tail_calibrated,
    trained_through,
)


@pytest.fixture(scope="module")
def window(ml100k: Dataset) -> object:
    """The backfill's window ending 1997-12-19 (90 days after the first rating), tested on the next 30 days."""
    first = ml100k.interactions["ts"].min()
    assert first is not None
    end = first + timedelta(days=90)  # type: ignore[operator]
    return temporal_split(ml100k.interactions, ml100k.items, cut=end, end=end + timedelta(days=30))


@pytest.fixture(scope="module")
def fitted(window: object, cache_dir: Path) -> FittedRanker:
    """The window's ranker with small encoders, and the timed alternatives trained beside it."""
    defaults = ModelSettings.seeded(0)
    settings = ModelSettings(
        cf=BPRConfig(dim=32, epochs=20, seed=0), standins=defaults.standins, ranker=defaults.ranker
    )
    return fit_ranker(holdout_plan(window), cache_dir=cache_dir, settings=settings, alternatives=TIMED_ALTERNATIVES)


def test_served_inputs_share_the_fitted_inputs_item_content(window: object, cache_dir: Path) -> None:
    """The served inputs are encoded from the whole training history beside the fitted ones: the items' text,
    TF-IDF and categories do not depend on the history, so they are the fitted ones', not a second copy."""
    plan = holdout_plan(window)
    settings = ModelSettings(cf=BPRConfig(dim=16, epochs=3, seed=0))
    fitted = encode_plan(plan, plan.fit_history, settings, cache_dir=cache_dir, takers=plan.fit_labels)
    served = served_inputs(plan, fitted, settings, cache_dir=cache_dir)
    assert plan.refit_for_serving and served is not fitted
    assert served.content is fitted.content
    assert served.inputs.text is fitted.inputs.text and served.inputs.tfidf is fitted.inputs.tfidf
    assert served.inputs.history.nnz > fitted.inputs.history.nnz  # its own history and encoders all the same
    alone = encode_plan(plan, plan.split.train, settings, cache_dir=cache_dir, validate=False)
    np.testing.assert_array_equal(alone.inputs.text, served.inputs.text)
    assert (alone.inputs.tfidf != served.inputs.tfidf).nnz == 0
    np.testing.assert_array_equal(alone.inputs.title_words, served.inputs.title_words)


def test_the_newcomer_weights_are_chosen_the_same_before_the_served_inputs_are_encoded(
    window: object, cache_dir: Path
) -> None:
    """fit_ranker chooses the newcomer model's weights (and its route) before it encodes the served inputs, so that
    the fitted inputs can go first: from the fitted inputs carrying the served history, popularity and recency
    (`served_history_view`), which must choose exactly as the served inputs do. Fails when the view keeps the
    fitted history (the choice differs) or reads the history without its times."""
    plan = holdout_plan(window)
    settings = ModelSettings(cf=BPRConfig(dim=16, epochs=3, seed=0))
    fitted = encode_plan(plan, plan.fit_history, settings, cache_dir=cache_dir, takers=plan.fit_labels)
    served = served_inputs(plan, fitted, settings, cache_dir=cache_dir)
    view = served_history_view(plan, fitted, settings)
    assert view.inputs.item_cf is fitted.inputs.item_cf  # nothing encoded
    assert (view.inputs.history != served.inputs.history).nnz == 0
    np.testing.assert_array_equal(view.inputs.popularity, served.inputs.popularity)
    assert view.inputs.time is not None and served.inputs.time is not None
    for name in ("recent", "user_recent"):
        np.testing.assert_array_equal(getattr(view.inputs.time, name), getattr(served.inputs.time, name))
    split = plan.split
    served_choice, view_choice, fitted_choice = (
        choose_newcomers_for(inputs, settings, split.train, split.index, arrivals=True)
        for inputs in (served, view, fitted)
    )
    assert served_choice is not None and view_choice is not None and fitted_choice is not None
    assert view_choice.chosen == served_choice.chosen and view_choice.ndcg == served_choice.ndcg
    assert fitted_choice.ndcg != served_choice.ndcg  # the fitted history alone would choose on other figures


def test_the_retrained_ranker_serves_users_without_history(window: object, fitted: FittedRanker) -> None:
    split = window
    ranker = fitted.evaluate(split, 20)
    popularity = evaluate(split, PopularityScorer().fit(split.train, split.index), k=20)
    # 127 of the window's 219 users have no rating before it. Before the fix the booster never saw such a user
    # in training and ranked them at NDCG@20 0.0003 against popularity's 0.4635 (default settings; these small
    # encoders reach about 0.36).
    assert ranker.value("ndcg", COLD_USER) >= 0.6 * popularity.value("ndcg", COLD_USER)
    assert ranker.value("ndcg") >= 0.6 * popularity.value("ndcg")


def test_timed_alternatives_train_on_the_same_encoders_and_rank_differently(
    window: object, fitted: FittedRanker
) -> None:
    split = window
    assert list(fitted.alternatives) == list(TIMED_ALTERNATIVES)
    first, second = (fitted.alternatives[name] for name in TIMED_ALTERNATIVES)
    assert first is fitted  # the default choices are the candidate itself, not trained twice
    assert second.served is fitted.served  # one set of encoders
    config = second.ranker.config
    choices = TIMED_ALTERNATIVES["choice_recent28"]
    assert (config.prior_days, config.cold_slots) == (choices.prior_days, choices.cold_slots)
    metrics = evaluate_metrics(fitted, split, k=20, protocol="temporal")
    lines = alternative_lines(fitted, metrics, split, k=20, protocol="temporal")
    ndcg = lines.filter((pl.col("segment") == "overall") & (pl.col("metric") == "ndcg")).sort("protocol")
    assert ndcg["protocol"].to_list() == sorted(f"temporal:{name}" for name in TIMED_ALTERNATIVES)
    assert ndcg["value"].n_unique() == 2  # another prior and no new-item place rank differently


def test_the_lines_over_one_split_score_it_once(
    window: object, fitted: FittedRanker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidate's line, its tail-calibrated variant and the gate's evidence rank the same users: the model
    scores each batch once, and every line equals what scoring it afresh gives."""
    split = window
    ranker, inputs = fitted.ranker, fitted.served.inputs
    exclude = interaction_matrix(split.exclude, split.index)
    afresh = evaluate(split, ranker.scorer(inputs, exclude), k=20)
    calls: list[int] = []
    score_task = ranker.score_task
    monkeypatch.setattr(ranker, "score_task", lambda *args: calls.append(1) or score_task(*args))
    candidate = FittedRanker(ranker, fitted.served)  # its own kept scores, not the module fixture's
    first = candidate.evaluate(split, 20)
    batches = len(calls)
    assert batches >= 1
    calibrated = tail_calibrated(candidate, split, k=20, protocol="temporal")
    again = candidate.evaluate(split, 20)
    assert len(calls) == batches  # read back, not scored again
    for result in (first, again):
        assert result.recs.equals(afresh.recs)  # the same lists; the metrics' last digit follows polars' sums
        assert result.metrics.drop("value").equals(afresh.metrics.drop("value"))
        assert result.metrics["value"].to_numpy() == pytest.approx(afresh.metrics["value"].to_numpy(), abs=1e-12)
    monkeypatch.undo()
    scored_afresh = tail_calibrated(FittedRanker(ranker, fitted.served), split, k=20, protocol="temporal")
    assert calibrated["value"].to_numpy() == pytest.approx(scored_afresh["value"].to_numpy(), abs=1e-12)


def test_the_alternatives_line_reads_the_scores_the_candidates_pass_gave_it(
    window: object, fitted: FittedRanker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidate and its timed alternative rank the same users from the same inputs and candidates: the
    candidate's pass builds each batch's pairs once and scores them with both boosters; the alternative's line then
    builds nothing, and ranks as it does from pairs of its own."""
    from ranker.lightgbm_ranker import LightGBMRanker

    split = window
    name, other = next((name, other) for name, other in fitted.alternatives.items() if other is not fitted)
    afresh = FittedRanker(other.ranker, other.served).evaluate(split, 20)  # no alternatives: its own pairs
    built: list[int] = []
    task_groups = LightGBMRanker._task_groups
    monkeypatch.setattr(LightGBMRanker, "_task_groups", lambda self, *args: built.append(1) or task_groups(self, *args))
    alternative = FittedRanker(other.ranker, other.served)
    candidate = FittedRanker(fitted.ranker, fitted.served, alternatives={name: alternative})
    candidate.evaluate(split, 20)
    batches = len(built)
    assert batches >= 1
    shared = alternative.evaluate(split, 20)
    assert len(built) == batches  # read back, not built again
    assert shared.recs.equals(afresh.recs)
    assert shared.metrics["value"].to_numpy() == pytest.approx(afresh.metrics["value"].to_numpy(), abs=1e-12)


def test_lines_scored_on_threads_equal_those_of_one_thread_and_still_share_the_candidates_pass(
    window: object, fitted: FittedRanker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh evaluates its batches of users on a thread per core (InThreads): the candidate's batches run on two
    threads at once, its lists are those of one thread, the alternative's line still reads the scores the
    candidate's pass gave it (built on those threads) and ranks as it does alone, and the tail-calibrated line,
    ranked in turn afterwards, asks for the same batches and scores nothing again."""
    import threading

    import ranker.evaluate
    from ranker.lightgbm_ranker import LightGBMRanker

    split = window
    monkeypatch.setattr(ranker.evaluate, "eval_batch_size", lambda n_items: 40)  # several batches of users
    name, other = next((name, other) for name, other in fitted.alternatives.items() if other is not fitted)
    alone = {
        "candidate": FittedRanker(fitted.ranker, fitted.served).evaluate(split, 20),
        "alternative": FittedRanker(other.ranker, other.served).evaluate(split, 20),
    }
    threads: list[str] = []
    task_groups = LightGBMRanker._task_groups

    def recording(self: LightGBMRanker, *args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return task_groups(self, *args)

    monkeypatch.setattr(LightGBMRanker, "_task_groups", recording)
    alternative = FittedRanker(other.ranker, other.served)
    candidate = FittedRanker(fitted.ranker, fitted.served, alternatives={name: alternative})
    on_threads = {"candidate": candidate.evaluate(split, 20, partitions=InThreads(2))}
    batches = len(threads)
    on_threads["alternative"] = alternative.evaluate(split, 20, partitions=InThreads(2))
    assert batches >= 2 and len(set(threads)) == 2 and all(t.startswith("warmstart-part") for t in threads)
    assert len(threads) == batches  # the alternative's line built nothing: it read the candidate pass's scores
    for line, result in on_threads.items():
        assert result.recs.equals(alone[line].recs), line
        assert result.metrics["value"].to_numpy() == pytest.approx(alone[line].metrics["value"].to_numpy(), abs=1e-12)
    tail_calibrated(candidate, split, k=20, protocol="temporal")
    assert len(threads) == batches  # read back in turn: the batches on threads were the batches in turn


def test_kept_scores_are_keyed_by_a_digest_of_the_candidates_not_their_bytes() -> None:
    """Every batch of a split has the same candidate items: keyed by their bytes, 600 batches over 500k items kept
    2.4 GB of keys. Equal candidates in another array read the batch back; other candidates score afresh."""
    from training._fit import _ScoredOnce

    def scores(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.where((users[:, None] + items[None, :]) % 7 == 0, 1.0, -np.inf).astype(np.float32)

    calls: list[int] = []
    once = _ScoredOnce(lambda users, items: calls.append(1) or scores(users, items))
    items = np.arange(100_000)
    for start in range(0, 330, 33):
        once(np.arange(start, start + 33), items)
    assert len(calls) == 10
    assert sum(len(users) + len(digest) for users, digest in once._kept) <= 10 * (33 * 8 + 16)  # not 800 kB each
    # Each finite score kept as a float32 and two int32 positions (a line's kept scores stay for the evaluation).
    finite = sum(int(np.isfinite(scores(np.arange(s, s + 33), items)).sum()) for s in range(0, 330, 33))
    assert sum(array.nbytes for kept in once._kept.values() for array in kept) == 12 * finite
    np.testing.assert_array_equal(once(np.arange(33), items.copy()), scores(np.arange(33), items))
    assert len(calls) == 10  # read back
    np.testing.assert_array_equal(once(np.arange(33), items[:-1]), scores(np.arange(33), items[:-1]))
    assert len(calls) == 11  # other candidates: scored


def test_a_split_scored_on_other_workers_is_kept_here_and_ranked_as_here(
    window: object, fitted: FittedRanker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Dask cluster (flows.runners.OnCluster) the candidate's scores are computed on the workers, a part of each
    batch per worker, and kept here: the lists equal those of one process, and the tail-calibrated line scores
    nothing again. Here the "workers" are copies of the work made by pickling it, as the cluster ships it."""
    import cloudpickle

    split = window
    ranker, inputs = fitted.ranker, fitted.served.inputs
    afresh = evaluate(split, ranker.scorer(inputs, interaction_matrix(split.exclude, split.index)), k=20)
    here: list[int] = []
    score_task = ranker.score_task
    monkeypatch.setattr(ranker, "score_task", lambda *args: here.append(1) or score_task(*args))
    shipped: list[int] = []

    class Shipped(InTurn):
        ships = True

        def __call__(self, fn: Callable[[Any], Any], parts: Sequence[Any], /) -> list[Any]:
            shipped.append(len(parts))
            return super().__call__(cloudpickle.loads(cloudpickle.dumps(fn)), parts)

    candidate = FittedRanker(ranker, fitted.served)
    # One worker: ranked here, nothing shipped (the shared scorer holds a lock, which does not pickle).
    assert candidate.evaluate(split, 20, partitions=Shipped(workers=1)).recs.equals(afresh.recs) and not shipped
    here.clear()
    candidate = FittedRanker(ranker, fitted.served)
    on_workers = candidate.evaluate(split, 20, partitions=Shipped(workers=2))
    assert on_workers.recs.equals(afresh.recs)
    assert shipped == [2] and not here  # each batch scored in two parts elsewhere, nothing here
    tail_calibrated(candidate, split, k=20, protocol="temporal")
    assert candidate.evaluate(split, 20, partitions=Shipped(workers=2)).recs.equals(afresh.recs)
    assert shipped == [2] and not here  # read back from what was kept


def test_gate_evidence_bootstraps_the_metrics_the_gate_reads(window: object, fitted: FittedRanker) -> None:
    split = window
    result = fitted.evaluate(split, 20)
    # Each gate metric is the mean of its per-user values (users with a held-out positive in its segment).
    for text in ("overall/ndcg@20", "cold/recall@20", "tail/recall@20", f"{COLD_USER}/ndcg@20"):
        gate_metric = GateMetric.parse(text)
        values = gate_user_values(result.recs, split, gate_metric)
        assert values["value"].mean() == pytest.approx(result.value(gate_metric.metric, gate_metric.segment))
    # A split without user segments has no users in one: no values, not an error.
    no_segments = dataclasses.replace(split, user_segments=None)
    assert gate_user_values(result.recs, no_segments, GateMetric.parse(f"{COLD_USER}/ndcg@20")).is_empty()
    # The other timed choice stands in for the incumbent; recent popularity is the reference.
    other = fitted.alternatives["choice_recent28"]
    config = GateConfig()
    evidence = gate_evidence(fitted, Incumbent("v0", None, fitted=other), split, config, k=20)
    assert set(evidence) == {"incumbent", "reference"}
    assert set(evidence["incumbent"]) == {"overall/ndcg@20", "cold/recall@20"}
    reference = evaluate(split, RecentPopularityScorer().fit(split.train, split.index), k=20)
    for comparison, theirs in (("incumbent", other.evaluate(split, 20)), ("reference", reference)):
        low, high = evidence[comparison]["overall/ndcg@20"]
        assert low <= result.value("ndcg") - theirs.value("ndcg") <= high and low < high
    point_estimates_only = config.model_copy(update={"confidence": None})
    assert gate_evidence(fitted, Incumbent(None, None), split, point_estimates_only, k=20) == {}


def test_a_current_version_that_trained_on_the_window_is_not_re_scored_on_it(
    window: ProtocolSplit, fitted: FittedRanker, tmp_path: Path
) -> None:
    """A version refit on its whole log has seen the next run's held-out window: the gate re-scores its evaluated
    ranker (trained before that window) or, without one, compares the figures recorded for it."""
    cut = window.train[Columns.ts].max()
    version = tmp_path / "20000101T000000Z-refit"
    fitted.ranker.save(version)
    recorded = pl.DataFrame({"segment": ["overall"], "metric": ["ndcg"], "k": [20], "value": [0.5]})

    def report(data_end: object, evaluated_end: object | None) -> None:
        windows = {"data_window": {"start": "1997-09-20 00:00:00+00:00", "end": str(data_end)}}
        if evaluated_end is not None:
            windows["evaluated"] = {"train_window": {"start": "1997-09-20 00:00:00+00:00", "end": str(evaluated_end)}}
        (version / "report.json").write_text(json.dumps(windows))

    def incumbent() -> Incumbent:
        return incumbent_on_same_data(fitted, version, window, k=20, protocol="temporal", recorded=recorded)

    report(cut + timedelta(days=20), None)  # trained into the window, nothing else to re-score
    assert trained_through(version) == cut + timedelta(days=20)
    seen = incumbent()
    assert seen.metrics is recorded and seen.fitted is None and "inside this window" in (seen.note or "")

    fitted.ranker.save(version / EVALUATED)  # its evaluated ranker, trained before the window
    report(cut + timedelta(days=20), cut - timedelta(days=10))
    assert trained_through(version / EVALUATED) == cut - timedelta(days=10)
    rescored = incumbent()
    assert rescored.note is None and rescored.fitted is not None and rescored.metrics is not recorded

    report(cut - timedelta(days=1), None)  # a version saved before refits: trained before the window
    shutil.rmtree(version / EVALUATED)
    assert incumbent().fitted is not None
