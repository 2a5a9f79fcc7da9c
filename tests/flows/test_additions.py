"""Items and users added with `add-items`, `add-users` or POST /items are data (issue 28, item 2): a later full ingest
and an append keep them, unless `--drop-additions` says otherwise; the real CLI on a copy of the MovieLens slice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from catalog import Columns, Tables, Workspace
from flows.cli import app

runner = CliRunner()


def _invoke(cache_dir: Path, *args: str, expect: int = 0) -> str:
    done = runner.invoke(app, list(args), env={"WARMSTART_CACHE_DIR": str(cache_dir)})
    output = " ".join(done.output.split())
    assert done.exit_code == expect, output
    return output


def _ids(workspace: Path, table: str, key: str) -> set[str]:
    return set(Workspace(workspace).read(table)[key].to_list())


def test_added_items_and_users_survive_ingests_and_appends_unless_dropped(
    slice_copy: Callable[[], Path], ml100k_slice_workspace: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """The operator's loss: `add-items one.csv; ingest; ingest` and the item was gone, with no word. Now both ingests
    keep the added item and user and say so, an append keeps them (and takes events that name them), and
    --drop-additions leaves them out (rollback brings them back)."""
    workspace = slice_copy()
    ws = ["-w", str(workspace)]
    source = ml100k_slice_workspace.parent  # the slice's own files, beside its workspace
    full = ["ingest", "--interactions", str(source / "interactions.parquet"), "--items", str(source / "items.parquet")]
    items, users = tmp_path / "items.csv", tmp_path / "users.csv"
    items.write_text("item_id,title\nadded-film,A Film Added By Hand\n")
    users.write_text("user_id\nadded-user\n")
    _invoke(cache_dir, "add-items", str(items), *ws)
    _invoke(cache_dir, "add-users", str(users), *ws)
    held_items, held_users = _ids(workspace, Tables.items, Columns.item), _ids(workspace, Tables.users, Columns.user)

    for _ in range(2):
        output = _invoke(cache_dir, *full, *ws)
        assert "kept 1 item(s) (added-film) and 1 user(s) (added-user) added with add-items" in output
        assert _ids(workspace, Tables.items, Columns.item) == held_items
        assert _ids(workspace, Tables.users, Columns.user) == held_users

    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\nadded-user,added-film,1998-05-01T00:00:00Z\n")
    _invoke(cache_dir, "ingest", "--append", "--interactions", str(events), *ws)
    space = Workspace(workspace)
    assert space.read(Tables.interactions).filter(item_id="added-film")[Columns.user].to_list() == ["added-user"]
    assert _ids(workspace, Tables.items, Columns.item) == held_items  # nothing duplicated, nothing lost

    # After the append, a full ingest still knows them for additions (the record travels with the data).
    assert "kept 1 item(s) (added-film) and 1 user(s)" in _invoke(cache_dir, *full, *ws)
    dropped = _invoke(cache_dir, *full, "--drop-additions", *ws)
    assert "added with" not in dropped
    assert _ids(workspace, Tables.items, Columns.item) == held_items - {"added-film"}
    assert _ids(workspace, Tables.users, Columns.user) == held_users - {"added-user"}
    _invoke(cache_dir, "rollback", *ws)
    assert _ids(workspace, Tables.items, Columns.item) == held_items
    refused = _invoke(cache_dir, "ingest", "--append", "--drop-additions", "--interactions", str(events), *ws, expect=1)
    assert refused == "error: --drop-additions applies to a full ingest: --append keeps every item and user held."
