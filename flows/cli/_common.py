"""What every command group shares: the consoles, settings and workspace access, the error handler, the table
printers and the option types used across groups."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import polars as pl
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from catalog import ConfigError, WarmstartError, Workspace, redact
from flows import stages
from flows.settings import WarmstartSettings, apply_text_backend

PIPED_WIDTH = 240
# Piped or redirected output gets the tables' full width instead of a terminal's 80 columns cut to "cur…".
console = Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
errors = Console(stderr=True)

# Prefect's temporary API must start within this many seconds. Its default, 20, fails on a busy two-core machine
# ("Timed out while attempting to connect to ephemeral Prefect API server").
EPHEMERAL_STARTUP_SECONDS = 120
_EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"

P = ParamSpec("P")
R = TypeVar("R")

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace directory \\[default: ./workspace or $WARMSTART_WORKSPACE]."),
]


def load_settings() -> WarmstartSettings:
    try:
        settings = WarmstartSettings()
    except ValidationError as error:
        raise ConfigError(f"invalid WARMSTART_* environment setting: {error}") from None
    apply_text_backend(settings)
    return settings


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn warmstart's own errors into one line on stderr and exit code 1, with no traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (WarmstartError, OSError) as error:  # OSError: a disk or permission failure is the user's to fix
            _print_error(str(error) or type(error).__name__)
            raise typer.Exit(1) from None
        except RuntimeError as error:
            if _EPHEMERAL_TIMEOUT not in str(error):
                raise
            timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_SECONDS)
            _print_error(
                f"Prefect's temporary API did not start within {timeout} s (the machine is busy). Run a Prefect "
                "server (`prefect server start`) and set PREFECT_API_URL to it, or raise "
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS."
            )
            raise typer.Exit(1) from None

    return wrapper


def _print_error(message: str) -> None:
    """One line on stderr. The message is data: never parsed as markup (a value like `[/x]` would break or restyle
    it), secrets redacted, no terminal escapes."""
    line = " ".join(redact(message).split())
    line = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in line)
    errors.print(Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True)


def prefect_defaults() -> None:
    """Give Prefect's temporary API the time a busy machine needs to start it, and keep its server from sending
    usage telemetry (offline, each attempt logged an ERROR line in a refresh's output), unless the operator set
    them. Called before Prefect is imported (it reads its settings then)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_SECONDS))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def flow_server() -> AbstractContextManager[str]:
    """The Prefect API for a command that runs flows: PREFECT_API_URL, else a temporary server that dies with the
    command (flows.serve.flow_server), its address said on stderr."""
    from flows.serve import flow_server as server

    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_SECONDS))
    return server(timeout, lambda url: errors.print(f"Prefect: temporary server {url}", markup=False, highlight=False))


def open_workspace(option: Path | None, settings: WarmstartSettings) -> Workspace:
    """The workspace the command names, waiting for another writer as long as the settings say."""
    return Workspace(option or settings.workspace, writer_wait=settings.writer_wait)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_frame(frame: pl.DataFrame, title: str) -> None:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(column, justify="right" if frame.schema[column].is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*(_cell(value) for value in row))
    console.print(table)


def print_metrics(report: dict, title: str) -> None:
    """One row per metric, one column per segment: fits a terminal where the long form would not."""
    table = pl.DataFrame(report["metrics"]).pivot(on="segment", index="metric", values="value")
    print_frame(table, title)


def show_detection(detection: stages.Detection, title: str) -> None:
    print_frame(detection.summary, title)
    since = detection.watermark.isoformat() if detection.watermark else "never (first run: nothing is new)"
    console.print(f"new = first seen after {since}")


def as_utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Protocol(StrEnum):
    cold_item = "cold-item"
    warm = "warm"
    hybrid = "hybrid"
    temporal = "temporal"
    cold_user = "cold-user"
    sparse_user = "sparse-user"


class RankerName(StrEnum):
    lightgbm = "lightgbm"
    deepfm = "deepfm"
