"""Augmentation steps over a workspace: describe items, profile users, simulate interactions.

The CLI (`warmstart augment`) and the Prefect tasks call these; each takes explicit arguments, writes one
table with provenance, and returns a plain dict with at least: generated, cached, rejected, synthetic_rows,
tokens, seconds. Reruns resume: the generation cache answers every input already seen, and rows of entities
not touched by this run are kept.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

import augment
from augment import (
    DESCRIPTION,
    INTERACTION_JUDGE,
    ITEM_DESCRIPTION,
    TITLES,
    USER_PROFILE,
    AugmentStats,
    Backend,
    BackendChoice,
    GenerationCache,
    candidate_users,
    choose_llm_backend,
    describe_items,
    estimate_cost,
    item_description_prompts,
    judge_prompts,
    llamacpp_name,
    neighbour_titles,
    profile_prompts,
    profile_users,
    simulate_interactions,
    smollm2_name,
)
from catalog import Columns, ConfigError, Segments, Tables, Workspace, WorkspaceError
from catalog.datasets import dataset_item_kind
from flows.settings import WarmstartSettings
from flows.stages import AugmentPlan, StepReport
from training.defaults import PROFILED_ITEMS

ITEM_DESCRIPTIONS = Tables.item_descriptions
USER_PROFILES = Tables.user_profiles
SYNTHETIC_INTERACTIONS = Tables.synthetic_interactions
SEGMENT_CHOICES = (Segments.cold, Segments.sparse, Segments.tail, Segments.head, Segments.new)
PROFILE_MAX_NEW_TOKENS = 80  # a profile is two sentences
DESCRIBE_NEIGHBOURS = 5  # nearest warm items whose titles a description prompt lists


@functools.lru_cache(maxsize=4)
def auto_backend(local_model_name: str = augment.DEFAULT_LOCAL_MODEL) -> BackendChoice:
    """What WARMSTART_LLM_BACKEND=auto runs on this CPU (`augment.choose_llm_backend` over its flags and what the
    llama.cpp build can run), chosen once per process."""
    from encoders._text import cpu_flags

    try:
        features: frozenset[str] | None = augment.llamacpp_features()
    except ConfigError:  # no llama.cpp: its bf16 path cannot run, and F16 fails with the same clear error
        features = frozenset()
    return choose_llm_backend(cpu_flags(), model=local_model_name, llamacpp_features=features)


def make_backend(settings: WarmstartSettings) -> Backend:
    """The backend the settings name: the local model (SmolLM2 by default) by llama.cpp or transformers (made in
    the cache once), or an HTTP server; with 'auto', the one `auto_backend` chooses for this CPU."""
    if settings.llm_backend == "http" and not settings.llm_model:
        raise ConfigError("WARMSTART_LLM_BACKEND=http needs WARMSTART_LLM_MODEL (the model the server serves).")
    kind, precision, weights = settings.llm_backend, settings.llm_precision, "f16"
    if kind == "auto":
        choice = auto_backend(settings.llm_local_model)
        kind = choice.kind
        if choice.kind == "local":
            precision = choice.precision  # type: ignore[assignment]
        else:
            weights = choice.precision
    return augment.make_backend(
        kind,
        cache_dir=settings.cache_dir,
        local_model_name=settings.llm_local_model,
        batch_size=settings.llm_batch_size,
        threads=settings.llm_threads,
        precision=precision,
        llamacpp_weights=weights,  # type: ignore[arg-type]
        base_url=settings.llm_base_url,
        model=settings.llm_model,
        api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
        timeout=settings.llm_timeout,
        retries=settings.llm_retries,
        concurrency=settings.llm_concurrency,
        allow_insecure=settings.llm_allow_insecure,
    )


def backend_label(settings: WarmstartSettings) -> str:
    """What runs the language model, as the metrics store records it: kind, precision and model; with 'auto', what
    it chose and why, e.g. "auto: llamacpp/f16:smollm2-135m-instruct-f16-llamacpp (no avx512_bf16/amx_bf16)"."""
    if settings.llm_backend == "http":
        return f"http:{settings.llm_model}"
    if settings.llm_backend == "auto":
        choice = auto_backend(settings.llm_local_model)
        chosen = _label(choice.kind, choice.precision, settings.llm_local_model)
        return f"auto: {chosen} ({choice.reason})"[:160]  # (the store's column holds 160 characters)
    precision = "f16" if settings.llm_backend == "llamacpp" else settings.llm_precision
    return _label(settings.llm_backend, precision, settings.llm_local_model)


def _label(kind: str, precision: str, local_model_name: str) -> str:
    if kind == "llamacpp":
        return f"llamacpp/{precision}:{llamacpp_name(local_model_name, precision)}"  # type: ignore[arg-type]
    return f"local/{precision}:{smollm2_name(precision)}"  # type: ignore[arg-type]


def generation_cache(cache_dir: Path) -> GenerationCache:
    return GenerationCache(Path(cache_dir) / "generations")


def segment_ids(workspace: Workspace, kind: str, segments: Sequence[str], limit: int | None = None) -> list[str]:
    """Ids of the workspace's items or users (`kind`) in any of `segments` (from `warmstart detect`), fewest
    interactions first, then by id; at most `limit`."""
    unknown = sorted(set(segments) - set(SEGMENT_CHOICES))
    if unknown:
        raise ConfigError(f"unknown segment(s) {unknown}; choose from {', '.join(SEGMENT_CHOICES)}.")
    if not workspace.exists(Tables.segments):
        raise WorkspaceError(f"workspace {workspace.root} has no segments: run `warmstart detect` first.")
    wanted = [s for s in segments if s != Segments.new]
    chosen = pl.col(Columns.segment).is_in(wanted)
    if Segments.new in segments:
        chosen = chosen | pl.col("is_new")
    frame = (
        workspace.scan(Tables.segments)
        .filter((pl.col(Columns.kind) == kind) & chosen)
        .sort(Columns.n_interactions, "entity_id")
        .select("entity_id")
        .collect()
    )
    ids = frame["entity_id"].to_list()
    return ids[:limit] if limit is not None else ids


def _report(stats: AugmentStats, started: float, requested: int, **sizes: int) -> StepReport:
    return StepReport(stats, requested, round(time.perf_counter() - started, 3), **sizes)


def _merge(workspace: Workspace, table: str, new: pl.DataFrame, key: str) -> pl.DataFrame:
    """`new`, plus the rows of the existing table whose `key` is not in `new` (reruns replace, never duplicate)."""
    if not workspace.exists(table):
        return new
    old = workspace.read(table)
    if old.schema != new.schema:  # written by an older version: this run's rows win, the rest is dropped
        return new
    return pl.concat([old.join(new.select(key).unique(), on=key, how="anti"), new])


def describe_step(
    workspace: Workspace,
    backend: Backend,
    *,
    cache_dir: Path,
    run_id: str,
    segments: Sequence[str],
    limit: int | None = None,
    max_new_tokens: int = 96,
    show_progress: bool = True,
) -> StepReport:
    """Describe the items of `segments` (at most `limit`) into the `item_descriptions` table, each prompt grounded
    in the item's fields, the kind of thing the catalogue holds and its nearest warm neighbours' titles
    (`description_context`); a text its fields contradict is rejected, never stored."""
    started = time.perf_counter()
    items = describe_targets(workspace, segments, limit)
    kind, neighbours = description_context(workspace, items)
    cache = generation_cache(cache_dir)
    frame, stats = describe_items(
        items,
        backend,
        cache,
        kind=kind,
        neighbours=neighbours,
        max_new_tokens=max_new_tokens,
        show_progress=show_progress,
    )
    report = _report(stats, started, items.height)
    return store_descriptions(workspace, frame, report, run_id=run_id, model=backend.model_name, segments=segments)


def describe_targets(workspace: Workspace, segments: Sequence[str], limit: int | None) -> pl.DataFrame:
    """The items of `segments` to describe (at most `limit`, fewest interactions first)."""
    ids = segment_ids(workspace, "item", segments, limit)
    return workspace.read(Tables.items).filter(pl.col(Columns.item).is_in(ids))


def item_kind(workspace: Workspace) -> str:
    """The kind of thing the workspace's items are, as descriptions name them: the state's `item_kind` when set,
    else that of the data set it ingested ("film" for ml-100k, "article" for CiteULike), else "item"."""
    state = workspace.state()
    return str(state.get("item_kind") or dataset_item_kind(str(state.get("dataset", ""))))


def warm_neighbours(workspace: Workspace, items: pl.DataFrame, k: int = DESCRIBE_NEIGHBOURS) -> pl.DataFrame | None:
    """(item_id, titles): for each of `items`, the titles of its `k` nearest warm items (at least one real
    interaction) by the workspace's `item_embeddings` (cosine), the nearest first; None when the workspace has no
    embeddings yet (`warmstart encode`). An item without an embedding gets no row."""
    if not workspace.exists(Tables.item_embeddings) or items.is_empty():
        return None
    embeddings = workspace.read(Tables.item_embeddings)
    warm_ids = workspace.scan(Tables.interactions).select(Columns.item).unique().collect()
    warm = (
        workspace.read(Tables.items)
        .select(Columns.item, Columns.title)
        .join(warm_ids, on=Columns.item, how="semi")
        .join(embeddings, on=Columns.item, how="inner")
    )
    targets = items.select(Columns.item, Columns.title).join(
        embeddings, on=Columns.item, how="inner", maintain_order="left"
    )
    if warm.is_empty() or targets.is_empty():
        return None
    return neighbour_titles(
        targets[Columns.item].to_list(),
        targets["embedding"].to_numpy(),
        warm.select(Columns.item, Columns.title),
        warm["embedding"].to_numpy(),
        k=k,
        target_titles=targets[Columns.title].to_list(),
    )


def description_context(workspace: Workspace, items: pl.DataFrame) -> tuple[str, pl.DataFrame | None]:
    """What a description prompt of `items` is grounded in besides their own fields: the kind of thing the
    catalogue holds (`item_kind`) and their nearest warm neighbours' titles (`warm_neighbours`)."""
    return item_kind(workspace), warm_neighbours(workspace, items)


