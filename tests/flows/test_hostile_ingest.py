"""`warmstart ingest` against hostile input, over a workspace that already holds good data.

Every case is decided (docs/reliability.md): refused with exit status 1 and one line on stderr that names the
file, the column or rows and the fix, leaving the workspace byte for byte as it was; or accepted by a
documented rule, checked on what was stored. The CLI runs in-process.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from catalog import Workspace
from flows.cli import app

runner = CliRunner()

ITEMS = "item_id,title\ni1,Alpha\ni2,Beta\n"
INTER = "user_id,item_id,ts\nu1,i1,2024-01-01T00:00:00Z\nu2,i2,2024-01-02T00:00:00Z\n"
Content = str | bytes | pl.DataFrame


def _parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def _inter(*rows: str, header: str = "user_id,item_id,ts") -> str:
    return "\n".join([header, *rows]) + "\n"


@dataclass
class Case:
    """Files (name -> content) and arguments; {d} in an argument is the folder holding the files."""

    inter: tuple[str, Content] | None = ("inter.csv", INTER)
    items: tuple[str, Content] | None = ("items.csv", ITEMS)
    users: tuple[str, Content] | None = None
    args: list[str] = field(default_factory=list)
    message: str = ""  # expected in the one error line; "" for an accepted case
    check: Callable[[Workspace], None] | None = None  # what an accepted case must have stored


GOOD_PARQUET = _parquet(pl.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "ts": [1704067200]}))

REFUSED: dict[str, Case] = {
    # files that are not there, not files, or not tables
    "interactions-missing": Case(inter=None, args=["--interactions", "{d}/nope.csv"], message="nope.csv: no such file"),
    "items-missing": Case(items=None, args=["--items", "{d}/nope.csv"], message="nope.csv: no such file"),
    "users-missing": Case(args=["--users", "{d}/nope.csv"], message="nope.csv: no such file"),
    "interactions-a-directory": Case(inter=None, args=["--interactions", "{d}"], message="is a directory"),
    "unknown-suffix": Case(inter=("inter.json", "{}"), message="unknown file type '.json'"),
    "zero-byte-interactions": Case(inter=("inter.csv", ""), message="inter.csv: the file is empty"),
    "zero-byte-items": Case(items=("items.csv", ""), message="items.csv: the file is empty"),
    "header-only-interactions": Case(inter=("inter.csv", "user_id,item_id\n"), message="inter.csv: no rows"),
    "header-only-items": Case(items=("items.csv", "item_id,title\n"), message="items.csv: no rows"),
    "header-only-users": Case(users=("users.csv", "user_id,age\n"), message="users.csv: no rows"),
    "zero-row-parquet": Case(
        inter=("inter.parquet", _parquet(pl.DataFrame(schema={"user_id": pl.String, "item_id": pl.String}))),
        message="inter.parquet: no rows",
    ),
    "corrupt-parquet": Case(inter=("inter.parquet", b"PAR1" + bytes(range(256)) * 4), message="not a readable Parquet"),
    "truncated-parquet": Case(
        inter=("inter.parquet", GOOD_PARQUET[: len(GOOD_PARQUET) // 2]), message="corrupt or truncated"
    ),
    "csv-named-parquet": Case(inter=("inter.parquet", INTER), message="not a readable Parquet file"),
    "parquet-named-csv": Case(inter=("inter.csv", GOOD_PARQUET), message="not valid UTF-8"),
    "latin-1": Case(items=("items.csv", "item_id,title\ni1,Caf\xe9\ni2,B\n".encode("latin-1")), message="iconv"),
    # headers and layout
    "duplicate-header-interactions": Case(
        inter=("inter.csv", "user_id,item_id,item_id\nu1,i1,i2\n"), message="repeats column(s) ['item_id']"
    ),
    "duplicate-header-items": Case(items=("items.csv", "item_id,title,title\ni1,A,B\n"), message="repeats column(s)"),
    "ragged-rows": Case(inter=("inter.csv", "user_id,item_id\nu1,i1,extra\n"), message="cannot parse as CSV"),
    "unterminated-quote": Case(inter=("inter.csv", 'user_id,item_id\n"u1,i1\n'), message="cannot parse as CSV"),
    "tsv-holding-commas": Case(inter=("inter.tsv", INTER), message="missing column(s) ['user_id', 'item_id']"),
    "missing-columns": Case(inter=("inter.csv", "customer,sku\nu1,i1\n"), message="--map user_id=customer"),
    # column mappings
    "map-onto-existing-column": Case(
        inter=("inter.csv", "user_id,customer,item_id\nu1,c1,i1\n"),
        args=["--map", "user_id=customer"],
        message="--map user_id=customer would rename a column onto one the file already has",
    ),
    "map-malformed": Case(args=["--map", "user_id"], message="must look like CONTRACT_COLUMN=FILE_COLUMN"),
    "map-unknown-source": Case(args=["--map", "user_id=customer"], message="['customer'] that no input file has"),
    "map-unknown-target": Case(args=["--map", "colour=title"], message="['colour'] are not contract columns"),
    "map-twice": Case(args=["--map", "user_id=a", "--map", "user_id=b"], message="names 'user_id' twice"),
    # ids
    "null-user-id": Case(inter=("inter.csv", _inter(",i1,2024-01-01")), message="1 null id(s)"),
    "blank-user-id": Case(inter=("inter.csv", _inter("   ,i1,2024-01-01")), message="1 empty id(s)"),
    "nul-in-id": Case(inter=("inter.csv", _inter("u\x001,i1,2024-01-01")), message="id(s) with control characters"),
    "ansi-in-id": Case(inter=("inter.csv", _inter("\x1b[31mu1,i1,2024-01-01")), message="control characters"),
    "float-ids-parquet": Case(
        items=("items.parquet", _parquet(pl.DataFrame({"item_id": [1.5], "title": ["A"]}))),
        message="ids must be strings or integers",
    ),
    "unknown-item": Case(inter=("inter.csv", _inter("u1,i9,2024-01-01")), message="unknown item_id(s), e.g. ['i9']"),
    "unknown-user": Case(users=("users.csv", "user_id\nu1\n"), message="unknown user_id(s), e.g. ['u2']"),
    "conflicting-items": Case(items=("items.csv", ITEMS + "i1,Other\n"), message="appear in several different rows"),
    "markup-closing-tag-in-id": Case(inter=("inter.csv", _inter("u1,[/x],2024-01-01")), message="['[/x]']"),
    "markup-link-in-id": Case(
        inter=("inter.csv", _inter("u1,[link=http://evil.example]click[/link],2024-01-01")),
        message="[link=http://evil.example]click[/link]",
    ),
    # values
    "value-nan": Case(inter=("inter.csv", "user_id,item_id,value\nu1,i1,nan\n"), message="1 non-finite value(s)"),
    "value-inf": Case(inter=("inter.csv", "user_id,item_id,value\nu1,i1,inf\n"), message="non-finite value(s)"),
    "value-minus-inf": Case(inter=("inter.csv", "user_id,item_id,value\nu1,i1,-inf\n"), message="non-finite"),
    "value-overflows": Case(inter=("inter.csv", "user_id,item_id,value\nu1,i1,1e400\n"), message="non-finite"),
    "value-text": Case(inter=("inter.csv", "user_id,item_id,value\nu1,i1,five\n"), message="non-numeric value(s)"),
    "value-nan-parquet": Case(
        inter=(
            "inter.parquet",
            _parquet(pl.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "value": [float("nan")]})),
        ),
        message="non-finite value(s)",
    ),
    # timestamps
    "ts-nan-text": Case(inter=("inter.csv", _inter("u1,i1,nan")), message="unparseable timestamp(s)"),
    "ts-inf-text": Case(inter=("inter.csv", _inter("u1,i1,inf")), message="unparseable timestamp(s)"),
    "ts-inf-parquet": Case(
        inter=("inter.parquet", _parquet(pl.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "ts": [float("inf")]}))),
        message="non-finite timestamp(s)",
    ),
    "ts-nan-parquet": Case(
        inter=("inter.parquet", _parquet(pl.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "ts": [float("nan")]}))),
        message="non-finite timestamp(s)",
    ),
    "epoch-milliseconds": Case(
        inter=("inter.csv", _inter("u1,i1,1704067200000")), message="look like epoch milliseconds"
    ),
    "epoch-milliseconds-parquet": Case(
        inter=("inter.parquet", _parquet(pl.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "ts": [1704067200000]}))),
        message="divide by 1,000",
    ),
    "epoch-overflow": Case(inter=("inter.csv", _inter("u1,i1,99999999999999999999")), message="check the unit"),
    "epoch-negative": Case(inter=("inter.csv", _inter("u1,i1,-86400")), message="implausible timestamp(s)"),
    "year-9999": Case(inter=("inter.csv", _inter("u1,i1,9999-12-31")), message="implausible timestamp(s) outside"),
    "year-1900": Case(inter=("inter.csv", _inter("u1,i1,1900-01-01T00:00:00Z")), message="implausible timestamp(s)"),
    "year-2100": Case(inter=("inter.csv", _inter("u1,i1,2100-01-01")), message="implausible timestamp(s)"),
    "february-30": Case(inter=("inter.csv", _inter("u1,i1,2024-02-30")), message="unparseable timestamp(s)"),
    "ts-words": Case(inter=("inter.csv", _inter("u1,i1,yesterday")), message="Use ISO 8601"),
    "first-seen-placeholder": Case(
        items=("items.csv", "item_id,title,first_seen\ni1,A,9999-01-01\ni2,B,\n"), message="column 'first_seen'"
    ),
    # text
    "text-too-long": Case(items=("items.csv", f"item_id,title\ni1,{'x' * 100_001}\ni2,B\n"), message="over 100,000"),
    "title-int-parquet": Case(
        items=("items.parquet", _parquet(pl.DataFrame({"item_id": ["i1", "i2"], "title": [1, 2]}))),
        message="column 'title' has type Int64; it must be text",
    ),
    "categories-int-parquet": Case(
        items=(
            "items.parquet",
            _parquet(pl.DataFrame({"item_id": ["i1", "i2"], "title": ["A", "B"], "categories": [1, 2]})),
        ),
        message="column 'categories' has type Int64",
    ),
    # options
    "no-items": Case(items=None, message="--interactions needs --items FILE too"),
    "dataset-and-files": Case(args=["--dataset", "ml-100k"], message="give either --dataset NAME or --interactions"),
    "unknown-dataset": Case(
        inter=None, items=None, args=["--dataset", "netflix"], message="unknown data set 'netflix'"
    ),
    "workspace-is-a-file": Case(args=["--workspace", "{d}/ws-file"], message="is a file, not a directory"),
}


def _title(space: Workspace) -> list[str]:
    return space.read("items").sort("item_id")["title"].to_list()


def _times(space: Workspace) -> list[str]:
    return [str(t) for t in space.read("interactions").sort("user_id", "item_id")["ts"].to_list()]


ACCEPTED: dict[str, Case] = {
    "allow-empty": Case(
        inter=("inter.csv", "user_id,item_id\n"),
        items=("items.csv", "item_id,title\n"),
        args=["--allow-empty"],
        check=lambda s: (s.read("interactions").height, s.read("items").height) == (0, 0) or pytest.fail("not empty"),
    ),
    "utf8-bom": Case(inter=("inter.csv", "\ufeff" + INTER), check=lambda s: s.read("interactions").height == 2),
    "crlf": Case(items=("items.csv", ITEMS.replace("\n", "\r\n")), check=lambda s: _title(s) == ["Alpha", "Beta"]),
    "date-first-then-times": Case(
        inter=("inter.csv", _inter("u1,i1,2024-05-01", "u2,i2,2024-05-02 10:30", "u3,i2,2024-05-03T01:02:03.5Z")),
        check=lambda s: (
            _times(s) == ["2024-05-01 00:00:00+00:00", "2024-05-02 10:30:00+00:00", "2024-05-03 01:02:03.500000+00:00"]
        ),
    ),
    "offsets-to-utc": Case(
        inter=("inter.csv", _inter("u1,i1,2024-05-01T12:00:00+02:00", "u2,i2,2024-05-01T12:00:00-0130")),
        check=lambda s: _times(s) == ["2024-05-01 10:00:00+00:00", "2024-05-01 13:30:00+00:00"],
    ),
    "epoch-seconds": Case(
        inter=("inter.csv", _inter("u1,i1,1704067200")), check=lambda s: _times(s) == ["2024-01-01 00:00:00+00:00"]
    ),
    "no-times": Case(inter=("inter.csv", _inter("u1,i1,", "u2,i2,")), check=lambda s: _times(s) == ["None", "None"]),
    "ansi-in-title-stripped": Case(
        items=("items.csv", "item_id,title\ni1,\x1b[31mred\x1b[0m alert\ni2,B\n"),
        check=lambda s: _title(s) == ["red alert", "B"],
    ),
    "nul-and-bell-in-title-stripped": Case(
        items=("items.csv", "item_id,title\ni1,A\x00l\x07pha\ni2,B\n"), check=lambda s: _title(s) == ["Alpha", "B"]
    ),
    "newline-in-quoted-title-kept": Case(
        items=("items.csv", 'item_id,title\ni1,"two\nlines"\ni2,B\n'), check=lambda s: _title(s) == ["two\nlines", "B"]
    ),
    "markup-in-title-kept-literally": Case(
        items=("items.csv", "item_id,title\ni1,[bold]x[/bold] [/y]\ni2,B\n"),
        check=lambda s: _title(s) == ["[bold]x[/bold] [/y]", "B"],
    ),
    "ids-stripped": Case(
        inter=("inter.csv", _inter(" u1 ,i1 ,2024-01-01")),
        check=lambda s: s.read("interactions")["user_id"].to_list() == ["u1"],
    ),
    "unicode-ids-and-titles": Case(
        inter=("inter.csv", _inter("ü🙂,i1,2024-01-01")),
        items=("items.csv", "item_id,title\ni1,Café 東京\ni2,B\n"),
        check=lambda s: s.read("interactions")["user_id"].to_list() == ["ü🙂"] and _title(s)[0] == "Café 東京",
    ),
    "exact-duplicates-collapsed": Case(
        inter=("inter.csv", INTER + "u1,i1,2024-01-01T00:00:00Z\n"), check=lambda s: s.read("interactions").height == 2
    ),
    "workspace-created-with-parents": Case(
        args=["--workspace", "{d}/new/deeper/ws"], check=lambda s: s.read("interactions").height == 2
    ),
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding a good ingest (three users, three items) and its segments."""
    root = tmp_path_factory.mktemp("template")
    (root / "i.csv").write_text("item_id,title\ng1,Good one\ng2,Good two\ng3,Good three\n", encoding="utf-8")
    (root / "u.csv").write_text(_inter("a,g1,2023-01-01", "b,g2,2023-01-02", "c,g3,2023-01-03"), encoding="utf-8")
    ws = root / "ws"
    ingest = runner.invoke(
        app, ["ingest", "--interactions", f"{root}/u.csv", "--items", f"{root}/i.csv", "-w", str(ws)]
    )
    assert ingest.exit_code == 0, ingest.output
    assert runner.invoke(app, ["detect", "-w", str(ws)]).exit_code == 0
    return ws


