"""How fast the local LLM could run on this machine at most: the floor its own linear layers set (issue 15).

    .venv/bin/python benchmarks/llm_roofline.py [--threads 2] [--precisions fp32,bf16] [--speed SPEED.json]
        [--json OUT]

A forward pass of SmolLM2-135M-Instruct spends nearly all of its arithmetic and all of its weight reads in its
211 linear layers (7 per decoder layer and the output layer). This script times the model's own `nn.Linear`
modules alone, in model order, on inputs of R rows, and derives two floors:

- **per prompt token** (R in the hundreds: the layers are compute-bound): what the judge pays per token it
  reads, since the judge only reads prompts (one row of the output layer per judged pair);
- **per decoding step at batch B** (R = B: every step streams all 518 MB of fp32 weights, so small batches are
  bound by memory bandwidth, large ones by arithmetic).

With the token counts of `benchmarks/augment_speed.py`'s workloads (its 64 judge pairs through the backend's
prefix plan; item descriptions at each batch size, 32 new tokens each), the floors give ceilings: judged pairs
per second and new tokens per second that no implementation of these layers in this precision can pass on
this machine. Attention, norms, activations and Python are left out, so a ceiling is optimistic: what a
backend reaches is below it. `--speed` reads an `augment_speed.py --json` report and sets its medians beside
the ceilings. Each timing is the median of `--repeat` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _report import write_report  # noqa: E402
from augment_speed import DEFAULT_DATA, judge_workload, load  # noqa: E402

from augment import LocalBackend, item_description_messages  # noqa: E402
from augment._inprocess import _common_length  # noqa: E402
from catalog import Columns, load_citeulike  # noqa: E402


def linear_layers(model: Any) -> tuple[list[torch.nn.Linear], torch.nn.Linear]:
    """(the decoder's linear layers in the order a forward pass runs them, the output layer)."""
    head = model.get_output_embeddings()
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    return layers, head


def time_layers(layers: list[torch.nn.Linear], rows: int, repeat: int, dtype: torch.dtype) -> float:
    """Median seconds of one pass of `layers` (each on its own input of `rows` rows), after one warm-up pass."""
    inputs = {width: torch.randn(rows, width, dtype=dtype) for width in {layer.in_features for layer in layers}}
    seconds = []
    with torch.inference_mode():
        for run in range(repeat + 1):
            started = time.perf_counter()
            for layer in layers:
                layer(inputs[layer.in_features])
            if run:
                seconds.append(time.perf_counter() - started)
    return float(np.median(seconds))


def weight_bytes(layers: list[torch.nn.Linear]) -> int:
    return sum(layer.weight.numel() * layer.weight.element_size() for layer in layers)


def floors(model: Any, dtype: torch.dtype, batches: list[int], repeat: int) -> dict[str, Any]:
    """Seconds per prompt token (best over row counts), per output-layer row, and per decoding step per batch."""
    layers, head = linear_layers(model)
    macs = sum(layer.in_features * layer.out_features for layer in layers)
    per_row = {rows: time_layers(layers, rows, repeat, dtype) / rows for rows in (64, 256, 1024)}
    prompt_rows = min(per_row, key=per_row.__getitem__)
    return {
        "decoder_linear_macs_per_token": macs,
        "weights_mb": round(weight_bytes([*layers, head]) / 1e6, 1),
        "prompt_s_per_token": {rows: round(s, 7) for rows, s in per_row.items()},
        "prompt_gflops": round(2 * macs / per_row[prompt_rows] / 1e9, 1),
        "best_prompt_rows": prompt_rows,
        "head_s_per_row": time_layers([head], 8, repeat, dtype) / 8,
        "step_s": {b: time_layers([*layers, head], b, repeat, dtype) for b in batches},
    }


def ceilings(found: dict[str, Any], judge_tokens: int, pairs: int, prompt_tokens: dict[int, int], new: int) -> dict:
    """Judged pairs/s and new tokens/s (per batch) that the floors allow for the given workloads."""
    per_token = min(found["prompt_s_per_token"].values())
    judge_seconds = judge_tokens * per_token + pairs * found["head_s_per_row"]
    generation = {}
    for batch, step in found["step_s"].items():
        seconds = prompt_tokens[batch] * per_token + new * step  # the batch's prompts, then `new` steps
        generation[batch] = round(batch * new / seconds, 1)
    return {"judge_pairs_per_s": round(pairs / judge_seconds, 2), "generation_tokens_per_s": generation}


def achieved(path: Path | None, precision: str) -> dict[str, Any]:
    """The medians an augment_speed.py report holds for `precision`: judge pairs/s, new tokens/s per batch."""
    if path is None:
        return {}
    rows = [row for row in json.loads(path.read_text())["results"] if row.get("precision") == precision]
    judge = {row["figure"]: row["pairs_per_s"] for row in rows if row["figure"].startswith("judge")}
    generation = {row["batch_size"]: row["tokens_per_s"] for row in rows if row["figure"] == "generate"}
    return {"judge_pairs_per_s": judge, "generation_tokens_per_s": generation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=REPO / ".cache")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,4,8,32,128", help="decoding batch sizes")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per description (as timed)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--speed", type=Path, default=None, help="an augment_speed.py --json report to compare")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    batches = [int(b) for b in args.batches.split(",")]

    backend = LocalBackend.smollm2(args.cache, threads=args.threads)
    dataset = load_citeulike(args.data)
    pairs = judge_workload(dataset)
    judge_tokens = backend.count_tokens(pairs, shared_prefix=True)
    titles = dataset.items[Columns.title].to_list()
    # a generate call runs the prefix its prompts share once, then each prompt's rest (left-padded to the longest)
    prompt_tokens = {}
    for batch in batches:
        rendered = [backend._render(item_description_messages(t)) for t in titles[:batch]]
        common = min(min(len(r) for r in rendered) - 1, *(_common_length(rendered[0], r) for r in rendered))
        prompt_tokens[batch] = common + batch * (max(len(r) for r in rendered) - common)
    results: list[dict[str, Any]] = []
    for precision in args.precisions.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        model = backend.model if precision == "fp32" else copy.deepcopy(backend.model).to(dtype)
        load_before = load()
        found = floors(model, dtype, batches, args.repeat)
        row = {
            "precision": precision,
            "threads": args.threads,
            "judge_pairs": len(pairs),
            "judge_prompt_tokens_run": judge_tokens,
            "description_prompt_tokens_run": prompt_tokens,
            "new_tokens_per_prompt": args.max_new_tokens,
            **found,
            "ceiling": ceilings(found, judge_tokens, len(pairs), prompt_tokens, args.max_new_tokens),
            "achieved": achieved(args.speed, precision),
            "load": [load_before, load()],
        }
        results.append(row)
        print(row, flush=True)
    if args.json:
        seconds = time.perf_counter() - started
        write_report(args.json, "llm_roofline", data=args.data, k=0, seconds=seconds, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
