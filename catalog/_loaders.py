"""Reading data: the `Dataset` container and generic CSV/Parquet files (the built-in data sets are modules of
`catalog.datasets`).

Each loader returns a `Dataset` whose tables already satisfy the contracts in `_contracts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

ALDI_SPLITS = ("warm_emb", "warm_val", "warm_test", "cold_item_val", "cold_item_test")
"""Predefined splits in ALDI's layout: encoders' history, warm validation and test, cold-item validation and test.
A data set with these split tables is evaluated on them (ranker.evaluate's cold-item, warm and hybrid protocols)."""


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


def _read_inputs(
    paths: Sequence[Path], mapping: Mapping[str, str] | None, *, allow_empty: bool
) -> dict[Path, tuple[pl.DataFrame, str]]:
    """Each file read and renamed by `mapping` (contract column -> the files' own): each file gets the renames whose
    source column it has; a source column found in no file, or a rename onto a column a file already has, is an
    error. A file with no rows is refused unless `allow_empty`."""
    raws = {path: read_table(path) for path in paths}
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
    mapped = {}
    for path, raw in raws.items():
        renames = {s: t for t, s in (mapping or {}).items() if s in raw.columns}
        clashes = [f"{t}={s}" for s, t in renames.items() if t in raw.columns and t != s]
        if clashes:
            raise DataError(
                f"{path}: --map {' '.join(clashes)} would rename a column onto one the file already has. "
                "Drop the mapping, or remove or rename the existing column."
            )
        mapped[path] = (raw.rename(renames), str(path))
    return mapped


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

    `mapping` maps contract column names to the files' own (e.g. {"user_id": "customer"}). A file with no rows is
    refused unless `allow_empty`: an empty export replacing good data is a mistake far more often.
    """
    inputs = _read_inputs([p for p in (interactions, items, users) if p is not None], mapping, allow_empty=allow_empty)
    return assemble(name, inputs[interactions], inputs[items], inputs[users] if users else None)


@dataclass
class Additions:
    """Conformed rows to append to a data set: interactions, and the items and users files that came with them
    (None when none did)."""

    interactions: pl.DataFrame
    items: pl.DataFrame | None = None
    users: pl.DataFrame | None = None
    reports: dict[str, ConformReport] = field(default_factory=dict)


def load_additions(
    interactions: Path,
    items: Path | None = None,
    users: Path | None = None,
    mapping: Mapping[str, str] | None = None,
) -> Additions:
    """Files to append (`warmstart ingest --append`), each checked against its contract; their ids are checked
    against the data they extend when they are appended (`catalog.append`)."""
    paths = [p for p in (interactions, items, users) if p is not None]
    inputs = _read_inputs(paths, mapping, allow_empty=True)
    if inputs[interactions][0].is_empty():  # (empty items or users files add nothing and harm nothing)
        raise DataError(f"{interactions}: no rows (a header only): nothing to append. Nothing was written.")
    frame, report = conform_interactions(*inputs[interactions])
    additions = Additions(frame, reports={"interactions": report})
    if items is not None:
        additions.items, additions.reports["items"] = conform_items(*inputs[items])
    if users is not None:
        additions.users, additions.reports["users"] = conform_users(*inputs[users])
    return additions
