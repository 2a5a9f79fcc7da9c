"""Glue of encode -> retrain -> evaluate: builds the ranker's inputs from a protocol split and fits the models.

Only the entry layer composes stages; every stage call here takes explicit arrays and parameters.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from catalog import (
    Columns,
    ConfigError,
    DataError,
    Dataset,
    check_references,
    conform_interactions,
    conform_items,
    conform_users,
    read_table,
)
from encoders import (
    BPRMF,
    BPRConfig,
    ContentMapper,
    EmbeddingCache,
    MapperConfig,
    WarmingConfig,
    encode_texts,
    item_text,
    simulated_interactions,
    warm_items,
)
from ranker.base import RankerBase
from ranker.baselines import tfidf_item_vectors
from ranker.deepfm import DeepFMConfig
from ranker.evaluate import (
    COLD_ITEM,
    HYBRID,
    TEMPORAL,
    WARM,
    EvalIndex,
    EvalResult,
    ProtocolSplit,
    cold_item_split,
    evaluate,
    frames_split,
    hold_out_labels,
    hybrid_split,
    interaction_matrix,
    split_validation,
    temporal_split,
    warm_split,
)
from ranker.features import RankerInputs, RankingTask
from ranker.lightgbm_ranker import LightGBMRanker, LightGBMRankerConfig
from ranker.registry import ranker_class
from ranker.temporal import TimeFeatures, time_features


@dataclass(frozen=True, eq=False)
class Warmed:
    """What synthetic interactions did to one split's stand-ins (flows.pipeline.warmed_standins)."""

    standins: np.ndarray  # every item's stand-in after warming
    content: np.ndarray  # the stand-ins before: content alone
    items: np.ndarray  # mask of the items without history that synthetic interactions warmed
    judged: np.ndarray  # mask of those warmed from given (e.g. the judge's) interactions, not the simulator's
    synthetic: sp.csr_array  # (items x users) weights of the interactions that warmed items without history
    report: dict[str, Any]
    config: WarmingConfig


@dataclass
class EncodedSplit:
    """The ranker's inputs for one split, and what producing them measured."""

    inputs: RankerInputs
    report: dict[str, Any] = field(default_factory=dict)
    # What synthetic interactions warmed (serving's source, the line without augmentation); None without them.
    warming: Warmed | None = None

    def without_warming(self) -> EncodedSplit:
        """The same inputs serving the content stand-ins (itself when nothing was warmed)."""
        if self.warming is None:
            return self
        return EncodedSplit(replace(self.inputs, item_standin=self.warming.content), self.report)


def _aligned(ids: np.ndarray, vectors: np.ndarray, wanted: pl.Series, width: int) -> np.ndarray:
    """Rows of `vectors` (keyed by sorted `ids`) in the order of `wanted`; zero rows for ids it lacks."""
    out = np.zeros((wanted.len(), width), dtype=np.float32)
    if ids.size == 0:
        return out
    names = wanted.to_numpy().astype(str)
    positions = np.minimum(np.searchsorted(ids, names), ids.size - 1)
    found = ids[positions] == names
    out[found] = vectors[positions[found]]
    return out


def out_of_fold_standins(
    text: np.ndarray, targets: np.ndarray, warm: np.ndarray, config: MapperConfig, folds: int, seed: int
) -> np.ndarray:
    """Stand-ins for every item: cold items from a mapper fit on all warm items, warm items out-of-fold."""
    standins = np.zeros_like(targets)
    full = ContentMapper(config).fit(text[warm], targets[warm, :-1], targets[warm, -1])
    cold = np.flatnonzero(~np.isin(np.arange(text.shape[0]), warm))
    if cold.size:
        vectors, bias = full.transform(text[cold])
        standins[cold] = np.c_[vectors, bias]
    assignment = np.random.default_rng(seed).integers(folds, size=warm.size)
    for fold in range(folds):
        held, fit = warm[assignment == fold], warm[assignment != fold]
        mapper = ContentMapper(config).fit(text[fit], targets[fit, :-1], targets[fit, -1])
        vectors, bias = mapper.transform(text[held])
        standins[held] = np.c_[vectors, bias]
    return standins


