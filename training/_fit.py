"""Fitting: the encoders and the chosen ranker as a plan says, the ranker's cold places chosen on validation, and
the typed report of what fitting measured (written into each version's report.json)."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from catalog import Columns, ConfigError, has_times
from encoders import CFConfig
from ranker.base import RankerBase
from ranker.evaluate import (
    IN_TURN,
    BatchKeys,
    EvalIndex,
    EvalResult,
    PartitionMap,
    ProtocolSplit,
    Scorer,
    batch_bounds,
    eval_batch_size,
    evaluate,
    interaction_matrix,
)
from ranker.features import RankerInputs, RankingTask
from ranker.lightgbm_ranker import LightGBMRanker, TrainingPairs, scorers_sharing_candidates
from ranker.registry import ranker_class
from training._inputs import EncodedSplit, EncoderReport, ItemContent, encode_inputs
from training._memory import release_memory
from training._newcomers import NewcomerChoice, choose_newcomers, choose_route
from training._plans import USER_PROTOCOLS, EvaluationPlan
from training._settings import ModelSettings, StandInConfig, TimedChoices
from training.defaults import COLD_SLOTS_GRID, NEWCOMER_ROUTE_BOUNDS, ROUTE_USERS

if TYPE_CHECKING:
    from distributed import Client

JSON = dict[str, object]


@dataclass(frozen=True)
class ColdSlotChoice:
    """The cold places chosen on validation, and the NDCG at the ranker's cut-off of every value tried."""

    chosen: int
    k: int
    ndcg: dict[int, float]

    def as_dict(self) -> JSON:
        return {"chosen": self.chosen, f"ndcg@{self.k}": {str(s): round(v, 4) for s, v in self.ndcg.items()}}


@dataclass(frozen=True)
class FitReport:
    """What fitting one ranker measured: its metadata, both encoders' reports and the settings they ran with."""

    ranker: str
    ranker_metadata: JSON
    fit: EncoderReport  # the encoders the ranker learned from
    served: EncoderReport  # the encoders it serves from (refitted on the whole training history where labels
    # were cut out of it)
    standins: StandInConfig
    bprmf: CFConfig  # the collaborative model's config (BPRConfig or ImplicitConfig)
    cold_slots: ColdSlotChoice | None
    seconds: float
    newcomers: NewcomerChoice | None = None  # the newcomer model's weights, chosen on a holdout of training users

    @classmethod
    def measured(
        cls,
        settings: ModelSettings,
        ranker: RankerBase,
        fit: EncoderReport,
        served: EncoderReport,
        cold_slots: ColdSlotChoice | None,
        *,
        started: float,
        newcomers: NewcomerChoice | None = None,
    ) -> FitReport:
        """The report of a ranker fitted with `settings` on inputs whose encoders reported `fit` and serving from
        inputs whose encoders reported `served`, timed from `started` (a `time.perf_counter()` reading)."""
        return cls(
            ranker=settings.ranker_name,
            ranker_metadata=ranker.metadata,
            fit=fit,
            served=served,
            standins=settings.standins,
            bprmf=settings.cf,
            cold_slots=cold_slots,
            seconds=round(time.perf_counter() - started, 1),
            newcomers=newcomers,
        )

    @property
    def served_warming(self) -> JSON | None:
        """What synthetic interactions warmed in the served inputs (None without warming)."""
        return self.served.warming

    def as_dict(self) -> JSON:
        """The JSON form (report.json's `models`, `warmstart evaluate --json`'s `models`)."""
        return {
            "ranker": self.ranker,
            self.ranker: self.ranker_metadata,
            "encoders": {"fit": self.fit.as_dict(), "served": self.served.as_dict()},
            "standins": self.standins.model_dump(),
            "bprmf": self.bprmf.model_dump(),
            "cold_slots": self.cold_slots.as_dict() if self.cold_slots is not None else {},
            "newcomers": self.newcomers.as_dict() if self.newcomers is not None else None,
            "fit_seconds": self.seconds,
        }


