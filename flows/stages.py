"""The stages of a refresh cycle, each defined once: a typed function over explicit inputs, returning a typed result.

    ingest -> detect -> augment -> encode -> retrain -> evaluate -> gate -> (record, promote: flows/cycle.py)

Every entry point composes these: the CLI commands, the Prefect flows (through flows/tasks.py, which turns each into
a task mechanically) and the backfill (one window = one cycle as of a date). No stage reads settings: the entry
layer passes what they need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from augment import WEIGHT
from catalog import (
    Columns,
    ConfigError,
    Dataset,
    Segments,
    Tables,
    WarmstartError,
    Workspace,
    WorkspaceError,
    fetch_movielens_100k,
    load_citeulike,
    load_movielens_100k,
    segments_as_of,
    summarize_segments,
)
from monitor import Evidence, GateConfig, GateDecision, GateMetric, decide, reference_protocol

if TYPE_CHECKING:  # torch and the models load only in the stages that use them
    from augment import Backend
    from flows.pipeline import EvaluationPlan, FittedRanker, ModelSettings, TimedChoices, Warmed
    from ranker.baselines import PopularityScorer
    from ranker.evaluate import EvalIndex, ProtocolSplit

DATASETS = ("ml-100k", "citeulike")

# ------------------------------------------------------------------------------------------------ ingest


def load_named_dataset(name: str, data_dir: Path | None, cache_dir: Path) -> Dataset:
    """Load a built-in data set: MovieLens-100K (fetched into `cache_dir` unless `data_dir`) or CiteULike-a."""
    if name == "ml-100k":
        return load_movielens_100k(data_dir or fetch_movielens_100k(cache_dir))
    if name == "citeulike":
        if data_dir is None:
            raise ConfigError("--dataset citeulike needs --data DIR (the folder with titles.txt and users.dat).")
        return load_citeulike(data_dir)
    raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}.")


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """['user_id=customer', ...] -> {'user_id': 'customer'}."""
    mapping = {}
    for pair in pairs:
        target, sep, source = pair.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise ConfigError(f"column mapping {pair!r} must look like CONTRACT_COLUMN=FILE_COLUMN, e.g. user_id=uid.")
        if target.strip() in mapping:
            raise ConfigError(f"column mapping names {target.strip()!r} twice; give one --map per column.")
        mapping[target.strip()] = source.strip()
    return mapping


def ingest(workspace: Workspace, dataset: Dataset, run_id: str) -> dict[str, int]:
    """Write the data set's tables (and splits) into the workspace as a new generation, switched in at once
    (the tables derived from the old data stay with it); returns rows written per table."""
    written = {}
    tables = {Tables.interactions: dataset.interactions, Tables.items: dataset.items, Tables.users: dataset.users}
    tables |= {f"{Tables.split_prefix}{name}": frame for name, frame in dataset.splits.items()}
    with workspace.new_generation(run_id) as staged:
        for name, frame in tables.items():
            report = dataset.reports.get(name)
            parameters = {"source": report.source, "rows_read": report.rows_read} if report else {}
            if report:
                parameters["duplicates_collapsed"] = report.duplicates_collapsed
            staged.write(name, frame, run_id=run_id, source=dataset.name, parameters=parameters)
            written[name] = frame.height
        staged.update_state(dataset=dataset.name, ingest_run_id=run_id)
    return written


def _check_same_ingest(workspace: Workspace) -> None:
    """The base tables must come from one ingest run; a mix means an ingest was interrupted. A table appended to
    since (`warmstart add-items`) names the ingest it extends (`ingest_run_id` in its provenance's parameters)."""
    runs = {name: _ingest_run(workspace, name) for name in Tables.base if workspace.exists(name)}
    if len(set(runs.values())) > 1:
        raise WorkspaceError(
            f"workspace {workspace.root} holds tables from different ingest runs ({runs}): an ingest was "
            "interrupted. Run `warmstart ingest` again."
        )


def _ingest_run(workspace: Workspace, table: str) -> str:
    """The ingest run a base table comes from (or extends)."""
    provenance = workspace.provenance(table)
    return str(provenance.get("parameters", {}).get("ingest_run_id", provenance["run_id"]))


def workspace_dataset(workspace: Workspace) -> Dataset:
    """The ingested data set, with its predefined splits (split_* tables) if it has any."""
    _check_same_ingest(workspace)
    splits = {
        path.stem.removeprefix(Tables.split_prefix): pl.read_parquet(path)
        for path in sorted(workspace.tables.glob(f"{Tables.split_prefix}*.parquet"))
    }
    return Dataset(
        name=str(workspace.state().get("dataset", "workspace")),
        interactions=workspace.read(Tables.interactions),
        items=workspace.read(Tables.items),
        users=workspace.read(Tables.users),
        splits=splits,
    )


# ------------------------------------------------------------------------------------------------ detect


@dataclass(frozen=True)
class Detection:
    """Segments of every item and user, their summary, and what `new` was measured from and up to."""

    segments: pl.DataFrame
    summary: pl.DataFrame
    watermark: datetime | None
    next_watermark: datetime | None


def detect(
    workspace: Workspace,
    run_id: str,
    *,
    sparse_max: int,
    head_share: float,
    since: datetime | None = None,
) -> Detection:
    """Segment the workspace's items and users; `new` means first seen after `since`, by default the
    watermark of the previous detection. Writes the `segments` table and advances the watermark."""
    _check_same_ingest(workspace)
    interactions = workspace.scan(Tables.interactions)
    stored = workspace.state().get("watermark")
    watermark = since if since is not None or stored is None else datetime.fromisoformat(stored)
    segments = segments_as_of(
        interactions,
        workspace.scan(Tables.items),
        workspace.scan(Tables.users),
        before=None,
        since=watermark,
        sparse_max=sparse_max,
        head_share=head_share,
    )
    parameters = {"sparse_max": sparse_max, "head_share": head_share, "watermark": str(watermark)}
    workspace.write(Tables.segments, segments, run_id=run_id, source="detect", parameters=parameters)
    latest = interactions.select(pl.col(Columns.ts).max()).collect().item()
    if latest is not None:
        workspace.update_state(watermark=latest.isoformat(), detect_run_id=run_id)
    return Detection(segments, summarize_segments(segments), watermark, latest)


def detect_as_of(
    dataset: Dataset, *, before: datetime, since: datetime | None, sparse_max: int, head_share: float
) -> pl.DataFrame:
    """A data set's segments as they were at `before` (a backfill window's detection; writes nothing)."""
    return segments_as_of(
        dataset.interactions,
        dataset.items,
        dataset.users,
        before=before,
        since=since,
        sparse_max=sparse_max,
        head_share=head_share,
    )


# ------------------------------------------------------------------------------------------------ augment

ITEM_SEGMENTS = (Segments.new, Segments.cold, Segments.sparse)
USER_SEGMENTS = (Segments.new, Segments.sparse)
SIMULATE_SEGMENTS = (Segments.cold,)


@dataclass(frozen=True)
class AugmentPlan:
    """What the language model augments in one run: which segments, how many entities per step at most."""

    item_segments: tuple[str, ...] = ITEM_SEGMENTS
    user_segments: tuple[str, ...] = USER_SEGMENTS
    simulate_segments: tuple[str, ...] = SIMULATE_SEGMENTS
    limit: int | None = None
    describe: bool = True
    profile: bool = True
    simulate: bool = True
    max_new_tokens: int = 96


@dataclass
class AugmentReport:
    """Each step's report (generated, cached, rejected, synthetic_rows, tokens, seconds, ...)."""

    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    def total(self, key: str) -> float:
        return sum(float(step.get(key, 0)) for step in self.steps.values())

    def store_row(self, backend: str | None = None) -> dict[str, Any]:
        """The metrics store's augmentation row of this run (`backend`: what ran the language model)."""

        def touched(step: str) -> int:
            report = self.steps.get(step, {})
            return int(report.get("generated", 0)) + int(report.get("cached", 0))

        row = {
            "backend": backend,
            "items_augmented": touched("describe"),
            "users_augmented": touched("profile"),
            "synthetic_rows": int(self.steps.get("simulate", {}).get("synthetic_rows", 0)),
            "cache_hits": int(self.total("cached")),
            "rejected": int(self.total("rejected")),
            "tokens": int(self.total("tokens")),
            "seconds": round(self.total("seconds"), 3),
        }
        if "synthetic_precision" in self.steps.get("simulate", {}):
            row["synthetic_precision"] = self.steps["simulate"]["synthetic_precision"]
        return row


AUGMENT_STEPS = ("describe", "simulate", "profile")  # simulation reads the descriptions: it comes after them


def augment_step(
    step: str,
    workspace: Workspace,
    backend: Backend,
    plan: AugmentPlan,
    *,
    cache_dir: Path,
    run_id: str,
    show_progress: bool = True,
) -> dict[str, Any]:
    """One augmentation step (describe, simulate or profile) over the workspace's segments, as the plan says."""
    from flows import augmentation

    common = {"cache_dir": cache_dir, "run_id": run_id, "limit": plan.limit, "show_progress": show_progress}
    if step == "describe":
        return augmentation.describe_step(
            workspace, backend, segments=plan.item_segments, max_new_tokens=plan.max_new_tokens, **common
        )
    if step == "simulate":
        return augmentation.simulate_step(workspace, backend, segments=plan.simulate_segments, **common)
    if step == "profile":
        return augmentation.profile_step(workspace, backend, segments=plan.user_segments, **common)
    raise ConfigError(f"unknown augmentation step {step!r}; choose one of {', '.join(AUGMENT_STEPS)}.")


def augment(
    workspace: Workspace,
    backend: Backend,
    plan: AugmentPlan,
    *,
    cache_dir: Path,
    run_id: str,
    show_progress: bool = True,
) -> AugmentReport:
    """The plan's augmentation steps, in order, one after the other."""
    chosen = {"describe": plan.describe, "simulate": plan.simulate, "profile": plan.profile}
    report = AugmentReport()
    for step in AUGMENT_STEPS:
        if chosen[step]:
            report.steps[step] = augment_step(
                step, workspace, backend, plan, cache_dir=cache_dir, run_id=run_id, show_progress=show_progress
            )
    return report


# --------------------------------------------------------------------------------------------- encode


@dataclass(frozen=True)
class Encoded:
    """The `item_embeddings` table's shape and what encoding it cost."""

    model: str
    items: int
    dim: int
    stats: dict[str, Any]


def item_texts(workspace: Workspace) -> tuple[pl.Series, list[str]]:
    """(item ids, the text each item is embedded from), in the items table's order."""
    from encoders import item_text

    items = workspace.read(Tables.items)
    return items[Columns.item], item_text(items).to_list()


def store_item_embeddings(
    workspace: Workspace, ids: pl.Series, vectors: np.ndarray, run_id: str, stats: dict[str, Any]
) -> Encoded:
    """Write the `item_embeddings` table (item_id, embedding)."""
    from encoders import MODEL_NAME

    table = pl.DataFrame(
        {Columns.item: ids, "embedding": vectors},
        schema={Columns.item: pl.String, "embedding": pl.Array(pl.Float32, vectors.shape[1])},
    )
    encoded = Encoded(MODEL_NAME, table.height, int(vectors.shape[1]), stats)
    parameters = {"model": encoded.model, "items": encoded.items, "dim": encoded.dim} | stats
    workspace.write(Tables.item_embeddings, table, run_id=run_id, source="encode", parameters=parameters)
    return encoded


def encode(workspace: Workspace, run_id: str, *, cache_dir: Path) -> Encoded:
    """Embed every item's text into `item_embeddings`; texts in the embedding cache (CACHE/embeddings, keyed by
    model and text hash, shared with retraining) are not encoded again."""
    from encoders import EmbeddingCache, encode_texts

    ids, texts = item_texts(workspace)
    cache = EmbeddingCache(embedding_cache(cache_dir))
    vectors = encode_texts(texts, cache=cache)
    return store_item_embeddings(
        workspace, ids, vectors, run_id, {"cache_hits": cache.hits, "cache_misses": cache.misses}
    )


def embedding_cache(cache_dir: Path) -> Path:
    """The one text-embedding cache: encoding and retraining both read and fill it."""
    return Path(cache_dir) / "embeddings"


# ------------------------------------------------------------------------------------------ retrain, evaluate


def retrain(
    plan: EvaluationPlan,
    *,
    cache_dir: Path,
    models: ModelSettings,
    alternatives: dict[str, TimedChoices] | None = None,
) -> FittedRanker:
    """Fit the encoders and the ranker `models.ranker_name` names as the plan says (and, on a log with times, a
    ranker per timed alternative on the same encoders)."""
    from flows.pipeline import fit_ranker

    return fit_ranker(plan, cache_dir=cache_dir, settings=models, alternatives=alternatives)


def synthetic_interactions(workspace: Workspace) -> pl.DataFrame | None:
    """The workspace's synthetic interactions (user_id, item_id, weight, run_id) for the next model to train on,
    or None before any simulation ran."""
    if not workspace.exists(Tables.synthetic_interactions):
        return None
    return workspace.read(Tables.synthetic_interactions).select(Columns.user, Columns.item, WEIGHT, "run_id")


def evaluate(fitted: FittedRanker, split: ProtocolSplit, *, k: int, protocol: str) -> pl.DataFrame:
    """(protocol, segment, metric, k, value) of a fitted ranker on the split's real held-out interactions."""
    return fitted.evaluate(split, k).metrics.with_columns(pl.lit(protocol).alias("protocol"))


def add_items(workspace: Workspace, added: pl.DataFrame, run_id: str, *, cache_dir: Path, source: str) -> int:
    """Append conformed items (new ids only) to the `items` table and embed their text into the one cache, so the
    promoted version serves them at once (serving.Recommender folds them in) and the next refresh trains on them."""
    from catalog import DataError
    from encoders import EmbeddingCache, encode_texts, item_text

    existing = workspace.read(Tables.items)
    repeated = added.filter(
        pl.col(Columns.item).is_duplicated() | pl.col(Columns.item).is_in(existing[Columns.item].to_list())
    )
    if repeated.height:
        ids = sorted(set(repeated[Columns.item]))
        raise DataError(f"{source}: {len(ids)} item id(s) already exist or repeat, e.g. {ids[:5]}; use new ids.")
    added = added.with_columns(pl.col(Columns.first_seen).fill_null(datetime.now(UTC))).select(existing.columns)
    encode_texts(item_text(added).to_list(), cache=EmbeddingCache(embedding_cache(cache_dir)), show_progress=False)
    parameters = {"added": added.height, "ingest_run_id": _ingest_run(workspace, Tables.items)}
    workspace.write(Tables.items, pl.concat([existing, added]), run_id=run_id, source=source, parameters=parameters)
    return added.height


def add_users(workspace: Workspace, added: pl.DataFrame, run_id: str, *, source: str) -> int:
    """Append conformed users (new ids only) to the `users` table in one atomic write: the promoted version serves
    them at once as cold users (serving.Recommender folds them in) and the next refresh counts them. Their
    attributes must be ones the workspace's users already have (when they have any): a misspelt column would
    otherwise start a new attribute silently."""
    from catalog import DataError

    if added.is_empty():
        raise DataError(f"{source}: no users (a header only). Nothing was written.")
    existing = workspace.read(Tables.users)
    repeated = added.filter(
        pl.col(Columns.user).is_duplicated() | pl.col(Columns.user).is_in(existing[Columns.user].implode())
    )
    if repeated.height:
        ids = sorted(set(repeated[Columns.user]))
        raise DataError(f"{source}: {len(ids)} user id(s) already exist or repeat, e.g. {ids[:5]}; use new ids.")
    known = _attribute_names(existing, f"workspace table '{Tables.users}'")
    given = _attribute_names(added, source)
    if known and given - known:
        raise DataError(
            f"{source}: unknown column(s) {sorted(given - known)}; the workspace's users have {sorted(known)}. "
            "Rename or drop them (or re-ingest with a users file that has them)."
        )
    added = added.with_columns(pl.col(Columns.first_seen).fill_null(datetime.now(UTC))).select(existing.columns)
    parameters = {"added": added.height, "ingest_run_id": _ingest_run(workspace, Tables.users)}
    workspace.write(Tables.users, pl.concat([existing, added]), run_id=run_id, source=source, parameters=parameters)
    return added.height


def _attribute_names(users: pl.DataFrame, source: str) -> set[str]:
    """The keys of the users' attribute objects (JSON text)."""
    from catalog import DataError

    names: set[str] = set()
    for text in users[Columns.attributes].drop_nulls().unique().to_list():
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise DataError(
                f"{source}: attributes {text[:60]!r} are not a JSON object; give attributes as columns of their own."
            )
        names |= value.keys()
    return names


def save_serving(directory: Path, fitted: FittedRanker, index: EvalIndex) -> dict[str, Any]:
    """Beside a saved version: the inputs its ranker serves from and their ids (serving.npz + serving.json), so the
    version can serve on its own (`serving.Recommender.load`). Returns the manifest."""
    from serving import save_serving_inputs

    warming = fitted.served.warming
    warmed, config = (warming.items, warming.config.model_dump()) if warming is not None else (None, None)
    return save_serving_inputs(
        directory, fitted.served.inputs, index.user_ids, index.item_ids, warmed=warmed, warming=config
    )


def publish_recommendations(workspace: Workspace, ranker: str, version: str, run_id: str, *, k: int) -> int:
    """The `recommendations` table: top k for every user the version serves (its users and those logged since),
    with the model version and run id, replaced atomically so a reader sees one version's complete set."""
    from serving import Recommender

    recommender = Recommender.load(workspace, version, ranker=ranker)
    frame = recommender.recommend(recommender.user_ids, k).with_columns(
        pl.lit(version).alias("model_version"), pl.lit(run_id).alias("run_id")
    )
    parameters = {"ranker": ranker, "model_version": version, "k": k, "users": recommender.user_ids.len()}
    workspace.write(Tables.recommendations, frame, run_id=run_id, source="refresh", parameters=parameters)
    return frame.height


# ------------------------------------------------------------------------------------------------ gate


@dataclass(frozen=True)
class Incumbent:
    """The current model: its version, and its figures on the candidate's held-out data where it can be scored
    there (else its recorded figures, with a note saying so)."""

    version: str | None
    metrics: pl.DataFrame | None
    note: str | None = None
    # The current model serving from the candidate's inputs, where it was re-scored (gate_evidence scores it again).
    fitted: FittedRanker | None = None


def incumbent_on_same_data(
    fitted: FittedRanker,
    directory: Path | None,
    split: ProtocolSplit,
    *,
    k: int,
    protocol: str,
    recorded: pl.DataFrame | None,
) -> Incumbent:
    """The current model's metrics to gate against. A ranker whose versions can be re-scored (LightGBM: features
    are the same functions of the data for every version) is scored over this run's inputs, on the same held-out
    data as the candidate; one tied to its encoders (DeepFM) is compared by its recorded figures."""
    from flows.pipeline import FittedRanker
    from ranker.registry import load_ranker, ranker_class

    if directory is None:
        return Incumbent(None, None)
    version = directory.name
    if ranker_class(fitted.report["ranker"]).tied_to_encoders:
        return Incumbent(version, recorded, f"compared with the recorded figures of {version}")
    try:
        current = FittedRanker(load_ranker(directory), fitted.served, {})
        return Incumbent(version, evaluate(current, split, k=k, protocol=protocol), fitted=current)
    except (WarmstartError, ValueError, IndexError, RuntimeError) as error:
        note = f"{version} cannot score this data ({type(error).__name__}: {error}); compared with its recorded figures"
        return Incumbent(version, recorded, note)


# The reference lines every run records beside the product (rows of protocol 'PROTOCOL:NAME'); the gate holds
# the product to the first one measured (recent popularity needs times, popularity stands in without them).
POPULARITY, RECENT_POPULARITY = "popularity", "recent_popularity"
# The calibrated tail exposure option (ranker.rerank), recorded as the line 'tail_calibrated': the candidate
# re-ranked so that each user's top k holds STRENGTH x their historical share of tail items. 1.0 had the best
# validation tail Recall@20 in benchmarks/tail_rerank.py (MovieLens-100K; docs/benchmarks.md).
TAIL_CALIBRATED, TAIL_STRENGTH = "tail_calibrated", 1.0


def reference_lines(split: ProtocolSplit, *, k: int, protocol: str) -> pl.DataFrame:
    """Popularity and, for a log with times, recent popularity fitted on the split's training data and scored on
    its held-out data: the lines the product must beat, measured exactly as the product is."""
    from ranker.evaluate import evaluate as evaluate_split

    frames = [
        evaluate_split(split, scorer, k=k).metrics.with_columns(
            pl.lit(reference_protocol(protocol, name)).alias("protocol")
        )
        for name, scorer in _reference_scorers(split).items()
    ]
    return pl.concat(frames)


def _reference_scorers(split: ProtocolSplit) -> dict[str, PopularityScorer]:
    """Popularity, and recent popularity where the training log has times, fitted on the split's training data."""
    from ranker.baselines import PopularityScorer, RecentPopularityScorer

    scorers: dict[str, PopularityScorer] = {POPULARITY: PopularityScorer()}
    train = split.train
    if Columns.ts in train.columns and train[Columns.ts].null_count() < train.height:
        scorers[RECENT_POPULARITY] = RecentPopularityScorer()
    return {name: scorer.fit(train, split.index) for name, scorer in scorers.items()}


def tail_calibrated(
    fitted: FittedRanker, split: ProtocolSplit, *, k: int, protocol: str, strength: float = TAIL_STRENGTH
) -> pl.DataFrame:
    """The candidate's metrics with calibrated tail exposure, on the same split (tail recall, coverage, Gini,
    APLT and accuracy side by side with the candidate's own)."""
    from ranker.evaluate import evaluate as evaluate_split
    from ranker.evaluate import interaction_matrix
    from ranker.rerank import tail_rerank_scorer, tail_share_targets

    ids = split.index.item_ids.to_numpy()
    is_tail, is_cold = (
        np.isin(ids, split.item_segments.filter(pl.col(Columns.segment) == name)[Columns.item].to_numpy())
        for name in (Segments.tail, Segments.cold)
    )
    exclude = interaction_matrix(split.exclude, split.index)
    targets = tail_share_targets(interaction_matrix(split.train, split.index), is_tail)
    base = fitted.ranker.scorer(fitted.served.inputs, exclude=exclude)
    # Tail items displace head items only: the cold items the ranker placed (its cold slots) stay.
    scorer = tail_rerank_scorer(base, is_tail, targets, k=k, strength=strength, protect=is_cold)
    metrics = evaluate_split(split, scorer, k=k).metrics
    return metrics.with_columns(pl.lit(reference_protocol(protocol, TAIL_CALIBRATED)).alias("protocol"))


def warming_row(warmed: Warmed, split: ProtocolSplit) -> dict[str, Any]:
    """The store's augmentation columns of a model's warming: cold items warmed, and the embedding simulator's
    pairs' precision against the split's real held-out interactions (a diagnostic: truth is never changed)."""
    from flows.pipeline import synthetic_precision
    from ranker.evaluate import interaction_matrix

    precision = synthetic_precision(warmed, interaction_matrix(split.truth, split.index))
    return {"cold_items_warmed": int(warmed.items.sum()), "simulator_precision": precision["simulator"]}


WITHOUT_AUGMENTATION = "without_augmentation"


def without_augmentation(fitted: FittedRanker, split: ProtocolSplit, *, k: int, protocol: str) -> pl.DataFrame:
    """The candidate serving cold items through their content stand-ins instead of the stand-ins its synthetic
    interactions warmed, on the same split: what augmentation adds (no rows when nothing was warmed)."""
    if fitted.served.warming is None:
        return pl.DataFrame()
    metrics = fitted.without_warming().evaluate(split, k).metrics
    return metrics.with_columns(pl.lit(reference_protocol(protocol, WITHOUT_AUGMENTATION)).alias("protocol"))


# The lines of timed alternatives are named with this prefix (pipeline.TIMED_ALTERNATIVES' names carry it).
ALTERNATIVE_PREFIX = "choice_"


def alternative_lines(
    fitted: FittedRanker, metrics: pl.DataFrame, split: ProtocolSplit, *, k: int, protocol: str
) -> pl.DataFrame:
    """Each timed alternative trained beside the candidate, scored on the same split as the line 'PROTOCOL:NAME'
    (the candidate's own `metrics` where the alternative is the candidate): what a backfill's next window chooses
    from. No rows without alternatives."""
    if any(not name.startswith(ALTERNATIVE_PREFIX) for name in fitted.alternatives):
        names = list(fitted.alternatives)
        raise ValueError(f"timed alternatives' names must start with {ALTERNATIVE_PREFIX!r}: {names}")
    frames = [
        (metrics if other is fitted else other.evaluate(split, k).metrics).with_columns(
            pl.lit(reference_protocol(protocol, name)).alias("protocol")
        )
        for name, other in fitted.alternatives.items()
    ]
    return pl.concat(frames) if frames else pl.DataFrame()


@dataclass(frozen=True)
class Reference:
    """The line the gate holds the candidate to (its metric rows and its name), or none."""

    metrics: pl.DataFrame | None = None
    name: str = ""


def gate_reference(references: pl.DataFrame, protocol: str) -> Reference:
    """Recent popularity where it was measured, else popularity."""
    for name in (RECENT_POPULARITY, POPULARITY):
        rows = references.filter(pl.col("protocol") == reference_protocol(protocol, name))
        if rows.height:
            return Reference(rows, name.replace("_", " "))
    return Reference()


def gate_user_values(recs: pl.DataFrame, split: ProtocolSplit, gate: GateMetric) -> pl.DataFrame:
    """(user_id, value) of one gate metric for each user it averages over: those with a held-out positive in the
    gate's segment (an item segment: head, tail, cold; a user segment; or overall). Their mean is the metric."""
    from ranker.metrics import per_user_accuracy

    truth = split.truth
    if gate.segment in (Segments.head, Segments.tail, Segments.cold):
        items = split.item_segments.filter(pl.col(Columns.segment) == gate.segment).select(Columns.item)
        truth = truth.join(items, on=Columns.item, how="semi")
    elif gate.segment != Segments.overall:
        if split.user_segments is None:  # a split without user segments measures none of them
            truth = truth.clear()
        else:
            members = split.user_segments.filter(pl.col(Columns.segment) == gate.segment).select(Columns.user)
            truth, recs = (frame.join(members, on=Columns.user, how="semi") for frame in (truth, recs))
    if truth.is_empty():
        return pl.DataFrame(schema={Columns.user: pl.String, "value": pl.Float64})
    values = per_user_accuracy(recs, truth, gate.k)
    return values.select(Columns.user, pl.col(gate.metric).cast(pl.Float64).alias("value"))


def gate_evidence(
    fitted: FittedRanker, incumbent: Incumbent, split: ProtocolSplit, config: GateConfig, *, k: int
) -> Evidence:
    """Paired bootstrap intervals over users (at `config.confidence`) of the candidate minus the incumbent (where it
    was scored on this data) on each gate metric, and minus the reference line (recent popularity, else
    popularity) on each reference metric: the evidence `monitor.decide` asks of a drop before it refuses."""
    from ranker.evaluate import evaluate as evaluate_split
    from ranker.metrics import bootstrap_difference

    if config.confidence is None:
        return {}
    scorers = _reference_scorers(split)
    reference = scorers.get(RECENT_POPULARITY, scorers[POPULARITY])
    recs = {"candidate": fitted.evaluate(split, k).recs, "reference": evaluate_split(split, reference, k=k).recs}
    if incumbent.fitted is not None:
        recs["incumbent"] = incumbent.fitted.evaluate(split, k).recs
    evidence: Evidence = {}
    for comparison, gates in (("incumbent", config.metrics), ("reference", config.reference_metrics)):
        if comparison not in recs:
            continue
        for gate_metric in gates:
            mine = gate_user_values(recs["candidate"], split, gate_metric)
            theirs = gate_user_values(recs[comparison], split, gate_metric)
            both = mine.join(theirs, on=Columns.user, suffix="_other")
            if both.is_empty():
                continue
            _, low, high = bootstrap_difference(
                both["value"].to_numpy(), both["value_other"].to_numpy(), level=config.confidence
            )
            evidence.setdefault(comparison, {})[gate_metric.name] = (low, high)
    return evidence


def gate(
    candidate: pl.DataFrame,
    incumbent: Incumbent,
    config: GateConfig,
    reference: Reference | None = None,
    evidence: Evidence | None = None,
) -> GateDecision:
    """Promote or refuse the candidate against the current model and the reference line (see `monitor.decide`)."""
    reference = reference or Reference()
    decision = decide(
        candidate, incumbent.metrics, config, reference.metrics, reference.name or "the reference", evidence
    )
    if incumbent.note:
        decision = decision.model_copy(update={"reason": f"{decision.reason} ({incumbent.note})"})
    return decision


def as_of(split: ProtocolSplit) -> datetime:
    """A point's time: the end of its training data (the cut), or now for splits without times."""
    train = split.train
    if Columns.ts in train.columns and train[Columns.ts].null_count() < train.height:
        return train[Columns.ts].max() + timedelta(microseconds=1)
    return datetime.now(UTC)