def store_descriptions(
    workspace: Workspace,
    frame: pl.DataFrame,
    report: StepReport,
    *,
    run_id: str,
    model: str,
    segments: Sequence[str],
) -> StepReport:
    """Merge one run's descriptions into the `item_descriptions` table (one write, however many batches made
    them); returns the run's report with the request and table sizes."""
    frame = frame.with_columns(pl.lit(run_id).alias("run_id"))
    table = _merge(workspace, ITEM_DESCRIPTIONS, frame, Columns.item)
    report = replace(report, rows=table.height)
    prompts = sorted(set(frame["prompt_version"].to_list())) if "prompt_version" in frame.columns else []
    prompt = ", ".join(prompts) or ITEM_DESCRIPTION.id
    parameters = {"model": model, "prompt": prompt, "segments": list(segments)} | report.as_dict()
    workspace.write(ITEM_DESCRIPTIONS, table, run_id=run_id, source="augment.describe", parameters=parameters)
    return report


def user_histories(workspace: Workspace, users: Sequence[str] | None = None) -> pl.DataFrame:
    """(user_id, titles, items): each user's item titles and ids, most recent first (real interactions only)."""
    interactions = workspace.scan(Tables.interactions)
    if users is not None:
        interactions = interactions.filter(pl.col(Columns.user).is_in(list(users)))
    return (
        interactions.join(workspace.scan(Tables.items).select(Columns.item, Columns.title), on=Columns.item, how="left")
        .sort([Columns.user, Columns.ts, Columns.item], descending=[False, True, False], nulls_last=True)
        .group_by(Columns.user, maintain_order=True)
        .agg(pl.col(Columns.title).fill_null("").alias(TITLES), pl.col(Columns.item).alias(PROFILED_ITEMS))
        .collect()
    )


