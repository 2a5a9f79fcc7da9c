"""implicit's ALS and BPR behind BPRMF's interface, on a real CiteULike slice: they learn, equal seeds give equal
vectors, a refit without validation for the chosen iterations gives the validated fit's vectors, they round-trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from catalog import Columns, DataError
from encoders import BPRMF, BPRConfig, CFEmbeddings, ImplicitConfig, ImplicitMF, cf_model
from encoders._cf import check_pairs, recall_at_k

# Small and quick (well under a second each on 2 cores).
ALS = ImplicitConfig(model="als", dim=32, reg=0.1, alpha=10.0, epochs=8, eval_every=2, patience=2, seed=3)
BPR = ImplicitConfig(model="bpr", dim=32, lr=0.05, epochs=40, eval_every=10, patience=2, seed=3)


def _rows(embeddings: CFEmbeddings, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    pairs = check_pairs(frame, "frame")
    return embeddings.user_index(pairs[Columns.user]), embeddings.item_index(pairs[Columns.item])


def _same(first: CFEmbeddings, second: CFEmbeddings) -> bool:
    return all(
        np.array_equal(getattr(first, field.name), getattr(second, field.name))
        for field in dataclasses.fields(CFEmbeddings)
    )


@pytest.mark.parametrize("config", [ALS, BPR], ids=["als", "bpr"])
def test_it_learns_and_a_refit_for_the_chosen_iterations_gives_the_same_vectors(
    config: ImplicitConfig, warm_slice: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    train, held_out = warm_slice
    validated = ImplicitMF(config).fit(train, held_out)
    summary = validated.summary
    assert summary["best_epoch"] % config.eval_every == 0 and summary["epochs_run"] <= config.epochs
    recall = recall_at_k(
        validated.embeddings, _rows(validated.embeddings, held_out), _rows(validated.embeddings, train), 20
    )
    assert recall == pytest.approx(summary["best_val_recall@20"])
    assert recall > 0.04  # chance is about 20 / n_items (~0.004 here)
    # What served_inputs and refit_ranker do: the same config, the chosen iterations, no validation.
    refit = ImplicitMF(config.model_copy(update={"epochs": summary["best_epoch"]})).fit(train)
    assert refit.summary["epochs_run"] == summary["best_epoch"] and refit.summary["best_val_recall@20"] is None
    assert _same(refit.embeddings, validated.embeddings)


@pytest.mark.parametrize("config", [ALS, ALS.model_copy(update={"threads": 2}), BPR], ids=["als", "als-2", "bpr"])
def test_same_seed_same_vectors_whatever_the_row_order(
    config: ImplicitConfig, warm_slice: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    train = warm_slice[0]
    first = ImplicitMF(config).fit(train).embeddings
    again = ImplicitMF(config).fit(train.sample(fraction=1.0, shuffle=True, seed=1)).embeddings
    other = ImplicitMF(config.model_copy(update={"seed": 4})).fit(train).embeddings
    assert _same(first, again)
    assert not np.array_equal(first.item_vectors, other.item_vectors)


def test_als_gives_the_same_vectors_on_one_thread_as_on_every_core(
    warm_slice: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    # The product trains ALS on every core (training.ModelSettings): each user's and item's solve is its own.
    train = warm_slice[0]
    one = ImplicitMF(ALS).fit(train).embeddings
    assert _same(ImplicitMF(ALS.model_copy(update={"threads": 0})).fit(train).embeddings, one)
    assert _same(ImplicitMF(ALS.model_copy(update={"threads": 2})).fit(train).embeddings, one)


def test_save_load_round_trip_and_the_model_kinds(
    warm_slice: tuple[pl.DataFrame, pl.DataFrame], tmp_path: Path
) -> None:
    model = ImplicitMF(BPR.model_copy(update={"epochs": 10})).fit(warm_slice[0])
    assert model.embeddings.item_bias.any()  # BPR's bias column comes out as the item bias
    model.save(tmp_path / "cf")
    loaded = ImplicitMF.load(tmp_path / "cf")
    assert _same(loaded.embeddings, model.embeddings)
    assert loaded.config == model.config and loaded.summary == model.summary and loaded.history == model.history
    with pytest.raises(DataError, match="no saved BPRMF"):
        BPRMF.load(tmp_path / "cf")
    assert isinstance(cf_model(ALS), ImplicitMF) and isinstance(cf_model(BPRConfig()), BPRMF)
