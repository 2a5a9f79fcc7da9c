"""How warmstart grows with the log: a seeded synthetic log of realistic shape at three sizes, run through the CLI
stage by stage, each stage's wall seconds and peak resident memory recorded.

    .venv/bin/python benchmarks/scale.py --size S --dir /work/scale/S [--stages ingest,detect,...] [--json F]

The log (`generate`): items come out over 180 days and each belongs to one of `TOPICS` latent topics; an item's
appeal follows a Zipf law (exponent 1) within its topic; users' activity is lognormal (sigma 1.2, at least one
event) and each user prefers two or three topics (a Dirichlet draw over their topics); an event picks a topic by
the user's preference, then an item of that topic already out at the event's time by its appeal. Titles are 6 to
12 words, two thirds from the item's topic's 150 words and the rest from all words; the words are those of
CiteULike-a's titles (`--words`), so the text encoder sees real English. Item 0 of the catalog is held back and
added at the end (`add-items`).

Sizes (events / users / items): S 1M / 50k / 100k, M 5M / 200k / 500k, L 20M / 1M / 2M; `--size tiny` (20k / 2k
/ 4k) checks the script itself.

Each stage is its own `warmstart` process (as an operator runs them), measured through GNU time: wall seconds and
the process's peak resident set. Stages: ingest, detect, encode, retrain (a gated refresh without the
language model: `warmstart retrain --no-reference-gate`), recommend-one (one user's top 20, a fresh process: load
included), recommend-batch (10,000 users' top 20 to a file), add-items (one new item, served at once). The machine's
load average is recorded beside every stage. With `--census FILE`, each stage's process appends where its memory is
at each new peak to FILE (`benchmarks/census/sitecustomize.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_report  # noqa: E402


@dataclass(frozen=True)
class Size:
    events: int
    users: int
    items: int


SIZES = {
    "tiny": Size(20_000, 2_000, 4_000),
    "S": Size(1_000_000, 50_000, 100_000),
    "M": Size(5_000_000, 200_000, 500_000),
    "L": Size(20_000_000, 1_000_000, 2_000_000),
}
TOPICS = 50
DAYS = 180
START = 1_700_000_000  # 2023-11-14, seconds since 1970
STAGES = ("ingest", "detect", "encode", "retrain", "recommend-one", "recommend-batch", "add-items")
DEFAULT_WORDS = ROOT.parent / "shared" / "datasets" / "citeulike-a" / "titles.txt"


def vocabulary(path: Path, most: int = 6_000) -> np.ndarray:
    """The `most` commonest lower-case words (3+ letters) of a file of titles."""
    words = re.findall(r"[a-z]{3,}", path.read_text(encoding="utf-8", errors="replace").lower())
    counts = pl.Series(words).value_counts(sort=True)
    return counts[:most, 0].to_numpy().astype(str)


def generate(size: Size, out: Path, *, words: np.ndarray, seed: int = 0) -> dict[str, Path]:
    """Write interactions.parquet, items.parquet and new_item.csv (the held-back item) under `out`."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    n_items, n_users, n_events = size.items, size.users, size.events

    # Items: topic, release second, appeal (Zipf within the whole catalog, ranks shuffled).
    topic = rng.integers(0, TOPICS, n_items)
    released = START + rng.integers(0, DAYS * 86_400, n_items)
    released[rng.random(n_items) < 0.3] = START  # a back catalogue present from the start
    appeal = 1.0 / rng.permutation(np.arange(1, n_items + 1)).astype(np.float64)

    # Titles: words of the item's topic and of everything.
    topic_words = np.stack([rng.choice(words, 150, replace=False) for _ in range(TOPICS)])
    lengths = rng.integers(6, 13, n_items)
    total = int(lengths.sum())
    owner = np.repeat(np.arange(n_items), lengths)
    from_topic = rng.random(total) < 2 / 3
    chosen = np.where(
        from_topic, topic_words[topic[owner], rng.integers(0, 150, total)], words[rng.integers(0, words.size, total)]
    )
    titles = pl.DataFrame({"i": owner, "w": chosen}).group_by("i", maintain_order=True).agg(pl.col("w").str.join(" "))

    # Users: lognormal activity, two or three preferred topics.
    activity = rng.lognormal(0.0, 1.2, n_users)
    per_user = np.maximum(1, np.round(activity / activity.sum() * n_events)).astype(np.int64)
    user_of_event = np.repeat(np.arange(n_users), per_user)[:n_events]
    n = user_of_event.size
    preferred = rng.integers(0, TOPICS, (n_users, 3))
    shares = rng.dirichlet(np.full(3, 0.7), n_users)
    pick = (rng.random(n)[:, None] > np.cumsum(shares[user_of_event], axis=1)).sum(axis=1).clip(max=2)
    event_topic = preferred[user_of_event, pick]
    event_time = START + rng.integers(0, DAYS * 86_400, n)

    # An event's item: by appeal among its topic's items already out. Items sorted by (topic, release): the ones
    # out at time t are a prefix of the topic's run, sampled through the run's cumulative appeal.
    order = np.lexsort((released, topic))
    sorted_topic, sorted_release = topic[order], released[order]
    cumulative = np.cumsum(appeal[order])
    run_start = np.searchsorted(sorted_topic, np.arange(TOPICS))
    key = sorted_topic.astype(np.int64) * 10**10 + sorted_release
    run_end = np.searchsorted(key, event_topic.astype(np.int64) * 10**10 + event_time, side="right")
    first = run_start[event_topic]
    empty = run_end <= first  # nothing of the topic out yet: take its first item
    run_end = np.where(empty, first + 1, run_end)
    before = np.where(first > 0, cumulative[np.maximum(first - 1, 0)], 0.0)
    draw = before + rng.random(n) * (cumulative[run_end - 1] - before)
    slot = np.minimum(np.searchsorted(cumulative, draw, side="right"), run_end - 1)
    event_item = order[slot]
    event_time = np.maximum(event_time, released[event_item])  # the topic's first item, when taken early

    held_back = 0  # item 0 is added at the end, never logged
    logged = event_item != held_back
    ids = np.char.add("i", np.arange(n_items).astype(str))
    interactions = pl.DataFrame(
        {
            "user_id": np.char.add("u", user_of_event[logged].astype(str)),
            "item_id": ids[event_item[logged]],
            "ts": event_time[logged],
        }
    ).unique(maintain_order=True)  # exact repeats only: taking an item again later is a new event
    items = pl.DataFrame({"item_id": ids, "title": titles["w"], "first_seen": released})
    paths = {
        "interactions": out / "interactions.parquet",
        "items": out / "items.parquet",
        "new_item": out / "new_item.csv",
    }
    interactions.write_parquet(paths["interactions"])
    items.filter(pl.col("item_id") != ids[held_back]).drop("first_seen").write_parquet(paths["items"])
    items.filter(pl.col("item_id") == ids[held_back]).drop("first_seen").write_csv(paths["new_item"])
    return paths


