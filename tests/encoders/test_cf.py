"""BPR-MF on a real CiteULike slice: it learns, it is reproducible, it round-trips, and it guards its inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalog import Columns, DataError, NotFittedError
from encoders import BPRMF, BPRConfig, CFEmbeddings
from encoders._cf import check_pairs, recall_at_k

# Small and quick (a few seconds on 2 cores), yet far from random on this slice.
CONFIG = BPRConfig(dim=32, epochs=30, lr=0.01, reg=1e-2, batch_size=1024, seed=7)


@pytest.fixture(scope="module")
def fitted(warm_slice: tuple[pl.DataFrame, pl.DataFrame]) -> BPRMF:
    return BPRMF(CONFIG).fit(warm_slice[0])


def _rows(embeddings: CFEmbeddings, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    pairs = check_pairs(frame, "frame")
    return embeddings.user_index(pairs[Columns.user]), embeddings.item_index(pairs[Columns.item])


def test_bpr_beats_random_scores_on_held_out_positives(
    fitted: BPRMF, warm_slice: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    train, held_out = warm_slice
    learned = fitted.embeddings
    rng = np.random.default_rng(0)
    random = dataclasses.replace(
        learned,
        user_vectors=rng.normal(size=learned.user_vectors.shape),
        item_vectors=rng.normal(size=learned.item_vectors.shape),
        item_bias=np.zeros(learned.item_ids.size),
    )
    truth, seen = _rows(learned, held_out), _rows(learned, train)
    bpr, chance = recall_at_k(learned, truth, seen, 20), recall_at_k(random, truth, seen, 20)
    # Chance is about 20 / n_items (~0.004 here); BPR on 300 users reaches several times that.
    assert chance < 0.02
    assert bpr > max(4 * chance, 0.04), (bpr, chance)


def test_same_seed_same_embeddings_whatever_the_row_order(warm_slice: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    config = CONFIG.model_copy(update={"epochs": 2})
    train = warm_slice[0]
    first = BPRMF(config).fit(train).embeddings
    again = BPRMF(config).fit(train.sample(fraction=1.0, shuffle=True, seed=1)).embeddings
    other_seed = BPRMF(config.model_copy(update={"seed": 8})).fit(train).embeddings
    for field in dataclasses.fields(CFEmbeddings):
        assert np.array_equal(getattr(first, field.name), getattr(again, field.name)), field.name
    assert not np.array_equal(first.user_vectors, other_seed.user_vectors)


def test_save_load_round_trip_gives_identical_scores(fitted: BPRMF, tmp_path: Path) -> None:
    fitted.save(tmp_path / "bpr")
    loaded = BPRMF.load(tmp_path / "bpr")
    assert loaded.is_fitted
    assert loaded.config == fitted.config
    assert loaded.history == fitted.history
    assert np.array_equal(loaded.score(), fitted.score())
    assert np.array_equal(loaded.embeddings.item_ids, fitted.embeddings.item_ids)
    assert sorted(p.name for p in (tmp_path / "bpr").iterdir()) == ["bprmf.json", "bprmf.npz"]  # no temp files


def test_load_refuses_arrays_that_do_not_match_the_metadata(fitted: BPRMF, tmp_path: Path) -> None:
    fitted.save(tmp_path / "a")
    BPRMF(CONFIG.model_copy(update={"epochs": 1})).fit(
        pl.DataFrame({Columns.user: ["u", "u", "v"], Columns.item: ["a", "b", "a"]})
    ).save(tmp_path / "b")
    (tmp_path / "a" / "bprmf.npz").write_bytes((tmp_path / "b" / "bprmf.npz").read_bytes())
    with pytest.raises(DataError, match="does not match the digest"):
        BPRMF.load(tmp_path / "a")
    with pytest.raises(DataError, match=r"no saved BPRMF"):
        BPRMF.load(tmp_path / "missing")


def test_use_before_fit_raises_not_fitted(tmp_path: Path) -> None:
    model = BPRMF(CONFIG)
    assert not model.is_fitted
    for use in (lambda: model.embeddings, lambda: model.score(), lambda: model.save(tmp_path)):
        with pytest.raises(NotFittedError, match="call fit"):
            use()


def test_early_stopping_keeps_the_best_validation_epoch(warm_slice: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    train, held_out = warm_slice
    model = BPRMF(CONFIG.model_copy(update={"epochs": 10, "patience": 2})).fit(train, held_out)
    recalls = [record["val_recall@20"] for record in model.history]
    assert model.summary["best_val_recall@20"] == max(recalls)
    assert model.summary["best_epoch"] == 1 + int(np.argmax(recalls))
    embeddings = model.embeddings
    assert recall_at_k(embeddings, _rows(embeddings, held_out), _rows(embeddings, train), 20) == pytest.approx(
        max(recalls)
    )


def test_recall_at_k_on_a_hand_computed_case() -> None:
    # One user, items a..d scored 4, 3, 2, 1; truth {c, d}. Excluding a: top 2 = {b, c} -> recall 1/2;
    # excluding nothing: top 2 = {a, b} -> recall 0.
    embeddings = CFEmbeddings(
        user_ids=np.array(["u"]),
        item_ids=np.array(["a", "b", "c", "d"]),
        user_vectors=np.ones((1, 1)),
        item_vectors=np.array([[4.0], [3.0], [2.0], [1.0]]),
        item_bias=np.zeros(4),
    )
    truth = (np.array([0, 0]), np.array([2, 3]))
    assert recall_at_k(embeddings, truth, (np.array([0]), np.array([0])), 2) == 0.5
    assert recall_at_k(embeddings, truth, (np.array([], dtype=int), np.array([], dtype=int)), 2) == 0.0


def test_recall_at_k_over_a_sample_of_users_is_their_mean(
    fitted: BPRMF, warm_slice: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    train, held_out = warm_slice
    embeddings = fitted.embeddings
    truth, seen = _rows(embeddings, held_out), _rows(embeddings, train)
    users = np.unique(truth[0])
    assert recall_at_k(embeddings, truth, seen, 20, most_users=users.size) == recall_at_k(embeddings, truth, seen, 20)

    sampled = recall_at_k(embeddings, truth, seen, 20, most_users=10, seed=3)
    chosen = np.sort(np.random.default_rng(3).choice(users, 10, replace=False))
    mine = np.isin(truth[0], chosen)
    assert sampled == pytest.approx(recall_at_k(embeddings, (truth[0][mine], truth[1][mine]), seen, 20))
    assert sampled != recall_at_k(embeddings, truth, seen, 20, most_users=10, seed=4)


def test_score_is_dot_product_plus_item_bias(fitted: BPRMF) -> None:
    e = fitted.embeddings
    users, items = np.array([0, 5, 9]), np.array([3, 1])
    expected = e.user_vectors[users] @ e.item_vectors[items].T + e.item_bias[items]
    assert np.allclose(fitted.score(users, items), expected)
    assert fitted.score().shape == (e.user_ids.size, e.item_ids.size)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pl.DataFrame({Columns.user: ["1"]}), "missing column"),
        (pl.DataFrame({Columns.user: [1], Columns.item: ["a"]}), "expected String"),
        (pl.DataFrame({Columns.user: ["1", None], Columns.item: ["a", "b"]}), "null id"),
        (pl.DataFrame({Columns.user: ["1", "2"], Columns.item: ["a", "a"]}), "at least two items"),
    ],
)
def test_bad_interactions_are_clear_data_errors(frame: pl.DataFrame, message: str) -> None:
    with pytest.raises(DataError, match=message):
        BPRMF(CONFIG).fit(frame)


# numpy's fixed-width strings drop trailing NULs, so ids never contain one (nor do real ids).
IDS = st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=8)


@given(st.sets(IDS, min_size=1, max_size=30), st.data())
def test_index_lookup_returns_each_ids_row(ids: set[str], data: st.DataObject) -> None:
    sorted_ids = np.array(sorted(ids), dtype=str)
    n = sorted_ids.size
    embeddings = CFEmbeddings(
        user_ids=sorted_ids,
        item_ids=sorted_ids,
        user_vectors=np.zeros((n, 2)),
        item_vectors=np.zeros((n, 2)),
        item_bias=np.zeros(n),
    )
    query = data.draw(st.lists(st.sampled_from(sorted(ids)), max_size=20))
    rows = embeddings.item_index(query)
    assert [sorted_ids[row] for row in rows] == query
    unknown = data.draw(IDS.filter(lambda text: text not in ids))
    with pytest.raises(DataError, match="unknown"):
        embeddings.user_index([*query, unknown])


def test_embeddings_are_read_only_and_checked() -> None:
    embeddings = CFEmbeddings(
        user_ids=np.array(["u"]),
        item_ids=np.array(["a", "b"]),
        user_vectors=np.ones((1, 2)),
        item_vectors=np.ones((2, 2)),
        item_bias=np.zeros(2),
    )
    with pytest.raises(ValueError, match="read-only"):
        embeddings.item_vectors[0, 0] = 5.0
    with pytest.raises(DataError, match="unique and sorted"):
        dataclasses.replace(embeddings, item_ids=np.array(["b", "a"]))
    replaced = embeddings.with_items(["z", "c"], np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0.5, 0.25]))
    assert replaced.item_ids.tolist() == ["c", "z"]
    assert replaced.item_bias.tolist() == [0.25, 0.5]