def encode_inputs(
    index: EvalIndex,
    items: pl.DataFrame,
    history: pl.DataFrame,
    *,
    cache_dir: Path,
    cf_config: BPRConfig,
    mapper_config: MapperConfig,
    folds: int = 5,
    cf_validation: pl.DataFrame | None = None,
    seed: int = 0,
    warming: WarmingConfig | None = None,
    synthetic: pl.DataFrame | None = None,
) -> EncodedSplit:
    """Text embeddings, BPR-MF on `history`, out-of-fold stand-ins and TF-IDF: the ranker's inputs.

    `items` holds one row per index item, in index order. Users and items absent from `history` get zero
    collaborative vectors; items then serve through their stand-ins. With `warming`, stand-ins are warmed by
    synthetic interactions (`warmed_standins`): `synthetic` (user_id, item_id, weight) where given for an item
    without history, the embedding simulator's proposals elsewhere.
    """
    cache = EmbeddingCache(cache_dir / "embeddings")
    text = encode_texts(item_text(items).to_list(), cache=cache, show_progress=True)
    matrix = interaction_matrix(history, index)

    cf = BPRMF(cf_config).fit(history.select(Columns.user, Columns.item), cf_validation, show_progress=True)
    emb = cf.embeddings
    width = emb.dim + 1  # the item bias rides along as one more dimension, the user side holding a 1
    item_cf = _aligned(emb.item_ids, np.c_[emb.item_vectors, emb.item_bias], index.item_ids, width)
    user_cf = _aligned(emb.user_ids, np.c_[emb.user_vectors, np.ones(emb.user_ids.size)], index.user_ids, width)
    # The user side's constant 1 carries the item bias into every score, for users BPR-MF never saw as well:
    # without it a user without history scores 0 for every item instead of each item's learned bias.
    user_cf[:, -1] = 1.0

    popularity = np.asarray(matrix.sum(axis=0)).ravel()
    warm = np.flatnonzero(popularity > 0)
    standins = out_of_fold_standins(text, item_cf, warm, mapper_config, folds, seed)
    warmed = None
    if warming is not None:
        given = synthetic_matrix(synthetic, index, warm) if synthetic is not None else None
        warmed = warmed_standins(standins, user_cf, item_cf, warm, given, warming)
        standins = warmed.standins
    titles = items[Columns.title].fill_null("")
    inputs = RankerInputs(
        history=matrix,
        text=text,
        user_cf=user_cf,
        item_cf=item_cf,
        item_standin=standins,
        popularity=popularity,
        title_words=titles.str.split(" ").list.len().to_numpy().astype(np.float32),
        tfidf=tfidf_item_vectors(titles.to_list(), min_df=1 if titles.len() < 50 else 2),
        categories=category_matrix(items),
        time=_time_features(history, index, items),
    )
    report = {"bprmf": cf.summary, "text_cache_hits": cache.hits, "text_cache_misses": cache.misses}
    if warming is not None and warmed is not None:
        report["warming"] = warmed.config.model_dump() | warmed.report
    return EncodedSplit(inputs=inputs, report=report, warming=warmed)


def synthetic_matrix(synthetic: pl.DataFrame, index: EvalIndex, warm: np.ndarray) -> sp.csr_array:
    """(items x users) weights of the synthetic interactions of items without history; rows naming a user or
    item outside the index, or an item with real history, are left out (real data always wins)."""
    known = synthetic.filter(
        pl.col(Columns.user).is_in(index.user_ids.implode()) & pl.col(Columns.item).is_in(index.item_ids.implode())
    )
    users, items = index.pairs(known)
    weights = known["weight"].to_numpy().astype(np.float32) if "weight" in known.columns else np.ones(users.size)
    cold = ~np.isin(items, warm)
    matrix = sp.coo_array((weights[cold], (items[cold], users[cold])), shape=(index.n_items, index.n_users))
    return sp.csr_array(matrix)  # a repeated pair sums its weights