def profile_step(
    workspace: Workspace,
    backend: Backend,
    *,
    cache_dir: Path,
    run_id: str,
    segments: Sequence[str],
    limit: int | None = None,
    max_items: int = 10,
    max_new_tokens: int = PROFILE_MAX_NEW_TOKENS,
    show_progress: bool = True,
) -> StepReport:
    """Profile the users of `segments` from their items' titles into the `user_profiles` table. Users with no
    interaction (cold) have nothing to profile and are skipped (counted as `skipped`)."""
    started = time.perf_counter()
    ids = segment_ids(workspace, "user", segments, limit)
    histories = user_histories(workspace, ids)
    cache = generation_cache(cache_dir)
    frame, stats = profile_users(
        histories, backend, cache, max_items=max_items, max_new_tokens=max_new_tokens, show_progress=show_progress
    )
    # The items each profile was written from (the prompt's first max_items): the audit measures a profile only on
    # users whose held-out events it did not see (training._audit.audit_profiles).
    written_from = histories.select(Columns.user, pl.col(PROFILED_ITEMS).list.head(max_items))
    frame = frame.join(written_from, on=Columns.user, how="left", maintain_order="left")
    frame = frame.with_columns(pl.lit(run_id).alias("run_id"))
    table = _merge(workspace, USER_PROFILES, frame, Columns.user)
    report = _report(stats, started, len(ids), skipped=len(ids) - histories.height, rows=table.height)
    parameters = {"model": backend.model_name, "prompt": USER_PROFILE.id, "segments": list(segments)} | report.as_dict()
    workspace.write(USER_PROFILES, table, run_id=run_id, source="augment.profile", parameters=parameters)
    return report


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def _simulation_inputs(
    workspace: Workspace, ids: Sequence[str], cache_dir: Path, top_m: int, show_progress: bool
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(candidate pairs, the items to judge, the candidates' histories) of a simulation over the items `ids`."""
    from encoders import EmbeddingCache, encode_texts, item_text  # torch loads only for this step

    items = workspace.read(Tables.items)
    interactions = workspace.read(Tables.interactions).select(Columns.user, Columns.item).unique()
    embeddings = EmbeddingCache.in_cache_dir(cache_dir)
    vectors = _unit_rows(encode_texts(item_text(items).to_list(), cache=embeddings, show_progress=show_progress))
    position = {item: row for row, item in enumerate(items[Columns.item].to_list())}
    users = interactions.group_by(Columns.user).agg(pl.col(Columns.item)).sort(Columns.user)
    user_vectors = (
        np.stack([vectors[[position[item] for item in row]].mean(axis=0) for row in users[Columns.item].to_list()])
        if users.height
        else np.zeros((0, vectors.shape[1]), dtype=np.float32)
    )
    targets = [item for item in ids if item in position]
    candidates = candidate_users(
        targets,
        vectors[[position[item] for item in targets]] if targets else np.zeros((0, vectors.shape[1])),
        users[Columns.user].to_list(),
        user_vectors,
        top_m=top_m,
    ).join(interactions, on=[Columns.user, Columns.item], how="anti")  # never "predict" a real pair
    judged_items = items.filter(pl.col(Columns.item).is_in(targets)).select(Columns.item, Columns.title)
    if workspace.exists(ITEM_DESCRIPTIONS):
        described = workspace.read(ITEM_DESCRIPTIONS).select(Columns.item, DESCRIPTION)
        judged_items = judged_items.join(described, on=Columns.item, how="left")
    return candidates, judged_items, user_histories(workspace, candidates[Columns.user].unique().to_list())


def simulate_step(
    workspace: Workspace,
    backend: Backend,
    *,
    cache_dir: Path,
    run_id: str,
    segments: Sequence[str],
    limit: int | None = None,
    top_m: int = 20,
    keep_top: int = 5,
    min_score: float = 0.0,
    show_progress: bool = True,
) -> StepReport:
    """Synthetic interactions for the items of `segments` into the `synthetic_interactions` table.

    Candidate users: the `top_m` users whose mean MiniLM title embedding (over their real interactions) is
    most similar to the item's; the LLM judge keeps `keep_top` per item. Items use their LLM description
    in the judge prompt when `item_descriptions` has one.
    """
    started = time.perf_counter()
    ids = segment_ids(workspace, "item", segments, limit)
    candidates, judged_items, histories = _simulation_inputs(workspace, ids, cache_dir, top_m, show_progress)
    frame, stats = simulate_interactions(
        candidates,
        judged_items,
        histories,
        backend,
        generation_cache(cache_dir),
        run_id=run_id,
        keep_top=keep_top,
        min_score=min_score,
        weight=lambda score: score,
        show_progress=show_progress,
    )
    table = _merge(workspace, SYNTHETIC_INTERACTIONS, frame, Columns.item)
    report = _report(stats, started, len(ids), candidates=candidates.height, rows=table.height)
    parameters = {
        "model": backend.model_name,
        "prompt": INTERACTION_JUDGE.id,
        "segments": list(segments),
        "top_m": top_m,
        "keep_top": keep_top,
        "min_score": min_score,
    } | report.as_dict()
    workspace.write(SYNTHETIC_INTERACTIONS, table, run_id=run_id, source="augment.simulate", parameters=parameters)
    return report


STEP_TABLES = {"describe": ITEM_DESCRIPTIONS, "profile": USER_PROFILES, "simulate": SYNTHETIC_INTERACTIONS}


def recorded_speed(workspace: Workspace, step: str, model: str) -> float | None:
    """Tokens per second of `model` over the workspace's earlier runs of `step` that ran it (provenance), or
    None when there are none: new tokens for describe and profile, prompt tokens read for simulate."""
    runs = [
        record["parameters"]
        for record in workspace.history()
        if record.get("table") == STEP_TABLES[step]
        and record.get("parameters", {}).get("model") == model
        and record["parameters"].get("generated", 0) > 0
    ]
    seconds = sum(float(run.get("seconds", 0.0)) for run in runs)
    return sum(int(run.get("tokens", 0)) for run in runs) / seconds if seconds > 0 else None


@dataclass(frozen=True)
class StepEstimate:
    """What a step would cost now, without running the model: its prompts, those the cache answers, the prompt
    tokens, at most the new tokens, and seconds at the speed the model showed in the workspace's earlier runs of
    the step (None when it has none)."""

    step: str
    prompts: int
    cached: int
    prompt_tokens: int
    max_new_tokens: int
    recorded_tokens_per_s: float | None
    estimated_seconds: float | None


def estimate_step(
    step: str, workspace: Workspace, backend: Backend, plan: AugmentPlan, *, cache_dir: Path, top_m: int = 20
) -> StepEstimate:
    """What `step` (describe, profile or simulate) of `plan` would cost now, without running the model."""
    cache = generation_cache(cache_dir)
    if step == "describe":
        ids = segment_ids(workspace, "item", plan.item_segments, plan.limit)
        items = workspace.read(Tables.items).filter(pl.col(Columns.item).is_in(ids))
        kind, neighbours = description_context(workspace, items)
        template, prompts, _ = item_description_prompts(items, kind=kind, neighbours=neighbours)
        new = plan.max_new_tokens
    elif step == "profile":
        ids = segment_ids(workspace, "user", plan.user_segments, plan.limit)
        prompts = profile_prompts(user_histories(workspace, ids))
        template, new = USER_PROFILE, PROFILE_MAX_NEW_TOKENS
    else:
        ids = segment_ids(workspace, "item", plan.simulate_segments, plan.limit)
        candidates, items, histories = _simulation_inputs(workspace, ids, cache_dir, top_m, False)
        prompts, template, new = judge_prompts(candidates, items, histories), INTERACTION_JUDGE, 0
    cost = estimate_cost(prompts, backend, cache, template, max_new_tokens=new, shared_prefix=step == "simulate")
    speed = recorded_speed(workspace, step, backend.model_name)
    tokens = cost.prompt_tokens if step == "simulate" else cost.max_new_tokens
    return StepEstimate(
        step=step,
        prompts=cost.prompts,
        cached=cost.cached,
        prompt_tokens=cost.prompt_tokens,
        max_new_tokens=cost.max_new_tokens,
        recorded_tokens_per_s=round(speed, 1) if speed else None,
        estimated_seconds=round(tokens / speed, 1) if speed else None,
    )


def with_descriptions(items: pl.DataFrame, descriptions: pl.DataFrame) -> pl.DataFrame:
    """`items` with each LLM description appended to the item's `text` (created if absent), so that text
    encoders see "title. text. description"; items without a description are unchanged."""
    joined = items.join(descriptions.select(Columns.item, DESCRIPTION), on=Columns.item, how="left")
    text = pl.col(Columns.text) if Columns.text in items.columns else pl.lit(None, pl.String)
    merged = (
        pl.when(pl.col(DESCRIPTION).is_null())
        .then(text)
        .when(text.is_null() | (text.str.strip_chars() == ""))
        .then(pl.col(DESCRIPTION))
        .otherwise(pl.concat_str([text, pl.col(DESCRIPTION)], separator=". "))
    )
    return (
        joined.with_columns(merged.alias(Columns.text))
        .drop(DESCRIPTION)
        .select(*items.columns, *([] if Columns.text in items.columns else [Columns.text]))
    )
