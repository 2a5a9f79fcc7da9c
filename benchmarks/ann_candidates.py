"""ANN candidates (ranker.ann) against the brute force on a synthetic catalogue of realistic shape: candidate recall
per source and of the union, the index's build time and memory, one user's candidate latency and a batch's.

    .venv/bin/python benchmarks/ann_candidates.py --items 100000 500000 [--users 200] [--json F]

The catalogue (`synthetic_inputs`) has the shape of benchmarks/scale.py's log, in vectors: items belong to one of 50
topics and one of 20 sub-topics within it; an item's appeal is Zipf (exponent 1); users (items / 2.5 of them, as in
the scale sizes) have lognormal activity (sigma 1.2, 10 events on average) and prefer two or three topics, each event
drawn from a preferred topic by appeal. The collaborative item vectors (256-d, ALS's default, plus a bias) are the
topic's and sub-topic's centres plus noise, longer for popular items (as trained factors are); stand-ins are the
same centres with more noise (a content mapper is less sure); users' vectors lie near their topics' mean; text
embeddings (384-d, MiniLM's) are topic and sub-topic centres plus noise, normalised; TF-IDF rows are 6 to 12 words,
two thirds from the topic's 150 of 6,000. Random vectors without clusters would flatter neither method.

Each measured user is excluded their history (as serving excludes what they have seen). Recall@per_source of a
source = |ANN top ∩ brute-force top| / per_source, averaged over users with history; the union's = |ANN union ∩
brute-force union| / |brute-force union|. Users without history are timed but not in recall (their text and
TF-IDF scores all tie at 0: the brute force's picks among them are arbitrary).
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine, write_report  # noqa: E402
from ranker.ann import ann_candidates, build_candidate_index  # noqa: E402
from ranker.features import RankerInputs, RankingTask, generate_candidates, pair_features  # noqa: E402
from ranker.lightgbm_ranker import LightGBMRanker, LightGBMRankerConfig  # noqa: E402
from ranker.temporal import TimeFeatures  # noqa: E402
from serving._recommender import _top_k_of_candidates  # noqa: E402 (what serving ranks candidates with)

TOPICS, SUBTOPICS, CF_DIM, TEXT_DIM, VOCABULARY = 50, 20, 256, 384, 6_000


def synthetic_inputs(n_items: int, seed: int = 0) -> tuple[RankerInputs, sp.csr_array]:
    """A catalogue of `n_items` and its users as RankerInputs (see the module docstring), and one held-out item of
    each user with two or more (users x items, the ranker's positives)."""
    rng = np.random.default_rng(seed)
    n_users = int(n_items / 2.5)
    topic = rng.integers(0, TOPICS, n_items)
    sub = topic * SUBTOPICS + rng.integers(0, SUBTOPICS, n_items)
    appeal = 1.0 / rng.permutation(np.arange(1, n_items + 1)).astype(np.float64)

    activity = rng.lognormal(0.0, 1.2, n_users)
    per_user = np.maximum(1, np.round(activity / activity.sum() * n_users * 10)).astype(np.int64)
    user_of_event = np.repeat(np.arange(n_users), per_user)
    preferred = rng.integers(0, TOPICS, (n_users, 3))
    shares = rng.dirichlet(np.full(3, 0.7), n_users)
    pick = (rng.random(user_of_event.size)[:, None] > np.cumsum(shares[user_of_event], axis=1)).sum(axis=1)
    event_topic = preferred[user_of_event, pick.clip(max=2)]
    order = np.argsort(topic, kind="stable")
    cumulative = np.cumsum(appeal[order])
    starts = np.searchsorted(topic[order], np.arange(TOPICS + 1))
    low = np.where(starts[event_topic] > 0, cumulative[np.maximum(starts[event_topic] - 1, 0)], 0.0)
    high = cumulative[starts[event_topic + 1] - 1]
    slot = np.searchsorted(cumulative, low + rng.random(event_topic.size) * (high - low), side="right")
    event_item = order[np.minimum(slot, starts[event_topic + 1] - 1)]
    # Each user's first event is held out where they have another (the ranker learns to find it).
    first = np.r_[True, user_of_event[1:] != user_of_event[:-1]] & (per_user[user_of_event] >= 2)
    history = sp.csr_array(
        (np.ones(int((~first).sum()), np.float32), (user_of_event[~first], event_item[~first])),
        shape=(n_users, n_items),
    )
    history = sp.csr_array((history > 0).astype(np.float32))
    held = sp.csr_array(
        (np.ones(int(first.sum()), np.float32), (user_of_event[first], event_item[first])), shape=(n_users, n_items)
    )
    positives = sp.csr_array(((held - held.multiply(history)) > 0).astype(np.float32))
    popularity = np.asarray(history.sum(axis=0)).ravel().astype(np.float64)

    def centres(dim: int, count: int, scale: float) -> np.ndarray:
        return (scale * rng.normal(size=(count, dim))).astype(np.float32)

    topic_cf, sub_cf = centres(CF_DIM, TOPICS, 0.3), centres(CF_DIM, TOPICS * SUBTOPICS, 0.15)
    length = (1.0 + 0.3 * np.log1p(popularity)).astype(np.float32)[:, None]
    noise = centres(CF_DIM, n_items, 0.1)
    item_cf = np.hstack([length * (topic_cf[topic] + sub_cf[sub] + noise), 0.2 * np.log1p(popularity)[:, None]])
    standin = np.hstack([topic_cf[topic] + sub_cf[sub] + 2 * noise[rng.permutation(n_items)], np.zeros((n_items, 1))])
    user_cf = topic_cf[preferred].mean(axis=1) + centres(CF_DIM, n_users, 0.1)
    user_cf = np.hstack([user_cf, np.ones((n_users, 1), np.float32)]).astype(np.float32)
    text = centres(TEXT_DIM, TOPICS, 1.0)[topic] + centres(TEXT_DIM, TOPICS * SUBTOPICS, 0.6)[sub]
    text += centres(TEXT_DIM, n_items, 0.6)

    lengths = rng.integers(6, 13, n_items)
    owner = np.repeat(np.arange(n_items), lengths)
    topic_words = rng.integers(0, VOCABULARY, (TOPICS, 150))
    from_topic = rng.random(owner.size) < 2 / 3
    word = np.where(from_topic, topic_words[topic[owner], rng.integers(0, 150, owner.size)], rng.zipf(1.3, owner.size))
    word = np.minimum(word, VOCABULARY - 1)
    counts = sp.csr_array((np.ones(owner.size, np.float32), (owner, word)), shape=(n_items, VOCABULARY))
    idf = np.log(n_items / (1.0 + np.asarray((counts > 0).sum(axis=0)).ravel())).astype(np.float32)
    tfidf = sp.csr_array(counts @ sp.diags_array(np.maximum(idf, 0.0)))

    recent = (popularity / max(popularity.sum(), 1.0) * 1000)[:, None] * rng.lognormal(0, 0.5, (n_items, 3))
    inputs = RankerInputs(
        history=history,
        text=text.astype(np.float32),
        user_cf=user_cf,
        item_cf=item_cf.astype(np.float32),
        item_standin=standin.astype(np.float32),
        popularity=popularity,
        title_words=lengths.astype(np.float32),
        tfidf=tfidf,
        time=TimeFeatures(
            now=datetime(2024, 5, 12, tzinfo=UTC),
            recent=recent.astype(np.float32),
            age_days=np.zeros(n_items, np.float32),
            user_recent=np.zeros(n_users, np.float32),
            release_age_days=np.full(n_items, np.nan, np.float32),
        ),
    )
    return inputs, positives


def exact_sources(inputs: RankerInputs, users: np.ndarray, per_source: int) -> dict[str, list[set[int]]]:
    """Each source's brute-force top `per_source` per user, history excluded (what generate_candidates unites)."""
    pool = np.arange(inputs.n_items)
    known = inputs.history[users].toarray() > 0
    out: dict[str, list[set[int]]] = {}
    for as_cold in (False, True):
        for name, scores in inputs.source_scores(users, pool, as_cold).items():
            key = f"cf_{'cold' if as_cold else 'warm'}" if name == "cf" else name
            top = np.argpartition(-np.where(known, -np.inf, scores), per_source - 1, axis=1)[:, :per_source]
            out[key] = [set(row.tolist()) for row in top]
    return out


def recalls(inputs: RankerInputs, users: np.ndarray, per_source: int) -> dict[str, float]:
    """Recall@per_source of each ANN source and of the union against the brute force, over `users`."""
    assert inputs.candidates is not None
    exact: dict[str, list[set[int]]] = {}
    found: dict[str, list[set[int]]] = {}
    for start in range(0, users.size, 32):  # dense brute-force rows: 32 users at a time
        batch = users[start : start + 32]
        for name, tops in exact_sources(inputs, batch, per_source).items():
            exact.setdefault(name, []).extend(tops)
        for name, (rows, items) in ann_candidates(inputs, inputs.candidates, batch, per_source=per_source).items():
            found.setdefault(name, []).extend(set(items[rows == r].tolist()) for r in range(batch.size))
    out = {
        name: float(np.mean([len(f & e) / per_source for f, e in zip(found[name], exact[name], strict=True)]))
        for name in found
    }
    union_exact = [set().union(*(exact[n][u] for n in exact)) for u in range(users.size)]
    union_found = [set().union(*(found[n][u] for n in found)) for u in range(users.size)]
    out["union"] = sum(len(f & e) for f, e in zip(union_found, union_exact, strict=True)) / sum(map(len, union_exact))
    return out


def _timed(call: object, *args: object, **kwargs: object) -> tuple[float, object]:
    started = time.perf_counter()
    result = call(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - started, result


def latencies(inputs: RankerInputs, users: np.ndarray, per_source: int) -> dict[str, float]:
    """One user at a time: candidate generation, then its candidates' pair features (what the ranker scores)."""
    pool = np.arange(inputs.n_items)
    candidates, features = [], []
    generate_candidates(inputs, users[:1], pool, per_source=per_source)  # warm-up (cached per-item arrays)
    for user in users:
        seconds, (pair_users, pair_items) = _timed(generate_candidates, inputs, user[None], pool, per_source=per_source)
        candidates.append(seconds)
        features.append(_timed(pair_features, inputs, pair_users, pair_items, inputs.is_cold[pair_items])[0])
    ms = 1000
    return {
        "candidates_p50_ms": float(np.percentile(candidates, 50) * ms),
        "candidates_p95_ms": float(np.percentile(candidates, 95) * ms),
        "pair_features_p95_ms": float(np.percentile(features, 95) * ms),
        "candidates_per_user": float(pair_users.size),
    }


def trained_ranker(inputs: RankerInputs, positives: sp.csr_array, groups: int) -> LightGBMRanker:
    """A LightGBM ranker fitted (exact candidates) on `groups` users' held-out items, as many validating."""
    with_positive = np.flatnonzero(np.diff(positives.indptr) > 0)
    users = np.random.default_rng(2).choice(with_positive, 2 * groups, replace=False)
    pool = np.arange(inputs.n_items)
    config = LightGBMRankerConfig(n_estimators=100, early_stopping_rounds=None, max_groups=groups)
    train, valid = (RankingTask(part, pool, positives=positives) for part in (users[:groups], users[groups:]))
    return LightGBMRanker(config).fit(inputs, train, valid)


def top_20(ranker: LightGBMRanker, inputs: RankerInputs, users: np.ndarray) -> tuple[list[float], list[set[int]]]:
    """Each user's top 20 as serving computes it (Recommender._ranked: scores, places, the candidates' top k), one
    user at a time: the seconds and the items."""
    pool = np.arange(inputs.n_items)
    score = ranker.scorer(inputs, None, placed=False)
    seconds, lists = [], []
    for user in users:
        started = time.perf_counter()
        scores = score(user[None], pool)
        _, items = _top_k_of_candidates(ranker.place(scores, inputs, pool), pool, 20)
        seconds.append(time.perf_counter() - started)
        lists.append(set(items.tolist()))
    return seconds, lists


def serve_batch(ranker: LightGBMRanker, inputs: RankerInputs, users: np.ndarray) -> float:
    """Seconds for every user's top 20 in blocks as Recommender._ranked takes them (at most 2^24 scores a block)."""
    pool = np.arange(inputs.n_items)
    score = ranker.scorer(inputs, None, placed=False)
    block = max(1, min(256, 2**24 // inputs.n_items))
    started = time.perf_counter()
    for start in range(0, users.size, block):
        chunk = users[start : start + block]
        _top_k_of_candidates(ranker.place(score(chunk, pool), inputs, pool), pool, 20)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 500_000])
    parser.add_argument("--users", type=int, default=200, help="Users with history in recall and latency.")
    parser.add_argument("--batch", type=int, default=1_000, help="Users of the timed batch.")
    parser.add_argument("--per-source", type=int, default=100, help="LightGBMRankerConfig.per_source's default.")
    parser.add_argument("--nprobe", type=int, help="Lists searched per query (default: ranker.ann's rule).")
    parser.add_argument("--groups", type=int, default=500, help="Users the timed LightGBM ranker learns from.")
    parser.add_argument("--serve-batch", type=int, default=0, help="Users of a timed top-20 batch with ANN (0: none).")
    parser.add_argument("--flat", action="store_true", help="IVF-Flat indexes instead of 8-bit scalar codes.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows, started = [], time.perf_counter()
    print(f"{machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    for n_items in args.items:
        seconds, (inputs, positives) = _timed(synthetic_inputs, n_items)
        rng = np.random.default_rng(1)
        warm_users = rng.choice(np.flatnonzero(inputs.user_has_history), args.users, replace=False)
        build, index = _timed(build_candidate_index, inputs, quantised=not args.flat)
        index = replace(index, nprobe=args.nprobe or index.nprobe)
        indexed = replace(inputs, candidates=index)
        row: dict[str, object] = {
            "items": n_items,
            "users": inputs.n_users,
            "events": int(inputs.history.nnz),
            "generate_s": round(seconds, 1),
            "build_s": round(build, 1),
            "index": "IVF-Flat" if args.flat else "IVF-SQ8",
            "index_mb": round(index.nbytes / 2**20, 1),
            "nprobe": index.nprobe,
            "lists": int(index.vectors["text"].nlist),
            "recall": {k: round(v, 4) for k, v in recalls(indexed, warm_users, args.per_source).items()},
        }
        for name, served in (("ann", indexed), ("brute", inputs)):
            row[name] = {k: round(v, 2) for k, v in latencies(served, warm_users, args.per_source).items()}
            batch = rng.choice(inputs.n_users, args.batch, replace=False)
            seconds = _timed(generate_candidates, served, batch, np.arange(n_items), per_source=args.per_source)[0]
            row[name]["batch_s"] = round(seconds, 1)  # type: ignore[index]
        fit, ranker = _timed(trained_ranker, inputs, positives, args.groups)
        row["ranker_fit_s"] = round(fit, 1)
        lists = {}
        # The brute force's ranker scores every item: its own pool index (ann_min_items) would be an index too.
        exact = copy.copy(ranker)
        exact.config = ranker.config.model_copy(update={"ann_min_items": None})
        for name, served, scoring in (("ann", indexed, ranker), ("brute", inputs, exact)):
            seconds_each, lists[name] = top_20(scoring, served, warm_users)
            row[name]["top20_p50_ms"] = round(float(np.percentile(seconds_each, 50) * 1000), 1)  # type: ignore[index]
            row[name]["top20_p95_ms"] = round(float(np.percentile(seconds_each, 95) * 1000), 1)  # type: ignore[index]
        shared = [len(a & b) / max(len(b), 1) for a, b in zip(lists["ann"], lists["brute"], strict=True)]
        row["top20_shared_with_brute"] = round(float(np.mean(shared)), 4)
        if args.serve_batch:
            batch = rng.choice(inputs.n_users, args.serve_batch, replace=False)
            row["ann"]["serve_batch_users"] = args.serve_batch  # type: ignore[index]
            row["ann"]["serve_batch_s"] = round(serve_batch(ranker, indexed, batch), 1)  # type: ignore[index]
        row["load_average"] = round(os.getloadavg()[0], 1)
        row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        print(row, flush=True)
        rows.append(row)
    if args.json:
        data = Path(f"synthetic ({machine()})")
        write_report(
            args.json,
            "ann_candidates",
            data=data,
            k=args.per_source,
            seconds=time.perf_counter() - started,
            results=rows,
        )


if __name__ == "__main__":
    main()
