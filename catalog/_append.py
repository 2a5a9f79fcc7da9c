"""Appending to a data set: new events, items and users added to what a workspace holds, as a log grows.

Exact duplicates of rows already held are collapsed and counted; an id already held with other fields is refused
(nothing is overwritten); events must name items the data set holds or the append brings; users first seen in the
appended events join the users table. Entities the append brings get their `first_seen`: from the file, else their
first event, else the time of the append; a held entity listed without any takes its first event's once it has one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import polars as pl

from catalog._columns import Columns as C
from catalog._contracts import check_references, with_first_seen
from catalog._loaders import Additions, Dataset
from catalog.errors import DataError

_EXAMPLES = 5


@dataclass(frozen=True)
class AppendReport:
    """Rows an append added to each table, and the exact duplicates of rows already held it collapsed."""

    interactions_added: int
    interactions_collapsed: int
    items_added: int
    items_collapsed: int
    users_added: int
    users_collapsed: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _new_entities(held: pl.DataFrame, added: pl.DataFrame | None, key: str, source: str) -> tuple[pl.DataFrame, int]:
    """(the rows of `added` whose id `held` lacks, how many rows repeat a held one exactly). A held id given with
    other fields is refused: an append never overwrites."""
    if added is None or added.is_empty():
        return held.clear(), 0
    added = added.select(held.columns)
    repeated = added.join(held.select(key), on=key, how="semi")
    compared = [column for column in held.columns if column != C.first_seen]  # first_seen may be filled later
    same = repeated.join(held.select(compared), on=compared, how="semi", nulls_equal=True)
    changed = repeated.join(same.select(key), on=key, how="anti")
    if changed.height:
        examples = changed[key].head(_EXAMPLES).to_list()
        raise DataError(
            f"{source}: {changed.height} {key}(s) already held with other fields, e.g. {examples}. An append adds new "
            "rows only: give new ids, or re-ingest the whole data to change existing ones."
        )
    return added.join(held.select(key), on=key, how="anti"), repeated.height


def append(
    current: Dataset, added: Additions, *, source: str, now: datetime | None = None
) -> tuple[Dataset, AppendReport]:
    """`current` with `added` appended (see the module doc); `current` is left as it was."""
    new_items, items_collapsed = _new_entities(current.items, added.items, C.item, source)
    new_users, users_collapsed = _new_entities(current.users, added.users, C.user, source)
    items = pl.concat([current.items, new_items])
    check_references(added.interactions, items, None, source)
    events = added.interactions.select(current.interactions.columns)
    interactions = pl.concat([current.interactions, events]).unique(maintain_order=True)
    # Users first seen in the appended events, without a row in any users table: they join it, as an ingest
    # without a users file makes them.
    listed = pl.concat([current.users.select(C.user), new_users.select(C.user)])
    unlisted = events.select(C.user).unique(maintain_order=True).join(listed, on=C.user, how="anti")
    unlisted_rows = unlisted.with_columns(
        pl.lit(None, current.users.schema[C.attributes]).alias(C.attributes),
        pl.lit(None, current.users.schema[C.first_seen]).alias(C.first_seen),
    ).select(current.users.columns)
    new_users = pl.concat([new_users, unlisted_rows])
    stamp = now or datetime.now(UTC)
    merged = Dataset(
        name=current.name,
        interactions=interactions,
        items=_first_seen(current.items, new_items, interactions, C.item, stamp),
        users=_first_seen(current.users, new_users, interactions, C.user, stamp),
        splits=current.splits,
    )
    report = AppendReport(
        interactions_added=interactions.height - current.interactions.height,
        interactions_collapsed=events.height - (interactions.height - current.interactions.height),
        items_added=new_items.height,
        items_collapsed=items_collapsed,
        users_added=new_users.height,
        users_collapsed=users_collapsed,
    )
    return merged, report


def _first_seen(
    held: pl.DataFrame, new: pl.DataFrame, interactions: pl.DataFrame, key: str, stamp: datetime
) -> pl.DataFrame:
    """Held entities keep their `first_seen` (one listed without any gets its first event's, now that it has one);
    new ones take theirs as given, else their first event's, else the append's time."""
    new = with_first_seen(new, interactions, key)
    new = new.with_columns(pl.col(C.first_seen).fill_null(pl.lit(stamp, new.schema[C.first_seen])))
    return pl.concat([with_first_seen(held, interactions, key), new])
