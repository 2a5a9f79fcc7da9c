"""LightGBM LambdaRank over generated candidates, trained so that training matches serving for cold items.

Training groups are the candidates of users with held-out warm positives; each candidate is presented through
the cold view (stand-in embedding, no popularity) with probability `cold_share`, so the model learns to rank
items that only have content. Early stopping uses a validation task (e.g. the cold validation split).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Self

import lightgbm as lgb
import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from catalog import DataError, NotFittedError
from ranker.ann import ANN_MIN_ITEMS
from ranker.base import RankerBase, check_task, seeded_sample
from ranker.evaluate import BatchKeys, Scorer
from ranker.features import (
    FEATURE_NAMES,
    RankerInputs,
    RankingTask,
    generate_candidates,
    group_starts,
    pair_features,
)
from ranker.rerank import tail_quota_rerank


class LightGBMRankerConfig(BaseModel):
    """Hyperparameters of the LightGBM ranker (tuned on validation splits only)."""

    model_config = ConfigDict(extra="forbid")

    per_source: int = Field(100, ge=1, description="Candidates each source contributes per user and view.")
    ann_min_items: int | None = Field(
        ANN_MIN_ITEMS,
        ge=1,
        description="Candidates for training groups and scored users come from an ANN index over the pool where "
        "it holds at least this many items (ranker.ann; None: always the exact brute force). The brute force scores "
        "every item of the pool for every user, the largest part of a retrain at 100k items; CiteULike-a and "
        "MovieLens stay below it.",
    )
    cold_share: float = Field(0.5, ge=0, le=1, description="Share of training pairs presented as cold items.")
    cold_user_share: float = Field(
        0.0, ge=0, le=1, description="Share of training users presented as users without history."
    )
    max_groups: int | None = Field(
        10_000,
        ge=1,
        description="Most users (query groups) whose candidates the model learns from, and as many for early "
        "stopping: a seeded sample where a task has more (None: all). Each group brings about 1,400 candidate "
        "pairs, so this bounds training's memory and time on a large log; CiteULike-a has 5,551 users.",
    )
    num_leaves: int = Field(31, ge=2, description="Leaves per tree.")
    learning_rate: float = Field(0.05, gt=0, description="Shrinkage.")
    n_estimators: int = Field(600, ge=1, description="Most boosting rounds.")
    early_stopping_rounds: int | None = Field(
        50,
        ge=1,
        description="Stop when validation NDCG@k stalls this long; None trains exactly n_estimators rounds (a "
        "refit with the round count an evaluated fit chose).",
    )
    min_child_samples: int = Field(50, ge=1, description="Smallest leaf.")
    eval_k: int = Field(20, ge=1, description="K of the validation NDCG used for early stopping.")
    cold_slots: int = Field(
        0,
        ge=0,
        description="Places of the scorer's top eval_k kept for the best-scored cold items (items without a "
        "training interaction) where the model ranked fewer there. Chosen per data set on validation: CiteULike's "
        "calibration split (training.choose_cold_slots), MovieLens-100K's validation window (TimedChoices).",
    )
    prior_weight: float = Field(
        0.0,
        ge=0,
        description="Boosting starts from this weight times the item's recent popularity (log of its share of the "
        "last `prior_days` days' events, 0 without times or for items shown cold), so the trees learn corrections "
        "to the line a time-ordered log's recommender must beat rather than relearn it from one cut's labels.",
    )
    prior_days: Literal[7, 14, 28] = Field(14, description="Days of the recent popularity boosting starts from.")
    max_delta_step: float = Field(
        20.0,
        ge=0,
        description="Largest leaf output before shrinkage (0: none), so a tree moves a score by at most "
        "learning_rate x this. LambdaRank's Newton step divides a pair's gradient by its hessian, which vanishes "
        "where the start (a strong prior) already separates a pair by many units: uncapped, prior_weight 8 gave a "
        "first leaf of 1,270 and collapsed MovieLens-100K's validation NDCG@20 to 0.017; capped at 20, 0.354. At the "
        "chosen weight 2 the cap changes nothing measured (docs/benchmarks.md).",
    )
    seed: int = Field(0, description="Seed of sampling and of LightGBM.")
    num_threads: int = Field(2, ge=1, description="LightGBM threads.")


@dataclass(frozen=True)
class _Groups:
    users: np.ndarray
    items: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray


# The configuration's fields that choose a fit's training and validation pairs (the rest only train on them).
PAIR_FIELDS = ("per_source", "ann_min_items", "cold_share", "cold_user_share", "max_groups", "seed")


@dataclass(frozen=True)
class TrainingPairs:
    """The candidate pairs, features and labels one fit learns from (`fit`) and stops on (`valid`), and the
    configuration values that chose them (`chosen_by`, PAIR_FIELDS'): a ranker configured alike in those trains
    from them as it would from the ones it built (`LightGBMRanker.fit_pairs`). At 500k items building them was most
    of a LightGBM fit, and the timed alternatives differ from the main ranker only in what they learn."""

    chosen_by: tuple[object, ...]
    fit: _Groups
    valid: _Groups


def _groups(
    inputs: RankerInputs,
    task: RankingTask,
    per_source: int,
    as_cold: np.ndarray | float,
    rng: np.random.Generator,
    cold_user_share: float = 0.0,
    *,
    positive_only: bool = False,
    ann_min_items: int | None = None,
) -> _Groups:
    """Candidate pairs of the task's users with their features and labels, grouped by user in task order.
    `positive_only` keeps only the groups with a positive (those without teach LambdaRank nothing), dropped
    before their features are built. `ann_min_items` as generate_candidates'.

    A `cold_user_share` of the users is shown as users without history, as serving sees a new user (DropoutNet's
    idea, for users): candidates and features from inputs without their history, and every item they took
    (history and labels) a positive, since a new user's history is still to come. Their groups follow the others.
    """
    if cold_user_share <= 0:
        return _user_groups(
            inputs, task, per_source, as_cold, rng, positive_only=positive_only, ann_min_items=ann_min_items
        )
    hidden = np.sort(task.users[rng.random(task.users.size) < cold_user_share])
    shown = replace(task, users=task.users[~np.isin(task.users, hidden)])
    blank = inputs.without_history(hidden)
    # Positives of a user shown without history: whatever they took, before the labels' cut or after.
    taken = inputs.history if task.positives is None else inputs.history + task.positives
    as_new = RankingTask(hidden, task.pool, positives=sp.csr_array(taken > 0), exclude=task.exclude)
    parts = [
        _user_groups(view, part, per_source, as_cold, rng, positive_only=positive_only, ann_min_items=ann_min_items)
        for view, part in ((inputs, shown), (blank, as_new))
        if part.users.size
    ]
    if as_new.users.size:
        new = parts[-1]
        # The item's popularity without this user's own interaction: a new user's items are not counted yet.
        own = np.asarray(inputs.history[new.users, new.items]).ravel()
        column = FEATURE_NAMES.index("log_popularity")
        shown_warm = new.features[:, FEATURE_NAMES.index("as_cold")] == 0
        new.features[:, column] = np.where(shown_warm, np.log1p(inputs.popularity[new.items] - own), 0.0)
    return _Groups(*(np.concatenate([getattr(part, name) for part in parts]) for name in _Groups.__annotations__))


def _user_groups(
    inputs: RankerInputs,
    task: RankingTask,
    per_source: int,
    as_cold: np.ndarray | float,
    rng: np.random.Generator,
    *,
    positive_only: bool,
    ann_min_items: int | None,
) -> _Groups:
    """`_groups` of users shown as `inputs` has them."""
    users, items = generate_candidates(
        inputs, task.users, task.pool, per_source=per_source, exclude=task.exclude, ann_min_items=ann_min_items
    )
    cold = rng.random(users.size) < as_cold if isinstance(as_cold, float) else as_cold[items]
    return pair_groups(inputs, users, items, task.positives, cold, positive_only=positive_only)


def pair_groups(
    inputs: RankerInputs,
    users: np.ndarray,
    items: np.ndarray,
    positives: sp.csr_array | None,
    cold: np.ndarray,
    *,
    positive_only: bool,
) -> _Groups:
    """The groups of candidate pairs (users, items), grouped by user, with their labels from `positives` and their
    features, each item shown through the cold view where `cold` says; `positive_only` as `_groups`'."""
    labels = np.zeros(users.size, dtype=np.float32)
    if positives is not None:
        labels = np.asarray(positives[users, items]).ravel().astype(np.float32)
    if positive_only:
        starts = group_starts(users)
        has_positive = np.add.reduceat(labels, starts) > 0 if starts.size else np.zeros(0, bool)
        keep = np.repeat(has_positive, np.diff(np.r_[starts, users.size]))
        users, items, labels, cold = users[keep], items[keep], labels[keep], cold[keep]
    features = pair_features(inputs, users, items, cold)
    starts = group_starts(users)
    sizes = np.diff(np.r_[starts, users.size])
    return _Groups(users, items, features, labels, sizes)


def prior_scores(config: LightGBMRankerConfig, features: np.ndarray) -> np.ndarray:
    """Where boosting starts for each pair (`prior_weight`); the trees add to it."""
    column = FEATURE_NAMES.index(f"recent_{config.prior_days}d")
    return config.prior_weight * features[:, column].astype(np.float64)


class LightGBMRanker(RankerBase):
    """LambdaRank over candidate pairs (the base's fit / scorer / recommend / save / load; `score_task` here)."""

    kind = "lightgbm"
    model_file = "model.txt"

    def __init__(self, config: LightGBMRankerConfig | None = None) -> None:
        self.config = config or LightGBMRankerConfig()
        self._booster: lgb.Booster | None = None
        self.metadata: dict[str, Any] = {}
        self._n_features = len(FEATURE_NAMES)  # the first columns of FEATURE_NAMES its trees read

    @property
    def is_fitted(self) -> bool:
        return self._booster is not None

    @property
    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump()

    @property
    def booster(self) -> lgb.Booster:
        if self._booster is None:
            raise NotFittedError("LightGBMRanker is not fitted; call fit() or load() first.")
        return self._booster

    def _fit(self, inputs: RankerInputs, train: RankingTask, valid: RankingTask) -> Self:
        """Learn from `train` (warm positives, presented cold with probability cold_share); stop on `valid`."""
        return self.fit_pairs(self.training_pairs(inputs, train, valid))

    @property
    def pairs_chosen_by(self) -> tuple[object, ...]:
        """This configuration's values of the fields that choose its training pairs (PAIR_FIELDS)."""
        return tuple(getattr(self.config, name) for name in PAIR_FIELDS)

    def training_pairs(self, inputs: RankerInputs, train: RankingTask, valid: RankingTask) -> TrainingPairs:
        """The pairs this configuration learns from: `train`'s users' candidates (at most max_groups users, those
        with a positive; presented cold with probability cold_share) and `valid`'s for early stopping."""
        for task, name in ((train, "training"), (valid, "validation")):
            check_task(task, inputs, name)
            if task.positives is None:
                raise DataError(f"the {name} task has no positives to learn from.")
        config = self.config
        train, valid = (_sampled(task, config.max_groups, config.seed) for task in (train, valid))
        rng = np.random.default_rng(config.seed)
        fit_groups = _groups(
            inputs,
            train,
            config.per_source,
            config.cold_share,
            rng,
            config.cold_user_share,
            positive_only=True,
            ann_min_items=config.ann_min_items,
        )
        valid_groups = _groups(
            inputs,
            valid,
            config.per_source,
            inputs.is_cold,
            rng,
            positive_only=True,
            ann_min_items=config.ann_min_items,
        )
        return TrainingPairs(self.pairs_chosen_by, fit_groups, valid_groups)

    def fit_pairs(self, pairs: TrainingPairs) -> Self:
        """Learn from `pairs` (`training_pairs` of a configuration that chooses pairs as this one does)."""
        if pairs.chosen_by != self.pairs_chosen_by:
            raise ValueError(
                f"these training pairs were chosen by {dict(zip(PAIR_FIELDS, pairs.chosen_by, strict=True))}, this "
                f"ranker chooses by {dict(zip(PAIR_FIELDS, self.pairs_chosen_by, strict=True))}."
            )
        config, fit_groups, valid_groups = self.config, pairs.fit, pairs.valid
        params = self.params()
        train_set, valid_set = self._datasets(fit_groups, valid_groups)
        evaluations: dict[str, Any] = {}
        callbacks = [lgb.record_evaluation(evaluations)]
        if config.early_stopping_rounds is not None:
            callbacks.append(lgb.early_stopping(config.early_stopping_rounds, verbose=False))
        self._booster = lgb.train(
            params,
            train_set,
            num_boost_round=config.n_estimators,
            valid_sets=[valid_set],
            valid_names=["valid"],
            callbacks=callbacks,
        )
        # Without early stopping every round is kept: the last one is the model.
        kept = self._booster.best_iteration or self._booster.current_iteration()
        self.metadata = {
            "config": config.model_dump(),
            "features": list(FEATURE_NAMES),
            "best_iteration": int(kept),
            f"valid_ndcg@{config.eval_k}": float(evaluations["valid"][f"ndcg@{config.eval_k}"][kept - 1]),
            "train_pairs": int(fit_groups.labels.size),
            "train_groups": int(fit_groups.sizes.size),
            "valid_groups": int(valid_groups.sizes.size),
            "feature_importance_gain": dict(
                zip(FEATURE_NAMES, self._booster.feature_importance("gain").round(1).tolist(), strict=True)
            ),
        }
        return self

    def with_booster(self, booster: lgb.Booster, metadata: dict[str, Any]) -> Self:
        """This ranker serving `booster`, trained elsewhere with this configuration (`ranker.lightgbm_dask`), and
        `metadata` saying how."""
        self._booster = booster
        self.metadata = metadata
        return self

    def params(self) -> dict[str, Any]:
        """LightGBM's parameters: LambdaRank scored by NDCG@eval_k, deterministic for a seed."""
        config = self.config
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [config.eval_k],
            "num_leaves": config.num_leaves,
            "learning_rate": config.learning_rate,
            "min_child_samples": config.min_child_samples,
            "max_delta_step": config.max_delta_step,
            "seed": config.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": config.num_threads,
            "verbosity": -1,
        }

    def _datasets(self, fit_groups: _Groups, valid_groups: _Groups) -> tuple[lgb.Dataset, lgb.Dataset]:
        """(training, validation) sets, each pair starting from its prior; validation bins as training does."""
        train_set = lgb.Dataset(
            fit_groups.features,
            fit_groups.labels,
            group=fit_groups.sizes,
            init_score=self._prior(fit_groups.features),
            feature_name=list(FEATURE_NAMES),
        )
        valid_set = lgb.Dataset(
            valid_groups.features,
            valid_groups.labels,
            group=valid_groups.sizes,
            init_score=self._prior(valid_groups.features),
            reference=train_set,
        )
        return train_set, valid_set

    def score_task(self, inputs: RankerInputs, task: RankingTask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user indices, item indices, scores) of every candidate pair of `task`; items seen as the data has them."""
        groups = self._task_groups(inputs, task)
        return groups.users, groups.items, self._scores(groups)

    @property
    def candidates_chosen_by(self) -> tuple[int, int | None]:
        """What chooses the candidates this ranker scores (per_source, ann_min_items)."""
        return self.config.per_source, self.config.ann_min_items

    def _task_groups(self, inputs: RankerInputs, task: RankingTask) -> _Groups:
        rng = np.random.default_rng(0)  # unused: items are shown as the data has them
        per_source, ann_min_items = self.candidates_chosen_by
        return _groups(inputs, task, per_source, inputs.is_cold, rng, ann_min_items=ann_min_items)

    def _scores(self, groups: _Groups) -> np.ndarray:
        booster = self.booster
        known = groups.features[:, : self._n_features]
        scores = booster.predict(known, num_iteration=booster.best_iteration or None)
        return np.asarray(scores + self._prior(groups.features), dtype=np.float32)

    def _prior(self, features: np.ndarray) -> np.ndarray:
        return prior_scores(self.config, features)

    def _scorer(self, inputs: RankerInputs, exclude: sp.csr_array | None) -> Scorer:
        """Candidates get the model's score, every other item -inf."""

        def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
            pair_users, pair_items, scores = self.score_task(inputs, RankingTask(users, items, exclude=exclude))
            return _dense(inputs, users, items, pair_users, pair_items, scores)

        return score

    def place(self, scores: np.ndarray, inputs: RankerInputs, items: np.ndarray) -> np.ndarray:
        """The best-scored cold items keep `cold_slots` places of each top eval_k: new items arrive all the time in
        a log, and the booster, trained mostly on known items, ranks them low (excluded pairs are not candidates,
        so stay -inf). The values returned order the list; they are rank offsets, not scores."""
        slots, k = self.config.cold_slots, self.config.eval_k
        if not slots:
            return scores
        quota = np.full(scores.shape[0], slots / k, dtype=np.float32)
        return tail_quota_rerank(scores, inputs.is_cold[items], quota, k, strength=1.0)

    def refit_config(self) -> LightGBMRankerConfig:
        """This configuration with the boosting rounds early stopping kept, and no early stopping."""
        rounds = int(self.metadata.get("best_iteration") or self.config.n_estimators)
        return self.config.model_copy(update={"n_estimators": rounds, "early_stopping_rounds": None})

    def with_cold_slots(self, slots: int) -> Self:
        """Keep `slots` places of each top eval_k for the best-scored cold items from now on (saved with the
        model); chosen on a validation split that ranks cold and warm items together."""
        self.config = self.config.model_copy(update={"cold_slots": slots})
        if self.metadata:
            self.metadata["config"] = self.config.model_dump()
        return self

    def _payload(self) -> bytes:
        return self.booster.model_to_string().encode("utf-8")

    @classmethod
    def _from_payload(cls, payload: bytes, metadata: dict[str, Any]) -> Self:
        trained_on = metadata.get("features", list(FEATURE_NAMES))
        if trained_on != list(FEATURE_NAMES[: len(trained_on)]):
            # Scored with other columns, its trees would read one feature's values as another's. A ranker trained
            # before features were added at the end reads the columns it knows.
            missing = sorted(set(FEATURE_NAMES) - set(trained_on)) or sorted(set(trained_on) - set(FEATURE_NAMES))
            raise DataError(
                f"this LightGBM ranker was trained on {len(trained_on)} features and this warmstart computes "
                f"{len(FEATURE_NAMES)} (differing in {missing}); retrain it (`warmstart refresh`)."
            )
        ranker = cls(LightGBMRankerConfig(**metadata["config"]))
        ranker._booster = lgb.Booster(model_str=payload.decode("utf-8"))
        ranker._n_features = len(trained_on)
        ranker.metadata = metadata
        return ranker


