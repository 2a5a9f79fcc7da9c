"""Detection on a workspace with predefined splits: what no model may learn from is cold."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from catalog import Columns, Dataset, Workspace
from flows import stages


def test_items_held_out_by_aldis_splits_are_cold_though_the_log_holds_their_rows(
    citeulike: Dataset, tmp_path: Path
) -> None:
    users = citeulike.splits["cold_item_test"].select(Columns.user).unique().sort(Columns.user).head(40)
    parts = {name: frame.join(users, on=Columns.user, how="semi") for name, frame in citeulike.splits.items()}
    log = citeulike.interactions.join(users, on=Columns.user, how="semi")
    items = citeulike.items.join(log.select(Columns.item).unique(), on=Columns.item, how="semi")
    part = Dataset(citeulike.name, log, items, citeulike.users.join(users, on=Columns.user, how="semi"), splits=parts)
    space = Workspace(tmp_path / "ws")
    stages.ingest(space, part, "ingest-1")
    segments = stages.detect(space, "detect-1", sparse_max=5, head_share=0.2).segments
    cold = set(segments.filter((pl.col(Columns.kind) == "item") & (pl.col(Columns.segment) == "cold"))["entity_id"])
    trained_on = set(parts["warm_emb"][Columns.item])
    # Every item of the log without a training row, the cold splits' items, and nothing the model trains on.
    assert cold == set(items[Columns.item]) - trained_on
    assert cold >= set(parts["cold_item_test"][Columns.item]) and not cold & trained_on
