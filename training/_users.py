"""Evaluating the product on users without (or with little) history: the cold-user and sparse-user protocols.

The ranker's handling of such users (the share of training users it is shown without their history) is chosen on
the plan's `user_validation` split, drawn among training users only; then the product is fitted and scored on the
test users beside the lines it must beat, each on the same split: popularity, attribute-group popularity (what the
users' attributes alone recommend) and, for sparse users, BPR-MF scoring them from the factors their few events
gave them (the product's own served encoders).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from catalog import Columns, ConfigError, has_times
from monitor import Lines, reference_protocol
from ranker.baselines import ArrivalPopularityScorer, AttributePopularityScorer, PopularityScorer
from ranker.evaluate import SPARSE_USERS, EvalResult, ProtocolSplit, Scorer, interaction_matrix
from ranker.evaluate import evaluate as evaluate_split
from ranker.features import RankerInputs
from ranker.lightgbm_ranker import LightGBMRankerConfig
from ranker.temporal import RECENT_DAYS
from training._fit import (
    EvaluationReport,
    FittedRanker,
    choose_newcomers_for,
    encode_plan,
    fit_ranker,
    served_inputs,
    train_ranker,
)
from training._newcomers import RouteChoice, choose_route
from training._plans import USER_PROTOCOLS, EvaluationPlan
from training._settings import ModelSettings
from training.defaults import COLD_USER_SHARE_GRID, NEWCOMER_ROUTE_BOUNDS, ROUTE_USERS

JSON = dict[str, object]
PRODUCT = "product"


@dataclass(frozen=True)
class ColdUserShareChoice:
    """The share of training users shown without history, chosen on the training users' validation split, and the
    NDCG at the ranker's cut-off of every share tried there."""

    chosen: float
    k: int
    ndcg: dict[float, float]
    split: str
    n_users: int

    def as_dict(self) -> JSON:
        return {
            "chosen": self.chosen,
            "validation": {"split": self.split, "users": self.n_users},
            f"ndcg@{self.k}": {f"{share:g}": round(value, 4) for share, value in self.ndcg.items()},
        }


def _with_share(settings: ModelSettings, share: float) -> ModelSettings:
    return replace(settings, ranker=settings.ranker.model_copy(update={"cold_user_share": share}))


def choose_cold_user_share(
    plan: EvaluationPlan,
    settings: ModelSettings,
    *,
    cache_dir: Path,
    grid: tuple[float, ...] = COLD_USER_SHARE_GRID,
) -> ColdUserShareChoice:
    """Fit the encoders once on `plan` (a validation plan: its split's truth are training users) and the LightGBM
    ranker once per share of `grid`; keep the share with the best validation NDCG at the ranker's eval_k (ties to
    the smaller share)."""
    if not isinstance(settings.ranker_config(), LightGBMRankerConfig):
        name = settings.ranker_name
        raise ConfigError(f"the share of users shown without history is a LightGBM setting, not {name}'s.")
    base = settings.for_log(has_times(plan.split.train))
    fitted = encode_plan(plan, plan.fit_history, base, cache_dir=cache_dir, takers=plan.fit_labels)
    served = served_inputs(plan, fitted, base, cache_dir=cache_dir)
    k, ndcg = base.ranker.eval_k, {}
    for share in grid:
        ranker = train_ranker(plan, fitted, _with_share(base, share))
        ndcg[share] = FittedRanker(ranker, served).evaluate(plan.split, k).value("ndcg")
    best = max(grid, key=lambda share: (ndcg[share], -share))
    return ColdUserShareChoice(best, k, ndcg, plan.split.name, plan.split.n_users)


def choose_user_route(plan: EvaluationPlan, settings: ModelSettings, *, cache_dir: Path) -> RouteChoice:
    """Which newcomers the newcomer model serves, chosen on `plan` (a validation plan of the protocol drawn among
    training users: its truth are users held out from any time, as the test users are) against the ranker fitted
    on it. A fit's own route is chosen on its labels' cut in time, whose newcomers are the latest arrivals: not
    the users these protocols hold out."""
    if settings.newcomers is None:
        raise ConfigError("the newcomer route is chosen only where settings route newcomers.")
    base = settings.for_log(has_times(plan.split.train))
    fitted = encode_plan(plan, plan.fit_history, base, cache_dir=cache_dir, takers=plan.fit_labels)
    served = served_inputs(plan, fitted, base, cache_dir=cache_dir)
    ranker = train_ranker(plan, fitted, base)
    split = plan.split
    weights = choose_newcomers_for(served, base, split.train, split.index, arrivals=False)
    assert weights is not None
    truth, exclude = interaction_matrix(split.truth, split.index), interaction_matrix(split.exclude, split.index)
    inputs = served.inputs_for(split)  # the validation users ask at their own times, as the test users do
    pool = np.arange(inputs.n_items)
    return choose_route(
        ranker,
        inputs,
        weights.chosen,
        truth,
        pool,
        exclude,
        k=base.ranker.eval_k,
        bounds=NEWCOMER_ROUTE_BOUNDS,
        max_users=ROUTE_USERS,
        seed=base.seed,
    )


def _with_route(fitted: FittedRanker, route: RouteChoice) -> FittedRanker:
    """`fitted` serving newcomers as `route` says (with the weights its own fit chose), its report saying so."""
    report = fitted.report
    if report is None or report.newcomers is None:
        raise TypeError("a route applies to a fit that chose newcomer weights.")
    newcomers = replace(report.newcomers, route=route)
    fitted.ranker.with_newcomers(newcomers.served)
    return replace(fitted, report=replace(report, newcomers=newcomers, ranker_metadata=fitted.ranker.metadata))