def _snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _run(case: Case, folder: Path, template: Path) -> tuple[object, Path]:
    folder.mkdir()
    ws = folder / "ws"
    shutil.copytree(template, ws)
    (folder / "ws-file").write_text("not a workspace", encoding="utf-8")
    args = ["ingest"]
    for option, spec in (("--interactions", case.inter), ("--items", case.items), ("--users", case.users)):
        if spec is not None:
            name, content = spec
            data = content.encode() if isinstance(content, str) else content
            (folder / name).write_bytes(data)
            args += [option, str(folder / name)]
    args += [arg.format(d=folder) for arg in case.args]
    if "--workspace" not in case.args:
        args += ["--workspace", str(ws)]
    else:
        ws = Path(args[args.index("--workspace") + 1])
    return runner.invoke(app, args), ws


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_input_is_refused_in_one_line_and_changes_nothing(name: str, tmp_path: Path, template: Path) -> None:
    case = REFUSED[name]
    folder = tmp_path / "case"
    target = Path(case.args[1].format(d=folder)) if "--workspace" in case.args else folder / "ws"
    result, ws = _run(case, folder, template)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert case.message in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == "", "nothing is reported as done"
    if target.name == "ws":
        assert _snapshot(ws) == _snapshot(template), "the good data is untouched, byte for byte"
    else:
        assert target.read_text(encoding="utf-8") == "not a workspace"


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_odd_but_valid_input_is_accepted_by_its_rule(name: str, tmp_path: Path, template: Path) -> None:
    case = ACCEPTED[name]
    result, ws = _run(case, tmp_path / "case", template)
    assert result.exit_code == 0, result.output
    space = Workspace(ws)
    assert not space.exists("segments"), "segments of the previous data are not served with the new data"
    assert case.check is not None
    assert case.check(space) is not False
    if ws.parent.name == "case":  # the template's good data is kept as the previous generation
        assert Workspace(ws).rollback()["current"] == Workspace(template).generation
        assert Workspace(ws).read("items")["item_id"].to_list() == ["g1", "g2", "g3"]