def _sampled(task: RankingTask, most: int | None, seed: int) -> RankingTask:
    """`task` with a seeded sample of `most` of its users where it has more (its own generator, so that a task
    within the limit draws nothing and trains exactly as without one)."""
    users = seeded_sample(task.users, most, seed)
    return task if users is task.users else replace(task, users=users)


def scorers_sharing_candidates(
    rankers: Sequence[LightGBMRanker], inputs: RankerInputs, exclude: sp.csr_array | None
) -> list[Scorer]:
    """Each ranker's model scorer over `inputs` (what its `_scorer` gives, for `RankerBase.scorer(model=...)`), the
    rankers choosing candidates alike: the first to score a batch builds its candidates and their features once and
    scores them with every ranker, keeping the others' scores until each asks for that batch. The timed alternative's
    evaluation line built the candidate's pairs again (258 of 1,452 s of an evaluation at 500k items)."""
    if len({ranker.candidates_chosen_by for ranker in rankers}) > 1:
        raise ValueError("scorers_sharing_candidates: the rankers choose their candidates differently.")
    waiting: list[dict[tuple[bytes, bytes], tuple[np.ndarray, np.ndarray, np.ndarray]]] = [{} for _ in rankers]
    lock, batch_key = threading.Lock(), BatchKeys()  # evaluation scores batches from several threads

    def scorer_of(position: int) -> Scorer:
        def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
            key = batch_key(users, items)
            with lock:
                found = waiting[position].pop(key, None)
            if found is None:
                groups = rankers[position]._task_groups(inputs, RankingTask(users, items, exclude=exclude))
                scored = [(groups.users, groups.items, ranker._scores(groups)) for ranker in rankers]
                with lock:
                    for other, pairs in enumerate(scored):
                        if other != position:
                            waiting[other][key] = pairs
                found = scored[position]
            return _dense(inputs, users, items, *found)

        return score

    return [scorer_of(position) for position in range(len(rankers))]


def _dense(
    inputs: RankerInputs,
    users: np.ndarray,
    items: np.ndarray,
    pair_users: np.ndarray,
    pair_items: np.ndarray,
    scores: np.ndarray,
) -> np.ndarray:
    """The (users x items) matrix of the pairs' scores, -inf elsewhere."""
    matrix = np.full((users.size, items.size), -np.inf, dtype=np.float32)
    columns = pair_items if inputs.is_full(items) else _positions(items, pair_items)
    matrix[_positions(users, pair_users), columns] = scores
    return matrix


def _positions(unique_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each of `values` in `unique_values` (which need not be sorted)."""
    order = np.argsort(unique_values, kind="stable")
    return order[np.searchsorted(unique_values, values, sorter=order)]
