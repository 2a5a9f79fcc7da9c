"""Every validation error, each from a real malformed file, and what valid input becomes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from catalog import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA, Columns, DataError, load_files


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def items_csv(tmp_path: Path) -> Path:
    return write(tmp_path / "items.csv", "item_id,title,categories\ni1,Alpha,Drama|Comedy\ni2,Beta,\ni3,Gamma,Horror\n")


@pytest.fixture
def users_csv(tmp_path: Path) -> Path:
    return write(tmp_path / "users.csv", "user_id,age\nu1,30\nu2,41\n")


def test_valid_files_follow_the_contracts(tmp_path: Path, items_csv: Path, users_csv: Path) -> None:
    inter = write(
        tmp_path / "inter.csv",
        "user_id,item_id,ts,value\n"
        "u1,i1,1700000000,4\n"
        "u2,i1,2024-01-02T03:04:05Z,5\n"
        "u2,i2,2024-01-02 03:04:05+02:00,1.5\n",
    )
    data = load_files(inter, items_csv, users_csv)
    assert data.interactions.schema == INTERACTIONS_SCHEMA
    assert data.items.schema == ITEMS_SCHEMA
    assert data.users.schema == USERS_SCHEMA
    assert data.interactions[Columns.ts].to_list() == [
        datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC),
    ]
    assert data.interactions[Columns.value].to_list() == [4.0, 5.0, 1.5]
    assert data.items.filter(pl.col(Columns.item) == "i1")[Columns.categories].item().to_list() == ["Drama", "Comedy"]
    assert data.items.filter(pl.col(Columns.item) == "i2")[Columns.categories].item().to_list() == []
    # first_seen is each entity's first interaction; an item nobody touched has none.
    first_seen = dict(data.items.select(Columns.item, Columns.first_seen).iter_rows())
    assert first_seen["i1"] == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert first_seen["i3"] is None
    assert data.users.filter(pl.col(Columns.user) == "u1")[Columns.attributes].item() == '{"age":"30"}'


def test_integer_ids_become_strings_and_value_defaults_to_one(tmp_path: Path) -> None:
    inter = tmp_path / "inter.parquet"
    pl.DataFrame({"user_id": [1, 2], "item_id": [10, 10]}).write_parquet(inter)
    items = tmp_path / "items.parquet"
    pl.DataFrame({"item_id": [10], "title": ["Ten"]}).write_parquet(items)
    data = load_files(inter, items)
    assert data.interactions[Columns.user].to_list() == ["1", "2"]
    assert data.interactions[Columns.value].to_list() == [1.0, 1.0]
    assert data.users[Columns.user].to_list() == ["1", "2"]


def test_missing_column_names_file_and_column(tmp_path: Path, items_csv: Path) -> None:
    inter = write(tmp_path / "inter.csv", "user_id,ts\nu1,1\n")
    with pytest.raises(DataError, match=r"inter\.csv: missing column\(s\) \['item_id'\]"):
        load_files(inter, items_csv)


def test_mistyped_id_column(tmp_path: Path, items_csv: Path) -> None:
    inter = tmp_path / "inter.parquet"
    pl.DataFrame({"user_id": ["u1"], "item_id": [1.5]}).write_parquet(inter)
    with pytest.raises(DataError, match=r"inter\.parquet: column 'item_id' has type Float64"):
        load_files(inter, items_csv)


def test_non_numeric_value_names_the_rows(tmp_path: Path, items_csv: Path) -> None:
    inter = write(tmp_path / "inter.csv", "user_id,item_id,value\nu1,i1,4\nu1,i2,great\n")
    with pytest.raises(DataError, match=r"column 'value' has 1 non-numeric value\(s\): row 2: .*'great'"):
        load_files(inter, items_csv)


def test_null_ids_name_the_rows(tmp_path: Path, items_csv: Path) -> None:
    inter = write(tmp_path / "inter.csv", "user_id,item_id\nu1,i1\n,i2\n,i3\n")
    with pytest.raises(DataError, match=r"column 'user_id' has 2 null id\(s\): row 2: .*; row 3:"):
        load_files(inter, items_csv)


def test_unknown_items_are_rejected(tmp_path: Path, items_csv: Path) -> None:
    inter = write(tmp_path / "inter.csv", "user_id,item_id\nu1,i1\nu1,i9\nu2,i9\n")
    with pytest.raises(DataError, match=r"2 interaction\(s\) reference 1 unknown item_id\(s\), e.g. \['i9'\]"):
        load_files(inter, items_csv)


def test_unknown_users_are_rejected_when_users_are_given(tmp_path: Path, items_csv: Path, users_csv: Path) -> None:
    inter = write(tmp_path / "inter.csv", "user_id,item_id\nu1,i1\nu7,i2\n")
    with pytest.raises(DataError, match=r"unknown user_id\(s\), e.g. \['u7'\]"):
        load_files(inter, items_csv, users_csv)


def test_unparseable_timestamps_name_the_rows(tmp_path: Path, items_csv: Path) -> None:
    inter = write(tmp_path / "inter.csv", "user_id,item_id,ts\nu1,i1,2024-01-01\nu1,i2,yesterday\n")
    with pytest.raises(DataError, match=r"column 'ts' has 1 unparseable timestamp\(s\): row 2: .*'yesterday'"):
        load_files(inter, items_csv)


def test_release_times_may_predate_logs_but_not_the_implausible(tmp_path: Path) -> None:
    inter = write(tmp_path / "inter.csv", "user_id,item_id\nu1,i1\n")
    items = write(tmp_path / "items.csv", "item_id,title,released\ni1,Metropolis,1927-01-10\ni2,New,\n")
    released = dict(load_files(inter, items).items.select(Columns.item, Columns.released).iter_rows())
    assert released["i1"].year == 1927 and released["i2"] is None
    write(items, "item_id,title,released\ni1,Metropolis,1027-01-10\n")
    with pytest.raises(DataError, match=r"column 'released' has 1 implausible timestamp\(s\) outside 1800-01-01"):
        load_files(inter, items)


def test_non_utf8_text_names_the_line(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,title\ni1,Alpha\ni2,Caf\xe9 Society\n".encode("latin-1"))
    inter = write(tmp_path / "inter.csv", "user_id,item_id\nu1,i1\n")
    with pytest.raises(DataError, match=r"items\.csv: not valid UTF-8 at line 3"):
        load_files(inter, items)


def test_exact_duplicates_are_collapsed_and_counted(tmp_path: Path, items_csv: Path) -> None:
    inter = write(tmp_path / "inter.csv", "user_id,item_id,ts\nu1,i1,5\nu1,i1,5\nu1,i1,5\nu1,i1,6\n")
    data = load_files(inter, items_csv)
    assert data.interactions.height == 2
    report = data.reports["interactions"]
    assert (report.rows_read, report.duplicates_collapsed, report.rows_kept) == (4, 2, 2)


def test_conflicting_item_rows_are_rejected(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,title\ni1,Alpha\ni1,Another alpha\n")
    inter = write(tmp_path / "inter.csv", "user_id,item_id\nu1,i1\n")
    with pytest.raises(DataError, match=r"1 item_id\(s\) appear in several different rows"):
        load_files(inter, items)


def test_huge_text_is_rejected(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", f"item_id,title\ni1,{'x' * 100_001}\n")
    inter = write(tmp_path / "inter.csv", "user_id,item_id\nu1,i1\n")
    with pytest.raises(DataError, match=r"column 'title' has 1 value\(s\) over 100,000 characters \(rows \[1\]\)"):
        load_files(inter, items)


def test_column_mapping_renames_and_rejects_unknown_columns(tmp_path: Path, items_csv: Path) -> None:
    inter = write(tmp_path / "inter.csv", "customer,product\nu1,i1\n")
    data = load_files(inter, items_csv, mapping={"user_id": "customer", "item_id": "product"})
    assert data.interactions.select(Columns.user, Columns.item).rows() == [("u1", "i1")]
    with pytest.raises(DataError, match=r"names column\(s\) \['buyer'\] that no input file has"):
        load_files(inter, items_csv, mapping={"user_id": "buyer"})


def test_unknown_file_type_and_missing_file(tmp_path: Path, items_csv: Path) -> None:
    with pytest.raises(DataError, match=r"unknown file type '\.json'"):
        load_files(write(tmp_path / "inter.json", "{}"), items_csv)
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        load_files(tmp_path / "nope.csv", items_csv)