@dataclass(frozen=True, eq=False)
class FittedRanker:
    """A ranker trained for a plan, with the inputs it serves from and what fitting it measured."""

    ranker: RankerBase
    served: EncodedSplit
    report: FitReport | None = None  # None for a ranker re-scored on another run's inputs (the incumbent)
    # Rankers trained on the same encoders with other timed choices (fit_ranker's `alternatives`), by name.
    alternatives: dict[str, FittedRanker] = field(default_factory=dict)

    # The model's scores on the last split scored (`scorer`): the split, the newcomer route they were scored with,
    # and the scores kept. The candidate's own line, its tail-calibrated variant and the gate's evidence rank the
    # same held-out users from the same scores; each scored them again (a third of a retrain's evaluation).
    _scored: list[tuple[ProtocolSplit, object, _ScoredOnce]] = field(default_factory=list, init=False, repr=False)

    def without_warming(self) -> FittedRanker:
        """The same ranker serving cold items through their content stand-ins: what synthetic interactions add."""
        return FittedRanker(self.ranker, self.served.without_warming(), self.report)

    def inputs_for(self, split: ProtocolSplit) -> RankerInputs:
        """The served inputs, with the split's request times (`EncodedSplit.inputs_for`)."""
        return self.served.inputs_for(split)

    def scorer(self, split: ProtocolSplit, *, share: bool = True) -> Scorer:
        """The ranker's scorer over the split's users and candidates (its `exclude` pairs -inf), ordered as it
        serves (`place`). The model's scores of each batch are computed once per split and kept (their finite
        entries): scoring the same split again, for another line over the same lists, reads them back. Where
        `share` (scoring in this process), the timed alternatives over the same inputs are readied for the split
        too, each batch's candidates and features built once for all (`scorers_sharing_candidates`)."""
        ranker, inputs = self.ranker, self.inputs_for(split)
        route = ranker.newcomers
        kept = self._scored[0] if self._scored else None
        if kept is None or kept[0] is not split or kept[1] != route or (kept[2].shared and not share):
            exclude = interaction_matrix(split.exclude, split.index)
            siblings = self._sharing_candidates() if share else []
            models: list[Scorer | None] = [None]
            if siblings:
                models = list(scorers_sharing_candidates([ranker, *(s.ranker for s in siblings)], inputs, exclude))
            kept = (split, route, _ScoredOnce(ranker.scorer(inputs, exclude, placed=False, model=models[0])))
            kept[2].shared = bool(siblings)
            self._scored[:] = [kept]  # one split at a time: memory stays that of one split's candidates
            for sibling, model in zip(siblings, models[1:], strict=True):
                readied = _ScoredOnce(sibling.ranker.scorer(inputs, exclude, placed=False, model=model))
                readied.shared = True
                sibling._scored[:] = [(split, sibling.ranker.newcomers, readied)]
        model = kept[2]

        def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
            return ranker.place(model(users, items), inputs, items)

        return score

    def _sharing_candidates(self) -> list[FittedRanker]:
        """The timed alternatives (not this one) serving from the same inputs whose LightGBM rankers choose
        candidates as this one's does."""
        ranker = self.ranker
        if not isinstance(ranker, LightGBMRanker):
            return []
        return [
            other
            for other in self.alternatives.values()
            if other is not self
            and other.served is self.served
            and isinstance(other.ranker, LightGBMRanker)
            and other.ranker.candidates_chosen_by == ranker.candidates_chosen_by
        ]

    def evaluate(self, split: ProtocolSplit, k: int, *, partitions: PartitionMap = IN_TURN) -> EvalResult:
        """Evaluate on any split that shares the plan's index and training interactions, its batches of users on
        `partitions`. Where those ship their work to several workers (a Dask cluster), the model scores the split's
        users there, a part of each batch per worker, and the finite scores come back to be kept here (`scorer`), so
        the lines that rank from the same scores (tail-calibrated, the gate's evidence, the audit) score nothing
        again; the lists are ranked here from them, the same lists as one process ranks."""
        elsewhere = partitions.ships and partitions.workers > 1
        scorer = self.scorer(split, share=not elsewhere)  # a shared scorer stays in this process
        if elsewhere:
            self._score_on(partitions, split)
        # Ranked here: on the map's threads where it has them; a shipping map's single worker would be sent the
        # shared scorer (a lock does not pickle).
        return evaluate(split, scorer, k=k, partitions=IN_TURN if partitions.ships else partitions)

    def _score_on(self, partitions: PartitionMap, split: ProtocolSplit) -> None:
        """Score the batches `evaluate` will ask for (those not kept yet) on `partitions`, and keep the scores."""
        kept, users, items = self._scored[0][2], split.users, split.candidates
        batches = [users[lo:hi] for lo, hi in itertools.pairwise(batch_bounds(users.size, eval_batch_size(items.size)))]
        batches = [batch for batch in batches if not kept.has(batch, items)]
        if not batches:
            return
        parts = [part for batch in batches for part in np.array_split(batch, partitions.workers) if part.size]
        scored = iter(partitions(functools.partial(_finite_scores, kept.model, items), parts))
        for batch in batches:
            pieces, offset = [], 0
            for part in np.array_split(batch, partitions.workers):
                if part.size:
                    rows, columns, values = next(scored)
                    pieces.append((rows + offset, columns, values))
                offset += part.size
            kept.keep(batch, items, *(np.concatenate(column) for column in zip(*pieces, strict=True)))


