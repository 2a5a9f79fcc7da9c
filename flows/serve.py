"""`warmstart serve`: the deployments of deployments/prefect.yaml, run in one process with `prefect.serve`.

prefect.yaml stays the one place that names deployments, schedules and parameters: `prefect deploy --all`
reads it for a work-pool setup, and this module reads it to serve the same deployments without a pool.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow
from prefect.schedules import Cron

from catalog import ConfigError
from flows.runners import with_runner
from flows.settings import WarmstartSettings

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENTS_FILE = REPO / "deployments" / "prefect.yaml"


def read_deployments(config: Path = DEPLOYMENTS_FILE) -> list[dict[str, object]]:
    """The `deployments` entries of a prefect.yaml, checked for what serving needs."""
    if not config.is_file():
        raise ConfigError(f"no deployments file at {config}.")
    try:
        document = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{config} is not valid YAML: {error}") from None
    entries = document.get("deployments") or []
    if not entries:
        raise ConfigError(f"{config} declares no deployments.")
    for entry in entries:
        missing = [key for key in ("name", "entrypoint") if not entry.get(key)]
        if missing:
            raise ConfigError(f"a deployment in {config} lacks {', '.join(missing)}: {entry}")
    return entries


def load_flow(entrypoint: str, root: Path = REPO) -> Flow:
    """'flows/refresh.py:refresh' -> the flow object."""
    path, _, name = entrypoint.partition(":")
    module_name = path.removesuffix(".py").replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        if not (root / path).is_file():
            raise ConfigError(f"cannot import the entrypoint {entrypoint!r}: no file {root / path}.") from None
        spec = importlib.util.spec_from_file_location(module_name, root / path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import the entrypoint {entrypoint!r}.") from None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    flow = getattr(module, name, None)
    if not isinstance(flow, Flow):
        raise ConfigError(f"entrypoint {entrypoint!r} is not a Prefect flow.")
    return flow


def runner_deployments(config: Path = DEPLOYMENTS_FILE, only: list[str] | None = None) -> list[Any]:
    """RunnerDeployments for `prefect.serve`, with each entry's schedules, parameters, tags and description,
    running their tasks where the settings say (threads, or a Dask cluster)."""
    entries = read_deployments(config)
    settings = WarmstartSettings()
    if only:
        unknown = sorted(set(only) - {entry["name"] for entry in entries})
        if unknown:
            raise ConfigError(f"unknown deployment(s) {unknown}; {config} declares {[e['name'] for e in entries]}.")
        entries = [entry for entry in entries if entry["name"] in only]
    deployments = []
    for entry in entries:
        schedules = [
            Cron(schedule["cron"], timezone=schedule.get("timezone", "UTC"))
            for schedule in entry.get("schedules") or []
            if "cron" in schedule
        ]
        deployments.append(
            with_runner(load_flow(entry["entrypoint"]), settings).to_deployment(
                name=entry["name"],
                schedules=schedules,
                parameters=entry.get("parameters") or {},
                description=entry.get("description"),
                tags=entry.get("tags") or [],
            )
        )
    return deployments