def warmed_standins(
    standins: np.ndarray,
    user_cf: np.ndarray,
    item_cf: np.ndarray,
    warm: np.ndarray,
    given: sp.csr_array | None,
    config: WarmingConfig,
) -> Warmed:
    """Stand-ins trained from synthetic interactions (encoders.warm_items), and what warmed them.

    Cold items take the `given` synthetic interactions (e.g. the language-model judge's) where they have any,
    else the embedding simulator's top `config.per_item` users by stand-in score. Warm items' out-of-fold
    stand-ins are warmed the same way from the simulator, so the ranker learns from what serving will show.
    """
    n_items = standins.shape[0]
    is_cold = np.ones(n_items, dtype=bool)
    is_cold[warm] = False
    simulated = simulated_interactions(standins, user_cf, config.per_item)
    if not config.simulate:
        simulated = sp.csr_array(simulated.shape, dtype=simulated.dtype)
    judged = np.zeros(n_items, dtype=bool)
    if given is not None:
        judged = np.diff(given.indptr) > 0
        simulated = sp.csr_array(sp.diags_array((~judged).astype(np.float32)) @ simulated) + given
        simulated.eliminate_zeros()  # a judged item keeps only its judged interactions
    warmed = warm_items(simulated, user_cf, standins, item_cf[warm], config)
    synthetic = sp.csr_array(sp.diags_array(is_cold.astype(np.float32)) @ simulated)
    synthetic.eliminate_zeros()
    items = np.diff(synthetic.indptr) > 0
    report = {
        "cold_items_warmed": int(items.sum()),
        "cold_items_judged": int(judged.sum()),
        "synthetic_pairs": int(synthetic.nnz),
        "warm_items_simulated": int(warm.size) if config.simulate else 0,
    }
    return Warmed(warmed, standins, items, judged, synthetic, report, config)


def synthetic_precision(warmed: Warmed, truth: sp.csr_array) -> dict[str, float | None]:
    """Share of the synthetic pairs that warmed cold items found again among real held-out (users x items)
    pairs, for the embedding simulator's and the given (judged) pairs apart; None where there were none."""
    found = warmed.synthetic.multiply(truth.T.tocsr() > 0).tocsr()
    out: dict[str, float | None] = {}
    for name, rows in (("simulator", ~warmed.judged), ("judge", warmed.judged)):
        pairs = int(np.diff(warmed.synthetic.indptr)[rows].sum())
        hits = int(np.diff(found.indptr)[rows].sum())
        out[name] = hits / pairs if pairs else None
    return out


def _has_times(log: pl.DataFrame) -> bool:
    return Columns.ts in log.columns and log.height > 0 and log[Columns.ts].null_count() < log.height


def _time_features(history: pl.DataFrame, index: EvalIndex, items: pl.DataFrame) -> TimeFeatures | None:
    """Recency arrays as of the history's end, for logs with times (`items` in index order)."""
    if not _has_times(history):
        return None
    released = items[Columns.released] if Columns.released in items.columns else None
    return time_features(history, index.user_ids, index.item_ids, released=released)


def category_matrix(items: pl.DataFrame) -> sp.csr_array | None:
    """Multi-hot (items x distinct categories, sorted by name) in the row order of `items`; None without any."""
    if Columns.categories not in items.columns:
        return None
    rows = items.select(pl.col(Columns.categories).fill_null([])).with_row_index("_row").explode(Columns.categories)
    rows = rows.drop_nulls(Columns.categories)
    if rows.height == 0:
        return None
    names = rows[Columns.categories].unique().sort()
    columns = np.searchsorted(names.to_numpy(), rows[Columns.categories].to_numpy())
    data = np.ones(rows.height, dtype=np.float32)
    matrix = sp.csr_array((data, (rows["_row"].to_numpy(), columns)), shape=(items.height, names.len()))
    return sp.csr_array(matrix > 0, dtype=np.float32)


