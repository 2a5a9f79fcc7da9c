"""Data contracts: the polars schemas of interactions, items and users, and the checks that enforce them.

Every `conform_*` function takes a raw frame (as read from a file) and the name of its source, and returns a
frame with exactly the contract's columns and dtypes, or raises `DataError` naming the source, the column,
example rows and the fix. External ids are strings; exact duplicate rows are collapsed and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from catalog._columns import Columns as C
from catalog.errors import DataError

TIMESTAMP = pl.Datetime("us", "UTC")

INTERACTIONS_SCHEMA = pl.Schema({C.user: pl.String, C.item: pl.String, C.ts: TIMESTAMP, C.value: pl.Float64})
ITEMS_SCHEMA = pl.Schema(
    {
        C.item: pl.String,
        C.title: pl.String,
        C.text: pl.String,
        C.categories: pl.List(pl.String),
        C.first_seen: TIMESTAMP,
        # When the item came out in the world (a film's release, a paper's publication), known before anyone
        # interacts with it: a cold item's age. Null where the data set does not say.
        C.released: TIMESTAMP,
    }
)
# `attributes` holds a JSON object as text: attribute sets differ between data sets.
USERS_SCHEMA = pl.Schema({C.user: pl.String, C.attributes: pl.String, C.first_seen: TIMESTAMP})
CONTRACT_COLUMNS = frozenset(INTERACTIONS_SCHEMA) | frozenset(ITEMS_SCHEMA) | frozenset(USERS_SCHEMA)

MAX_TEXT_CHARS = 100_000
_EXAMPLES = 3
_ID_DTYPES = (pl.String, pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
_EPOCH = r"^\s*-?\d+(\.\d+)?\s*$"
# Control characters: C0 and C1 and DEL. Refused in ids; in text, ANSI escape sequences and every control
# character but tab, newline and carriage return are removed (they are terminal or binary noise, never content).
_CONTROL_ID = r"[\x00-\x1f\x7f-\x9f]"
_ANSI_ESCAPE = r"\x1b\[[0-?]*[ -/]*[@-~]"
_CONTROL_TEXT = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
# Plausible times: from the Unix epoch to a year from now. Beyond is a unit error (milliseconds read as
# seconds land in year 56000) or a placeholder (9999-12-31), not an event.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_AHEAD = timedelta(days=366)
_ISO_AWARE = ("%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M%:z")
_ISO_NAIVE = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M")
# Columns whose plausible times start earlier: films and books came out long before any log began.
_EARLIEST_BY_COLUMN = {C.released: datetime(1800, 1, 1, tzinfo=UTC)}


def has_times(log: pl.DataFrame) -> bool:
    """Whether an interaction log is time-ordered: it has a `ts` column with a time on at least one row. Such a log
    gets recency features, recent popularity and the timed defaults; a time cut (temporal split, held-out labels)
    needs a time on every row, which `fully_timed` says."""
    return C.ts in log.columns and log[C.ts].null_count() < log.height


def fully_timed(log: pl.DataFrame) -> bool:
    """Whether every row of a non-empty log has a time (what a time cut needs)."""
    return C.ts in log.columns and log.height > 0 and log[C.ts].null_count() == 0


def _earliest(column: str) -> datetime:
    return _EARLIEST_BY_COLUMN.get(column, EARLIEST)


@dataclass(frozen=True)
class ConformReport:
    """What conforming a table changed: rows read, exact duplicates collapsed, rows kept."""

    source: str
    rows_read: int
    duplicates_collapsed: int
    ignored_columns: tuple[str, ...] = ()  # columns the file has and the contract does not: not stored

    @property
    def rows_kept(self) -> int:
        return self.rows_read - self.duplicates_collapsed

    def ignored_note(self, table: str) -> str | None:
        """A line naming the columns that were not stored, and how a time column would be, or None."""
        if not self.ignored_columns:
            return None
        hint = f" (times are read from '{C.ts}': --map {C.ts}=COLUMN)" if table == "interactions" else ""
        return f"{table}: column(s) {list(self.ignored_columns)} are not part of the contract and were not stored{hint}"


def _examples(frame: pl.DataFrame, mask: pl.Expr) -> str:
    """Up to three offending rows, with their 1-based row numbers in the source."""
    bad = frame.with_row_index("row", offset=1).filter(mask).head(_EXAMPLES)
    return "; ".join(f"row {row.pop('row')}: {row}" for row in bad.to_dicts())


def _require_columns(frame: pl.DataFrame, required: list[str], source: str) -> None:
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {missing}; found {frame.columns}. "
            "Rename them in the file or pass a column mapping (e.g. --map user_id=customer)."
        )


def _as_id(frame: pl.DataFrame, column: str, source: str) -> pl.Expr:
    dtype = frame.schema[column]
    if not isinstance(dtype, _ID_DTYPES):
        raise DataError(
            f"{source}: column '{column}' has type {dtype}, but ids must be strings or integers "
            f"(e.g. {frame[column].head(_EXAMPLES).to_list()})."
        )
    null_count = frame[column].null_count()
    if null_count:
        raise DataError(
            f"{source}: column '{column}' has {null_count} null id(s): {_examples(frame, pl.col(column).is_null())}. "
            "Fix: give every row an id."
        )
    ids = pl.col(column).cast(pl.String).str.strip_chars()
    for mask, what, fix in (
        (ids == "", "empty id(s)", "give every row an id"),
        (ids.str.contains(_CONTROL_ID), "id(s) with control characters", "remove them from the ids"),
    ):
        bad = frame.filter(mask).height
        if bad:
            raise DataError(f"{source}: column '{column}' has {bad} {what}: {_examples(frame, mask)}. Fix: {fix}.")
    return ids


def _range_error(source: str, column: str, frame: pl.DataFrame, mask: pl.Expr, hint: str) -> DataError:
    latest = datetime.now(UTC) + LATEST_AHEAD
    return DataError(
        f"{source}: column '{column}' has {frame.filter(mask).height} implausible timestamp(s) outside "
        f"{_earliest(column):%Y-%m-%d}..{latest:%Y-%m-%d}: {_examples(frame, mask)}. {hint}"
    )


def _check_epoch_seconds(frame: pl.DataFrame, column: str, source: str, seconds: pl.Expr) -> None:
    """Refuse non-finite epoch values and values outside the plausible range, naming milliseconds when the
    values would be plausible as such."""
    not_finite = seconds.is_not_null() & ~seconds.is_finite()
    if frame.filter(not_finite).height:
        raise DataError(
            f"{source}: column '{column}' has {frame.filter(not_finite).height} non-finite timestamp(s) (NaN or "
            f"infinity): {_examples(frame, not_finite)}. Leave the time empty or give a real one."
        )
    low, high = _earliest(column).timestamp(), (datetime.now(UTC) + LATEST_AHEAD).timestamp()
    outside = seconds.is_not_null() & ((seconds < low) | (seconds > high))
    if frame.filter(outside).height:
        in_ms = frame.filter(outside).select(((seconds / 1000 >= low) & (seconds / 1000 <= high)).all()).item()
        hint = (
            "They look like epoch milliseconds: convert them to seconds (divide by 1,000) or to ISO 8601."
            if in_ms
            else "Epoch times must be in seconds; check the unit, or use ISO 8601 (2024-05-01T12:00:00Z)."
        )
        raise _range_error(source, column, frame, outside, hint)


def _check_datetimes(frame: pl.DataFrame, column: str, source: str, parsed: pl.Expr) -> None:
    latest = datetime.now(UTC) + LATEST_AHEAD
    outside = parsed.is_not_null() & ((parsed < _earliest(column)) | (parsed > latest))
    if frame.filter(outside).height:
        raise _range_error(source, column, frame, outside, "Fix or drop those rows (a placeholder date is not a time).")


def _parse_iso(text: pl.Expr) -> pl.Expr:
    """ISO 8601 per value (a date, a time with or without seconds, fraction, 'Z' or an offset), whatever the
    first row looks like; naive times are UTC."""
    normal = (
        text.str.replace(r"^(\d{4}-\d{2}-\d{2})$", "${1}T00:00:00")
        .str.replace(r"^(\d{4}-\d{2}-\d{2})[ T]", "${1}T")
        .str.replace(r"[zZ]$", "+00:00")
        .str.replace(r"([+-]\d{2})(\d{2})$", "${1}:${2}")
    )
    aware = [normal.str.to_datetime(f, strict=False, time_unit="us").dt.convert_time_zone("UTC") for f in _ISO_AWARE]
    naive = [normal.str.to_datetime(f, strict=False, time_unit="us").dt.replace_time_zone("UTC") for f in _ISO_NAIVE]
    return pl.coalesce(*aware, *naive)


def _from_epoch_seconds(seconds: pl.Expr) -> pl.Expr:
    return pl.from_epoch((seconds * 1_000_000).round().cast(pl.Int64), time_unit="us").dt.replace_time_zone("UTC")


def _as_timestamp(frame: pl.DataFrame, column: str, source: str) -> pl.Expr:
    """Accept datetimes, dates, epoch seconds (numbers or digit strings) and ISO-8601 strings."""
    dtype = frame.schema[column]
    raw = pl.col(column)
    if isinstance(dtype, pl.Datetime):
        # Naive datetimes are taken as UTC.
        in_utc = raw.dt.replace_time_zone("UTC") if dtype.time_zone is None else raw.dt.convert_time_zone("UTC")
        _check_datetimes(frame, column, source, in_utc)
        return in_utc.cast(TIMESTAMP)
    if dtype == pl.Date:
        as_time = raw.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        _check_datetimes(frame, column, source, as_time)
        return as_time
    if dtype.is_numeric():
        _check_epoch_seconds(frame, column, source, raw.cast(pl.Float64))
        return _from_epoch_seconds(raw.cast(pl.Float64))
    if dtype != pl.String:
        raise DataError(f"{source}: column '{column}' has type {dtype}; timestamps must be dates, times or numbers.")
    text = raw.str.strip_chars()
    is_epoch = text.str.contains(_EPOCH)
    seconds = pl.when(is_epoch).then(text.cast(pl.Float64, strict=False))
    _check_epoch_seconds(frame, column, source, seconds)
    iso = pl.when(~is_epoch).then(_parse_iso(text))
    _check_datetimes(frame, column, source, iso)
    parsed = pl.when(is_epoch).then(_from_epoch_seconds(seconds)).otherwise(iso)
    # Nulls stay null (a data set may have no times); any other value that does not parse is an error.
    unparsed = frame.filter(raw.is_not_null() & (raw.str.strip_chars() != "") & parsed.is_null())
    if unparsed.height:
        mask = raw.is_not_null() & (raw.str.strip_chars() != "") & parsed.is_null()
        raise DataError(
            f"{source}: column '{column}' has {unparsed.height} unparseable timestamp(s): "
            f"{_examples(frame, mask)}. Use ISO 8601 (2024-05-01T12:00:00Z) or epoch seconds."
        )
    return parsed


def _as_float(frame: pl.DataFrame, column: str, source: str) -> pl.Expr:
    dtype = frame.schema[column]
    raw = pl.col(column)
    if dtype.is_numeric() or dtype == pl.Boolean:
        parsed = raw.cast(pl.Float64)
    elif dtype != pl.String:
        raise DataError(f"{source}: column '{column}' has type {dtype}; it must be numeric.")
    else:
        parsed = raw.str.strip_chars().cast(pl.Float64, strict=False)
        mask = raw.is_not_null() & parsed.is_null()
        bad = frame.filter(mask).height
        if bad:
            raise DataError(
                f"{source}: column '{column}' has {bad} non-numeric value(s): {_examples(frame, mask)}. "
                "Use plain numbers (e.g. 4.5) or leave the value empty."
            )
    not_finite = parsed.is_not_null() & ~parsed.is_finite()
    bad = frame.filter(not_finite).height
    if bad:
        raise DataError(
            f"{source}: column '{column}' has {bad} non-finite value(s) (NaN or infinity): "
            f"{_examples(frame, not_finite)}. Give finite numbers or leave the value empty."
        )
    return parsed


def _as_text(frame: pl.DataFrame, column: str, source: str) -> pl.Expr:
    dtype = frame.schema[column]
    if dtype not in (pl.String, pl.Null):
        raise DataError(f"{source}: column '{column}' has type {dtype}; it must be text.")
    if dtype == pl.String:
        mask = pl.col(column).str.len_chars() > MAX_TEXT_CHARS
        too_long = frame.filter(mask).height
        if too_long:
            rows = frame.with_row_index("row", offset=1).filter(mask)["row"].head(_EXAMPLES).to_list()
            raise DataError(
                f"{source}: column '{column}' has {too_long} value(s) over {MAX_TEXT_CHARS:,} characters "
                f"(rows {rows}). Shorten them; such text is not an item description."
            )
    return _without_control(pl.col(column).cast(pl.String))


def _without_control(text: pl.Expr) -> pl.Expr:
    """Text with ANSI escape sequences and control characters removed (tab, newline, CR kept)."""
    return text.str.replace_all(_ANSI_ESCAPE, "").str.replace_all(_CONTROL_TEXT, "")


def _collapse_duplicates(
    frame: pl.DataFrame, source: str, ignored: tuple[str, ...] = ()
) -> tuple[pl.DataFrame, ConformReport]:
    unique = frame.unique(maintain_order=True)
    return unique, ConformReport(source, frame.height, frame.height - unique.height, ignored)


def _ignored(raw: pl.DataFrame, schema: dict[str, object]) -> tuple[str, ...]:
    return tuple(column for column in raw.columns if column not in schema)


def _reject_conflicting_ids(frame: pl.DataFrame, key: str, source: str) -> None:
    """Two different rows for one id cannot both be right; say which, rather than pick one."""
    repeated = frame.filter(pl.col(key).is_duplicated())
    if repeated.height:
        raise DataError(
            f"{source}: {repeated[key].n_unique()} {key}(s) appear in several different rows: "
            f"{_examples(frame, pl.col(key).is_duplicated())}. Keep one row per {key}."
        )


def conform_interactions(raw: pl.DataFrame, source: str) -> tuple[pl.DataFrame, ConformReport]:
    """Interactions (user_id, item_id[, ts][, value]) to the contract; `value` defaults to 1.0 (implicit)."""
    _require_columns(raw, [C.user, C.item], source)
    frame = raw.select(
        _as_id(raw, C.user, source).alias(C.user),
        _as_id(raw, C.item, source).alias(C.item),
        (_as_timestamp(raw, C.ts, source) if C.ts in raw.columns else pl.lit(None, TIMESTAMP)).alias(C.ts),
        (_as_float(raw, C.value, source) if C.value in raw.columns else pl.lit(1.0)).alias(C.value),
    ).cast(dict(INTERACTIONS_SCHEMA))
    return _collapse_duplicates(frame, source, _ignored(raw, dict(INTERACTIONS_SCHEMA)))


def _as_categories(raw: pl.DataFrame, source: str) -> pl.Expr:
    if C.categories not in raw.columns:
        return pl.lit([], pl.List(pl.String))
    dtype = raw.schema[C.categories]
    if dtype == pl.List(pl.String):
        return pl.col(C.categories)
    if dtype == pl.String:  # "Action|Comedy" in flat files
        return (
            pl.col(C.categories)
            .str.split("|")
            .list.eval(_without_control(pl.element()).str.strip_chars())
            .list.eval(pl.element().filter(pl.element() != ""))
        )
    raise DataError(f"{source}: column '{C.categories}' has type {dtype}; use a list of strings or 'a|b|c' text.")


def conform_items(raw: pl.DataFrame, source: str) -> tuple[pl.DataFrame, ConformReport]:
    """Items (item_id, title[, text][, categories][, first_seen][, released]) to the contract."""
    _require_columns(raw, [C.item, C.title], source)
    frame = raw.select(
        _as_id(raw, C.item, source).alias(C.item),
        _as_text(raw, C.title, source).fill_null("").alias(C.title),
        (_as_text(raw, C.text, source) if C.text in raw.columns else pl.lit(None, pl.String)).alias(C.text),
        _as_categories(raw, source).fill_null(pl.lit([], pl.List(pl.String))).alias(C.categories),
        *(
            (_as_timestamp(raw, column, source) if column in raw.columns else pl.lit(None, TIMESTAMP)).alias(column)
            for column in (C.first_seen, C.released)
        ),
    ).cast(dict(ITEMS_SCHEMA))
    frame, report = _collapse_duplicates(frame, source, _ignored(raw, dict(ITEMS_SCHEMA)))
    _reject_conflicting_ids(frame, C.item, source)
    return frame, report


def conform_users(raw: pl.DataFrame, source: str) -> tuple[pl.DataFrame, ConformReport]:
    """Users (user_id[, first_seen], every other column an attribute) to the contract."""
    _require_columns(raw, [C.user], source)
    attribute_columns = [c for c in raw.columns if c not in (C.user, C.first_seen, C.attributes)]
    if C.attributes in raw.columns:
        attributes = _as_text(raw, C.attributes, source)
    elif attribute_columns:
        attributes = pl.struct([pl.col(c).cast(pl.String) for c in attribute_columns]).struct.json_encode()
    else:
        attributes = pl.lit(None, pl.String)
    frame = raw.select(
        _as_id(raw, C.user, source).alias(C.user),
        attributes.alias(C.attributes),
        (_as_timestamp(raw, C.first_seen, source) if C.first_seen in raw.columns else pl.lit(None, TIMESTAMP)).alias(
            C.first_seen
        ),
    ).cast(dict(USERS_SCHEMA))
    frame, report = _collapse_duplicates(frame, source)
    _reject_conflicting_ids(frame, C.user, source)
    return frame, report


def check_references(interactions: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame | None, source: str) -> None:
    """Every interaction must name a known item (and a known user, when a users table is given)."""
    checks = [(C.item, items)] + ([(C.user, users)] if users is not None else [])
    for key, table in checks:
        unknown = interactions.join(table.select(key), on=key, how="anti")
        if unknown.height:
            examples = unknown[key].unique(maintain_order=True).head(_EXAMPLES).to_list()
            raise DataError(
                f"{source}: {unknown.height} interaction(s) reference {unknown[key].n_unique()} unknown "
                f"{key}(s), e.g. {examples}. Add them to the {key.removesuffix('_id')}s table or drop those rows."
            )


def with_first_seen(entities: pl.DataFrame, interactions: pl.DataFrame, key: str) -> pl.DataFrame:
    """Fill a missing `first_seen` with the entity's first interaction time."""
    first = interactions.group_by(key).agg(pl.col(C.ts).min().alias("_first"))
    return (
        entities.join(first, on=key, how="left")
        .with_columns(pl.coalesce(C.first_seen, "_first").alias(C.first_seen))
        .drop("_first")
    )