def bprmf_scorer(inputs: RankerInputs) -> Scorer:
    """BPR-MF alone: each user's factors dotted with each item's (its bias riding along, `training._inputs`); a
    user or item BPR-MF never saw has zero factors, so items score by their bias only."""

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return (inputs.user_cf[users] @ inputs.item_cf[items].T).astype(np.float32)

    return score


def user_reference_scorers(
    split: ProtocolSplit,
    *,
    attributes: tuple[str, ...] | None,
    served: RankerInputs | None = None,
    arrival_days: int = RECENT_DAYS[1],
) -> dict[str, Scorer]:
    """Popularity, attribute-group popularity (over `attributes`; every categorical one when None), where the
    split's users arrive at their own times popularity at arrival (the share of the `arrival_days` days before
    each user asks) and, where `served` is given, BPR-MF from its factors; fitted on the split's training rows."""
    if split.users_table is None:
        raise ConfigError(f"{split.name} has no users table: attribute-group popularity needs the users' attributes.")
    scorers: dict[str, Scorer] = {
        Lines.popularity: PopularityScorer().fit(split.train, split.index),
        Lines.attribute_popularity: AttributePopularityScorer(attributes).fit(
            split.train, split.index, users=split.users_table
        ),
    }
    if split.requested_at is not None and has_times(split.train):
        scorers[Lines.arrival_popularity] = ArrivalPopularityScorer(arrival_days).fit(
            split.train, split.index, split.requested_at
        )
    if served is not None:
        scorers[Lines.bprmf] = bprmf_scorer(served)
    return scorers


@dataclass(frozen=True, eq=False)
class UserEvaluation:
    """The product on a protocol over users, beside its lines on the same split."""

    split: ProtocolSplit
    report: EvaluationReport
    choice: ColdUserShareChoice | None
    lines: pl.DataFrame  # (segment, metric, k, value, protocol 'PROTOCOL:LINE')
    results: dict[str, EvalResult]  # 'product' and each line: their top-k lists, for paired intervals over users
    fitted: FittedRanker  # the product evaluated, with the inputs it serves from (what a kept version saves)

    def as_dict(self) -> JSON:
        """`warmstart evaluate --json`'s report, with the lines and the share chosen on validation."""
        choice = self.choice.as_dict() if self.choice is not None else None
        return self.report.as_dict() | {"lines": self.lines.to_dicts(), "cold_user_share": choice}


def _all_newcomers(split: ProtocolSplit, settings: ModelSettings) -> bool:
    """Whether the newcomer model serves every test user of `split` (none has more events than it takes): the
    ranker's handling of users without history then serves nobody, so it is not chosen."""
    if settings.newcomers is None:
        return False
    history = interaction_matrix(split.train, split.index)
    tested = np.unique(split.index.users(split.truth[Columns.user]))
    return bool(np.diff(history.indptr)[tested].max(initial=0) <= settings.newcomers)


def evaluate_users(
    plan: EvaluationPlan,
    *,
    k: int,
    cache_dir: Path,
    settings: ModelSettings,
    model_dir: Path | None = None,
    grid: tuple[float, ...] = COLD_USER_SHARE_GRID,
    cold_user_share: float | None = None,
) -> UserEvaluation:
    """Choose the LightGBM ranker's share of users shown without history on `plan.user_validation` (not for
    other rankers; `cold_user_share`, where given, is used instead and nothing is chosen), fit the product on the
    plan with it, evaluate on the test users and score the lines there."""
    split = plan.split
    if split.protocol not in USER_PROTOCOLS or plan.user_validation is None:
        raise ConfigError(f"evaluate_users needs a plan of {list(USER_PROTOCOLS)} (training.user_plan).")
    started = time.perf_counter()
    choice = None
    if cold_user_share is not None:
        settings = _with_share(settings, cold_user_share)
    elif isinstance(settings.ranker_config(), LightGBMRankerConfig) and not _all_newcomers(split, settings):
        choice = choose_cold_user_share(plan.user_validation, settings, cache_dir=cache_dir, grid=grid)
        settings = _with_share(settings, choice.chosen)
    route = None
    if settings.newcomers is not None:
        route = choose_user_route(plan.user_validation, settings, cache_dir=cache_dir)
    fitted = fit_ranker(plan, cache_dir=cache_dir, settings=settings)
    if route is not None:
        fitted = _with_route(fitted, route)
    if fitted.report is None:
        raise TypeError("fit_ranker returned a ranker without its report.")
    if model_dir is not None:
        fitted.ranker.save(model_dir)
    results = {PRODUCT: fitted.evaluate(split, k)}
    served = fitted.served.inputs if split.protocol == SPARSE_USERS else None
    newcomers = fitted.ranker.newcomers
    days = newcomers.recent_days if newcomers is not None else RECENT_DAYS[1]  # the window the newcomer model reads
    scorers = user_reference_scorers(split, attributes=plan.group_attributes, served=served, arrival_days=days)
    for name, scorer in scorers.items():
        results[name] = evaluate_split(split, scorer, k=k)
    lines = pl.concat(
        [
            result.metrics.with_columns(pl.lit(reference_protocol(split.protocol, name)).alias("protocol"))
            for name, result in results.items()
            if name != PRODUCT
        ]
    )
    report = EvaluationReport(
        protocol=split.protocol,
        split=split.name,
        k=k,
        n_users=results[PRODUCT].n_users,
        metrics=results[PRODUCT].metrics,
        models=fitted.report,
        seconds=round(time.perf_counter() - started, 1),
        saved_to=model_dir,
    )
    return UserEvaluation(split=split, report=report, choice=choice, lines=lines, results=results, fitted=fitted)
