"""Content mapper: on real CiteULike titles (MiniLM) it learns CF vectors and generalises to unseen items; it is
seeded, round-trips, and guards its inputs. Stand-in users: hand-computed means and a fold-in that ranks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from catalog import Columns, ConfigError, DataError, Dataset, NotFittedError
from encoders import (
    BPRMF,
    BPRConfig,
    CFEmbeddings,
    ContentMapper,
    EmbeddingCache,
    MapperConfig,
    encode_texts,
    item_text,
    stand_in_users,
)
from encoders._cf import check_pairs, recall_at_k

N_USERS = 1000
MIN_INTERACTIONS = 3  # items with fewer have CF vectors that are mostly noise on a 1,000-user slice
RIDGE = MapperConfig(kind="ridge", alpha=1.0)
MLP = MapperConfig(kind="mlp", epochs=20, hidden=256, distill_weight=0.0, seed=1)
DISTILL = MLP.model_copy(update={"distill_weight": 10.0})
NONE = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class WarmItems:
    """A BPR teacher on a real slice, its well-observed items' titles (MiniLM) and targets, split 80/20."""

    cf: CFEmbeddings
    train_pairs: pl.DataFrame
    item_ids: np.ndarray
    features: np.ndarray
    vectors: np.ndarray
    bias: np.ndarray
    fit_rows: np.ndarray
    held_rows: np.ndarray
    mappers: dict[str, ContentMapper] = field(default_factory=dict)

    def positives(self) -> tuple[np.ndarray, np.ndarray]:
        """(user row, row among fit items) of the teacher's training pairs on the fit items."""
        position = pl.DataFrame({Columns.item: self.item_ids[self.fit_rows], "row": np.arange(self.fit_rows.size)})
        pairs = self.train_pairs.join(position, on=Columns.item)
        return self.cf.user_index(pairs[Columns.user]), pairs["row"].to_numpy()

    def fit(self, config: MapperConfig) -> ContentMapper:
        """A mapper fitted on the fit items, made once per configuration (tests share it read-only)."""
        key = config.model_dump_json()
        if key not in self.mappers:
            rows = self.fit_rows
            self.mappers[key] = ContentMapper(config).fit(
                self.features[rows],
                self.vectors[rows],
                self.bias[rows],
                self.cf.user_vectors,
                positives=self.positives(),
            )
        return self.mappers[key]

    def held_out_recall(self, vectors: np.ndarray, bias: np.ndarray) -> float:
        """Recall@10 of the held-out items' own (teacher-training) users, ranking only the held-out items."""
        embeddings = self.cf.with_items(self.item_ids[self.held_rows], vectors, bias)
        pairs = self.train_pairs.filter(pl.col(Columns.item).is_in(embeddings.item_ids.tolist()))
        truth = (embeddings.user_index(pairs[Columns.user]), embeddings.item_index(pairs[Columns.item]))
        return recall_at_k(embeddings, truth, NONE, 10)


@pytest.fixture(scope="module")
def warm(citeulike: Dataset, cache_dir: Path) -> WarmItems:
    users = citeulike.splits["warm_emb"][Columns.user].unique().sort().sample(N_USERS, seed=3)
    train = check_pairs(citeulike.splits["warm_emb"].filter(pl.col(Columns.user).is_in(users.implode())), "train")
    cf = BPRMF(BPRConfig(dim=32, epochs=40, lr=0.01, reg=0.01, batch_size=2048, seed=7)).fit(train).embeddings
    counts = train.group_by(Columns.item).len().filter(pl.col("len") >= MIN_INTERACTIONS)
    items = citeulike.items.join(counts, on=Columns.item).sort(Columns.item)
    item_ids = items[Columns.item].to_numpy().astype(str)
    features = encode_texts(
        item_text(items).to_list(), cache=EmbeddingCache(cache_dir / "embeddings"), show_progress=False
    )
    rows = cf.item_index(item_ids)
    order = np.random.default_rng(0).permutation(item_ids.size)
    cut = int(0.8 * item_ids.size)
    return WarmItems(
        cf, train, item_ids, features, cf.item_vectors[rows], cf.item_bias[rows], np.sort(order[:cut]), order[cut:]
    )


def _targets(vectors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return np.hstack([vectors, bias[:, None]])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())


