"""Commands that serve recommendations: recommend, api, and the servers serve (Prefect deployments) and dashboard."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import polars as pl
import typer

from catalog import Columns, ConfigError, Workspace, atomic_write_bytes, new_run_id
from flows import stages
from flows.cli._common import (
    RankerName,
    WorkspaceOption,
    console,
    errors,
    friendly_errors,
    load_settings,
    open_workspace,
    print_frame,
)
from flows.settings import WarmstartSettings
from monitor import MetricsStore
from training.defaults import DEFAULT_K

if TYPE_CHECKING:
    from serving import Recommender

ServeRankerOption = Annotated[
    RankerName | None, typer.Option("--ranker", help="Ranker to serve \\[default: the one with a promoted version].")
]


def _users_file(path: Path) -> list[str]:
    """User ids from a CSV/TSV/Parquet file with a `user_id` column, in file order, repeats dropped."""
    from catalog import DataError, read_table

    frame = read_table(path)
    if Columns.user not in frame.columns:
        raise DataError(f"{path}: needs a '{Columns.user}' column; found {frame.columns}.")
    ids = frame[Columns.user].cast(pl.String).drop_nulls().unique(maintain_order=True)
    if ids.is_empty():
        raise DataError(f"{path}: no user ids in column '{Columns.user}'.")
    return ids.to_list()


def _requested_at(path: Path) -> pl.DataFrame | None:
    """(user_id, requested_at) each user's earliest time in the file's `requested_at` column (None without one):
    a replay, each user served as of that time (`evaluate --keep-version`'s held_out.parquet has it)."""
    from catalog import DataError, read_table

    frame = read_table(path)
    if Columns.requested_at not in frame.columns:
        return None
    if not frame.schema[Columns.requested_at].is_temporal():
        raise DataError(
            f"{path}: '{Columns.requested_at}' must hold times; found {frame.schema[Columns.requested_at]}."
        )
    return (
        frame.select(pl.col(Columns.user).cast(pl.String), Columns.requested_at)
        .drop_nulls()
        .group_by(Columns.user)
        .agg(pl.col(Columns.requested_at).min())
    )


def _requested_ids(user: list[str] | None, users: Path | None, text: str | None) -> list[str]:
    """The user ids of --user and --users FILE, checked against --text (which serves one person)."""
    ids = list(user or []) + (_users_file(users) if users is not None else [])
    if text is None and not ids:
        raise ConfigError("say whom to recommend for: --user ID, --users FILE or --text '...'.")
    if text is not None and len(ids) > 1:
        raise ConfigError("--text serves one person: give it alone or with a single --user.")
    return ids


def _recommend_in_batches(
    recommender: Recommender, ids: list[str], k: int, *, batch: int, exclude_seen: bool, explain: bool
) -> pl.DataFrame:
    """Recommendations for the users, `batch` at a time, with a progress bar on stderr when there are several."""
    from rich.progress import track

    batches = [ids[start : start + batch] for start in range(0, len(ids), batch)]
    steps = track(batches, description="recommending", console=errors) if len(batches) > 1 else batches
    return pl.concat([recommender.recommend(chunk, k, exclude_seen=exclude_seen, explain=explain) for chunk in steps])


def _show_recommendations(frame: pl.DataFrame, titles: dict[str, str], model: str, text: str | None) -> None:
    """One compact table per user (a terminal is narrower than the frame), explanations as titles."""
    if "because" in frame.columns:
        frame = frame.with_columns(
            pl.col("because").map_elements(
                lambda because: "; ".join(titles.get(i, i) for i in because), return_dtype=pl.String
            )
        )
    columns = [Columns.rank, Columns.item, Columns.title, Columns.score, "source", Columns.segment]
    columns += [name for name in ("text_similarity", "because") if name in frame.columns]
    for (who,), group in frame.group_by(Columns.user, maintain_order=True):
        label = f"user {who} ({group['user_segment'][0]})" if who is not None else f"stated text: {text}"
        print_frame(group.select(columns), f"{label}, {model}")


@friendly_errors
def recommend(
    user: Annotated[list[str] | None, typer.Option("--user", help="User id, repeatable.")] = None,
    users: Annotated[
        Path | None,
        typer.Option(
            "--users",
            help="CSV/TSV/Parquet file with a user_id column (and optionally requested_at: serve each as of it).",
            dir_okay=False,
        ),
    ] = None,
    text: Annotated[
        str | None, typer.Option(help="Interests stated in words: rank items by MiniLM similarity to this text.")
    ] = None,
    weight: Annotated[float, typer.Option(min=0, max=1, help="Share of the text in a --user + --text blend.")] = 0.5,
    k: Annotated[int, typer.Option(min=1, help="Recommendations per user.")] = DEFAULT_K,
    explain: Annotated[bool, typer.Option("--explain", help="Add each user's history items closest to each.")] = False,
    include_seen: Annotated[
        bool, typer.Option("--include-seen", help="Also items logged since the version was trained.")
    ] = False,
    version: Annotated[str | None, typer.Option(help="Model version \\[default: the promoted one].")] = None,
    ranker: ServeRankerOption = None,
    out: Annotated[Path | None, typer.Option(help="Write the recommendations to this Parquet file.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Users per batch (one progress step).")] = 256,
    workspace: WorkspaceOption = None,
) -> None:
    """Recommend items from a saved model version (the promoted one by default): to users by id (--user,
    --users FILE), or from interests stated in words (--text, alone or blended with one --user)."""
    from serving import Recommender

    settings = load_settings()
    space = open_workspace(workspace, settings)
    ids = _requested_ids(user, users, text)
    recommender = Recommender.load(
        space,
        version,
        ranker=ranker.value if ranker else None,
        cache_dir=settings.cache_dir,
        sparse_max=settings.sparse_max,
        ann_min_items=settings.ann_min_items,
    )
    requested = _requested_at(users) if users is not None else None
    if requested is not None and requested.height:
        from catalog import Tables

        recommender = recommender.as_of(requested, space.read(Tables.interactions))
    if text is not None:
        frame = recommender.recommend_text(
            text, k, user_id=ids[0] if ids else None, weight=weight, exclude_seen=not include_seen
        )
    else:
        frame = _recommend_in_batches(recommender, ids, k, batch=batch, exclude_seen=not include_seen, explain=explain)
    frame = frame.with_columns(
        pl.lit(recommender.version).alias("model_version"), pl.lit(recommender.ranker_name).alias("ranker")
    )
    if out is not None:
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        atomic_write_bytes(out, buffer.getvalue())
        console.print(f"{frame.height:,} recommendations for {max(len(ids), 1):,} user(s) written to {out}")
        return
    _show_recommendations(frame, recommender.titles, f"{recommender.ranker_name} {recommender.version}", text)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def _api_key(api_key: str | None, host: str, settings: WarmstartSettings) -> str | None:
    """The key clients must send (--api-key, else WARMSTART_API_KEY): none only on loopback, never an empty one."""
    from serving import API_KEY_HEADER

    key = api_key if api_key is not None else (settings.api_key.get_secret_value() if settings.api_key else None)
    if key is not None and not key.strip():
        raise ConfigError("the API key is empty; give a real one (--api-key or WARMSTART_API_KEY) or none on loopback.")
    if not _is_loopback(host) and not key:
        raise ConfigError(
            f"--host {host} exposes the API beyond this machine: set WARMSTART_API_KEY (or --api-key) so that "
            f"clients must send it in the {API_KEY_HEADER} header, or bind 127.0.0.1."
        )
    return key


@friendly_errors
def api(
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback needs an API key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Key every request but /health must send in the X-API-Key header \\[default: $WARMSTART_API_KEY]. "
            "Prefer the variable: a command line is visible to every user of the machine.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[str | None, typer.Option(help="Model version \\[default: the promoted one].")] = None,
    ranker: ServeRankerOption = None,
    follow_every: Annotated[
        float, typer.Option(min=0, help="Seconds between checks for items, users and versions the CLI adds.")
    ] = 1.0,
    workspace: WorkspaceOption = None,
) -> None:
    """Serve recommendations over HTTP (FastAPI under uvicorn) from the promoted version: GET /health, GET and POST
    /recommend, POST /items (stored in the workspace like `add-items`, served at once). OpenAPI at /docs. Items and
    users added by `warmstart add-items` / `add-users` and a newly promoted version are served without a restart
    (checked at most every --follow-every seconds). Stop with Ctrl-C."""
    import uvicorn

    from serving import API_KEY_HEADER, WorkspaceFollower, create_app

    settings = load_settings()
    key = _api_key(api_key, host, settings)
    space = open_workspace(workspace, settings)
    follower = WorkspaceFollower(
        space.root,
        version,
        ranker=ranker.value if ranker else None,
        cache_dir=settings.cache_dir,
        sparse_max=settings.sparse_max,
        ann_min_items=settings.ann_min_items,
    )
    recommender = follower.load()

    def store_items(items: pl.DataFrame) -> None:
        # A new Workspace each time: one pins the generation current when first used, and ingest may switch it.
        stages.add_items(
            Workspace(space.root, writer_wait=settings.writer_wait),
            items,
            new_run_id(),
            cache_dir=settings.cache_dir,
            source="api POST /items",
        )

    server = create_app(
        recommender,
        api_key=key,
        store_items=store_items,
        follow=follower.update,
        follow_every=follow_every,
        max_body_bytes=settings.api_max_body_bytes,
        scoring_threads=settings.api_scoring_threads,
        precompute_k=settings.api_precompute_k,
    )
    guarded = f", {API_KEY_HEADER} required" if key else ""
    console.print(f"{recommender.ranker_name} {recommender.version} on http://{host}:{port} (docs at /docs{guarded})")
    uvicorn.run(server, host=host, port=port, log_level="info")


@friendly_errors
def serve(
    config: Annotated[Path | None, typer.Option(help="Deployments file \\[default: deployments/prefect.yaml].")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Serve only this deployment (repeatable).")] = None,
    server_timeout: Annotated[
        float | None,
        typer.Option(
            min=1, help="Seconds a local Prefect server may take to start \\[default: 180].", show_default=False
        ),
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Run the deployments of prefect.yaml (augment-new, nightly-refresh, weekly-backfill) on the workspace, in this
    process, and fire their schedules.

    Uses the Prefect server at PREFECT_API_URL when set (it must answer); otherwise starts a local one on loopback,
    its database in WORKSPACE/prefect, and stops it on exit. `prefect deployment run NAME` triggers one by hand.
    Stop with Ctrl-C.
    """
    import os

    from prefect import serve as prefect_serve

    from flows.serve import DEPLOYMENTS_FILE, SERVER_STARTUP_SECONDS, prefect_server, runner_deployments

    settings = load_settings()
    root = (workspace or settings.workspace).resolve()
    os.environ["WARMSTART_WORKSPACE"] = str(root)  # the flow runs this process spawns read their workspace here
    deployments = runner_deployments(config or DEPLOYMENTS_FILE, only)
    with prefect_server(root, server_timeout or SERVER_STARTUP_SECONDS) as api_url:
        ui = api_url.removesuffix("/api")
        console.print(
            f"serving {', '.join(d.name for d in deployments)} on workspace {root}: Prefect API {api_url}, UI {ui}"
        )
        prefect_serve(*deployments, print_starting_message=False)


@friendly_errors
def dashboard(
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the page to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the page.")] = 8501,
    workspace: WorkspaceOption = None,
) -> None:
    """Open the monitoring dashboard (Streamlit) over the metrics history, read-only.

    Shows per-segment accuracy and beyond-accuracy metrics over time, segment sizes and cold-to-warm
    transitions, augmentation volume, and runs with the gate's decisions. Stop with Ctrl-C.
    """
    import os
    import sys

    from monitor import DASHBOARD_STORE_ENV, dashboard_script

    settings = load_settings()
    space = open_workspace(workspace, settings)
    store = MetricsStore.for_workspace(space.root, settings.metrics_url, read_only=True)
    command = [sys.executable, "-m", "streamlit", "run", str(dashboard_script()), "--server.address", host]
    command += ["--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    console.print(f"dashboard on http://{host}:{port} (store {store.engine.url.render_as_string(hide_password=True)})")
    # The URL (and its password) reaches the page through the environment: a command line is public in `ps`.
    environment = os.environ | {DASHBOARD_STORE_ENV: store.url}
    store.close()
    sys.stdout.flush()
    # Become the Streamlit server: a signal to this process (Ctrl-C, a supervisor's TERM) reaches the server itself.
    os.execve(sys.executable, command, environment)
