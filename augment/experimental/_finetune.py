"""Fine-tuning the interaction judge on warm interactions, so that its P(yes) separates real pairs from unreal ones.

The tuned judge answers the same prompt as the base one (INTERACTION_JUDGE, built by `judge_prompts`) and is
trained with cross-entropy on the answer's yes/no next-token logits. Three methods:

- "head": the output layer only. One pass of the base model gives each training prompt's final hidden state at
  the answer position; a logistic regression on it (offset by the base model's own log-odds) learns a direction
  d, written into the output rows of the answer tokens (yes rows + d/2, no rows - d/2, the input embeddings
  untied first). About one judge pass over the pairs on a CPU, and the states are cached.
- "lora": LoRA adapters (peft) on every attention and MLP projection, merged into the weights at the end.
- "full": every weight. Both run the whole prompt forward and backward per step (about 30 s per batch of 8 on
  two loaded CPU cores: a GPU's job).

Whatever the method, the result is a plain transformers directory that `LocalBackend` loads like any model, named
by a hash of (base model, training pairs, config): a rerun with the same inputs reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from augment._augment import TITLES, _judge_prompts, _progress, _whole_users, candidate_users
from augment._cache import GenerationCache, input_hash
from augment._local import LocalBackend
from augment._prompts import INTERACTION_JUDGE, Messages
from catalog import Columns, DataError

log = logging.getLogger(__name__)

LABEL = "label"
METADATA = "judge_tuning.json"
# the cached hidden states live beside the judge's answers, under their own prompt id
STATE_PROMPT_ID = f"{INTERACTION_JUDGE.id}#answer-state"


class JudgeTuning(BaseModel):
    """How `finetune_judge` trains the judge. Defaults: the settings chosen on CiteULike's tuning items
    (benchmarks/judge_finetune.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    method: Literal["head", "lora", "full"] = "head"
    """What is trained: the answer tokens' output rows ("head", CPU-sized), LoRA adapters, or every weight."""
    steps: int = Field(300, ge=1)
    """Optimiser steps (fewer when `max_seconds` runs out first)."""
    lr: float = Field(0.01, gt=0)
    """AdamW learning rate."""
    batch_size: int = Field(8, ge=1)
    """Training pairs per step of "lora" and "full" ("head" takes every pair each step: they are small vectors)."""
    weight_decay: float = Field(0.01, ge=0)
    """L2 penalty: on the head's direction (added to the loss), or AdamW's decoupled decay for the other methods."""
    max_seconds: float = Field(900.0, gt=0)
    """Wall-clock budget of a training run (reading the hidden states included): training stops when it is spent."""
    negatives_per_positive: int = Field(2, ge=1)
    """Sampled unreal pairs per real pair when `tuned_judge` builds the training pairs."""
    hard_negatives: bool = False
    """Negatives from the embedding filter's candidate users of the positive's item (True), or uniform users
    (False: hard ones scored below chance on CiteULike's tuning items, docs/benchmarks.md)."""
    max_history: int = Field(10, ge=1)
    """History titles in the prompt: keep it equal to the `max_history` the tuned judge is run with."""
    lora_rank: int = Field(8, ge=1)
    """Rank of the LoRA adapters."""
    lora_alpha: float = Field(16.0, gt=0)
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""
    seed: int = 0
    """Seeds the negatives, the batch order and the adapters' initialisation."""


# --- training pairs ------------------------------------------------------------------------------------------------


def judge_training_pairs(
    positives: pl.DataFrame,
    users: Sequence[str],
    *,
    known: pl.DataFrame,
    candidates: pl.DataFrame | None = None,
    negatives_per_positive: int = 2,
    max_positives: int | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """(user_id, item_id, label) pairs that teach the judge: every real pair of `positives` (label 1; at most
    `max_positives`, sampled) and, for each, `negatives_per_positive` other users of the same item (label 0).

    Negatives come from `candidates` (the embedding filter's candidate users of each item, `candidate_users`):
    hard negatives, like the unreal candidates the judge must reject in use; where an item has too few, and when
    `candidates` is None, they are drawn uniformly from `users`. A pair in `known` (every real interaction) is
    never a negative, so an unobserved pair is the only kind labelled 0.
    """
    _check_pairs(positives, "positives")
    rng = np.random.default_rng(seed)
    positives = positives.select(Columns.user, Columns.item).unique().sort(Columns.user, Columns.item)
    if max_positives is not None and positives.height > max_positives:
        positives = positives[np.sort(rng.choice(positives.height, max_positives, replace=False)).tolist()]
    real = set(known.select(Columns.user, Columns.item).iter_rows()) | set(positives.iter_rows())
    pools: dict[str, list[str]] = {}
    if candidates is not None:
        pools = dict(candidates.sort(Columns.item, Columns.rank).group_by(Columns.item).agg(Columns.user).iter_rows())
    user_array = np.asarray(list(users), dtype=object)
    rows: list[tuple[str, str, int]] = []
    for user, item in positives.iter_rows():
        rows.append((user, item, 1))
        taken = {user}
        pool = [u for u in pools.get(item, []) if (u, item) not in real]
        for other in rng.permutation(np.asarray(pool, dtype=object))[:negatives_per_positive]:
            rows.append((str(other), item, 0))
            taken.add(str(other))
        for _ in range(negatives_per_positive - (len(taken) - 1)):
            rows.append((_uniform_user(user_array, item, real | {(u, item) for u in taken}, rng), item, 0))
    return pl.DataFrame(rows, schema={Columns.user: pl.String, Columns.item: pl.String, LABEL: pl.Int8}, orient="row")


def _uniform_user(users: np.ndarray, item: str, excluded: set[tuple[str, str]], rng: np.random.Generator) -> str:
    for _ in range(100):
        user = str(users[rng.integers(users.size)])
        if (user, item) not in excluded:
            return user
    raise DataError(f"could not sample a user who has not seen item {item!r}: give more users.")


def later_pairs(interactions: pl.DataFrame, per_user: int = 1, min_history: int = 2) -> pl.DataFrame:
    """Each user's `per_user` latest (user_id, item_id) by `ts`, for users who keep at least `min_history`
    earlier interactions: the positives of `judge_training_pairs` when a log has times but no held-out split."""
    _check_pairs(interactions, "interactions")
    if Columns.ts not in interactions.columns:
        raise DataError(f"later_pairs needs a {Columns.ts!r} column to tell later interactions from earlier ones.")
    ranked = interactions.with_columns(
        pl.col(Columns.ts).rank("ordinal", descending=True).over(Columns.user).alias("_latest"),
        pl.len().over(Columns.user).alias("_count"),
    )
    chosen = ranked.filter((pl.col("_latest") <= per_user) & (pl.col("_count") >= per_user + min_history))
    return chosen.select(Columns.user, Columns.item).sort(Columns.user, Columns.item)


# --- checks --------------------------------------------------------------------------------------------------------


def _check_pairs(frame: pl.DataFrame, what: str) -> None:
    missing = [c for c in (Columns.user, Columns.item) if c not in frame.columns]
    if missing:
        raise DataError(f"{what} lacks column(s) {missing}; it has {frame.columns}.")


def _check_training_pairs(pairs: pl.DataFrame, items: pl.DataFrame, histories: pl.DataFrame) -> None:
    _check_pairs(pairs, "training pairs")
    if LABEL not in pairs.columns:
        raise DataError(f"training pairs need a {LABEL!r} column (1 real, 0 not); they have {pairs.columns}.")
    if pairs.height == 0:
        raise DataError("no training pairs: the judge needs real (label 1) and unreal (label 0) pairs to learn from.")
    labels = pairs[LABEL]
    bad = pairs.filter(~labels.is_in([0, 1]) | labels.is_null())
    if bad.height:
        raise DataError(f"labels must be 0 or 1; {bad.height} pair(s) are not, e.g. {bad.head(3).rows()}.")
    if labels.n_unique() < 2:
        raise DataError(f"every training pair has label {labels[0]}: the judge needs both real and unreal pairs.")
    unknown = pairs.join(items.select(Columns.item), on=Columns.item, how="anti")
    if unknown.height:
        example = unknown[Columns.item].unique().head(3).to_list()
        raise DataError(f"{unknown.height} training pair(s) name items not in `items`, e.g. {example}.")
    no_history = pairs.join(histories.select(Columns.user), on=Columns.user, how="anti")
    if no_history.height:
        example = no_history[Columns.user].unique().head(3).to_list()
        raise DataError(
            f"{no_history.height} training pair(s) name users without a history in `histories`, e.g. {example}: "
            "the judge can only learn from users whose saved titles it sees."
        )


# --- the answer states (method "head") -----------------------------------------------------------------------------


def judge_states(
    pairs: pl.DataFrame,
    items: pl.DataFrame,
    histories: pl.DataFrame,
    backend: LocalBackend,
    cache: GenerationCache,
    *,
    max_history: int = 10,
    chunk: int = 64,
    max_seconds: float | None = None,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The base judge's (margin, state) for each pair of `pairs`, in its order (`LocalBackend.answer_states`):
    log-odds of yes against no, and the final hidden state at the answer position. Cached per prompt in
    `cache`; pairs not reached within `max_seconds` get NaN rows."""
    frame, prompts = _judge_prompts(pairs.select(Columns.user, Columns.item), items, histories, max_history)
    width = backend.model.config.hidden_size + 1
    joined = np.full((len(prompts), width), np.nan)
    digests = [input_hash(prompt) for prompt in prompts]
    pending = []
    for index, digest in enumerate(digests):
        entry = cache.get(backend.model_name, STATE_PROMPT_ID, digest)
        if entry is not None and len(entry["value"]) == width:
            joined[index] = entry["value"]
        else:
            pending.append(index)
    _compute_states(
        backend,
        cache,
        prompts,
        digests,
        pending,
        frame[Columns.user].to_list(),
        joined,
        chunk,
        max_seconds,
        show_progress,
    )
    order = np.argsort(frame["_pair"].to_numpy())  # back to the input order
    return joined[order, 0], joined[order, 1:]


def _compute_states(
    backend: LocalBackend,
    cache: GenerationCache,
    prompts: Sequence[Messages],
    digests: Sequence[str],
    pending: list[int],
    users: Sequence[str],
    joined: np.ndarray,
    chunk: int,
    max_seconds: float | None,
    show_progress: bool,
) -> None:
    started = time.perf_counter()
    with _progress(show_progress) as progress:
        task = progress.add_task(f"reading answer states ({backend.model_name})", total=len(pending), speed="")
        for todo in _whole_users(pending, users, chunk):
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                log.warning("answer states: time budget of %.0f s spent; %d pair(s) left out", max_seconds, len(todo))
                break
            margins, states = backend.answer_states([prompts[i] for i in todo])
            for index, margin, state in zip(todo, margins, states, strict=True):
                joined[index] = np.concatenate([[margin], state])
                cache.put(backend.model_name, STATE_PROMPT_ID, digests[index], joined[index].tolist())
            rate = len(todo) / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=len(todo), speed=f"{rate:.2f} pairs/s")


def fit_head(
    margins: np.ndarray, states: np.ndarray, labels: np.ndarray, config: JudgeTuning
) -> tuple[np.ndarray, list[float]]:
    """The direction d such that sigmoid(margin + d . state) predicts the labels: AdamW on the full batch with
    cross-entropy plus `weight_decay` * |d|^2, from d = 0 (the base judge; deterministic: nothing is sampled).
    Returns (d, loss per step)."""
    import torch

    x = torch.as_tensor(states, dtype=torch.float32)
    offset = torch.as_tensor(margins, dtype=torch.float32)
    y = torch.tensor(np.asarray(labels, dtype=np.float32))
    direction = torch.zeros(x.shape[1], requires_grad=True)
    optimiser = torch.optim.Adam([direction], lr=config.lr)  # (the L2 term is in the loss)
    losses = []
    started = time.perf_counter()
    for _ in range(config.steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(offset + x @ direction, y)
        total = loss + config.weight_decay * direction.square().sum()
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        losses.append(loss.item())
        if time.perf_counter() - started > config.max_seconds:
            break
    return direction.detach().numpy().astype(np.float64), losses


def _write_head(model: Any, direction: np.ndarray, yes_ids: Sequence[int], no_ids: Sequence[int]) -> None:
    """Add d/2 to the output rows of the yes tokens and subtract it from the no tokens', so that every prompt's
    log-odds moves by d . state. The output layer is untied from the input embeddings first: the prompt itself
    says "yes or no", and those input vectors must stay as they were."""
    import torch

    head = model.get_output_embeddings()
    weight = head.weight.detach().clone()
    step = torch.as_tensor(direction, dtype=weight.dtype) / 2
    weight[list(yes_ids)] += step
    weight[list(no_ids)] -= step
    head.weight = torch.nn.Parameter(weight)
    model.config.tie_word_embeddings = False


def _tune_head(
    backend: LocalBackend,
    pairs: pl.DataFrame,
    items: pl.DataFrame,
    histories: pl.DataFrame,
    config: JudgeTuning,
    cache: GenerationCache,
    show_progress: bool,
) -> tuple[Any, list[float], int]:
    started = time.perf_counter()
    margins, states = judge_states(
        pairs,
        items,
        histories,
        backend,
        cache,
        max_history=config.max_history,
        max_seconds=config.max_seconds,
        show_progress=show_progress,
    )
    reached = ~np.isnan(margins)
    labels = pairs[LABEL].to_numpy()[reached]
    if len(set(labels.tolist())) < 2:
        raise DataError(
            f"max_seconds={config.max_seconds} allowed reading only {int(reached.sum())} pair(s), not both labels: "
            "give the judge more time."
        )
    left = config.model_copy(update={"max_seconds": max(config.max_seconds - (time.perf_counter() - started), 1.0)})
    direction, losses = fit_head(margins[reached], states[reached], labels, left)
    model = _load_model(backend.model_dir)
    _write_head(model, direction, backend._yes_ids, backend._no_ids)
    return model, losses, int(reached.sum())


def _load_model(model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)


def _tune_weights(
    backend: LocalBackend,
    prompts: Sequence[Messages],
    labels: np.ndarray,
    config: JudgeTuning,
    show_progress: bool,
) -> tuple[Any, list[float], int]:
    """LoRA or full fine-tuning: minibatches of whole prompts, cross-entropy on the answer's yes/no log-odds."""
    import torch

    torch.manual_seed(config.seed)
    model = _load_model(backend.model_dir)
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        adapters = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=projections)
        model = get_peft_model(model, adapters)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    rows = [backend._render(prompt) for prompt in prompts]
    targets = torch.as_tensor(labels, dtype=torch.float32)
    rng = np.random.default_rng(config.seed)
    losses: list[float] = []
    started = time.perf_counter()
    with _progress(show_progress) as progress:
        task = progress.add_task(f"tuning the judge ({config.method})", total=config.steps, speed="")
        for _ in range(config.steps):
            batch = rng.choice(len(rows), size=min(config.batch_size, len(rows)), replace=False)
            ids, mask = backend._left_padded([rows[i] for i in batch])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left pads take no position (as the judge runs)
            output = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
            margin = backend._answer_margin(output.logits[:, -1, :])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(margin, targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            progress.update(task, advance=1, speed=f"loss {np.mean(losses[-10:]):.3f}")
            if time.perf_counter() - started > config.max_seconds:
                break
    if config.method == "lora":
        model = model.merge_and_unload()  # a plain checkpoint: LocalBackend needs no peft to load it
    return model.eval(), losses, len(rows)


# --- the tuned model as a cached model version ---------------------------------------------------------------------


def _base_identity(backend: LocalBackend) -> dict[str, Any]:
    """Names the base model by its name, its config and its weight files' sizes (cheap, and changes with them)."""
    directory = backend.model_dir
    weights = sorted((p.name, p.stat().st_size) for p in directory.glob("*.safetensors"))
    config = hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
    return {"name": backend.model_name, "config_sha256": config, "weights": weights, "precision": backend.precision}


def tuned_model_name(
    backend: LocalBackend, prompts: Sequence[Messages], labels: np.ndarray, config: JudgeTuning
) -> str:
    """`<base>-judge-<method>-<hash>`: a hash of (base model, training prompts and labels, config). It names the
    output directory and the tuned judge's `model_name`, so the generation cache never mixes its answers
    with another model's."""
    key = {
        "base": _base_identity(backend),
        "pairs": input_hash([list(prompts), [int(label) for label in labels]]),
        "config": config.model_dump(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{backend.model_name}-judge-{config.method}-{digest}"


def _save_atomically(model: Any, backend: LocalBackend, metadata: dict[str, Any], target: Path) -> None:
    """Weights, tokenizer and metadata into a temporary sibling directory, then one rename: a crash leaves no
    half model, and a concurrent run that finished first wins (its directory is identical in content)."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        model.save_pretrained(temporary)
        backend.tokenizer.save_pretrained(temporary)
        (temporary / METADATA).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        try:
            os.replace(temporary, target)
        except OSError:  # another process finished first
            if not (target / METADATA).is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def finetune_judge(
    base: LocalBackend | Path,
    pairs: pl.DataFrame,
    items: pl.DataFrame,
    histories: pl.DataFrame,
    config: JudgeTuning | None = None,
    *,
    out_dir: Path,
    cache: GenerationCache | None = None,
    show_progress: bool = True,
) -> Path:
    """Train the judge on labelled pairs and return the tuned model's directory under `out_dir`.

    `pairs` holds (user_id, item_id, label) with label 1 for a real pair and 0 for an unreal one; `items`
    (item_id, title[, description]) and `histories` (user_id, titles) fill the judge prompt exactly as
    `judge_pairs` does, so the tuned judge answers the prompt it is run with. The directory is named by
    `tuned_model_name`; when it exists it is returned without training. `cache` keeps the base model's answer
    states ("head"; default: `out_dir`/answer-states). The directory's judge_tuning.json records the config,
    the pairs, the seconds and the loss per step.
    """
    config = config or JudgeTuning()
    _check_training_pairs(pairs, items, histories)
    backend = base if isinstance(base, LocalBackend) else LocalBackend(Path(base))
    frame, prompts = _judge_prompts(pairs.select(Columns.user, Columns.item), items, histories, config.max_history)
    labels = pairs[LABEL].to_numpy()[frame["_pair"].to_numpy()]
    name = tuned_model_name(backend, prompts, labels, config)
    target = Path(out_dir) / name
    if (target / METADATA).is_file():
        log.info("tuned judge %s exists: reused", name)
        return target
    started = time.perf_counter()
    if config.method == "head":
        states_cache = cache or GenerationCache(Path(out_dir) / "answer-states")
        model, losses, used = _tune_head(backend, pairs, items, histories, config, states_cache, show_progress)
    else:
        model, losses, used = _tune_weights(backend, prompts, labels, config, show_progress)
    metadata = {
        "model_name": name,
        "base": _base_identity(backend),
        "prompt": INTERACTION_JUDGE.id,
        "config": config.model_dump(),
        "pairs": int(pairs.height),
        "positives": int(labels.sum()),
        "pairs_used": used,
        "steps": len(losses),
        "seconds": round(time.perf_counter() - started, 3),
        "loss": [round(value, 6) for value in losses],
        "created_at": datetime.now(UTC).isoformat(),
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    _save_atomically(model, backend, metadata, target)
    log.info("tuned judge %s: %d steps, loss %.4f -> %.4f", name, len(losses), losses[0], losses[-1])
    return target


def tuned_judge(
    base: LocalBackend,
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    histories: pl.DataFrame,
    *,
    item_vectors: np.ndarray,
    out_dir: Path,
    later: pl.DataFrame | None = None,
    config: JudgeTuning | None = None,
    max_positives: int = 300,
    top_m: int = 20,
    cache: GenerationCache | None = None,
    show_progress: bool = True,
) -> LocalBackend:
    """The judge tuned on these warm interactions, as a LocalBackend (trained on first call, then reused).

    `interactions` (user_id, item_id[, ts]) are the warm pairs the users' `histories` (user_id, titles) were
    built from; `later` are real pairs after them (e.g. CiteULike's warm_val), and without it each user's
    latest interaction by `ts` (`later_pairs`) is held out. `item_vectors` holds one text embedding per row
    of `items`: a user's vector is the mean over their earlier items, and the embedding filter's `top_m`
    candidate users of each positive's item give the hard negatives (`config.hard_negatives`).
    """
    config = config or JudgeTuning()
    positives = later_pairs(interactions) if later is None else later
    earlier = interactions.join(positives, on=[Columns.user, Columns.item], how="anti")
    positives = _not_in_history(positives, items, histories)
    users, user_vectors = _user_vectors(earlier, items, item_vectors)
    position = {item: row for row, item in enumerate(items[Columns.item].to_list())}
    targets = positives[Columns.item].unique().sort().to_list()
    candidates = (
        candidate_users(targets, item_vectors[[position[i] for i in targets]], users, user_vectors, top_m=top_m)
        if config.hard_negatives
        else None
    )
    known = pl.concat([interactions.select(Columns.user, Columns.item), positives.select(Columns.user, Columns.item)])
    with_history = sorted(set(users) & set(histories[Columns.user].to_list()))
    pairs = judge_training_pairs(
        positives.filter(pl.col(Columns.user).is_in(with_history)),
        with_history,
        known=known,
        candidates=candidates,
        negatives_per_positive=config.negatives_per_positive,
        max_positives=max_positives,
        seed=config.seed,
    )
    path = finetune_judge(
        base, pairs, items, histories, config, out_dir=out_dir, cache=cache, show_progress=show_progress
    )
    return LocalBackend(path, batch_size=base.batch_size, precision=base.precision, device=base.device)


def _not_in_history(positives: pl.DataFrame, items: pl.DataFrame, histories: pl.DataFrame) -> pl.DataFrame:
    """Positives whose title is not already among the user's history titles: a judge that learns to spot its
    candidate in the history learns nothing it can use on a new item."""
    titled = positives.join(items.select(Columns.item, Columns.title), on=Columns.item, how="left").join(
        histories.select(Columns.user, TITLES), on=Columns.user, how="left"
    )
    seen = titled.select(
        pl.col(TITLES).fill_null([]).list.contains(pl.col(Columns.title)).fill_null(False).alias("_seen")
    )["_seen"]
    if seen.sum():
        log.warning("%d positive(s) appear in their user's history: left out of the judge's training", seen.sum())
    return positives.filter(~seen)


def _user_vectors(
    interactions: pl.DataFrame, items: pl.DataFrame, item_vectors: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Each user's mean item vector over `interactions` (the embedding filter's user side)."""
    if item_vectors.shape[0] != items.height:
        raise DataError(f"item_vectors has {item_vectors.shape[0]} rows for {items.height} items: one per item row.")
    position = {item: row for row, item in enumerate(items[Columns.item].to_list())}
    grouped = interactions.group_by(Columns.user).agg(Columns.item).sort(Columns.user)
    users = grouped[Columns.user].to_list()
    vectors = np.stack([item_vectors[[position[i] for i in row]].mean(axis=0) for row in grouped[Columns.item]])
    return users, vectors
