"""`warmstart add-users FILE` on a copy of the served MovieLens slice: users go through the users contract, are served
at once as cold users by the promoted version, and a refused file (repeated ids, unknown columns, a bad file) changes
nothing."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from catalog import Columns, Segments, Tables, Workspace
from flows import stages
from flows.cli import app
from serving import Recommender

runner = CliRunner()


@pytest.fixture
def workspace(served_copy: Path) -> Path:
    return served_copy


def _add(workspace: Path, file: Path, cache_dir: Path) -> tuple[int, str]:
    done = runner.invoke(
        app, ["add-users", str(file), "-w", str(workspace)], env={"WARMSTART_CACHE_DIR": str(cache_dir)}
    )
    return done.exit_code, " ".join(done.output.split())


def _users_file(tmp_path: Path, text: str, name: str = "users.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_added_users_are_served_at_once_as_cold_users(workspace: Path, cache_dir: Path, tmp_path: Path) -> None:
    file = _users_file(tmp_path, "user_id,age,occupation\nnewbie,31,engineer\nnewbie2,45,writer\n")
    code, output = _add(workspace, file, cache_dir)
    assert code == 0 and "2 user(s) added" in output, output
    users = Workspace(workspace).read(Tables.users)
    added = users.filter(pl.col(Columns.user) == "newbie")
    assert json.loads(added[Columns.attributes][0]) == {"age": "31", "occupation": "engineer"}
    assert added[Columns.first_seen][0] is not None
    stages.workspace_dataset(Workspace(workspace))  # still one ingest: the next refresh reads them

    recommender = Recommender.load(workspace, cache_dir=cache_dir)
    assert recommender.version == Workspace(workspace).models.current("lightgbm")  # not retrained
    frame = recommender.recommend(["newbie", "newbie2"], k=7)
    assert frame.height == 14 and set(frame["user_segment"]) == {Segments.cold}
    for _, group in frame.group_by(Columns.user):
        assert group[Columns.rank].to_list() == list(range(1, 8)) and group[Columns.item].n_unique() == 7

    shown = runner.invoke(app, ["recommend", "--user", "newbie", "--k", "3", "-w", str(workspace)])
    assert shown.exit_code == 0 and "newbie (cold)" in shown.output, shown.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user_id,age\n1,30\n", "'1'"),  # already a workspace user
        ("user_id,age\nx1,30\nx1,31\n", "x1"),  # one id, two different rows
        ("user_id\n", "no users"),  # a header only
        ("uid,age\nx2,30\n", "user_id"),  # no id column (--map user_id=uid would rename it)
        ("\x00\x01\x02 not a table", "users.csv"),
    ],
)
def test_a_refused_file_names_the_problem_and_writes_nothing(
    workspace: Path, cache_dir: Path, tmp_path: Path, text: str, expected: str
) -> None:
    before = (Workspace(workspace).tables / f"{Tables.users}.parquet").read_bytes()
    code, output = _add(workspace, _users_file(tmp_path, text), cache_dir)
    assert code == 1 and expected in output and "Traceback" not in output, output
    assert (Workspace(workspace).tables / f"{Tables.users}.parquet").read_bytes() == before


def test_a_column_mapping_renames_the_id_column(workspace: Path, cache_dir: Path, tmp_path: Path) -> None:
    file = _users_file(tmp_path, "customer,age\nc-1,30\n")
    done = runner.invoke(app, ["add-users", str(file), "--map", "user_id=customer", "-w", str(workspace)])
    assert done.exit_code == 0, done.output
    assert "c-1" in Workspace(workspace).read(Tables.users)[Columns.user].to_list()
    wrong = runner.invoke(app, ["add-users", str(file), "--map", "user_id=client", "-w", str(workspace)])
    assert wrong.exit_code == 1 and "client" in wrong.output


def test_a_rerun_adds_nothing_twice_and_unknown_columns_are_refused(
    workspace: Path, cache_dir: Path, tmp_path: Path
) -> None:
    file = _users_file(tmp_path, "user_id,age,occupation\nnewbie,31,engineer\n")
    assert _add(workspace, file, cache_dir)[0] == 0
    rows = Workspace(workspace).read(Tables.users).height
    code, output = _add(workspace, file, cache_dir)
    assert code == 1 and "already exist" in output and "newbie" in output
    # Once the workspace's users have attributes, a column they lack is a typo until proven otherwise.
    misspelt = _users_file(tmp_path, "user_id,agee\nnewbie3,31\n", "misspelt.csv")
    code, output = _add(workspace, misspelt, cache_dir)
    assert code == 1 and "agee" in output and "age" in output, output
    assert Workspace(workspace).read(Tables.users).height == rows
