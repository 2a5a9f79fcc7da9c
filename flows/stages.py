"""The stages of a refresh cycle, each defined once: a typed function over explicit inputs, returning a typed result.

    ingest -> detect -> augment -> encode -> retrain -> evaluate -> gate -> (record, promote: flows/cycle.py)

Every entry point composes these: the CLI commands, the Prefect flows (through flows/tasks.py, which turns each into
a task mechanically) and the backfill (one window = one cycle as of a date). No stage reads settings: the entry
layer passes what they need.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from augment import WEIGHT, AugmentStats
from catalog import (
    ALDI_SPLITS,
    Additions,
    AppendReport,
    Columns,
    ConfigError,
    Dataset,
    Tables,
    Workspace,
    WorkspaceError,
    atomic_write_bytes,
    segments_as_of,
    summarize_segments,
)
from catalog import append as append_rows
from ranker.evaluate import IN_TURN, PartitionMap, batch_bounds
from training.defaults import ITEM_SEGMENTS, PROFILED_ITEMS, SIMULATE_SEGMENTS, USER_SEGMENTS

if TYPE_CHECKING:  # torch and the models load only in the stages that use them
    from augment import Backend
    from ranker.evaluate import EvalIndex
    from serving import Recommender
    from training import EvaluationPlan, FittedRanker


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


@dataclass(frozen=True)
class Ingested:
    """What an ingest wrote: rows per table, and the ids of items and users added to the workspace since the data
    before it was ingested (add-items, add-users, POST /items) that it kept because the new data lacks them."""

    written: dict[str, int]
    kept_items: list[str] = field(default_factory=list)
    kept_users: list[str] = field(default_factory=list)


def ingest(
    workspace: Workspace,
    dataset: Dataset,
    run_id: str,
    *,
    drop_additions: bool = False,
    state: dict[str, object] | None = None,
) -> Ingested:
    """Write the data set's tables (and splits) into the workspace as a new generation, switched in at once
    (the tables derived from the old data stay with it, but for the last detection's watermark: what is new stays
    what was first seen since); `state` is recorded in the new generation's state with them.

    Items and users added to the workspace since its data was ingested (`add_items`, `add_users`) are data too: the
    ones the new data lacks are kept in the new tables unless `drop_additions` (the new data's own row wins for an id
    it has). A new ingest would otherwise drop what the service acknowledged, silently."""
    written = {}
    # The one writer: the watermark carried is the current one, and no add-items lands in the generation replaced.
    # (`workspace` switches, so that the caller's object follows to the new generation, as it always did.)
    with workspace.writer(f"ingest {run_id}") as current, workspace.new_generation(run_id) as staged:
        carried = _carried_state(current)
        items, users = (pl.DataFrame(), pl.DataFrame()) if drop_additions else _additions(current, dataset)
        tables = {
            Tables.interactions: dataset.interactions,
            Tables.items: pl.concat([dataset.items, items]) if items.height else dataset.items,
            Tables.users: pl.concat([dataset.users, users]) if users.height else dataset.users,
        }
        tables |= {f"{Tables.split_prefix}{name}": frame for name, frame in dataset.splits.items()}
        kept = {"items": items[Columns.item].to_list() if items.height else []}
        kept["users"] = users[Columns.user].to_list() if users.height else []
        for name, frame in tables.items():
            report = dataset.reports.get(name)
            parameters = {"source": report.source, "rows_read": report.rows_read} if report else {}
            if report:
                parameters["duplicates_collapsed"] = report.duplicates_collapsed
            if name in (Tables.items, Tables.users):
                parameters["additions_kept"] = len(kept[name])
            staged.write(name, frame, run_id=run_id, source=dataset.name, parameters=parameters)
            written[name] = frame.height
        additions = {ADDITIONS: kept} if kept["items"] or kept["users"] else {}
        staged.update_state(dataset=dataset.name, ingest_run_id=run_id, **carried, **additions, **(state or {}))
    return Ingested(written, kept["items"], kept["users"])


# State key of a workspace whose data is an evaluated split's training part (`serve_training_part`): which split.
EVALUATED_SPLIT = "evaluated_split"


def check_training_part(workspace: Workspace, part: Dataset, split: str) -> bool:
    """Whether the workspace holds `part` (an evaluated split's training part: `training.training_part`) as its
    data already (True) or no data (False); a workspace holding other data is refused, since serving would read
    it as logged (the held-out users' events among it): a version kept from a split needs a workspace of its own."""
    if not workspace.exists(Tables.interactions):
        return False
    held = workspace.state().get(EVALUATED_SPLIT)
    if held == _split_marker(part, split):
        return True
    what = f"the training part of {held['dataset']} {held['split']}" if held else "other data"
    raise ConfigError(
        f"workspace {workspace.root} holds {what}; a version kept from {part.name} {split} serves from that "
        "split's training part alone (none of its held-out events may be logged). Give it a workspace of its own: "
        "--workspace DIR, empty or kept from this very split before."
    )


def serve_training_part(workspace: Workspace, part: Dataset, split: str, run_id: str) -> bool:
    """Make `part` (an evaluated split's training part) the workspace's data, so that versions kept from that split
    serve its held-out users as evaluation scored them; False where the workspace holds it already
    (`check_training_part` refuses other data)."""
    with workspace.writer(f"evaluate --keep-version {run_id}") as current:
        if check_training_part(current, part, split):
            return False
        ingest(current, part, run_id, state={EVALUATED_SPLIT: _split_marker(part, split)})
    return True


# In a version kept by `evaluate --keep-version`: the held-out (user_id, item_id) pairs its report scored, with
# when each user asked (requested_at) where the log has times.
HELD_OUT = "held_out.parquet"


def keep_evaluated_version(
    workspace: Workspace,
    plan: EvaluationPlan,
    part: Dataset,
    fitted: FittedRanker,
    metrics: pl.DataFrame,
    directory: Path,
    run_id: str,
) -> None:
    """Make the ranker evaluated on `plan` (saved in `directory`, a guarded version folder) a whole version, saved as
    a refresh saves one: its serving inputs and stand-in builders, report.json with `metrics` (what evaluation
    measured), and the held-out pairs they were measured on (HELD_OUT). The workspace's data becomes the split's
    training part `part` (`serve_training_part`): what serving reads as logged."""
    serve_training_part(workspace, part, plan.split.name, run_id)
    save_serving(directory, fitted, plan.split.index)
    write_report(directory, fitted, plan, metrics, evaluated=plan, parent=None, dataset=part.name)
    held_out = plan.split.truth.select(Columns.user, Columns.item)
    requested = plan.split.requested_at
    if requested is not None:  # when each user asked: `recommend --users` serves them as of it
        requested = requested.rename({Columns.ts: Columns.requested_at})
        held_out = held_out.join(requested, on=Columns.user, how="left", maintain_order="left")
    buffer = io.BytesIO()
    held_out.write_parquet(buffer)
    atomic_write_bytes(directory / HELD_OUT, buffer.getvalue())


def _split_marker(part: Dataset, split: str) -> dict[str, object]:
    return {"dataset": part.name, "split": split, "interactions": part.interactions.height}


# State key of the ids of items and users added since the data was ingested (add-items, add-users, POST /items),
# so that an ingest can tell them from the rows it replaces. Recorded before the table is written, so a killed
# addition leaves at most an id the table lacks (ignored), never a row without its record.
ADDITIONS = "additions"


def _additions(current: Workspace, dataset: Dataset) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(items, users): the rows `current` holds that were added since its ingest and that `dataset` lacks, in
    `dataset`'s columns and types."""
    recorded = current.state().get(ADDITIONS) or {}
    found = []
    for table, key, new in ((Tables.items, Columns.item, dataset.items), (Tables.users, Columns.user, dataset.users)):
        ids = recorded.get(table) or []
        if not ids or not current.exists(table):
            found.append(new.clear())
            continue
        held = current.read(table).filter(pl.col(key).is_in(ids))
        found.append(held.join(new.select(key), on=key, how="anti").select(new.columns).cast(new.schema))
    return found[0], found[1]


def _record_additions(space: Workspace, table: str, ids: list[str]) -> None:
    """Add `ids` to the pinned generation's record of additions (by the workspace's one writer)."""
    recorded = dict(space.state().get(ADDITIONS) or {})
    recorded[table] = list(dict.fromkeys([*(recorded.get(table) or []), *ids]))
    space.update_state(**{ADDITIONS: recorded})


# Kept across generations: the last detection's watermark, so that `new` means first seen since that detection
# whatever was ingested or appended in between.
CARRIED_STATE = ("watermark", "detect_run_id")
# Rebuilt by the next detection from the appended data, never carried over by an append.
_REBUILT = (*Tables.base, Tables.segments)


def _carried_state(workspace: Workspace) -> dict[str, str]:
    state = workspace.state()
    return {key: state[key] for key in CARRIED_STATE if key in state}


def append(workspace: Workspace, added: Additions, run_id: str, *, source: str) -> AppendReport:
    """Append events, items and users to the workspace's data as a new generation, switched in at once: a failed
    append changes nothing, and `rollback` undoes it. The tables derived from ids it leaves unchanged
    (descriptions, profiles, synthetic interactions, embeddings, recommendations, splits) and the last detection's
    watermark come along; segments are rebuilt by the next detection."""
    with workspace.writer(f"ingest --append {run_id}") as space:  # merged with what is current, not overwritten
        current = workspace_dataset(space)
        merged, report = append_rows(current, added, source=source)
        parameters = report.as_dict() | {"source": source}
        with workspace.new_generation(run_id) as staged:  # the caller's object follows to the new generation
            base = {Tables.interactions: merged.interactions, Tables.items: merged.items, Tables.users: merged.users}
            for name, frame in base.items():
                staged.write(name, frame, run_id=run_id, source="append", parameters=parameters)
            for name in space.table_names():
                if name not in _REBUILT:
                    staged.carry(name, space)
            additions = {ADDITIONS: space.state()[ADDITIONS]} if ADDITIONS in space.state() else {}
            staged.update_state(dataset=current.name, ingest_run_id=run_id, **_carried_state(space), **additions)
    return report


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

    def new_ids(self, kind: str) -> list[str]:
        """Ids of the items or users (`kind`) first seen after the watermark, sorted."""
        new = self.segments.filter((pl.col(Columns.kind) == kind) & pl.col("is_new"))
        return sorted(new["entity_id"].cast(pl.String).to_list())

    def as_dict(self) -> dict[str, object]:
        """The JSON form `warmstart detect --json` writes: counts per segment, the new ids, the watermarks."""
        counts = {
            row[Columns.segment]: {"items": row["items"], "users": row["users"]} for row in self.summary.to_dicts()
        }
        return {
            "counts": counts,
            "new_items": self.new_ids("item"),
            "new_users": self.new_ids("user"),
            "watermark": self.watermark.isoformat() if self.watermark else None,
            "next_watermark": self.next_watermark.isoformat() if self.next_watermark else None,
        }


def learnable_interactions(workspace: Workspace) -> pl.LazyFrame:
    """The interactions a model may learn from: with predefined splits in ALDI's layout, those of the training
    split (`warm_emb`; the held-out items' rows are in the log but no model trains on them, so they are cold, and
    the language model describes and judges them), else the whole log."""
    training = f"{Tables.split_prefix}{ALDI_SPLITS[0]}"
    interactions = workspace.scan(Tables.interactions)
    if not workspace.exists(training):
        return interactions
    pairs = workspace.scan(training).select(Columns.user, Columns.item)
    return interactions.join(pairs, on=[Columns.user, Columns.item], how="semi")


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
        learnable_interactions(workspace),
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


@dataclass(frozen=True)
class StepReport:
    """What one augmentation step (describe, simulate or profile) did over a workspace: the language model's
    counts, how many entities it was asked for, its wall time and the step's table size after the run."""

    stats: AugmentStats
    requested: int
    seconds: float
    rows: int | None = None  # the step's table after merging this run's rows (None when nothing was written)
    skipped: int | None = None  # profile: users with no history to profile
    candidates: int | None = None  # simulate: candidate pairs the judge saw
    batches: int | None = None  # describe in batches: how many tasks
    synthetic_precision: float | None = None  # a backfill window's pairs found among the next window's events

    def as_dict(self) -> dict[str, object]:
        """The JSON form: the model's counts, then the step's own sizes (the ones that apply)."""
        counts: dict[str, object] = self.stats.as_dict() | {"seconds": self.seconds, "requested": self.requested}
        sizes = {
            "rows": self.rows,
            "skipped": self.skipped,
            "candidates": self.candidates,
            "batches": self.batches,
            "synthetic_precision": self.synthetic_precision,
        }
        return counts | {name: value for name, value in sizes.items() if value is not None}


REPORT_KEYS = ("generated", "cached", "rejected", "synthetic_rows", "tokens", "seconds")
"""The counts a run's augmentation report totals over its steps."""


@dataclass
class AugmentReport:
    """Each step's report, by step name."""

    steps: dict[str, StepReport] = field(default_factory=dict)

    def _total(self, count: str) -> int:
        return sum(int(getattr(step.stats, count)) for step in self.steps.values())

    def _touched(self, step: str) -> int:
        report = self.steps.get(step)
        return report.stats.generated + report.stats.cached if report is not None else 0

    def totals(self) -> dict[str, int | float]:
        """The run's `REPORT_KEYS` over its steps (seconds to 0.1 s)."""
        counts: dict[str, int | float] = {name: self._total(name) for name in REPORT_KEYS if name != "seconds"}
        return counts | {"seconds": round(sum(step.seconds for step in self.steps.values()), 1)}

    def store_row(self, backend: str | None = None) -> dict[str, str | int | float | None]:
        """The metrics store's augmentation row of this run (`backend`: what ran the language model)."""
        simulate = self.steps.get("simulate")
        row: dict[str, str | int | float | None] = {
            "backend": backend,
            "items_augmented": self._touched("describe"),
            "users_augmented": self._touched("profile"),
            "synthetic_rows": simulate.stats.synthetic_rows if simulate is not None else 0,
            "cache_hits": self._total("cached"),
            "rejected": self._total("rejected"),
            "tokens": self._total("tokens"),
            "seconds": round(sum(step.seconds for step in self.steps.values()), 3),
        }
        if simulate is not None and simulate.synthetic_precision is not None:
            row["synthetic_precision"] = simulate.synthetic_precision
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
) -> StepReport:
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
    stats: dict[str, int]  # embedding cache hits and misses, or the batches of a flow's encoding


def item_texts(workspace: Workspace) -> tuple[pl.Series, list[str]]:
    """(item ids, the text each item is embedded from), in the items table's order."""
    from encoders import item_text

    items = workspace.read(Tables.items)
    return items[Columns.item], item_text(items).to_list()


def store_item_embeddings(
    workspace: Workspace, ids: pl.Series, vectors: np.ndarray, run_id: str, stats: dict[str, int], *, text_model: str
) -> Encoded:
    """Write the `item_embeddings` table (item_id, embedding); `text_model` names the backend that made them."""
    table = pl.DataFrame(
        {Columns.item: ids, "embedding": vectors},
        schema={Columns.item: pl.String, "embedding": pl.Array(pl.Float32, vectors.shape[1])},
    )
    encoded = Encoded(text_model, table.height, int(vectors.shape[1]), stats)
    parameters = {"model": encoded.model, "items": encoded.items, "dim": encoded.dim} | stats
    workspace.write(Tables.item_embeddings, table, run_id=run_id, source="encode", parameters=parameters)
    return encoded


def encode(workspace: Workspace, run_id: str, *, cache_dir: Path) -> Encoded:
    """Embed every item's text into `item_embeddings`; texts in the embedding cache (CACHE/embeddings, keyed by
    model and text hash, shared with retraining) are not encoded again."""
    from encoders import EmbeddingCache, encode_texts

    ids, texts = item_texts(workspace)
    cache = EmbeddingCache.in_cache_dir(cache_dir)
    vectors = encode_texts(texts, cache=cache)
    return store_item_embeddings(
        workspace,
        ids,
        vectors,
        run_id,
        {"cache_hits": cache.hits, "cache_misses": cache.misses},
        text_model=cache.model_name,
    )


# ------------------------------------------------------------------------------------------ train


def synthetic_interactions(workspace: Workspace) -> pl.DataFrame | None:
    """The workspace's synthetic interactions (user_id, item_id, weight, run_id) for the next model to train on,
    or None before any simulation ran."""
    if not workspace.exists(Tables.synthetic_interactions):
        return None
    return workspace.read(Tables.synthetic_interactions).select(Columns.user, Columns.item, WEIGHT, "run_id")


def item_descriptions(workspace: Workspace) -> pl.DataFrame | None:
    """The workspace's stored LLM descriptions (item_id, description), or None before any was written."""
    if not workspace.exists(Tables.item_descriptions):
        return None
    return workspace.read(Tables.item_descriptions).select(Columns.item, "description")


def user_profiles(workspace: Workspace) -> pl.DataFrame | None:
    """The workspace's stored LLM user profiles (user_id, profile, and the ids of the items each was written from
    where the table records them), or None before any was written."""
    if not workspace.exists(Tables.user_profiles):
        return None
    table = workspace.read(Tables.user_profiles)
    return table.select(Columns.user, "profile", *([PROFILED_ITEMS] if PROFILED_ITEMS in table.columns else []))


def add_items(workspace: Workspace, added: pl.DataFrame, run_id: str, *, cache_dir: Path, source: str) -> int:
    """Append conformed items (new ids only) to the `items` table and embed their text into the one cache, so the
    promoted version serves them at once (serving.Recommender folds them in) and the next refresh trains on them.

    The table is read, checked and written back by the workspace's one writer, so that items another process adds
    meanwhile are kept; the embedding (slow, and only filling a cache keyed by text) happens before, unlocked."""
    from catalog import DataError
    from encoders import EmbeddingCache, encode_texts, item_text

    repeated = added.filter(pl.col(Columns.item).is_duplicated())
    encode_texts(item_text(added).to_list(), cache=EmbeddingCache.in_cache_dir(cache_dir), show_progress=False)
    with workspace.writer(f"{source} (run {run_id})") as space:
        existing = space.read(Tables.items)
        repeated = pl.concat([repeated, added.filter(pl.col(Columns.item).is_in(existing[Columns.item].implode()))])
        if repeated.height:
            ids = sorted(set(repeated[Columns.item]))
            raise DataError(f"{source}: {len(ids)} item id(s) already exist or repeat, e.g. {ids[:5]}; use new ids.")
        added = added.with_columns(pl.col(Columns.first_seen).fill_null(datetime.now(UTC))).select(existing.columns)
        parameters = {"added": added.height, "ingest_run_id": _ingest_run(space, Tables.items)}
        _record_additions(space, Tables.items, added[Columns.item].to_list())
        space.write(Tables.items, pl.concat([existing, added]), run_id=run_id, source=source, parameters=parameters)
    return added.height


def add_users(workspace: Workspace, added: pl.DataFrame, run_id: str, *, source: str) -> int:
    """Append conformed users (new ids only) to the `users` table in one atomic write: the promoted version serves
    them at once as cold users (serving.Recommender folds them in) and the next refresh counts them. Their
    attributes must be ones the workspace's users already have (when they have any): a misspelt column would
    otherwise start a new attribute silently."""
    from catalog import DataError

    if added.is_empty():
        raise DataError(f"{source}: no users (a header only). Nothing was written.")
    with workspace.writer(f"{source} (run {run_id})") as space:  # users added meanwhile by another are kept
        return _add_users(space, added, run_id, source=source)


def _add_users(workspace: Workspace, added: pl.DataFrame, run_id: str, *, source: str) -> int:
    """`add_users`' read-modify-write, by the workspace's one writer."""
    from catalog import DataError

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
    _record_additions(workspace, Tables.users, added[Columns.user].to_list())
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


def save_serving(directory: Path, fitted: FittedRanker, index: EvalIndex) -> None:
    """Beside a saved version: the inputs its ranker serves from and their ids (serving.npz + serving.json), so the
    version can serve on its own (`serving.Recommender.load`), and the stand-in builders that give items and users
    added later their stand-ins."""
    from encoders import current_text_model
    from serving import save_serving_inputs

    warming = fitted.served.warming
    warmed, config = (warming.items, warming.config.model_dump()) if warming is not None else (None, None)
    fitted.served.standins.save(directory)  # items added later get their stand-ins from the same builder
    if fitted.served.user_standins is not None:  # and users added later theirs
        fitted.served.user_standins.save(directory)
    # The version serves items added later with the backend its items were embedded with (this process's).
    save_serving_inputs(
        directory,
        fitted.served.inputs,
        index.user_ids,
        index.item_ids,
        text_model=current_text_model(),
        warmed=warmed,
        warming=config,
    )


def _window(frame: pl.DataFrame) -> dict[str, str] | None:
    """{start, end}: the first and last event time of a frame, None without times."""
    if Columns.ts not in frame.columns or frame.is_empty():
        return None
    return {"start": str(frame[Columns.ts].min()), "end": str(frame[Columns.ts].max())}


def write_report(
    directory: Path,
    served: FittedRanker,
    plan: EvaluationPlan,
    metrics: pl.DataFrame,
    *,
    evaluated: EvaluationPlan,
    parent: str | None,
    dataset: str,
) -> None:
    """report.json beside the saved version: the data it serves from (`data_window`: first and last event it
    trained on), the evaluated candidate's windows and metrics on real held-out data, parent, models, and the
    augmentation it trained on (the synthetic rows given, the runs that wrote them, what warming did)."""
    if served.report is None:
        raise TypeError("a saved version needs its fit report.")
    synthetic = plan.synthetic
    runs = sorted(synthetic["run_id"].unique().to_list()) if synthetic is not None and "run_id" in synthetic else []
    report = {
        "version": directory.name,
        "parent": parent,
        "dataset": dataset,
        "protocol": evaluated.split.protocol,
        "split": evaluated.split.name,
        "data_window": _window(plan.split.train),
        # The candidate the metrics belong to: what it trained on and the held-out window it was judged on. A
        # refit version (`refit` true) serves the same choices trained on every event up to data_window's end.
        "evaluated": {
            "train_window": _window(evaluated.split.train),
            "refit": plan is not evaluated,
        },
        "metrics": metrics.to_dicts(),
        "models": served.report.as_dict(),
        "augmentation": {
            "synthetic_rows": synthetic.height if synthetic is not None else 0,
            "synthetic_runs": runs,
            "warming": served.report.served_warming,
        },
    }
    atomic_write_bytes(directory / "report.json", json.dumps(report, indent=2, default=str).encode())


@dataclass(frozen=True)
class Publication:
    """A `recommendations` table computed and not yet written (`publish`): a refresh computes it before recording
    its run, so that what can fail fails the run, and writes it after."""

    frame: pl.DataFrame
    run_id: str
    parameters: dict[str, object]

    def publish(self, workspace: Workspace) -> int:
        """Replace the workspace's `recommendations` table with this one, atomically; returns its rows."""
        workspace.write(
            Tables.recommendations, self.frame, run_id=self.run_id, source="refresh", parameters=self.parameters
        )
        return self.frame.height


def recommendations(
    recommender: Recommender, run_id: str, *, k: int, partitions: PartitionMap = IN_TURN
) -> Publication:
    """Top k for every user the loaded version serves (its users and those logged since), with the model version
    and run id: one part of the users per worker of `partitions` (on a Dask cluster, each part ranked on a worker;
    a user's list depends on the user alone, so the table is the same), gathered in the order of the users."""
    version, ranker = recommender.version, recommender.ranker_name
    ids = recommender.user_ids
    bounds = batch_bounds(ids.len(), max(ids.len(), 1), partitions.workers)  # one part, or one per worker
    parts = [ids.slice(start, stop - start) for start, stop in itertools.pairwise(bounds)]
    frames = partitions(functools.partial(_recommended, recommender, k), parts)
    frame = (pl.concat(frames) if frames else recommender.recommend(ids, k)).with_columns(
        pl.lit(version).alias("model_version"), pl.lit(run_id).alias("run_id")
    )
    parameters = {"ranker": ranker, "model_version": version, "k": k, "users": recommender.user_ids.len()}
    return Publication(frame, run_id, parameters)


def _recommended(recommender: Recommender, k: int, user_ids: pl.Series) -> pl.DataFrame:
    return recommender.recommend(user_ids, k)


def publish_recommendations(workspace: Workspace, recommender: Recommender, run_id: str, *, k: int) -> int:
    """The `recommendations` table: top k for every user the loaded version serves, replaced atomically so a reader
    sees one version's complete set."""
    return recommendations(recommender, run_id, k=k).publish(workspace)
