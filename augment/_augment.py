"""Augmentation stages: item descriptions, user profiles and synthetic interactions, over polars frames.

Every output row carries its provenance (model, prompt version, input hash); every generated value goes
through the generation cache first, so a rerun generates nothing twice, and through validation before it
is stored, with a bounded number of regenerations (sampled, seeded by the attempt number).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from augment._backend import Backend
from augment._cache import GenerationCache, input_hash
from augment._inprocess import InProcessBackend
from augment._prompts import (
    INTERACTION_JUDGE,
    ITEM_DESCRIPTION,
    ITEM_DESCRIPTION_GROUNDED,
    USER_PROFILE,
    Messages,
    PromptTemplate,
    described_item_data,
    item_data,
    judge_messages,
    release_year,
    user_profile_messages,
)
from augment._validate import ItemFacts, OutputRules, grounding_reason, rejection_reason, tidy
from catalog import Columns, DataError

DESCRIPTION = "description"
PROFILE = "profile"
TITLES = "titles"
SIMILARITY = "similarity"
WEIGHT = "weight"
MODEL = "model"
PROMPT_VERSION = "prompt_version"
INPUT_HASH = "input_hash"
RUN_ID = "run_id"
SYNTHETIC_SOURCE = "llm_judge"
UNKNOWN_JUDGEMENT = "unknown judgement"
_CANDIDATE_SCHEMA = {Columns.item: pl.String, Columns.user: pl.String, SIMILARITY: pl.Float32, Columns.rank: pl.Int32}


@dataclass
class AugmentStats:
    """What one augmentation call did: counts, tokens and wall time."""

    generated: int = 0  # values produced by the model in this call (texts accepted, or pairs judged)
    cached: int = 0  # values read from the generation cache
    rejected: int = 0  # inputs whose every attempt failed validation (nothing stored)
    synthetic_rows: int = 0
    tokens: int = 0  # new tokens generated (descriptions, profiles) or prompt tokens run (judge, local backend)
    attempts: int = 0  # generations tried, regenerations included
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def total(cls, parts: Sequence[AugmentStats]) -> AugmentStats:
        """The stats of several calls (e.g. the batches of one step) added up."""
        reasons: dict[str, int] = {}
        for part in parts:
            for reason, count in part.reasons.items():
                reasons[reason] = reasons.get(reason, 0) + count
        return cls(
            generated=sum(part.generated for part in parts),
            cached=sum(part.cached for part in parts),
            rejected=sum(part.rejected for part in parts),
            synthetic_rows=sum(part.synthetic_rows for part in parts),
            tokens=sum(part.tokens for part in parts),
            attempts=sum(part.attempts for part in parts),
            seconds=sum(part.seconds for part in parts),
            reasons=reasons,
        )


def _progress(enabled: bool) -> Progress:
    """A bar with count, model speed (the `speed` field, see `_speed`) and ETA."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=True,
    )


def _speed(count: int, started: float, unit: str = "tokens") -> str:
    """Tokens (or another `unit`) per second since `started`: says whether the language model runs at its speed."""
    return f"{count / max(time.perf_counter() - started, 1e-9):,.1f} {unit}/s"


def _result(text: str, tokens: int, attempts: int, *, cached: bool, digest: str) -> dict[str, Any]:
    """One prompt's validated text with how it was obtained (new tokens, attempts, from the cache or not)."""
    return {"text": text, "tokens": tokens, "attempts": attempts, "cached": cached, "hash": digest}


def _cached_results(
    digests: Sequence[str],
    backend: Backend,
    cache: GenerationCache,
    template: PromptTemplate,
    stats: AugmentStats,
    facts: Sequence[ItemFacts] | None = None,
) -> tuple[list[dict[str, Any] | None], list[int]]:
    """The cached text of each prompt (by its input `digests`) that the cache holds, None for the others, and the
    indices of those others: the prompts left to generate (with `facts`, also those whose cached text contradicts
    its item's fields)."""
    results: list[dict[str, Any] | None] = [None] * len(digests)
    pending = []
    for index, digest in enumerate(digests):
        entry = cache.get(backend.model_name, template.id, digest)
        if entry is not None and facts is not None and grounding_reason(str(entry["value"]), facts[index]):
            entry = None
        if entry is not None:
            results[index] = _result(entry["value"], 0, 0, cached=True, digest=digest)
            stats.cached += 1
        else:
            pending.append(index)
    return results, pending