def test_columns_outside_the_contract_are_named_on_stderr_not_dropped_silently(tmp_path: Path, template: Path) -> None:
    # A log whose time column is called 'timestamp' was stored without times, and its repeats collapsed as exact
    # duplicates, with nothing said.
    case = Case(inter=("inter.csv", _inter("u1,i1,1700000000", header="user_id,item_id,timestamp")))
    result, ws = _run(case, tmp_path / "case", template)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: interactions: column(s) ['timestamp'] are not part of the contract and were not stored (times are "
        "read from 'ts': --map ts=COLUMN)"
    ], result.stderr
    assert Workspace(ws).read("interactions")["ts"].null_count() == 1
    mapped = Case(inter=case.inter, args=["--map", "ts=timestamp"])
    result, ws = _run(mapped, tmp_path / "mapped", template)
    assert result.exit_code == 0 and "note:" not in result.stderr, result.output
    assert Workspace(ws).read("interactions")["ts"].null_count() == 0


def test_the_suite_is_large_enough() -> None:
    assert len(REFUSED) + len(ACCEPTED) >= 60


@contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """A directory nobody may add to: root ignores permission bits, so as root it is made immutable."""
    as_root = os.geteuid() == 0
    subprocess.run(["chattr", "+i", str(path)], check=True) if as_root else path.chmod(0o555)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True) if as_root else path.chmod(0o755)