def with_history(encoded: EncodedSplit, history: sp.csr_array) -> EncodedSplit:
    """The same encoders' arrays serving from another (users x items) history; popularity follows it."""
    inputs = replace(encoded.inputs, history=history, popularity=np.asarray(history.sum(axis=0)).ravel())
    return EncodedSplit(inputs, encoded.report, encoded.warming)


@dataclass(frozen=True, eq=False)
class EvaluationPlan:
    """How the ranker is trained and early-stopped for one evaluated split.

    The ranker learns from `fit_labels` (held-out positives of warm items) with encoders fitted on
    `fit_history`, stops early on `valid_labels` ranked against `valid_pool`, and is evaluated on `split`,
    with the encoders refitted on `split.train` when `refit_for_serving` (the labels were cut out of it).
    """

    split: ProtocolSplit
    fit_history: pl.DataFrame
    fit_labels: pl.DataFrame
    valid_labels: pl.DataFrame
    valid_pool: np.ndarray
    valid_exclude: pl.DataFrame | None = None
    cf_validation: pl.DataFrame | None = None
    refit_for_serving: bool = False
    # Synthetic interactions (user_id, item_id, weight) for items without history, e.g. the judge's.
    synthetic: pl.DataFrame | None = None
    # A validation split ranking cold and warm items together, on which the ranker's cold places are chosen.
    calibration: ProtocolSplit | None = None


CALIBRATION_USERS = 2000  # users of the calibration split: enough to tell 2 cold places apart, fast to rank
COLD_SLOTS_GRID = (0, 4, 8, 10, 12, 16)  # on hybrid_val NDCG@20 rose from 0 to 8 places (hybrid_exposure.py)


def sampled_users(split: ProtocolSplit, n: int, *, seed: int) -> ProtocolSplit:
    """The split restricted to a seeded sample of `n` of its evaluated users (all of them when fewer)."""
    users = split.truth.select(Columns.user).unique().sort(Columns.user)
    if users.height <= n:
        return split
    chosen = users.sample(n, seed=seed)
    truth = split.truth.join(chosen, on=Columns.user, how="semi")
    return replace(split, truth=truth, exclude=split.exclude.join(chosen, on=Columns.user, how="semi"))


def choose_cold_slots(
    fitted: FittedRanker, split: ProtocolSplit, grid: tuple[int, ...] = COLD_SLOTS_GRID
) -> dict[str, Any]:
    """Set the LightGBM ranker's cold places to the value of `grid` with the best NDCG at its eval_k on `split`
    (ties to fewer places); returns every value's NDCG. Rankers without cold places are left as they are."""
    ranker = fitted.ranker
    if not isinstance(ranker, LightGBMRanker):
        return {}
    k, ndcg = ranker.config.eval_k, {}
    for slots in grid:
        ranker.with_cold_slots(slots)
        ndcg[slots] = fitted.evaluate(split, k).value("ndcg")
    best = max(grid, key=lambda slots: (ndcg[slots], -slots))
    ranker.with_cold_slots(best)
    return {"chosen": best, f"ndcg@{k}": {str(slots): round(value, 4) for slots, value in ndcg.items()}}