def run_stage(name: str, command: list[str], env: dict[str, str], log: Path) -> dict[str, object]:
    """Run one CLI process; its wall seconds, CPU seconds (user + system), peak RSS (MB), exit status and the load
    average at its end. On a shared machine the CPU seconds compare runs where the wall seconds cannot."""
    started = time.perf_counter()
    measured = log.with_suffix(".time")
    # Through GNU time: a child forked from this process would inherit its peak (the generator's) as its own.
    timed = ["/usr/bin/time", "-f", "%U %S %M", "-o", str(measured), *command]
    with log.open("ab") as sink:
        sink.write(f"$ {' '.join(command)}\n".encode())
        sink.flush()
        status = subprocess.run(timed, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False).returncode
    seconds = time.perf_counter() - started
    user, system, peak_kb = measured.read_text().split()[-3:]
    row = {
        "stage": name,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(float(user) + float(system), 1),
        "peak_rss_mb": round(int(peak_kb) / 1024, 1),
        "exit": status,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="S")
    parser.add_argument("--dir", type=Path, required=True, help="Where the data, workspace and cache go.")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"Comma-separated, of {', '.join(STAGES)}.")
    parser.add_argument("--words", type=Path, default=DEFAULT_WORDS, help="A file of titles for the vocabulary.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Write the report here.")
    parser.add_argument(
        "--census",
        type=Path,
        help="Append each stage's memory census here: its largest holders at each new peak (benchmarks/census).",
    )
    args = parser.parse_args()
    stages = [stage for stage in args.stages.split(",") if stage]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")

    size = SIZES[args.size]
    data, workspace, cache = args.dir / "data", args.dir / "workspace", args.dir / "cache"
    started = time.perf_counter()
    if not (data / "interactions.parquet").exists():
        began = time.perf_counter()
        paths = generate(size, data, words=vocabulary(args.words), seed=args.seed)
        print(f"generated {args.size} in {time.perf_counter() - began:.1f} s: {paths}", flush=True)
    log = args.dir / "stages.log"
    env = os.environ | {"WARMSTART_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    if args.census:
        hook = ROOT / "benchmarks" / "census"
        env |= {"PYTHONPATH": f"{ROOT}{os.pathsep}{hook}", "WARMSTART_CENSUS": str(args.census)}
    warmstart = [sys.executable, "-m", "flows.cli"]
    ws = ["-w", str(workspace)]
    users = pl.read_parquet(data / "interactions.parquet", columns=["user_id"])["user_id"].unique().sort()
    batch_file = args.dir / "batch_users.csv"
    users.sample(min(10_000, users.len()), seed=args.seed).to_frame().write_csv(batch_file)
    # The held-back item under an id of this run's: adding an id the workspace has is refused, and a rerun on the
    # same workspace (another retrain) adds the item again.
    new_item = args.dir / "new_item.csv"
    if "add-items" in stages:
        held_back = pl.read_csv(data / "new_item.csv", infer_schema=False)
        held_back.with_columns(pl.col("item_id") + f"-{int(time.time())}").write_csv(new_item)
    commands = {
        "ingest": [
            "ingest",
            "--interactions",
            str(data / "interactions.parquet"),
            "--items",
            str(data / "items.parquet"),
        ],
        "detect": ["detect"],
        "encode": ["encode"],
        "retrain": ["retrain", "--no-reference-gate"],
        "recommend-one": ["recommend", "--user", users[0], "--k", "20"],
        "recommend-batch": [
            "recommend",
            "--users",
            str(batch_file),
            "--k",
            "20",
            "--out",
            str(args.dir / "batch.parquet"),
        ],
        "add-items": ["add-items", str(new_item)],
    }
    results = [run_stage(stage, [*warmstart, *commands[stage], *ws], env, log) for stage in stages]
    machine = {"platform": platform.platform(), "cpu": _cpu(), "cpus": os.cpu_count()}
    print(json.dumps({"size": args.size, "machine": machine}), flush=True)
    if args.json:
        write_report(
            args.json,
            "scale",
            data=data,
            k=20,
            seconds=time.perf_counter() - started,
            results=[{"size": args.size, **vars(size), "machine": machine, **row} for row in results],
        )


def _cpu() -> dict[str, object]:
    """`lscpu`'s model name and the SIMD flags that decide which kernels run."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = re.search(r"Model name:\s*(.+)", text)
    flags = re.search(r"Flags:\s*(.+)", text)
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    return {
        "model": model.group(1).strip() if model else "unknown",
        "flags": [flag for flag in wanted if flags and flag in flags.group(1).split()],
    }


if __name__ == "__main__":
    main()
