"""Fine-tuning the judge with the real SmolLM2-135M on a tiny real CiteULike slice (a handful of pairs, a few steps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from augment import TITLES, GenerationCache, LocalBackend, judge_pairs, judge_prompts
from augment.experimental import (
    LABEL,
    JudgeTuning,
    finetune_judge,
    judge_training_pairs,
    later_pairs,
    tuned_judge,
)
from catalog import Columns, DataError, Dataset

USERS = 4  # real CiteULike users, each with one real later pair (warm_val) and one sampled unreal pair


@pytest.fixture(scope="session")
def judge_slice(citeulike: Dataset) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(pairs with labels, items, histories): each user's first warm_val pair (1) and another user's (0)."""
    warm, later = citeulike.splits["warm_emb"], citeulike.splits["warm_val"]
    users = later[Columns.user].unique().sort().head(USERS).to_list()
    positives = later.filter(pl.col(Columns.user).is_in(users)).group_by(Columns.user).first().sort(Columns.user)
    rotated = positives[Columns.item].shift(1, fill_value=positives[Columns.item][-1])  # another user's item
    pairs = pl.concat(
        [
            positives.with_columns(pl.lit(1, pl.Int8).alias(LABEL)),
            positives.with_columns(rotated.alias(Columns.item), pl.lit(0, pl.Int8).alias(LABEL)),
        ]
    )
    titles = citeulike.items.select(Columns.item, Columns.title)
    histories = (
        warm.filter(pl.col(Columns.user).is_in(users))
        .join(titles, on=Columns.item)
        .group_by(Columns.user)
        .agg(pl.col(Columns.title).head(5).alias(TITLES))
    )
    items = titles.filter(pl.col(Columns.item).is_in(pairs[Columns.item].to_list()))
    return pairs, items, histories


def separation(backend: LocalBackend, pairs: pl.DataFrame, items: pl.DataFrame, histories: pl.DataFrame) -> float:
    """Mean P(yes) of the real pairs minus that of the unreal ones, in `judge_prompts` order."""
    ordered = pairs.sort(Columns.user, Columns.item)
    scores = backend.yes_probability(judge_prompts(ordered, items, histories))
    labels = ordered[LABEL].to_numpy()
    return float(scores[labels == 1].mean() - scores[labels == 0].mean())


def test_answer_states_give_the_judges_probability(
    local_llm: LocalBackend, judge_slice: tuple[pl.DataFrame, ...]
) -> None:
    prompts = judge_prompts(*judge_slice)
    margins, states = local_llm.answer_states(prompts)
    assert states.shape == (len(prompts), local_llm.model.config.hidden_size)
    np.testing.assert_allclose(1 / (1 + np.exp(-margins)), local_llm.yes_probability(prompts), atol=1e-5)


@pytest.fixture(scope="session")
def tuned_head(
    local_llm: LocalBackend, judge_slice: tuple[pl.DataFrame, ...], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, JudgeTuning]:
    out = tmp_path_factory.mktemp("tuned")
    config = JudgeTuning(method="head", steps=100, lr=0.05, weight_decay=0.0, max_seconds=60)
    return finetune_judge(local_llm, *judge_slice, config, out_dir=out, show_progress=False), out, config


def test_head_tuning_lowers_the_loss_and_moves_p_yes_toward_the_labels(
    local_llm: LocalBackend, judge_slice: tuple[pl.DataFrame, ...], tuned_head: tuple[Path, Path, JudgeTuning]
) -> None:
    path, _, _ = tuned_head
    metadata = pl.read_json(path / "judge_tuning.json").row(0, named=True)
    assert metadata["pairs"] == 2 * USERS and metadata["positives"] == USERS and metadata["pairs_used"] == 2 * USERS
    assert metadata["loss"][-1] < metadata["loss"][0]
    tuned = LocalBackend(path, batch_size=8, threads=1)
    assert separation(tuned, *judge_slice) > separation(local_llm, *judge_slice) + 0.05


def test_a_rerun_with_the_same_inputs_reuses_the_directory(
    local_llm: LocalBackend, judge_slice: tuple[pl.DataFrame, ...], tuned_head: tuple[Path, Path, JudgeTuning]
) -> None:
    path, out, config = tuned_head
    written = (path / "judge_tuning.json").stat().st_mtime_ns
    assert finetune_judge(local_llm, *judge_slice, config, out_dir=out, show_progress=False) == path
    assert (path / "judge_tuning.json").stat().st_mtime_ns == written
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary directory left


def test_the_tuned_judge_runs_under_its_own_model_name(
    local_llm: LocalBackend,
    judge_slice: tuple[pl.DataFrame, ...],
    tuned_head: tuple[Path, Path, JudgeTuning],
    tmp_path: Path,
) -> None:
    pairs, items, histories = judge_slice
    tuned = LocalBackend(tuned_head[0], batch_size=8, threads=1)
    assert tuned.model_name.startswith(f"{local_llm.model_name}-judge-head-")
    cache = GenerationCache(tmp_path)
    base_scores, _ = judge_pairs(pairs, items, histories, local_llm, cache, show_progress=False)
    tuned_scores, stats = judge_pairs(pairs, items, histories, tuned, cache, show_progress=False)
    assert stats.cached == 0 and stats.generated == pairs.height  # the base model's answers are not reused
    assert len(list(tmp_path.iterdir())) == 2  # one cache folder per model
    assert not np.allclose(base_scores[Columns.score].to_numpy(), tuned_scores[Columns.score].to_numpy())


