"""Do LLM-written item descriptions help the content side for cold items? CiteULike-a, on a sample of cold items.

For `--items` cold items drawn from cold_item_val (to choose a text variant) and as many from cold_item_test (for
the reported figures), the local LLM writes (a) the plain description (ITEM_DESCRIPTION: the title only) and (b) a
grounded one (ITEM_DESCRIPTION_GROUNDED: the title and the titles of its 5 nearest warm items by MiniLM title
similarity). Each cold ranking is restricted to one sample: candidates = the sampled items, users = those with a
positive among them in that split, nothing excluded. Text variants of a candidate's MiniLM embedding:

- title only; title + description as one text ("title. description", as flows.augmentation.with_descriptions);
- mixed: normalised(title embedding + w * description embedding), w in `--weights`;
- control without the LLM: normalised(title embedding + w * mean title embedding of the same 5 neighbours the
  grounded prompt lists), so that a gain of the grounded variant can be told from what the neighbours give.

Scorers: MiniLM kNN (mean of the top 3 similarities to the user's warm_emb items; warm items keep their titles)
and the ridge stand-in (BPR-MF on warm_emb, early-stopped on warm_val; a ridge mapper, alpha 10, fitted on warm
items' title embeddings, applied to the candidate's variant embedding; score = user vector . stand-in + bias).
Each scorer's variant is chosen on the cold_item_val sample by Recall@K (ties: NDCG@K); every variant is reported on the
cold_item_test sample, with a 95% paired bootstrap over users of its difference against title only, and the
best LLM variant against the best control (each chosen on val).

    .venv/bin/python benchmarks/descriptions.py [--items 120] [--cache DIR] [--json OUT] [--probe]

`--probe` only times the LLM on 8 items and prints the estimated time of the full run. Generations go through
the generation cache (a rerun costs nothing); BPR-MF is saved under the cache and reused.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import polars as pl
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing the package

from _report import write_report  # noqa: E402

from augment import (  # noqa: E402
    DESCRIPTION,
    ITEM_DESCRIPTION,
    ITEM_DESCRIPTION_GROUNDED,
    TITLES,
    AugmentStats,
    GenerationCache,
    LocalBackend,
    describe_items,
)
from catalog import Columns, Dataset, load_citeulike  # noqa: E402
from encoders import BPRMF, MODEL_NAME, ContentMapper, EmbeddingCache, MapperConfig, encode_texts, item_text  # noqa: E402
from flows.augmentation import with_descriptions  # noqa: E402
from ranker.baselines import ContentKNNScorer  # noqa: E402
from ranker.evaluate import EvalResult, ProtocolSplit, Scorer, cold_item_split, evaluate  # noqa: E402
from ranker.metrics import bootstrap_difference, per_user_accuracy  # noqa: E402
from training import ModelSettings  # noqa: E402

log = logging.getLogger("benchmarks.descriptions")

DEFAULT_DATA = Path("/work/shared/datasets/citeulike-a")
TITLE_ONLY = "title only"
CONTROL = "mix neighbour titles (no LLM)"
PROBE_ITEMS = 8
NEIGHBOURS = 5
KNN_TOP = 3  # benchmarks/cold_start.py's best MiniLM kNN on cold_item_val: mean of the top 3 similarities
RIDGE = MapperConfig(kind="ridge", alpha=10.0)  # the product's mapper (training.StandInConfig().mapper)
PROMPTS = {"plain": ITEM_DESCRIPTION, "grounded": ITEM_DESCRIPTION_GROUNDED}


@dataclasses.dataclass
class Sample:
    """The sampled cold items of one split, their ranking split, and their texts and variant embeddings."""

    role: str  # "choose" or "report"
    split: ProtocolSplit
    items: pl.DataFrame  # item_id, title of the sampled items, in index order
    neighbours: np.ndarray  # (items, NEIGHBOURS) rows of each item's nearest warm items
    descriptions: dict[str, pl.DataFrame] = dataclasses.field(default_factory=dict)  # prompt kind -> frame
    variants: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # variant -> (n items, 384)


# ------------------------------------------------------------------------------------------------ sampling


def sampled_items(dataset: Dataset, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Item ids drawn from each cold split as benchmarks/augment.py draws its samples (one seeded generator,
    cold_item_val first, then cold_item_test): two disjoint samples, since cold items belong to one split."""
    rng = np.random.default_rng(seed)
    drawn = {}
    for name, size in sizes.items():
        pool = np.array(sorted(dataset.splits[name][Columns.item].unique().to_list(), key=int), dtype=object)
        drawn[name] = pool[np.sort(rng.choice(pool.size, size=min(size, pool.size), replace=False))]
    return drawn


