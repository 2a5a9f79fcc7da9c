"""Column names shared by every stage, so that a rename is one edit."""

from __future__ import annotations


class Columns:
    """Names of the columns in warmstart's tables."""

    user = "user_id"
    item = "item_id"
    ts = "ts"
    value = "value"
    title = "title"
    text = "text"
    categories = "categories"
    attributes = "attributes"
    first_seen = "first_seen"
    released = "released"
    requested_at = "requested_at"  # when a user asks for a list (a replay; serving asks now)
    score = "score"
    rank = "rank"
    segment = "segment"
    kind = "kind"
    n_interactions = "n_interactions"
    metric = "metric"
    k = "k"


class Segments:
    """Segment labels. An entity can be `new` and also one of cold/sparse/tail/head (see detect_segments)."""

    new = "new"
    cold = "cold"
    sparse = "sparse"
    tail = "tail"
    head = "head"
    warm = "warm"
    overall = "overall"