def citeulike_plan(dataset: Dataset, protocol: str) -> EvaluationPlan:
    """ALDI split: history warm_emb, ranker labels warm_val, early stopping on cold_item_val (cold items only)."""
    builders = {
        COLD_ITEM: lambda: cold_item_split(dataset, "cold_item_test"),
        WARM: lambda: warm_split(dataset, "warm_test"),
        HYBRID: lambda: hybrid_split(dataset, "test"),
    }
    if protocol not in builders:
        raise ConfigError(f"protocol {protocol!r} does not apply to CiteULike; use cold-item, warm or hybrid.")
    split = builders[protocol]()
    splits = dataset.splits
    cold_pool = cold_item_split(dataset, "cold_item_val").candidates
    # The model is the same whatever protocol evaluates it, and it serves cold and warm items together.
    calibration = sampled_users(hybrid_split(dataset, "val"), CALIBRATION_USERS, seed=0)
    return EvaluationPlan(
        split=split,
        fit_history=splits["warm_emb"],
        fit_labels=splits["warm_val"],
        valid_labels=splits["cold_item_val"],
        valid_pool=cold_pool,
        valid_exclude=splits["cold_item_test"],
        cf_validation=splits["warm_val"],
        calibration=calibration,
    )


def holdout_plan(
    split: ProtocolSplit, valid: pl.DataFrame | None = None, *, share: float = 0.2, seed: int = 0
) -> EvaluationPlan:
    """Labels and early stopping for a split without predefined ones (ranker.evaluate.hold_out_labels chooses:
    on a log with times, one time cut for every user, so the ranker learns to serve users without history too).

    Validation pairs of warm users and items are the labels, and training keeps the whole history; without
    them, each user's latest (or random) `share` of training interactions is held out of the encoders'
    history. Validation pairs of cold items (or users) stop the ranker early, ranked among the items cold in
    history; without them, a fifth of the label users' pairs do, ranked among all items."""
    warm, other = split_validation(valid, split.train) if valid is not None else (None, None)
    if warm is not None and warm.height:
        labels, history = warm, split.train
    else:
        history, labels = hold_out_labels(split.train, share=share, seed=seed)
    if other is not None and other.height:
        fit_labels, valid_labels = labels, other
        cold = np.setdiff1d(np.arange(split.index.n_items), split.index.items(history[Columns.item].unique()))
        pool = cold if other.join(history, on=Columns.item, how="semi").is_empty() else np.arange(split.index.n_items)
    else:
        stop_users = labels.select(Columns.user).unique().sort(Columns.user).sample(fraction=0.2, seed=seed)
        fit_labels = labels.join(stop_users, on=Columns.user, how="anti")
        valid_labels = labels.join(stop_users, on=Columns.user, how="semi")
        pool = np.arange(split.index.n_items)
    return EvaluationPlan(
        split=split,
        fit_history=history,
        fit_labels=fit_labels,
        valid_labels=valid_labels,
        valid_pool=pool,
        cf_validation=labels,
        refit_for_serving=history is not split.train,
    )