def test_lora_steps_lower_the_loss_and_merge_into_a_plain_checkpoint(
    local_llm: LocalBackend, judge_slice: tuple[pl.DataFrame, ...], tmp_path: Path
) -> None:
    pairs, items, histories = judge_slice
    small = pairs.filter(pl.col(Columns.user).is_in(pairs[Columns.user].unique().sort().head(2).to_list()))
    config = JudgeTuning(method="lora", steps=3, batch_size=small.height, lr=2e-3, max_seconds=90)
    path = finetune_judge(local_llm, small, items, histories, config, out_dir=tmp_path, show_progress=False)
    metadata = pl.read_json(path / "judge_tuning.json").row(0, named=True)
    assert metadata["steps"] >= 2 and metadata["loss"][-1] < metadata["loss"][0]  # the same full batch each step
    assert not list(path.glob("adapter_*"))  # merged: LocalBackend needs no peft
    tuned = LocalBackend(path, batch_size=8, threads=1)
    assert separation(tuned, small, items, histories) > separation(local_llm, small, items, histories)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda pairs: pairs.clear(), "no training pairs"),
        (lambda pairs: pairs.with_columns(pl.lit(2, pl.Int8).alias(LABEL)), "labels must be 0 or 1"),
        (lambda pairs: pairs.with_columns(pl.lit(1, pl.Int8).alias(LABEL)), "both real and unreal"),
        (lambda pairs: pairs.with_columns(pl.lit("no-such-item").alias(Columns.item)), "items not in `items`"),
        (lambda pairs: pairs.drop(LABEL), "need a 'label' column"),
    ],
)
def test_bad_training_pairs_are_refused_with_the_reason(
    local_llm: LocalBackend, judge_slice: tuple[pl.DataFrame, ...], tmp_path: Path, change: object, message: str
) -> None:
    pairs, items, histories = judge_slice
    with pytest.raises(DataError, match=message):
        finetune_judge(local_llm, change(pairs), items, histories, out_dir=tmp_path)  # type: ignore[operator]
    assert not any(tmp_path.iterdir())


def test_training_pairs_take_hard_negatives_from_the_candidates_and_never_a_known_pair() -> None:
    positives = pl.DataFrame({Columns.user: ["a", "b"], Columns.item: ["x", "y"]})
    candidates = pl.DataFrame(
        {
            Columns.item: ["x", "x", "x", "y"],
            Columns.user: ["a", "c", "d", "e"],
            Columns.rank: [1, 2, 3, 1],
        }
    )
    known = pl.DataFrame({Columns.user: ["d"], Columns.item: ["x"]})  # d saw x: never a negative of x
    pairs = judge_training_pairs(
        positives, ["a", "b", "c", "d", "e", "f"], known=known, candidates=candidates, negatives_per_positive=2
    )
    negatives = pairs.filter(pl.col(LABEL) == 0)
    assert pairs.filter(pl.col(LABEL) == 1).rows() == [("a", "x", 1), ("b", "y", 1)]
    x_negatives = set(negatives.filter(pl.col(Columns.item) == "x")[Columns.user])
    y_negatives = set(negatives.filter(pl.col(Columns.item) == "y")[Columns.user])
    assert "c" in x_negatives and not x_negatives & {"a", "d"} and len(x_negatives) == 2  # c, then uniform
    assert "e" in y_negatives and "b" not in y_negatives and len(y_negatives) == 2


def test_later_pairs_hold_out_each_users_latest_interaction() -> None:
    log = pl.DataFrame(
        {Columns.user: ["a", "a", "a", "b", "b"], Columns.item: ["1", "2", "3", "1", "2"], Columns.ts: [1, 3, 2, 1, 2]}
    )
    assert later_pairs(log, min_history=2).rows() == [("a", "2")]  # b keeps one earlier interaction only
    with pytest.raises(DataError, match="'ts' column"):
        later_pairs(log.drop(Columns.ts))


def test_tuned_judge_trains_from_warm_interactions_then_reuses_the_model(
    local_llm: LocalBackend, citeulike: Dataset, judge_slice: tuple[pl.DataFrame, ...], tmp_path: Path
) -> None:
    pairs, _, histories = judge_slice
    users = pairs[Columns.user].unique().to_list()
    interactions = citeulike.splits["warm_emb"].filter(pl.col(Columns.user).is_in(users))
    later = pairs.filter(pl.col(LABEL) == 1).select(Columns.user, Columns.item)
    items = citeulike.items.select(Columns.item, Columns.title)
    vectors = np.random.default_rng(0).normal(size=(items.height, 8))  # stand-in text vectors (uniform negatives)
    config = JudgeTuning(steps=20, negatives_per_positive=1, max_seconds=60)
    options = {"item_vectors": vectors, "out_dir": tmp_path, "later": later, "config": config, "show_progress": False}
    tuned = tuned_judge(local_llm, interactions, items, histories, **options)
    assert tuned.model_name.startswith(f"{local_llm.model_name}-judge-head-")
    assert tuned_judge(local_llm, interactions, items, histories, **options).model_dir == tuned.model_dir
