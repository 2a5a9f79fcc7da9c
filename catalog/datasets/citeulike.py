"""CiteULike-a: 5,551 users, 16,980 articles (titles only), with ALDI's item cold-start split. The item cold-start
benchmark; its files are not redistributed here, so it loads from a folder given with --data DIR."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from catalog._columns import Columns as C
from catalog._contracts import check_references, conform_interactions
from catalog._loaders import ALDI_SPLITS, Dataset, assemble, check_utf8, read_table
from catalog.datasets._spec import BuiltinDataset
from catalog.errors import ConfigError, DataError


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: no such file; CiteULike-a needs titles.txt, users.dat and splits/aldi/*.csv.")
    check_utf8(path)
    return path.read_text(encoding="utf-8").splitlines()


def load_citeulike(data_dir: Path) -> Dataset:
    """CiteULike-a: titles.txt (line i = article i), users.dat (count, then article ids) and the ALDI split."""
    titles = _read_lines(data_dir / "titles.txt")
    items = pl.DataFrame({C.item: [str(i) for i in range(len(titles))], C.title: titles})
    users_path = data_dir / "users.dat"
    user_ids: list[str] = []
    item_ids: list[str] = []
    for number, line in enumerate(_read_lines(users_path)):
        fields = line.split()
        if not fields or len(fields) != int(fields[0]) + 1:
            raise DataError(
                f"{users_path}: line {number + 1} declares {fields[0] if fields else 'nothing'} articles "
                f"but lists {max(len(fields) - 1, 0)}."
            )
        user_ids.extend([str(number)] * (len(fields) - 1))
        item_ids.extend(fields[1:])
    interactions = pl.DataFrame({C.user: user_ids, C.item: item_ids})
    users = pl.DataFrame({C.user: [str(u) for u in range(number + 1)]})
    dataset = assemble(
        "citeulike-a", (interactions, str(users_path)), (items, str(data_dir / "titles.txt")), (users, str(users_path))
    )
    for split in ALDI_SPLITS:
        path = data_dir / "splits" / "aldi" / f"{split}.csv"
        raw = read_table(path).rename({"user": C.user, "item": C.item})
        frame, _ = conform_interactions(raw, str(path))
        check_references(frame, dataset.items, dataset.users, str(path))
        dataset.splits[split] = frame.select(C.user, C.item)
    return dataset


def _load(data_dir: Path | None, cache_dir: Path) -> Dataset:
    if data_dir is None:
        raise ConfigError("--dataset citeulike needs --data DIR (the folder with titles.txt and users.dat).")
    return load_citeulike(data_dir)


CITEULIKE = BuiltinDataset(
    name="citeulike",
    description="CiteULike-a with ALDI's split (--data DIR: the folder with titles.txt, users.dat, splits/aldi)",
    load=_load,
    protocols=("cold-item", "warm", "hybrid"),
    item_kind="article",
    aliases=("citeulike-a",),
)