class TimedChoices(BaseModel):
    """What a log with times changes in the defaults, chosen on MovieLens-100K's validation window from prior weight
    {0, 1, 2} x warming {off, on} x tail strength {0, 0.5} x cold places {0, 1, 2} (benchmarks/ml100k_temporal.py,
    docs/benchmarks.md): the only setting that met the issue's floors and recent popularity's NDCG there."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    prior_weight: float = Field(2.0, ge=0)
    """The LightGBM ranker boosts from recent popularity with this weight."""
    prior_days: Literal[7, 14, 28] = 14
    """Over how many days that recent popularity is counted."""
    cold_slots: int = Field(1, ge=0)
    """Places of the top k the best-scored new items keep."""
    simulate: bool = False
    """Whether the embedding simulator warms stand-ins (it cost validation NDCG@20 0.3732 -> 0.3624); pairs the
    language-model judge wrote still warm their items."""


# The timed choices a backfill (window by window) and a refresh (run by run) choose among
# (flows.cycle.rolling_choice): each run trains each of them on the same encoders and scores it on its held-out
# data, and the next run serves the one that scored best there. The first is the validation window's choice (above,
# the default); the second boosts from the line the gate holds the product to (recent popularity over 28 days) and
# keeps no place for new items.
TIMED_ALTERNATIVES: dict[str, TimedChoices] = {
    "choice_recent14_place1": TimedChoices(),
    "choice_recent28": TimedChoices(prior_days=28, cold_slots=0),
}


@dataclass(frozen=True)
class ModelSettings:
    """Hyperparameters of every model one evaluation trains (chosen on validation splits)."""

    # dim 256 scored best of dim 64/128/256 on CiteULike's warm_val (benchmarks/cf_mapper.py); early stopping
    # on the plan's validation pairs ends training well before 150 epochs.
    cf: BPRConfig = field(default_factory=lambda: BPRConfig(dim=256, epochs=150))
    mapper: MapperConfig = field(default_factory=lambda: MapperConfig(kind="ridge", alpha=10.0))
    ranker: LightGBMRankerConfig = field(default_factory=LightGBMRankerConfig)
    deepfm: DeepFMConfig = field(default_factory=DeepFMConfig)
    # How synthetic interactions warm stand-ins (chosen on CiteULike's hybrid_val, benchmarks/warming.py); None
    # trains without them (the `--no-augment` ablation).
    warming: WarmingConfig | None = field(default_factory=WarmingConfig)
    # What replaces the above on a log with times (`for_log`); None keeps them.
    timed: TimedChoices | None = field(default_factory=TimedChoices)
    # Which ranker fit_ranker trains: a name in ranker.registry.RANKERS.
    ranker_name: str = "lightgbm"
    folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        ranker_class(self.ranker_name)  # an unknown name is a ConfigError here, not after the encoders trained

    @classmethod
    def seeded(cls, seed: int, ranker_name: str = "lightgbm") -> ModelSettings:
        """The default settings with every model seeded by `seed`, training `ranker_name`."""
        defaults = cls()
        return cls(
            cf=defaults.cf.model_copy(update={"seed": seed}),
            mapper=defaults.mapper.model_copy(update={"seed": seed}),
            ranker=defaults.ranker.model_copy(update={"seed": seed}),
            deepfm=defaults.deepfm.model_copy(update={"seed": seed}),
            warming=defaults.warming.model_copy(update={"seed": seed}) if defaults.warming else None,
            ranker_name=ranker_name,
            seed=seed,
        )

    @classmethod
    def capped(cls, seed: int, max_epochs: int, ranker_name: str = "lightgbm") -> ModelSettings:
        """The seeded defaults with BPR-MF's epochs capped (scheduled retrains on a budget)."""
        seeded = cls.seeded(seed, ranker_name)
        cf = seeded.cf.model_copy(update={"epochs": min(seeded.cf.epochs, max_epochs)})
        return replace(seeded, cf=cf)

    def for_log(self, has_times: bool) -> ModelSettings:
        """The settings a log with (or without) times trains with: `timed`'s choices applied where it has times."""
        if not has_times or self.timed is None:
            return self
        choices = self.timed
        ranker = self.ranker.model_copy(update=choices.model_dump(include={"prior_weight", "prior_days", "cold_slots"}))
        warming = self.warming.model_copy(update={"simulate": choices.simulate}) if self.warming else None
        return replace(self, ranker=ranker, warming=warming, timed=None)

    def with_timed(self, choices: TimedChoices) -> ModelSettings:
        """The same settings with `choices` for logs with times."""
        return replace(self, timed=choices)

    def without_augmentation(self) -> ModelSettings:
        """The same settings training without synthetic interactions (the ablation)."""
        return replace(self, warming=None)

    def new_ranker(self) -> RankerBase:
        """An unfitted ranker of the chosen kind with its configuration."""
        configs = {"lightgbm": self.ranker, "deepfm": self.deepfm}
        return ranker_class(self.ranker_name)(configs[self.ranker_name])  # type: ignore[call-arg]


def _task(users_from: pl.DataFrame, index: EvalIndex, pool: np.ndarray, exclude: pl.DataFrame | None) -> RankingTask:
    return RankingTask(
        users=np.unique(index.users(users_from[Columns.user])),
        pool=pool,
        positives=interaction_matrix(users_from, index),
        exclude=interaction_matrix(exclude, index) if exclude is not None else None,
    )