def restricted_split(dataset: Dataset, name: str, chosen: np.ndarray) -> ProtocolSplit:
    """The cold split `name` with only the `chosen` items as candidates; its users are those with a positive
    among them. Cold items have interactions in one split only, so nothing is left to exclude."""
    full = cold_item_split(dataset, name)  # type: ignore[arg-type]
    keep = pl.Series(chosen.tolist(), dtype=pl.String).implode()
    truth = full.truth.filter(pl.col(Columns.item).is_in(keep))
    exclude = full.exclude.filter(
        pl.col(Columns.item).is_in(keep) & pl.col(Columns.user).is_in(truth[Columns.user].implode())
    )
    candidates = np.sort(full.index.items(chosen.tolist()))
    return dataclasses.replace(full, truth=truth, exclude=exclude, candidates=candidates, name=f"{name} sample")


def nearest_warm(dataset: Dataset, titles: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """(len(candidates), k) item rows: each candidate's `k` most similar warm_emb items (MiniLM title cosine)."""
    row_of = {item: row for row, item in enumerate(dataset.items[Columns.item].to_list())}
    warm = np.array(sorted(row_of[i] for i in dataset.splits["warm_emb"][Columns.item].unique().to_list()))
    similarity = titles[candidates] @ titles[warm].T
    return warm[np.argsort(-similarity, axis=1, kind="stable")[:, :k]]


def neighbour_titles(dataset: Dataset, items: pl.DataFrame, neighbours: np.ndarray) -> pl.DataFrame:
    """(item_id, titles) for grounded_description_prompts, the most similar neighbour first."""
    all_titles = np.asarray(dataset.items[Columns.title].to_list(), dtype=object)
    return pl.DataFrame(
        {Columns.item: items[Columns.item], TITLES: [all_titles[rows].tolist() for rows in neighbours]},
        schema={Columns.item: pl.String, TITLES: pl.List(pl.String)},
    )


# ------------------------------------------------------------------------------------------------ generation


def describe(
    sample: Sample, neighbours: pl.DataFrame, backend: LocalBackend, cache: GenerationCache, max_tokens: int
) -> dict[str, AugmentStats]:
    """Both descriptions of every sampled item, through the generation cache."""
    stats = {}
    for kind, template in PROMPTS.items():
        frame, stats[kind] = describe_items(
            sample.items,
            backend,
            cache,
            template=template,
            neighbours=neighbours if kind == "grounded" else None,
            max_new_tokens=max_tokens,
        )
        sample.descriptions[kind] = frame
        log.info("%s sample, %s: %s", sample.role, kind, stats[kind].as_dict())
    return stats


# ------------------------------------------------------------------------------------------------ text variants


def mixed(titles: np.ndarray, other: np.ndarray, weight: float) -> np.ndarray:
    """normalised(title embedding + weight * other embedding), row by row."""
    vectors = titles + weight * other
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def variant_embeddings(sample: Sample, all_titles: np.ndarray, weights: list[float], embed: Any) -> None:
    """Fill `sample.variants`: the candidate embedding of each text variant (items without an accepted
    description keep their title embedding, as with_descriptions keeps their text). The control mixes in the
    mean title embedding of the same 5 neighbours the grounded prompt lists: what the neighbours alone give,
    without the LLM."""
    titles = all_titles[sample.split.candidates]
    sample.variants[TITLE_ONLY] = titles
    context = all_titles[sample.neighbours].mean(axis=1)
    for weight in weights:
        sample.variants[f"{CONTROL}, w={weight:g}"] = mixed(titles, context, weight)
    for kind, frame in sample.descriptions.items():
        joined = with_descriptions(sample.items.select(Columns.item, Columns.title), frame)
        sample.variants[f"title + {kind} description"] = embed(item_text(joined).to_list())
        text = sample.items.join(frame, on=Columns.item, how="left", maintain_order="left")[DESCRIPTION]
        has = text.is_not_null().to_numpy()
        alone = np.zeros_like(titles)
        if has.any():
            alone[has] = embed(text.filter(text.is_not_null()).to_list())
        for weight in weights:
            sample.variants[f"mix {kind}, w={weight:g}"] = mixed(titles, alone, weight)


# ------------------------------------------------------------------------------------------------ scorers


def knn_scorer(split: ProtocolSplit, vectors: np.ndarray, candidates: np.ndarray) -> Scorer:
    """MiniLM kNN with the candidates' rows replaced by a variant's embeddings (warm history keeps titles)."""
    matrix = vectors.copy()
    matrix[split.candidates] = candidates
    return ContentKNNScorer(matrix, neighbors=KNN_TOP).fit(split.train, split.index)


@dataclasses.dataclass
class StandIns:
    """BPR-MF user vectors aligned to the evaluation index and the ridge mapper fitted on warm titles."""

    users: np.ndarray  # (n index users, dim); zero for users BPR-MF never saw (their ranking is by bias)
    mapper: ContentMapper

    def scorer(self, split: ProtocolSplit, candidates: np.ndarray) -> Scorer:
        vectors, bias = self.mapper.transform(candidates)
        slot = np.full(split.index.n_items, -1)
        slot[split.candidates] = np.arange(split.candidates.size)

        def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
            rows = slot[items]
            return (self.users[users] @ vectors[rows].T + bias[rows]).astype(np.float32)

        return score


def fit_stand_ins(dataset: Dataset, split: ProtocolSplit, titles: np.ndarray, cf_dir: Path) -> StandIns:
    """BPR-MF (ModelSettings().cf, early-stopped on warm_val; loaded from `cf_dir` when saved there) and the
    ridge mapper from warm items' title embeddings to their BPR-MF vectors and biases."""
    if (cf_dir / "bprmf.json").is_file():
        bpr = BPRMF.load(cf_dir)
    else:
        started = time.perf_counter()
        bpr = BPRMF(ModelSettings().cf).fit(dataset.splits["warm_emb"], dataset.splits["warm_val"])
        bpr.save(cf_dir)
        log.info("BPR-MF fitted in %.0f s: %s", time.perf_counter() - started, bpr.summary)
    cf = bpr.embeddings
    row_of = {item: row for row, item in enumerate(dataset.items[Columns.item].to_list())}
    mapper = ContentMapper(RIDGE).fit(titles[[row_of[i] for i in cf.item_ids]], cf.item_vectors, cf.item_bias)
    users = np.zeros((split.index.n_users, cf.item_vectors.shape[1]), dtype=np.float32)
    index_ids = split.index.user_ids.to_numpy().astype(str)
    slot = np.searchsorted(cf.user_ids, index_ids).clip(max=cf.user_ids.size - 1)
    known = cf.user_ids[slot] == index_ids
    users[known] = cf.user_vectors[slot[known]]
    return StandIns(users, mapper)


# ------------------------------------------------------------------------------------------------ evaluation


def score_variants(sample: Sample, scorer_of: Any, k: int) -> dict[str, EvalResult]:
    return {
        name: evaluate(sample.split, scorer_of(sample.split, vectors), k) for name, vectors in sample.variants.items()
    }


def compare(variant: EvalResult, title: EvalResult, truth: pl.DataFrame, k: int) -> dict[str, list[float]]:
    """Mean difference (variant - title only) and its 95% paired bootstrap interval over users, per metric."""
    ours, base = per_user_accuracy(variant.recs, truth, k), per_user_accuracy(title.recs, truth, k)
    if ours[Columns.user].to_list() != base[Columns.user].to_list():
        raise AssertionError("the two rankings were evaluated on different users")
    return {
        metric: list(bootstrap_difference(ours[metric].to_numpy(), base[metric].to_numpy()))
        for metric in ("recall", "ndcg")
    }


def best_on_val(choose: dict[str, EvalResult], names: list[str]) -> str:
    """The variant of `names` with the best validation Recall@K, ties by NDCG@K, then the first."""
    return max(names, key=lambda v: (choose[v].value("recall"), choose[v].value("ndcg")))


def llm_against_control(
    name: str, choose: dict[str, EvalResult], report: dict[str, EvalResult], truth: pl.DataFrame, k: int
) -> dict[str, Any]:
    """The best LLM variant against the best no-LLM neighbour control (each chosen on val), on the report
    sample: does the LLM add anything beyond the neighbour titles its grounded prompt reads?"""
    llm = best_on_val(choose, [v for v in choose if v != TITLE_ONLY and not v.startswith(CONTROL)])
    control = best_on_val(choose, [v for v in choose if v.startswith(CONTROL)])
    difference = compare(report[llm], report[control], truth, k)
    return {"scorer": name, "llm_variant": llm, "control_variant": control, "difference": difference}


def scorer_rows(
    name: str, choose: dict[str, EvalResult], report: dict[str, EvalResult], truth: pl.DataFrame, k: int
) -> list[dict[str, Any]]:
    chosen = best_on_val(choose, list(choose))  # a full tie keeps the first variant tried, title only
    return [
        {
            "scorer": name,
            "variant": variant,
            "chosen_on_val": variant == chosen,
            f"val_recall@{k}": choose[variant].value("recall"),
            f"recall@{k}": result.value("recall"),
            f"ndcg@{k}": result.value("ndcg"),
            "difference_vs_title_only": compare(result, report[TITLE_ONLY], truth, k),
            "n_users": result.n_users,
        }
        for variant, result in report.items()
    ]


def markdown(rows: list[dict[str, Any]], k: int) -> str:
    lines = [
        f"| scorer | variant | val Recall@{k} | Recall@{k} | NDCG@{k} | ΔRecall [95% CI] | ΔNDCG [95% CI] |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        diff = row["difference_vs_title_only"]
        cells = [f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]" for d in (diff["recall"], diff["ndcg"])]
        variant = f"**{row['variant']}** (chosen)" if row["chosen_on_val"] else row["variant"]
        lines.append(
            f"| {row['scorer']} | {variant} | {row[f'val_recall@{k}']:.4f} | {row[f'recall@{k}']:.4f} "
            f"| {row[f'ndcg@{k}']:.4f} | {cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def make_sample(dataset: Dataset, titles: np.ndarray, role: str, name: str, chosen: np.ndarray) -> Sample:
    split = restricted_split(dataset, name, chosen)
    items = dataset.items.select(Columns.item, Columns.title)[split.candidates]
    log.info("%s sample from %s: %d items, %d users", role, name, items.height, split.n_users)
    return Sample(role, split, items, nearest_warm(dataset, titles, split.candidates, NEIGHBOURS))


def main(
    data: Annotated[Path, typer.Option(help="CiteULike-a folder.")] = DEFAULT_DATA,
    cache: Annotated[Path, typer.Option(help="Cache: embeddings/, llm/, generations/.")] = REPO / ".cache",
    items: Annotated[int, typer.Option(min=1, help="Cold items sampled from each of cold_item_val and _test.")] = 120,
    weights: Annotated[str, typer.Option(help="Mixing weights w of the description embedding.")] = "0.25,0.5,1.0",
    k: Annotated[int, typer.Option(min=1)] = 20,
    seed: Annotated[int, typer.Option()] = 0,
    # 1: on this shared 2-core VM two threads spin (probe: 2.8 tokens/s with 2, 50 with 1, at load 9)
    threads: Annotated[int, typer.Option(min=1, help="Torch threads of the local LLM.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per LLM batch.")] = 32,
    # 64 (as benchmarks/augment.py) keeps 4 generations per item within this machine's budget; both prompts
    # get the same limit, so neither variant wins by length
    max_new_tokens: Annotated[int, typer.Option(min=8)] = 64,
    probe: Annotated[bool, typer.Option(help=f"Only time the LLM on {PROBE_ITEMS} items.")] = False,
    json: Annotated[Path | None, typer.Option(help="Also write the results to this JSON file.")] = None,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    dataset = load_citeulike(data)
    embedding_cache = EmbeddingCache(cache / "embeddings", MODEL_NAME)

    def embed(texts: list[str]) -> np.ndarray:
        return encode_texts(texts, cache=embedding_cache, show_progress=False)

    titles = embed(item_text(dataset.items).to_list())
    drawn = sampled_items(dataset, {"cold_item_val": items, "cold_item_test": items}, seed)
    samples = [
        make_sample(dataset, titles, "choose", "cold_item_val", drawn["cold_item_val"]),
        make_sample(dataset, titles, "report", "cold_item_test", drawn["cold_item_test"]),
    ]
    if probe:  # the first items of the real sample, so that the probe's generations are reused from the cache
        first = samples[0]
        samples = [
            dataclasses.replace(first, items=first.items.head(PROBE_ITEMS), neighbours=first.neighbours[:PROBE_ITEMS])
        ]
    backend = LocalBackend.smollm2(cache, batch_size=batch_size, threads=threads)
    generation_cache = GenerationCache(cache / "generations")
    llm: dict[str, Any] = {}
    for sample in samples:
        neighbours = neighbour_titles(dataset, sample.items, sample.neighbours)
        stats = describe(sample, neighbours, backend, generation_cache, max_new_tokens)
        llm[sample.role] = {kind: s.as_dict() for kind, s in stats.items()}
    generated = [s for role in llm.values() for s in role.values()]
    seconds_generating = sum(s["seconds"] for s in generated if s["generated"])
    # None when the cache answered everything: the speed of that run is in the first run's report
    speed = sum(s["tokens"] for s in generated) / seconds_generating if seconds_generating else None
    llm["tokens_per_second"] = speed
    llm["seconds"] = sum(s["seconds"] for s in generated)
    rate = "LLM: all from the cache" if speed is None else f"LLM {speed:.1f} tokens/s"
    if probe:
        per_item = llm["seconds"] / (2 * PROBE_ITEMS)
        print(
            f"{rate}; {per_item:.1f} s an item and prompt; {items} items a split: about "
            f"{per_item * 4 * items / 60:.0f} min (less what the cache holds)"
        )
        return

    grid = [float(w) for w in weights.split(",") if w.strip()]
    for sample in samples:
        variant_embeddings(sample, titles, grid, embed)
    stand_ins = fit_stand_ins(dataset, samples[0].split, titles, cache / "benchmarks" / "descriptions-bprmf")
    scorers = {
        "MiniLM kNN (top 3)": lambda split, vectors: knn_scorer(split, titles, vectors),
        "ridge stand-in (BPR-MF)": stand_ins.scorer,
    }
    rows, controls = [], []
    truth = samples[1].split.truth
    for name, scorer_of in scorers.items():
        choose, report = (score_variants(sample, scorer_of, k) for sample in samples)
        rows.extend(scorer_rows(name, choose, report, truth, k))
        controls.append(llm_against_control(name, choose, report, truth, k))
    total = time.perf_counter() - started
    print(markdown(rows, k))
    for row in controls:
        diff = ", ".join(f"{m} {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]" for m, d in row["difference"].items())
        print(f"{row['scorer']}: {row['llm_variant']} - {row['control_variant']}: {diff}")
    sizes = {s.role: {"items": s.items.height, "users": s.split.n_users} for s in samples}
    print(f"\nsamples {sizes}; {rate}, {llm['seconds']:.0f} s generating; total {total:.0f} s")
    if json is not None:
        extra = {"samples": sizes, "llm": llm, "weights": grid, "seed": seed, "rows": rows, "llm_vs_control": controls}
        write_report(json, "descriptions", data=data, k=k, seconds=total, results=[extra])


if __name__ == "__main__":
    typer.run(main)