def test_a_workspace_whose_root_is_read_only_refuses_and_keeps_its_data(tmp_path: Path, template: Path) -> None:
    """The issue's case: table directories writable, the workspace root not (the switch cannot happen)."""
    ws = tmp_path / "ws"
    shutil.copytree(template, ws)
    (tmp_path / "i.csv").write_text(ITEMS, encoding="utf-8")
    (tmp_path / "u.csv").write_text(INTER, encoding="utf-8")
    args = ["ingest", "--interactions", str(tmp_path / "u.csv"), "--items", str(tmp_path / "i.csv"), "-w", str(ws)]
    with _read_only(ws):
        result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert "cannot switch to the new data" in line and "nothing was changed" in line
    assert _snapshot(ws) == _snapshot(template)


def test_a_new_workspace_in_a_read_only_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "i.csv").write_text(ITEMS, encoding="utf-8")
    (tmp_path / "u.csv").write_text(INTER, encoding="utf-8")
    locked = tmp_path / "locked"
    locked.mkdir()
    args = ["ingest", "--interactions", str(tmp_path / "u.csv"), "--items", str(tmp_path / "i.csv")]
    with _read_only(locked):
        result = runner.invoke(app, [*args, "-w", str(locked / "ws")])
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert "is not writable" in line
    assert list(locked.iterdir()) == []