@dataclass(frozen=True, eq=False)
class FittedRanker:
    """A ranker trained for a plan, with the inputs it serves from and what fitting it measured."""

    ranker: RankerBase
    served: EncodedSplit
    report: dict[str, Any]
    # Rankers trained on the same encoders with other timed choices (fit_ranker's `alternatives`), by name.
    alternatives: dict[str, FittedRanker] = field(default_factory=dict)

    def without_warming(self) -> FittedRanker:
        """The same ranker serving cold items through their content stand-ins: what synthetic interactions add."""
        return FittedRanker(self.ranker, self.served.without_warming(), self.report)

    def evaluate(self, split: ProtocolSplit, k: int) -> EvalResult:
        """Evaluate on any split that shares the plan's index and training interactions."""
        exclude = interaction_matrix(split.exclude, split.index)
        return evaluate(split, self.ranker.scorer(self.served.inputs, exclude=exclude), k=k)


def train_ranker(plan: EvaluationPlan, fitted: EncodedSplit, settings: ModelSettings) -> RankerBase:
    """The chosen ranker fitted on inputs encoded from `plan.fit_history`: labels `plan.fit_labels` among the warm
    items, early stopping on `plan.valid_labels` among `plan.valid_pool`."""
    index = plan.split.index
    warm_pool = np.flatnonzero(fitted.inputs.popularity > 0)
    return settings.new_ranker().fit(
        fitted.inputs,
        _task(plan.fit_labels, index, warm_pool, None),
        _task(plan.valid_labels, index, plan.valid_pool, plan.valid_exclude),
    )


def fit_ranker(
    plan: EvaluationPlan,
    *,
    cache_dir: Path,
    settings: ModelSettings,
    alternatives: dict[str, TimedChoices] | None = None,
) -> FittedRanker:
    """Fit encoders and the ranker `settings.ranker_name` names as the plan says (with `settings.timed`'s choices
    where the training log has times). On a log with times, each of `alternatives` is trained too, on the same
    encoders (`FittedRanker.alternatives`; one whose ranker equals the main one is the main one)."""
    started = time.perf_counter()
    has_times = _has_times(plan.split.train)
    others = {name: settings.with_timed(choices).for_log(has_times) for name, choices in (alternatives or {}).items()}
    settings = settings.for_log(has_times)
    if any(other.warming != settings.warming for other in others.values()):
        raise ConfigError("timed alternatives must warm stand-ins as the main settings do (they share its encoders).")
    split, index = plan.split, plan.split.index
    encode = functools.partial(
        encode_inputs,
        index,
        split.items,
        cache_dir=cache_dir,
        cf_config=settings.cf,
        mapper_config=settings.mapper,
        folds=settings.folds,
        cf_validation=plan.cf_validation,
        seed=settings.seed,
        warming=settings.warming,
        synthetic=plan.synthetic,
    )
    fitted = encode(plan.fit_history)
    ranker = train_ranker(plan, fitted, settings)
    # Serving sees the whole training history: refit the encoders on it when the ranker's labels came out of it,
    # for as many BPR epochs as early stopping chose (the labels are training pairs now, so no validation).
    served = fitted
    if plan.refit_for_serving and ranker_class(settings.ranker_name).tied_to_encoders:
        # DeepFM learned projections of these encoders' coordinates (a refitted BPR-MF would rotate them): it keeps
        # them and serves from the whole history, its labels included (its ID embeddings trained on those).
        served = with_history(fitted, interaction_matrix(split.train, index))
    elif plan.refit_for_serving:
        epochs = max(int(fitted.report["bprmf"]["best_epoch"]), 1)
        served = encode(split.train, cf_config=settings.cf.model_copy(update={"epochs": epochs}), cf_validation=None)
    # Where cold items compete with warm ones, how many top places the best cold items keep is chosen on validation.
    calibrated: dict[str, Any] = {}
    if plan.calibration is not None:
        calibrated = choose_cold_slots(FittedRanker(ranker, served, {}), plan.calibration)
    report = {
        "ranker": settings.ranker_name,
        settings.ranker_name: ranker.metadata,
        "encoders": {"fit": fitted.report, "served": served.report},
        "mapper": settings.mapper.model_dump(),
        "bprmf": settings.cf.model_dump(),
        "cold_slots": calibrated,
        "fit_seconds": round(time.perf_counter() - started, 1),
    }
    main = FittedRanker(ranker, served, report)
    for name, other in others.items() if has_times else ():
        if _ranker_config(other) == _ranker_config(settings):
            main.alternatives[name] = main
        else:
            trained = train_ranker(plan, fitted, other)
            main.alternatives[name] = FittedRanker(trained, served, report | {other.ranker_name: trained.metadata})
    return main