@pytest.mark.slow
@pytest.mark.parametrize("config", [RIDGE, MLP], ids=["ridge", "mlp"])
def test_mapper_reproduces_training_targets_better_than_the_mean(warm: WarmItems, config: MapperConfig) -> None:
    mapper = warm.fit(config)
    target = _targets(warm.vectors[warm.fit_rows], warm.bias[warm.fit_rows])
    mapped = _targets(*mapper.transform(warm.features[warm.fit_rows]))
    mean_error = float(((target - target.mean(axis=0)) ** 2).mean())
    assert float(((mapped - target) ** 2).mean()) < 0.8 * mean_error


@pytest.mark.slow
@pytest.mark.parametrize("config", [RIDGE, MLP, DISTILL], ids=["ridge", "mlp", "mlp-distill"])
def test_mapper_generalises_to_held_out_items(warm: WarmItems, config: MapperConfig) -> None:
    mapper = warm.fit(config)
    held = warm.held_rows
    vectors, bias = mapper.transform(warm.features[held])
    mean_vector = np.repeat(warm.vectors[warm.fit_rows].mean(axis=0, keepdims=True), held.size, axis=0)
    # Measured here: cosine ~0.45 against ~0.04 for the mean vector; recall ~0.21 against ~0.02.
    assert _cosine(vectors, warm.vectors[held]) > _cosine(mean_vector, warm.vectors[held]) + 0.25
    mean_recall = warm.held_out_recall(mean_vector, np.full(held.size, warm.bias[warm.fit_rows].mean()))
    recall = warm.held_out_recall(vectors, bias)
    assert recall > max(3 * mean_recall, 0.1), (recall, mean_recall)


# --- protocol and guards, on small synthetic arrays -----------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, vectors, bias, users): targets are a noisy linear function of the features."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 16)).astype(np.float32)
    mixing = rng.normal(size=(16, 9)).astype(np.float32)
    targets = features @ mixing + 0.1 * rng.normal(size=(200, 9)).astype(np.float32)
    return features, targets[:, :8], targets[:, 8], rng.normal(size=(50, 8)).astype(np.float32)


SMALL = {"ridge": RIDGE, "mlp-distill": DISTILL.model_copy(update={"epochs": 3, "hidden": 32, "batch_size": 64})}


@pytest.mark.parametrize("name", SMALL)
def test_save_load_round_trip_gives_identical_stand_ins(synthetic: tuple, name: str, tmp_path: Path) -> None:
    features, vectors, bias, users = synthetic
    mapper = ContentMapper(SMALL[name]).fit(features, vectors, bias, users)
    mapper.save(tmp_path / name)
    loaded = ContentMapper.load(tmp_path / name)
    assert loaded.is_fitted and loaded.config == mapper.config and loaded.history == mapper.history
    for got, expected in zip(loaded.transform(features), mapper.transform(features), strict=True):
        assert np.array_equal(got, expected)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["content_mapper.json", "content_mapper.npz"]


def test_same_seed_same_mapper_and_the_global_rng_is_untouched(synthetic: tuple) -> None:
    features, vectors, bias, users = synthetic
    config = SMALL["mlp-distill"]
    before = torch.random.get_rng_state()
    first = ContentMapper(config).fit(features, vectors, bias, users).transform(features)
    assert torch.equal(torch.random.get_rng_state(), before)
    again = ContentMapper(config).fit(features, vectors, bias, users).transform(features)
    other = ContentMapper(config.model_copy(update={"seed": 2})).fit(features, vectors, bias, users).transform(features)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_use_before_fit_raises_not_fitted(tmp_path: Path) -> None:
    mapper = ContentMapper(RIDGE)
    assert not mapper.is_fitted
    with pytest.raises(NotFittedError, match="call fit"):
        mapper.transform(np.zeros((1, 16)))
    with pytest.raises(NotFittedError, match="call fit"):
        mapper.save(tmp_path)


def test_validation_keeps_the_best_epoch_and_stops_after_patience(synthetic: tuple) -> None:
    features, vectors, bias, _ = synthetic
    scores = iter([0.1, 0.3, 0.2, 0.25, 0.9])
    seen: list[np.ndarray] = []

    def validation(transform: object) -> float:
        seen.append(transform(features)[0])  # type: ignore[operator]
        return next(scores)

    config = MLP.model_copy(update={"epochs": 10, "eval_every": 1, "patience": 2, "hidden": 16})
    mapper = ContentMapper(config).fit(features, vectors, bias, validation=validation)
    assert mapper.best_epoch == 2
    assert len(mapper.history) == 4  # epochs 3 and 4 do not beat epoch 2; patience 2 stops there
    assert np.array_equal(mapper.transform(features)[0], seen[1])


