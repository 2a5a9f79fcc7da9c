"""The augment command: LLM descriptions, profiles and synthetic interactions for cold and sparse segments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import polars as pl
import typer

from catalog import Segments, Workspace, atomic_write_bytes, new_run_id
from flows import stages
from flows.cli._common import WorkspaceOption, console, friendly_errors, load_settings, open_workspace, print_frame
from flows.settings import WarmstartSettings
from training.defaults import ITEM_SEGMENTS, SIMULATE_SEGMENTS, USER_SEGMENTS

if TYPE_CHECKING:
    from augment import Backend


def _augment_plan(
    items: bool, users: bool, segment: list[str] | None, limit: int | None, simulate: bool, max_new_tokens: int
) -> stages.AugmentPlan:
    """The steps and segments `warmstart augment` runs: both sides unless --items or --users; without --segment,
    a refresh's segments but the new ones (this command works on what detect labelled, not on what just arrived)."""
    do_items, do_users = (items or not users), (users or not items)
    keys = ("item_segments", "user_segments", "simulate_segments")
    refresh = (ITEM_SEGMENTS, USER_SEGMENTS, SIMULATE_SEGMENTS)
    defaults = [tuple(s for s in segments if s != Segments.new) for segments in refresh]
    chosen = dict(zip(keys, [tuple(segment)] * 3 if segment else defaults, strict=True))
    return stages.AugmentPlan(
        limit=limit,
        describe=do_items,
        simulate=do_items and simulate,
        profile=do_users,
        max_new_tokens=max_new_tokens,
        **chosen,
    )


def _augment_dry_run(space: Workspace, backend: Backend, plan: stages.AugmentPlan, settings: WarmstartSettings) -> None:
    """Print what the plan's steps would cost (prompts, cached, tokens, seconds) without generating anything."""
    from flows import augmentation

    names = [name for name, wanted in (("describe", plan.describe), ("simulate", plan.simulate)) if wanted]
    names += ["profile"] if plan.profile else []
    rows = [augmentation.estimate_step(name, space, backend, plan, cache_dir=settings.cache_dir) for name in names]
    print_frame(pl.DataFrame(rows), f"augment --dry-run (model {backend.model_name}): nothing generated")


@friendly_errors
def augment(
    items: Annotated[
        bool, typer.Option("--items", help="Only items: describe them and simulate their interactions.")
    ] = False,
    users: Annotated[bool, typer.Option("--users", help="Only users: write their profiles.")] = False,
    segment: Annotated[
        list[str] | None,
        typer.Option(
            help="Segment to augment, repeatable \\[default: items cold+sparse, users sparse; simulate cold]."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many entities per step.")] = None,
    simulate: Annotated[bool, typer.Option(help="Simulate interactions for the items.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the run's counts as JSON here.")] = None,
    allow_insecure: Annotated[
        bool, typer.Option("--allow-insecure", help="Allow plain http to an LLM server that is not on loopback.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print the prompts, tokens and time the run would take.")
    ] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Write LLM item descriptions, user profiles and synthetic interactions for cold and sparse segments.

    Needs `warmstart ingest` and `warmstart detect` first. The model comes from WARMSTART_LLM_* settings
    (local SmolLM2 by default). Outputs already in the generation cache are not generated again.
    """
    from flows import augmentation

    settings = load_settings()
    space = open_workspace(workspace, settings)
    augmentation.segment_ids(space, "item", segment or ())  # checks segments and detection before loading a model
    if allow_insecure:
        settings = settings.model_copy(update={"llm_allow_insecure": True})
    plan = _augment_plan(items, users, segment, limit, simulate, settings.llm_max_new_tokens)
    with console.status(f"loading the {settings.llm_backend} language model..."):
        backend = augmentation.make_backend(settings)
    if dry_run:
        _augment_dry_run(space, backend, plan, settings)
        return
    run_id = new_run_id()
    report = stages.augment(space, backend, plan, cache_dir=settings.cache_dir, run_id=run_id)
    rows = [
        {"step": name} | {key: step.as_dict()[key] for key in stages.REPORT_KEYS} for name, step in report.steps.items()
    ]
    print_frame(pl.DataFrame(rows), f"augment (run {run_id}, model {backend.model_name})")
    if json_out is not None:
        steps = {name: step.as_dict() for name, step in report.steps.items()}
        payload = report.totals() | {"run_id": run_id, "model": backend.model_name, "steps": steps}
        atomic_write_bytes(json_out, json.dumps(payload, indent=2, default=str).encode())
        console.print(f"report written to {json_out}")