def _ranker_config(settings: ModelSettings) -> BaseModel:
    return settings.deepfm if settings.ranker_name == "deepfm" else settings.ranker


def train_and_evaluate(
    plan: EvaluationPlan, *, k: int, cache_dir: Path, settings: ModelSettings, model_dir: Path | None = None
) -> dict[str, Any]:
    """Fit as the plan says, evaluate on its split; the JSON-ready report."""
    started = time.perf_counter()
    fitted = fit_ranker(plan, cache_dir=cache_dir, settings=settings)
    if model_dir is not None:
        fitted.ranker.save(model_dir)
    result = fitted.evaluate(plan.split, k)
    return {
        "protocol": plan.split.protocol,
        "split": plan.split.name,
        "k": k,
        "n_users": result.n_users,
        "metrics": result.metrics.to_dicts(),
        "models": fitted.report,
        "seconds": round(time.perf_counter() - started, 1),
    }


PROTOCOLS = {"cold-item": COLD_ITEM, "warm": WARM, "hybrid": HYBRID, "temporal": TEMPORAL}


def _read_pairs(path: Path) -> pl.DataFrame:
    frame, _ = conform_interactions(read_table(path), str(path))
    return frame


def files_plan(
    protocol: str, *, train: Path, test: Path, items: Path, valid: Path | None = None, users: Path | None = None
) -> EvaluationPlan:
    """A split given as files (CSV or Parquet; interactions: user_id, item_id[, ts, value]; items: item_id,
    title[, text, categories]). `temporal` needs times: the test file's first event is the cut."""
    item_frame, _ = conform_items(read_table(items), str(items))
    train_frame, test_frame = _read_pairs(train), _read_pairs(test)
    valid_frame = _read_pairs(valid) if valid is not None else None
    user_frame = conform_users(read_table(users), str(users))[0] if users is not None else None
    for frame, path in ((train_frame, train), (test_frame, test), (valid_frame, valid)):
        if frame is not None:
            check_references(frame, item_frame, user_frame, str(path))
    user_ids = user_frame[Columns.user].sort() if user_frame is not None else None
    if protocol == TEMPORAL:
        if test_frame[Columns.ts].null_count() or train_frame[Columns.ts].null_count():
            raise DataError(f"--protocol temporal needs a 'ts' on every row of {train} and {test}.")
        log = pl.concat([train_frame, test_frame])
        split = temporal_split(log, item_frame, cut=test_frame[Columns.ts].min())
    else:
        split = frames_split(train_frame, test_frame, item_frame, protocol=protocol, valid=valid_frame, users=user_ids)
    return holdout_plan(split, valid_frame)


def dataset_plan(dataset: Dataset, protocol: str) -> EvaluationPlan:
    """The plan for a built-in data set: CiteULike's ALDI split, or MovieLens-100K's temporal split."""
    if dataset.splits:
        return citeulike_plan(dataset, protocol)
    if protocol != TEMPORAL:
        raise ConfigError(f"{dataset.name} has no predefined split: use --protocol temporal.")
    return holdout_plan(temporal_split(dataset.interactions, dataset.items))