def _generate_validated(
    prompts: Sequence[Messages],
    backend: Backend,
    cache: GenerationCache,
    template: PromptTemplate,
    *,
    max_new_tokens: int,
    max_attempts: int,
    rules: OutputRules,
    chunk: int,
    label: str,
    show_progress: bool,
    facts: Sequence[ItemFacts] | None = None,
) -> tuple[list[dict[str, Any] | None], AugmentStats]:
    """Validated text for every prompt (None where every attempt was rejected), from the cache when it can; with
    `facts` (one per prompt) a text must also agree with its item's fields (`grounding_reason`). A cached text
    is checked again, so that one stored before a check existed is not served past it."""
    if max_attempts < 1:
        raise DataError(f"max_attempts must be at least 1, got {max_attempts}.")
    started = time.perf_counter()
    stats = AugmentStats()
    reasons: Counter[str] = Counter()
    digests = [input_hash(prompt) for prompt in prompts]
    results, pending = _cached_results(digests, backend, cache, template, stats, facts)
    with _progress(show_progress) as progress:
        task = progress.add_task(f"{label} ({backend.model_name})", total=len(pending), speed="")
        for start in range(0, len(pending), chunk):
            todo = pending[start : start + chunk]
            for attempt in range(max_attempts):
                if not todo:
                    break
                # the first attempt is greedy (deterministic); a regeneration samples, seeded by the attempt
                outputs = backend.generate(
                    [prompts[i] for i in todo],
                    max_new_tokens=max_new_tokens,
                    seed=attempt,
                    temperature=0.0 if attempt == 0 else 0.7,
                )
                stats.attempts += len(todo)
                retry = []
                for index, output in zip(todo, outputs, strict=True):
                    stats.tokens += output.tokens
                    text = tidy(output.text)
                    reason = rejection_reason(text, template, rules, facts[index] if facts else None)
                    if reason is None:
                        cache.put(backend.model_name, template.id, digests[index], text, tokens=output.tokens)
                        results[index] = _result(text, output.tokens, attempt + 1, cached=False, digest=digests[index])
                        stats.generated += 1
                    else:
                        reasons[reason] += 1
                        retry.append(index)
                todo = retry
            stats.rejected += len(todo)
            progress.update(task, advance=len(pending[start : start + chunk]), speed=_speed(stats.tokens, started))
    stats.reasons = dict(reasons)
    stats.seconds = round(time.perf_counter() - started, 3)
    return results, stats


def _texts_frame(
    key: str,
    ids: Sequence[str],
    column: str,
    results: Sequence[dict[str, Any] | None],
    backend: Backend,
    template: PromptTemplate,
) -> pl.DataFrame:
    kept = [(entity, result) for entity, result in zip(ids, results, strict=True) if result is not None]
    return pl.DataFrame(
        {
            key: [entity for entity, _ in kept],
            column: [result["text"] for _, result in kept],
            MODEL: [backend.model_name] * len(kept),
            PROMPT_VERSION: [template.id] * len(kept),
            INPUT_HASH: [result["hash"] for _, result in kept],
            "tokens": [result["tokens"] for _, result in kept],
            "attempts": [result["attempts"] for _, result in kept],
            "cached": [result["cached"] for _, result in kept],
        },
        schema={
            key: pl.String,
            column: pl.String,
            MODEL: pl.String,
            PROMPT_VERSION: pl.String,
            INPUT_HASH: pl.String,
            "tokens": pl.Int64,
            "attempts": pl.Int64,
            "cached": pl.Boolean,
        },
    )


