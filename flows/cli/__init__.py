"""The `warmstart` command line. Every command takes --workspace (default ./workspace or $WARMSTART_WORKSPACE).

The commands live in group modules (data, trends, serving, modelling, augmenting); this module builds the Typer app
from them. `warmstart --help` lists the commands in the order they are registered here.
"""

from __future__ import annotations

import typer

from flows.cli._common import prefect_defaults
from flows.cli.augmenting import augment
from flows.cli.data import add_items, add_users, detect, encode, ingest, rollback
from flows.cli.modelling import evaluate, models, promote, refresh, retrain
from flows.cli.serving import api, dashboard, recommend, serve
from flows.cli.trends import backfill, demo, history

app = typer.Typer(
    name="warmstart",
    help="Turn cold-start and long-tail items and users of a recommender system into warm ones.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# In the order `warmstart --help` lists them; each command's name is its function's, with - for _ (add-items).
COMMANDS = (
    ingest,
    detect,
    rollback,
    backfill,
    history,
    demo,
    serve,
    dashboard,
    evaluate,
    encode,
    refresh,
    retrain,
    models,
    promote,
    augment,
    recommend,
    add_items,
    add_users,
    api,
)
for _command in COMMANDS:
    app.command()(_command)


@app.callback()
def _defaults() -> None:
    prefect_defaults()


def main() -> None:
    app()


__all__ = ["app", "main"]
