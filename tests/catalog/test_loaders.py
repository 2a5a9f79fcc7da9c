"""The built-in data sets load completely and satisfy the contracts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import polars as pl
import pytest

from catalog import (
    ALDI_SPLITS,
    INTERACTIONS_SCHEMA,
    ITEMS_SCHEMA,
    USERS_SCHEMA,
    Columns,
    DataError,
    Dataset,
    fetch_movielens_100k,
    load_citeulike,
    load_movielens_100k,
)


def test_movielens_100k_is_complete(ml100k: Dataset) -> None:
    assert ml100k.interactions.schema == INTERACTIONS_SCHEMA
    assert ml100k.items.schema == ITEMS_SCHEMA
    assert ml100k.users.schema == USERS_SCHEMA
    assert ml100k.interactions.height == 100_000
    assert ml100k.items.height == 1_682
    assert ml100k.users.height == 943
    assert ml100k.interactions[Columns.ts].null_count() == 0
    assert ml100k.interactions[Columns.value].is_between(1, 5).all()
    toy_story = ml100k.items.filter(pl.col(Columns.item) == "1").row(0, named=True)
    assert toy_story[Columns.title] == "Toy Story"
    assert toy_story[Columns.categories] == ["Animation", "Children's", "Comedy"]
    assert toy_story[Columns.released].year == 1995  # from the release year: what a film has before its first rating
    snow_white = ml100k.items.filter(pl.col(Columns.item) == "99").row(0, named=True)
    assert snow_white[Columns.released].year == 1937  # release times may predate any log
    assert all(report.duplicates_collapsed == 0 for report in ml100k.reports.values())


def test_movielens_fetch_is_cached(ml100k_dir: Path) -> None:
    # A second fetch into the same cache finds the files and returns at once.
    assert fetch_movielens_100k(ml100k_dir.parent) == ml100k_dir


def test_concurrent_fetches_never_replace_files_another_may_be_reading(tmp_path: Path) -> None:
    # (two flows starting on a fresh cache: the slower fetch used to delete the folder and rename its own copy in)
    with ThreadPoolExecutor(3) as pool:
        fetches = [pool.submit(fetch_movielens_100k, tmp_path) for _ in range(3)]
        first = next(as_completed(fetches)).result()
        inode = (first / "ml-100k.inter").stat().st_ino
        assert {fetch.result() for fetch in fetches} == {first}
    assert (first / "ml-100k.inter").stat().st_ino == inode
    assert [path.name for path in tmp_path.iterdir()] == ["ml-100k"]  # no scratch folder left behind
    assert load_movielens_100k(first).interactions.height == 100_000


def test_movielens_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ml-100k\.inter: no such file"):
        load_movielens_100k(tmp_path)


def test_citeulike_matches_its_provenance(citeulike: Dataset) -> None:
    assert citeulike.interactions.height == 204_986
    assert citeulike.items.height == 16_980
    assert citeulike.users.height == 5_551
    assert citeulike.interactions[Columns.ts].null_count() == citeulike.interactions.height
    sizes = {name: frame.height for name, frame in citeulike.splits.items()}
    assert sizes == {
        "warm_emb": 132_073,
        "warm_val": 16_471,
        "warm_test": 16_482,
        "cold_item_val": 19_802,
        "cold_item_test": 20_158,
    }
    assert set(citeulike.splits) == set(ALDI_SPLITS)
    assert citeulike.splits["cold_item_test"][Columns.item].n_unique() == 1_698
    # Cold items of the split never appear in the warm training split.
    cold = citeulike.splits["cold_item_test"].select(Columns.item).unique()
    assert citeulike.splits["warm_emb"].join(cold, on=Columns.item).height == 0


def test_citeulike_inconsistent_users_file(tmp_path: Path) -> None:
    (tmp_path / "titles.txt").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "users.dat").write_text("2 0 1\n3 0 1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"users\.dat: line 2 declares 3 articles but lists 2"):
        load_citeulike(tmp_path)