def _require(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataError(f"{what} lacks column(s) {missing}; it has {frame.columns}.")


def description_prompts(items: pl.DataFrame, template: PromptTemplate = ITEM_DESCRIPTION) -> list[Messages]:
    """One description prompt per row of `items` (title, and categories and text when present)."""
    _require(items, [Columns.item, Columns.title], "items")
    rows = items.select(
        Columns.title, *(c for c in (Columns.categories, Columns.text) if c in items.columns)
    ).to_dicts()
    return [
        template.messages(item_data(row[Columns.title], row.get(Columns.categories), row.get(Columns.text)))
        for row in rows
    ]


def grounded_description_prompts(
    items: pl.DataFrame,
    neighbours: pl.DataFrame | None = None,
    template: PromptTemplate = ITEM_DESCRIPTION_GROUNDED,
    *,
    kind: str | None = None,
    max_neighbours: int = 5,
) -> list[Messages]:
    """One description prompt per row of `items` grounded in every field it has (`described_item_data`: the `kind`
    of thing the catalogue holds, title, categories, release year, text) and, with `neighbours` (item_id, titles:
    the most similar first; an item without a row gets none), the titles of related catalog items. The template's
    instruction names `kind` ("item" when None)."""
    return _grounded(items, neighbours, template.for_kind(kind or "item"), kind, max_neighbours)[0]


def _fields(items: pl.DataFrame) -> list[dict[str, Any]]:
    """Each item's descriptive fields (title, and categories, released and text where the frame has them)."""
    optional = (Columns.categories, Columns.released, Columns.text)
    return items.select(Columns.title, *(c for c in optional if c in items.columns)).to_dicts()


def _grounded(
    items: pl.DataFrame,
    neighbours: pl.DataFrame | None,
    template: PromptTemplate,
    kind: str | None,
    max_neighbours: int,
) -> tuple[list[Messages], list[ItemFacts]]:
    """The grounded prompts of `items` and, for the validator, what each item's fields say (`ItemFacts`)."""
    _require(items, [Columns.item, Columns.title], "items")
    related: list[list[str]] = [[] for _ in range(items.height)]
    if neighbours is not None:
        _require(neighbours, [Columns.item, TITLES], "neighbours")
        if neighbours[Columns.item].is_duplicated().any():
            raise DataError("neighbours holds an item_id more than once; give each item one list of titles.")
        joined = items.select(Columns.item).join(
            neighbours.select(Columns.item, TITLES), on=Columns.item, how="left", maintain_order="left"
        )
        related = [list(titles or [])[:max_neighbours] for titles in joined[TITLES].to_list()]
    prompts, facts = [], []
    for row, others in zip(_fields(items), related, strict=True):
        data = described_item_data(
            row[Columns.title],
            kind=kind,
            categories=row.get(Columns.categories),
            released=row.get(Columns.released),
            text=row.get(Columns.text),
            neighbours=others,
            max_neighbours=max_neighbours,
        )
        prompts.append(template.messages(data))
        facts.append(ItemFacts(kind=kind, year=release_year(row.get(Columns.released)), known=data))
    return prompts, facts


def item_description_prompts(
    items: pl.DataFrame,
    *,
    kind: str | None = None,
    neighbours: pl.DataFrame | None = None,
    template: PromptTemplate | None = None,
    max_neighbours: int = 5,
) -> tuple[PromptTemplate, list[Messages], list[ItemFacts]]:
    """The template, prompts and `ItemFacts` (with `kind`) that `describe_items` uses: the plain ITEM_DESCRIPTION
    (title, categories, text) when given it as `template`, or given none and neither `kind` nor `neighbours`;
    otherwise grounded (ITEM_DESCRIPTION_GROUNDED or `template`: every field, and the neighbours' titles)."""
    plain = template.name == ITEM_DESCRIPTION.name if template else kind is None and neighbours is None
    if plain:
        template = template or ITEM_DESCRIPTION
        facts = [
            ItemFacts(
                kind=kind,
                year=release_year(row.get(Columns.released)),
                known=" ".join(str(value) for value in row.values() if value),
            )
            for row in _fields(items)
        ]
        return template, description_prompts(items, template), facts
    template = (template or ITEM_DESCRIPTION_GROUNDED).for_kind(kind or "item")
    prompts, facts = _grounded(items, neighbours, template, kind, max_neighbours)
    return template, prompts, facts


def neighbour_titles(
    targets: Sequence[str],
    target_vectors: np.ndarray,
    warm: pl.DataFrame,
    warm_vectors: np.ndarray,
    *,
    k: int = 5,
    target_titles: Sequence[str | None] | None = None,
    block: int = 256,
) -> pl.DataFrame:
    """(item_id, titles): for each of `targets`, the distinct titles of the `k` items of `warm` (item_id, title)
    whose vectors are most cosine-similar to its own, the most similar first; never the item itself, nor another
    item under its own title (`target_titles`: MovieLens lists some films twice)."""
    schema = {Columns.item: pl.String, TITLES: pl.List(pl.String)}
    if not len(targets) or not warm.height or k <= 0:
        return pl.DataFrame({Columns.item: list(targets), TITLES: [[] for _ in targets]}, schema=schema)

    def unit(matrix: np.ndarray) -> np.ndarray:
        matrix = np.asarray(matrix, dtype=np.float32)
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    def key(title: object) -> str:
        return " ".join(str(title or "").lower().split())

    targets_unit, warm_unit = unit(target_vectors), unit(warm_vectors)
    warm_ids = warm[Columns.item].to_list()
    warm_titles = warm[Columns.title].to_list()
    own = list(target_titles) if target_titles is not None else [None] * len(targets)
    take = min(2 * k + 1, len(warm_ids))  # room for the item itself and repeated titles
    rows: list[list[str]] = []
    for start in range(0, len(targets), block):
        scores = targets_unit[start : start + block] @ warm_unit.T
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        for offset, columns in enumerate(np.take_along_axis(top, order, axis=1)):
            item, seen, titles = targets[start + offset], {key(own[start + offset])} - {""}, []
            for j in columns:
                if warm_ids[j] != item and key(warm_titles[j]) not in seen and len(titles) < k:
                    seen.add(key(warm_titles[j]))
                    titles.append(warm_titles[j])
            rows.append(titles)
    return pl.DataFrame({Columns.item: list(targets), TITLES: rows}, schema=schema)


def profile_prompts(
    histories: pl.DataFrame, template: PromptTemplate = USER_PROFILE, *, max_items: int = 10
) -> list[Messages]:
    """One profile prompt per row of `histories` (user_id, titles)."""
    _require(histories, [Columns.user, TITLES], "histories")
    return [
        user_profile_messages(titles or [], max_items=max_items)
        if template is USER_PROFILE
        else template.messages("\n".join(titles or []))
        for titles in histories[TITLES].to_list()
    ]


@dataclass(frozen=True)
class CostEstimate:
    """What running some prompts would cost before running them."""

    prompts: int
    cached: int  # answered by the generation cache: cost nothing
    prompt_tokens: int  # tokens the model would read for the others (after prefix reuse where the backend has it)
    max_new_tokens: int  # at most this many generated (0 for the judge, which reads one next-token distribution)


def estimate_cost(
    prompts: Sequence[Messages],
    backend: Backend,
    cache: GenerationCache,
    template: PromptTemplate,
    *,
    max_new_tokens: int = 0,
    shared_prefix: bool = False,
) -> CostEstimate:
    """Count the prompts the cache does not answer and their tokens: exactly with a local backend's tokenizer
    (`shared_prefix`: as the judge runs them, each shared prefix once), else about 4 characters a token."""
    pending = [p for p in prompts if cache.get(backend.model_name, template.id, input_hash(p)) is None]
    if isinstance(backend, InProcessBackend):
        tokens = backend.count_tokens(pending, shared_prefix=shared_prefix)
    else:
        tokens = sum(len(message["content"]) for prompt in pending for message in prompt) // 4
    return CostEstimate(len(prompts), len(prompts) - len(pending), tokens, len(pending) * max_new_tokens)


def describe_items(
    items: pl.DataFrame,
    backend: Backend,
    cache: GenerationCache,
    *,
    template: PromptTemplate | None = None,
    kind: str | None = None,
    neighbours: pl.DataFrame | None = None,
    check_facts: bool = True,
    max_new_tokens: int = 96,
    max_attempts: int = 3,
    rules: OutputRules | None = None,
    chunk: int = 32,
    show_progress: bool = True,
) -> tuple[pl.DataFrame, AugmentStats]:
    """An LLM-written description for each item.

    With a `kind` (the kind of thing the catalogue holds: "film", "article"...) or `neighbours` (item_id, titles)
    each prompt is grounded in every field of the item and its neighbours' titles (`item_description_prompts`,
    ITEM_DESCRIPTION_GROUNDED), else it is the plain ITEM_DESCRIPTION (title, categories, text). With
    `check_facts` (the default) a text that calls the item a wrong kind of thing for `kind` or states a year or a
    person its fields contradict or do not give is rejected like any other (`augment._validate.grounding_reason`).
    Returns (item_id, description, model, prompt_version, input_hash, tokens, attempts, cached); items whose
    every attempt was rejected are left out (counted in `stats.rejected`, with their reasons).
    """
    template, prompts, facts = item_description_prompts(items, kind=kind, neighbours=neighbours, template=template)
    results, stats = _generate_validated(
        prompts,
        backend,
        cache,
        template,
        max_new_tokens=max_new_tokens,
        max_attempts=max_attempts,
        rules=rules or OutputRules(),
        chunk=chunk,
        label="describing items",
        show_progress=show_progress,
        facts=facts if check_facts else None,
    )
    ids = items[Columns.item].to_list()
    return _texts_frame(Columns.item, ids, DESCRIPTION, results, backend, template), stats


def profile_users(
    histories: pl.DataFrame,
    backend: Backend,
    cache: GenerationCache,
    *,
    template: PromptTemplate = USER_PROFILE,
    max_items: int = 10,
    max_new_tokens: int = 80,
    max_attempts: int = 3,
    rules: OutputRules | None = None,
    chunk: int = 32,
    show_progress: bool = True,
) -> tuple[pl.DataFrame, AugmentStats]:
    """An LLM-written interest profile for each user from the titles of their items (`titles`: list of str,
    most relevant first; the first `max_items` are used). Returns (user_id, profile, provenance...)."""
    prompts = profile_prompts(histories, template, max_items=max_items)
    results, stats = _generate_validated(
        prompts,
        backend,
        cache,
        template,
        max_new_tokens=max_new_tokens,
        max_attempts=max_attempts,
        rules=rules or OutputRules(),
        chunk=chunk,
        label="profiling users",
        show_progress=show_progress,
    )
    ids = histories[Columns.user].to_list()
    return _texts_frame(Columns.user, ids, PROFILE, results, backend, template), stats


def candidate_users(
    item_ids: Sequence[str],
    item_vectors: np.ndarray,
    user_ids: Sequence[str],
    user_vectors: np.ndarray,
    *,
    top_m: int,
    block: int = 1024,
) -> pl.DataFrame:
    """The embedding filter: for each item, the `top_m` users whose vectors are most cosine-similar to it.

    Returns (item_id, user_id, similarity, rank) with rank 1 the most similar. The vectors come from the
    caller (e.g. text embeddings of items, and of users' histories or profiles).
    """
    items = np.asarray(item_vectors, dtype=np.float32)
    users = np.asarray(user_vectors, dtype=np.float32)
    if items.ndim != 2 or users.ndim != 2 or items.shape[1] != users.shape[1]:
        raise DataError(f"item vectors {items.shape} and user vectors {users.shape} must be 2-D with equal widths.")
    if items.shape[0] != len(item_ids) or users.shape[0] != len(user_ids):
        raise DataError("candidate_users needs one id per vector row, for items and for users.")
    m = min(top_m, users.shape[0])
    if m <= 0 or items.shape[0] == 0:
        return pl.DataFrame(schema=_CANDIDATE_SCHEMA)

    def unit(matrix: np.ndarray) -> np.ndarray:
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    items, users = unit(items), unit(users)
    chosen, similarity = [], []
    for start in range(0, items.shape[0], block):
        scores = items[start : start + block] @ users.T
        top = np.argpartition(-scores, m - 1, axis=1)[:, :m]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        chosen.append(np.take_along_axis(top, order, axis=1))
        similarity.append(np.take_along_axis(top_scores, order, axis=1))
    picked, sims = np.concatenate(chosen), np.concatenate(similarity)
    user_array = np.asarray(user_ids, dtype=object)
    return pl.DataFrame(
        {
            Columns.item: np.repeat(np.asarray(item_ids, dtype=object), m).tolist(),
            Columns.user: user_array[picked.ravel()].tolist(),
            SIMILARITY: sims.ravel().astype(np.float32),
            Columns.rank: np.tile(np.arange(1, m + 1, dtype=np.int32), len(item_ids)),
        },
        schema=_CANDIDATE_SCHEMA,
    )


def _judge_prompts(
    pairs: pl.DataFrame,
    items: pl.DataFrame,
    histories: pl.DataFrame,
    max_history: int,
    template: PromptTemplate = INTERACTION_JUDGE,
) -> tuple[pl.DataFrame, list[Messages]]:
    """The pairs joined to their item and history, ordered by user (a `_pair` column keeps their input order),
    and the judge prompt (`template`) of each."""
    _require(pairs, [Columns.user, Columns.item], "pairs")
    _require(items, [Columns.item, Columns.title], "items")
    _require(histories, [Columns.user, TITLES], "histories")
    detail = [Columns.item, Columns.title] + ([DESCRIPTION] if DESCRIPTION in items.columns else [])
    frame = (
        pairs.with_row_index("_pair")
        .join(items.select(detail), on=Columns.item, how="left")
        .join(histories.select(Columns.user, TITLES), on=Columns.user, how="left")
        .sort(Columns.user, Columns.item)
    )
    missing = frame.filter(pl.col(Columns.title).is_null())
    if missing.height:
        example = missing[Columns.item].head(3).to_list()
        raise DataError(f"judge_pairs: {missing.height} pair(s) name items not in `items`, e.g. {example}.")
    prompts = [
        judge_messages(
            row[TITLES] or [], row[Columns.title], row.get(DESCRIPTION), max_items=max_history, template=template
        )
        for row in frame.select(
            TITLES, Columns.title, *([DESCRIPTION] if DESCRIPTION in frame.columns else [])
        ).iter_rows(named=True)
    ]
    return frame, prompts


def judge_prompts(
    pairs: pl.DataFrame,
    items: pl.DataFrame,
    histories: pl.DataFrame,
    *,
    max_history: int = 10,
    template: PromptTemplate = INTERACTION_JUDGE,
) -> list[Messages]:
    """The judge prompt of each (user_id, item_id) pair, ordered by user as `judge_pairs` runs them."""
    return _judge_prompts(pairs, items, histories, max_history, template)[1]


def judge_pairs(
    pairs: pl.DataFrame,
    items: pl.DataFrame,
    histories: pl.DataFrame,
    backend: Backend,
    cache: GenerationCache,
    *,
    template: PromptTemplate = INTERACTION_JUDGE,
    max_history: int = 10,
    chunk: int = 64,
    show_progress: bool = True,
) -> tuple[pl.DataFrame, AugmentStats]:
    """The judge's P(yes) for each (user_id, item_id) of `pairs`, read from next-token logits (no free text).

    `items` holds title and optionally description; `histories` holds each user's `titles`. Pairs are judged
    grouped by user, so a backend that reuses a shared prompt prefix computes each user's history once.
    Returns `pairs` with a `score` column: NaN where the judge's answer is unknown (neither yes nor no among
    the tokens its backend sees), counted in `stats.reasons["unknown judgement"]` and not cached. `template`
    (a version of interaction_judge) words the prompt and names its cache entries.
    """
    started = time.perf_counter()
    stats = AugmentStats()
    frame, prompts = _judge_prompts(pairs, items, histories, max_history, template)
    digests = [input_hash(prompt) for prompt in prompts]
    scores = np.full(len(prompts), np.nan)
    pending = []
    for index, digest in enumerate(digests):
        entry = cache.get(backend.model_name, template.id, digest)
        if entry is not None:
            scores[index] = float(entry["value"])
            stats.cached += 1
        else:
            pending.append(index)
    tokens_before = backend.prompt_tokens if isinstance(backend, InProcessBackend) else 0
    with _progress(show_progress) as progress:
        task = progress.add_task(f"judging pairs ({backend.model_name})", total=len(pending), speed="")
        for todo in _whole_users(pending, frame[Columns.user].to_list(), chunk):
            probabilities = backend.yes_probability([prompts[i] for i in todo])
            for index, probability in zip(todo, probabilities, strict=True):
                scores[index] = float(probability)
                if np.isnan(probability):  # unknown: counted, not cached (a later run asks again)
                    stats.reasons[UNKNOWN_JUDGEMENT] = stats.reasons.get(UNKNOWN_JUDGEMENT, 0) + 1
                else:
                    cache.put(backend.model_name, template.id, digests[index], float(probability))
            stats.generated += len(todo)
            if isinstance(backend, InProcessBackend):  # a server does not say how many prompt tokens it read
                stats.tokens = backend.prompt_tokens - tokens_before
            rate = _speed(stats.tokens, started) if stats.tokens else _speed(stats.generated, started, "pairs")
            progress.update(task, advance=len(todo), speed=rate)
    stats.seconds = round(time.perf_counter() - started, 3)
    scored = frame.select("_pair").with_columns(pl.Series(Columns.score, scores, dtype=pl.Float64))
    result = pairs.with_row_index("_pair").join(scored, on="_pair", how="left").sort("_pair").drop("_pair")
    return result, stats


def _whole_users(pending: list[int], users: Sequence[str], chunk: int) -> list[list[int]]:
    """`pending` (ordered by user) cut into chunks of about `chunk` pairs that never split a user's pairs, so
    that a backend reusing the prompt prefix computes each user's history once."""
    chunks: list[list[int]] = [[]]
    for position, index in enumerate(pending):
        if len(chunks[-1]) >= chunk and users[index] != users[pending[position - 1]]:
            chunks.append([])
        chunks[-1].append(index)
    return [todo for todo in chunks if todo]


def simulate_interactions(
    candidates: pl.DataFrame,
    items: pl.DataFrame,
    histories: pl.DataFrame,
    backend: Backend,
    cache: GenerationCache,
    *,
    run_id: str,
    keep_top: int = 5,
    min_score: float = 0.0,
    weight: Callable[[pl.Expr], pl.Expr] | float = 1.0,
    template: PromptTemplate = INTERACTION_JUDGE,
    max_history: int = 10,
    chunk: int = 64,
    show_progress: bool = True,
) -> tuple[pl.DataFrame, AugmentStats]:
    """Synthetic interactions (ColdLLM / LLM-InS style): the LLM judges each (candidate user, item) pair from
    the embedding filter (`candidates`: item_id, user_id, similarity) and keeps the `keep_top` pairs per item
    with the highest P(yes) (and at least `min_score`).

    Returns (user_id, item_id, score, similarity, rank, weight, model, prompt_version, run_id, source), rank 1
    the judge's favourite per item. `weight` is a constant or a function of the score expression.
    """
    _require(candidates, [Columns.item, Columns.user, SIMILARITY], "candidates")
    scored, stats = judge_pairs(
        candidates.select(Columns.user, Columns.item, SIMILARITY),
        items,
        histories,
        backend,
        cache,
        template=template,
        max_history=max_history,
        chunk=chunk,
        show_progress=show_progress,
    )
    weight_expr = weight(pl.col(Columns.score)) if callable(weight) else pl.lit(float(weight))
    kept = (
        scored.filter(pl.col(Columns.score).is_not_nan())  # unknown judgements keep no pair (NaN sorts first)
        .sort([Columns.item, Columns.score, SIMILARITY, Columns.user], descending=[False, True, True, False])
        .with_columns(pl.col(Columns.score).cum_count().over(Columns.item).cast(pl.Int32).alias(Columns.rank))
        .filter((pl.col(Columns.rank) <= keep_top) & (pl.col(Columns.score) >= min_score))
        .select(
            Columns.user,
            Columns.item,
            Columns.score,
            pl.col(SIMILARITY).cast(pl.Float32),
            Columns.rank,
            weight_expr.cast(pl.Float64).alias(WEIGHT),
            pl.lit(backend.model_name).alias(MODEL),
            pl.lit(template.id).alias(PROMPT_VERSION),
            pl.lit(run_id).alias(RUN_ID),
            pl.lit(SYNTHETIC_SOURCE).alias("source"),
        )
    )
    stats.synthetic_rows = kept.height
    return kept, stats