def test_mapper_guards_its_inputs(synthetic: tuple) -> None:
    features, vectors, bias, _ = synthetic
    with pytest.raises(ConfigError, match="user vectors"):
        ContentMapper(DISTILL).fit(features, vectors, bias)
    with pytest.raises(DataError, match="item_bias"):
        ContentMapper(RIDGE).fit(features, vectors, bias[:-1])
    nan_features = features.copy()
    nan_features[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        ContentMapper(RIDGE).fit(nan_features, vectors, bias)
    fitted = ContentMapper(RIDGE).fit(features, vectors, bias)
    with pytest.raises(DataError, match="features has shape"):
        fitted.transform(np.zeros((2, 5)))


def test_stand_in_items_replaces_the_item_side(synthetic: tuple) -> None:
    features, vectors, bias, users = synthetic
    cf = CFEmbeddings(np.array(["u1", "u2"]), np.array(["a"]), users[:2], vectors[:1], bias[:1])
    mapper = ContentMapper(RIDGE).fit(features, vectors, bias)
    stand_ins = mapper.stand_in_items(cf, ["c2", "c1"], features[:2])
    assert stand_ins.item_ids.tolist() == ["c1", "c2"]
    expected_vectors, expected_bias = mapper.transform(features[[1, 0]])
    assert np.allclose(stand_ins.item_vectors, expected_vectors) and np.allclose(stand_ins.item_bias, expected_bias)
    assert np.array_equal(stand_ins.user_vectors, cf.user_vectors)


# --- stand-in users -------------------------------------------------------------------------------------------------


def _items() -> CFEmbeddings:
    return CFEmbeddings(
        user_ids=np.array(["x"]),
        item_ids=np.array(["a", "b", "c", "d"]),
        user_vectors=np.zeros((1, 2)),
        item_vectors=np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]),
        item_bias=np.zeros(4),
    )


def test_mean_stand_in_users_on_a_hand_computed_case() -> None:
    interactions = pl.DataFrame(
        {Columns.user: ["u", "u", "v", "v", "w"], Columns.item: ["a", "b", "c", "zz", "zz"]}
    )  # zz is unknown: ignored, and w, left with nothing, gets no vector
    user_ids, vectors = stand_in_users(interactions, _items(), method="mean")
    assert user_ids.tolist() == ["u", "v"]
    assert np.allclose(vectors, [[0.5, 0.5], [-1.0, 0.0]])


def test_fold_in_stand_in_users_rank_their_own_items_first() -> None:
    interactions = pl.DataFrame({Columns.user: ["u", "v"], Columns.item: ["a", "d"]})
    items = _items()
    user_ids, vectors = stand_in_users(interactions, items, method="fold_in", steps=50, seed=0)
    scores = items.with_users(user_ids, vectors).score()
    assert scores.argmax(axis=1).tolist() == [0, 3]  # u -> a, v -> d
    with pytest.raises(ConfigError, match="unknown stand-in method"):
        stand_in_users(interactions, items, method="median")  # type: ignore[arg-type]


def test_the_ridge_summed_over_row_blocks_equals_its_closed_form() -> None:
    """The ridge sums its float64 products over blocks of rows (a centred float64 copy of every row was 2 GB at 500k
    items): the weights are the closed form's over all rows at once."""
    rng = np.random.default_rng(4)
    x, vectors, bias = rng.normal(size=(1000, 12)).astype(np.float32), rng.normal(size=(1000, 5)), rng.normal(size=1000)
    mapper = ContentMapper(RIDGE)
    y = np.c_[vectors, bias].astype(np.float32)
    blocked = mapper._fit_ridge(x, y, rows=77)
    xc, yc = x - x.mean(axis=0, dtype=np.float64), y - y.mean(axis=0, dtype=np.float64)
    weights = np.linalg.solve(xc.T @ xc + RIDGE.alpha * np.eye(12), xc.T @ yc)
    np.testing.assert_allclose(blocked["weights"], weights.astype(np.float32), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(blocked["weights"], mapper._fit_ridge(x, y)["weights"], rtol=1e-6, atol=1e-7)