def choose_cold_slots(
    fitted: FittedRanker, split: ProtocolSplit, grid: tuple[int, ...] = COLD_SLOTS_GRID
) -> ColdSlotChoice | None:
    """Set the LightGBM ranker's cold places to the value of `grid` with the best NDCG at its eval_k on `split`
    (ties to fewer places). Rankers without cold places are left as they are (None)."""
    ranker = fitted.ranker
    if not isinstance(ranker, LightGBMRanker):
        return None
    k, ndcg = ranker.config.eval_k, {}
    inputs = fitted.served.inputs
    model = _ScoredOnce(ranker.scorer(inputs, interaction_matrix(split.exclude, split.index), placed=False))
    for slots in grid:
        # The places reorder the model's scores; they do not change them: score the split once.
        ranker.with_cold_slots(slots)
        placed = evaluate(split, lambda users, items: ranker.place(model(users, items), inputs, items), k=k)
        ndcg[slots] = placed.value("ndcg")
    best = max(grid, key=lambda slots: (ndcg[slots], -slots))
    ranker.with_cold_slots(best)
    return ColdSlotChoice(best, k, ndcg)


class _ScoredOnce:
    """A scorer that scores each (users, items) batch once and answers again from what it kept: the finite scores
    only (a learned ranker's candidates), so memory grows with the candidates, not with users x items."""

    def __init__(self, model: Scorer) -> None:
        self._model = model
        self._kept: dict[tuple[bytes, bytes], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._key = BatchKeys()
        self.shared = False  # the model shares its candidates with other rankers' (not to be sent to workers)

    @property
    def model(self) -> Scorer:
        return self._model

    def has(self, users: np.ndarray, items: np.ndarray) -> bool:
        return self._key(users, items) in self._kept

    def keep(
        self, users: np.ndarray, items: np.ndarray, rows: np.ndarray, columns: np.ndarray, values: np.ndarray
    ) -> None:
        """Keep the finite scores of a batch scored elsewhere (`_finite_scores` of the same model)."""
        self._kept[self._key(users, items)] = (rows, columns, values)

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        key = self._key(users, items)
        if key not in self._kept:
            scores = self._model(users, items)
            self._kept[key] = _finite(scores)
            return scores
        rows, columns, values = self._kept[key]
        scores = np.full((users.size, items.size), -np.inf, dtype=values.dtype)
        scores[rows, columns] = values
        return scores


def _finite_scores(model: Scorer, items: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_finite` of `model`'s (users x items) scores: what `_ScoredOnce` keeps, computed on another worker."""
    return _finite(model(users, items))


def _finite(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, score) of the finite entries of a dense score matrix (found by a flat scan: 2-D np.nonzero
    took 60 ms of a 33 x 500k batch; benchmarks/dense_topk.py); positions as int32 where they fit, since every
    line's kept scores stay for the evaluation's length (20,000 users' candidates each)."""
    rows, columns = np.divmod(np.flatnonzero(np.isfinite(scores)), scores.shape[1])
    values = scores[rows, columns]
    if max(scores.shape) < np.iinfo(np.int32).max:
        rows, columns = rows.astype(np.int32), columns.astype(np.int32)
    return rows, columns, values


def _task(users_from: pl.DataFrame, index: EvalIndex, pool: np.ndarray, exclude: pl.DataFrame | None) -> RankingTask:
    return RankingTask(
        users=np.unique(index.users(users_from[Columns.user])),
        pool=pool,
        positives=interaction_matrix(users_from, index),
        exclude=interaction_matrix(exclude, index) if exclude is not None else None,
    )


def train_ranker(
    plan: EvaluationPlan, fitted: EncodedSplit, settings: ModelSettings, *, client: Client | None = None
) -> RankerBase:
    """The chosen ranker fitted on inputs encoded from `plan.fit_history`: labels `plan.fit_labels` among the warm
    items, early stopping on `plan.valid_labels` among `plan.valid_pool`.

    With a Dask `client`, the LightGBM ranker trains through DaskLGBMRanker on its cluster (`ranker.lightgbm_dask`):
    for the rounds its configuration fixes (a refit), or, where it stops early, for the rounds a single-node fit on
    the same pairs chose on validation (DaskLGBMRanker cannot stop early)."""
    ranker = settings.new_ranker()
    if client is None or not isinstance(ranker, LightGBMRanker):
        return train_rankers(plan, fitted, [settings])[0]
    from ranker.lightgbm_dask import fit_on_dask

    train, valid = _ranking_tasks(plan, fitted)
    chosen_by = None
    if ranker.config.early_stopping_rounds is not None:
        single = ranker.fit(fitted.inputs, train, valid)
        chosen_by = {key: value for key, value in single.metadata.items() if key != "feature_importance_gain"}
        ranker = LightGBMRanker(single.refit_config())
    return fit_on_dask(ranker, fitted.inputs, train, client, chosen_by=chosen_by)


def train_rankers(
    plan: EvaluationPlan, fitted: EncodedSplit, settings: Sequence[ModelSettings], *, client: Client | None = None
) -> list[RankerBase]:
    """train_ranker for each of `settings`, on the same inputs; LightGBM rankers (in this process) whose
    configurations choose the same training pairs learn from one set of them, built once: the candidates and their
    features were most of a LightGBM fit at 500k items, and the timed alternatives differ only in what they learn.
    Each pair set is let go once the last ranker choosing it has trained."""
    if client is not None:
        return [train_ranker(plan, fitted, one, client=client) for one in settings]
    rankers = [one.new_ranker() for one in settings]
    chosen_by = [ranker.pairs_chosen_by if isinstance(ranker, LightGBMRanker) else None for ranker in rankers]
    train, valid = _ranking_tasks(plan, fitted)
    pairs: dict[tuple[object, ...], TrainingPairs] = {}
    for position, ranker in enumerate(rankers):
        if not isinstance(ranker, LightGBMRanker):
            ranker.fit(fitted.inputs, train, valid)
            continue
        key = ranker.pairs_chosen_by
        if key not in pairs:
            pairs[key] = ranker.training_pairs(fitted.inputs, train, valid)
        ranker.fit_pairs(pairs[key])
        if key not in chosen_by[position + 1 :]:
            del pairs[key]  # no later ranker learns from them
    return rankers


def _ranking_tasks(plan: EvaluationPlan, fitted: EncodedSplit) -> tuple[RankingTask, RankingTask]:
    """(training, validation) tasks: `plan.fit_labels` among the warm items, `plan.valid_labels` among
    `plan.valid_pool`."""
    index = plan.split.index
    train = _task(plan.fit_labels, index, np.flatnonzero(fitted.inputs.popularity > 0), None)
    return train, _task(plan.valid_labels, index, plan.valid_pool, plan.valid_exclude)


def encode_plan(
    plan: EvaluationPlan,
    history: pl.DataFrame,
    settings: ModelSettings,
    *,
    cache_dir: Path,
    cf: CFConfig | None = None,
    validate: bool = True,
    takers: pl.DataFrame | None = None,
    content: ItemContent | None = None,
) -> EncodedSplit:
    """The plan's inputs encoded from `history` with `settings` (BPR-MF's config replaced by `cf` where given;
    stopped early on the plan's validation pairs when `validate`); users' stand-ins from the plan's users table;
    `takers` (the ranker's labels) warm a share of warm items as a judge's pairs would (`warmed_standins`);
    `content` the plan's items' where another set of inputs has it already."""
    return encode_inputs(
        plan.split.index,
        plan.split.items,
        history,
        cache_dir=cache_dir,
        cf_config=cf or settings.cf,
        standin_config=settings.standins,
        cf_validation=plan.cf_validation if validate else None,
        warming=settings.warming,
        synthetic=plan.synthetic,
        users=plan.users,
        takers=takers,
        content=content,
    )


def served_inputs(
    plan: EvaluationPlan,
    fitted: EncodedSplit,
    settings: ModelSettings,
    *,
    cache_dir: Path,
) -> EncodedSplit:
    """What the ranker serves from: the whole training history. Where the ranker's labels came out of it, the
    encoders are refitted on it for as many BPR epochs as early stopping chose (the labels are training pairs now,
    so no validation). A ranker tied to its encoders (DeepFM learned projections of their coordinates, which a
    refitted BPR-MF would rotate) keeps them and serves from the whole history, its labels included."""
    if _encodes_for_serving(plan, settings):
        return _encoded_for_serving(plan, fitted.report, settings, cache_dir=cache_dir, content=fitted.content)
    if not plan.refit_for_serving:
        return fitted
    return fitted.with_history(interaction_matrix(plan.split.train, plan.split.index))


def served_history_view(plan: EvaluationPlan, fitted: EncodedSplit, settings: ModelSettings) -> EncodedSplit:
    """`fitted` with the history, popularity and recency of the inputs `served_inputs` serves from, without encoding
    anything: all the newcomer model reads of the served inputs (no encoder's output)."""
    if _encodes_for_serving(plan, settings):
        return fitted.over_log(plan.split.train, plan.split.index, plan.split.items)
    return served_inputs(plan, fitted, settings, cache_dir=Path())  # these paths encode nothing


def _encodes_for_serving(plan: EvaluationPlan, settings: ModelSettings) -> bool:
    """Whether served_inputs encodes inputs of its own (after which the fitted ones can go): the ranker's labels
    came out of its history, and its ranker is not tied to the fitted encoders."""
    return plan.refit_for_serving and not ranker_class(settings.ranker_name).tied_to_encoders


def _encoded_for_serving(
    plan: EvaluationPlan,
    fit: EncoderReport,
    settings: ModelSettings,
    *,
    cache_dir: Path,
    content: ItemContent | None = None,
) -> EncodedSplit:
    """served_inputs' refitted encoders: the whole training history, as many BPR epochs as `fit` chose; the items'
    `content` shared with the fitted inputs where given."""
    epochs = max(int(fit.bprmf["best_epoch"] or 0), 1)
    cf = settings.cf.model_copy(update={"epochs": epochs})
    return encode_plan(plan, plan.split.train, settings, cache_dir=cache_dir, cf=cf, validate=False, content=content)


def fit_ranker(
    plan: EvaluationPlan,
    *,
    cache_dir: Path,
    settings: ModelSettings,
    alternatives: dict[str, TimedChoices] | None = None,
    client: Client | None = None,
    partitions: PartitionMap = IN_TURN,
) -> FittedRanker:
    """Fit encoders and the ranker `settings.ranker_name` names as the plan says (with `settings.timed`'s choices
    where the training log has times; users' stand-ins from the attributes in the plan's users table). On a log
    with times, each of `alternatives` is trained too, on the same encoders (`FittedRanker.alternatives`; one whose
    ranker equals the main one is the main one). With a Dask `client`, LightGBM rankers train on its cluster
    (`train_ranker`). The newcomers' route is chosen over blocks of validation users scored on `partitions`."""
    started = time.perf_counter()
    timed = has_times(plan.split.train)
    others = {name: settings.with_timed(choices).for_log(timed) for name, choices in (alternatives or {}).items()}
    settings = settings.for_log(timed)
    if any(other.warming != settings.warming for other in others.values()):
        raise ConfigError("timed alternatives must warm stand-ins as the main settings do (they share its encoders).")
    fitted = encode_plan(plan, plan.fit_history, settings, cache_dir=cache_dir, takers=plan.fit_labels)
    # The alternatives learn from the same inputs and pairs: trained now, from the candidate indexes the main fit
    # built.
    differing = {
        name: other for name, other in others.items() if timed and other.ranker_config() != settings.ranker_config()
    }
    ranker, *alternative_rankers = train_rankers(plan, fitted, [settings, *differing.values()], client=client)
    trained = dict(zip(differing, alternative_rankers, strict=True))
    # Served inputs that need no encoding of their own are there now; where they do, the newcomer model's weights
    # and route are chosen before they are encoded, so that the fitted inputs the route reads go first (held beside
    # that encoding, they were the fit's peak at 500k items), the weights reading nothing the encoders make
    # (`served_history_view`).
    served = (
        None if _encodes_for_serving(plan, settings) else served_inputs(plan, fitted, settings, cache_dir=cache_dir)
    )
    # Where cold items compete with warm ones, how many top places the best cold items keep is chosen on validation
    # (before the route, which places as the ranker will serve).
    calibrated = None
    if plan.calibration is not None and served is not None:
        calibrated = choose_cold_slots(FittedRanker(ranker, served), plan.calibration)
    arrivals = plan.split.protocol not in USER_PROTOCOLS  # held out from any time, or arriving now
    newcomers = choose_newcomers_for(
        served or served_history_view(plan, fitted, settings),
        settings,
        plan.split.train,
        plan.split.index,
        arrivals=arrivals,
    )
    if newcomers is not None:
        index = plan.split.index
        route = choose_route(
            ranker,
            fitted.inputs,
            newcomers.chosen,
            interaction_matrix(plan.valid_labels, index),
            plan.valid_pool,
            interaction_matrix(plan.valid_exclude, index) if plan.valid_exclude is not None else None,
            k=settings.ranker.eval_k,
            bounds=NEWCOMER_ROUTE_BOUNDS,
            max_users=ROUTE_USERS,
            seed=settings.seed,
            partitions=partitions,
        )
        newcomers = replace(newcomers, route=route)
    fit_report = fitted.report
    if served is None:
        # The fitted split (its inputs, their candidate indexes, its warming record) goes before the served inputs
        # are encoded; the items' content is shared, not encoded again.
        content = fitted.content
        del fitted
        release_memory()
        served = _encoded_for_serving(plan, fit_report, settings, cache_dir=cache_dir, content=content)
        if plan.calibration is not None:  # no plan has both today (ALDI's splits refit nothing for serving)
            calibrated = choose_cold_slots(FittedRanker(ranker, served), plan.calibration)
    ranker.with_newcomers(newcomers.served if newcomers is not None else None)
    report = FitReport.measured(
        settings, ranker, fit_report, served.report, calibrated, started=started, newcomers=newcomers
    )
    main = FittedRanker(ranker, served, report)
    for name in others if timed else ():
        if name not in trained:  # the main ranker's own configuration
            main.alternatives[name] = main
            continue
        other_ranker = trained[name].with_newcomers(ranker.newcomers)
        main.alternatives[name] = FittedRanker(
            other_ranker, served, replace(report, ranker_metadata=other_ranker.metadata)
        )
    return main


def refit_ranker(
    plan: EvaluationPlan,
    candidate: RankerBase,
    chosen: FitReport | None,
    *,
    cache_dir: Path,
    settings: ModelSettings,
    client: Client | None = None,
) -> FittedRanker:
    """The `candidate` ranker (fitted with `settings` and judged on its own held-out data; `chosen` its fit report)
    trained again as `plan` says (the whole log: `whole_log_plan`) with everything it chose kept: BPR-MF's epochs,
    the ranker's rounds or epochs, its cold places and timed choices. Nothing is chosen on validation here, so
    nothing is tuned on the events the candidate was judged on. With a Dask `client`, a LightGBM ranker trains on
    its cluster (DaskLGBMRanker, the candidate's rounds). Takes the candidate's ranker and report, not its inputs,
    so that a caller done with those can let them go first (at 500k items each set of inputs is gigabytes)."""
    if chosen is None:
        raise TypeError("refit_ranker needs the candidate's fit report (its chosen epochs).")
    started = time.perf_counter()
    epochs = int(chosen.fit.bprmf.get("best_epoch") or settings.cf.epochs)
    fixed = settings.for_log(has_times(plan.split.train)).refitting(candidate, epochs)
    fitted = encode_plan(plan, plan.fit_history, fixed, cache_dir=cache_dir, validate=False, takers=plan.fit_labels)
    ranker = train_ranker(plan, fitted, fixed, client=client).with_newcomers(candidate.newcomers)
    fit = fitted.report
    if _encodes_for_serving(plan, fixed):
        # The inputs the ranker learnt from are done with: let them (and their candidate indexes) go before the
        # served ones are encoded. Holding both beside the candidate's killed a refit at 500k items (20 GB).
        content = fitted.content
        del fitted
        release_memory()
        served = _encoded_for_serving(plan, fit, fixed, cache_dir=cache_dir, content=content)
    else:
        served = served_inputs(plan, fitted, fixed, cache_dir=cache_dir)
    report = FitReport.measured(
        fixed, ranker, fit, served.report, chosen.cold_slots, started=started, newcomers=chosen.newcomers
    )
    return FittedRanker(ranker, served, report)


def choose_newcomers_for(
    served: EncodedSplit, settings: ModelSettings, log: pl.DataFrame, index: EvalIndex, *, arrivals: bool
) -> NewcomerChoice | None:
    """The newcomer model's weights for inputs served as `settings` say, `log` being their history's events (None
    where newcomers are not routed); chosen on the latest arrivals where `arrivals` (`choose_newcomers`)."""
    if settings.newcomers is None:
        return None
    return choose_newcomers(
        served.inputs,
        settings.newcomers,
        numeric_columns=served.user_standins.numeric_columns if served.user_standins is not None else 0,
        log=log,
        index=index,
        arrivals=arrivals,
        k=settings.ranker.eval_k,
        seed=settings.seed,
    )


@dataclass(frozen=True)
class EvaluationReport:
    """One evaluation: the protocol and split, the metrics on real held-out data, what fitting measured."""

    protocol: str
    split: str
    k: int
    n_users: int
    metrics: pl.DataFrame
    models: FitReport
    seconds: float
    saved_to: Path | None = None

    def as_dict(self) -> JSON:
        """The JSON form `warmstart evaluate --json` writes."""
        models = self.models.as_dict()
        if self.saved_to is not None:
            models["saved_to"] = str(self.saved_to)
        return {
            "protocol": self.protocol,
            "split": self.split,
            "k": self.k,
            "n_users": self.n_users,
            "metrics": self.metrics.to_dicts(),
            "models": models,
            "seconds": self.seconds,
        }


def train_and_evaluate(
    plan: EvaluationPlan,
    *,
    k: int,
    cache_dir: Path,
    settings: ModelSettings,
    model_dir: Path | None = None,
) -> EvaluationReport:
    """Fit as the plan says, evaluate on its split (and save the ranker under `model_dir` where given)."""
    started = time.perf_counter()
    fitted = fit_ranker(plan, cache_dir=cache_dir, settings=settings)
    if model_dir is not None:
        fitted.ranker.save(model_dir)
    result = fitted.evaluate(plan.split, k)
    if fitted.report is None:
        raise TypeError("fit_ranker returned a ranker without its report.")
    return EvaluationReport(
        protocol=plan.split.protocol,
        split=plan.split.name,
        k=k,
        n_users=result.n_users,
        metrics=result.metrics,
        models=fitted.report,
        seconds=round(time.perf_counter() - started, 1),
        saved_to=model_dir,
    )
