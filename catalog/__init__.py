"""Data contracts, data-set loaders, the workspace and segment detection, shared by every stage."""

from catalog._columns import Columns, Segments
from catalog._contracts import (
    INTERACTIONS_SCHEMA,
    ITEMS_SCHEMA,
    TIMESTAMP,
    USERS_SCHEMA,
    ConformReport,
    check_references,
    conform_interactions,
    conform_items,
    conform_users,
    with_first_seen,
)
from catalog._loaders import (
    CITEULIKE_SPLITS,
    Dataset,
    check_utf8,
    fetch_movielens_100k,
    load_citeulike,
    load_files,
    load_movielens_100k,
    read_table,
)
from catalog._registry import ModelRegistry, ModelVersion, Tables
from catalog._segments import (
    detect_segments,
    entity_segments,
    popularity_segments,
    segment_counts,
    segment_transitions,
    segments_as_of,
    summarize_segments,
)
from catalog._workspace import Workspace, atomic_write_bytes, new_run_id
from catalog.errors import BackendError, ConfigError, DataError, NotFittedError, WarmstartError, WorkspaceError

__all__ = [
    "CITEULIKE_SPLITS",
    "INTERACTIONS_SCHEMA",
    "ITEMS_SCHEMA",
    "TIMESTAMP",
    "USERS_SCHEMA",
    "BackendError",
    "Columns",
    "ConfigError",
    "ConformReport",
    "DataError",
    "Dataset",
    "ModelRegistry",
    "ModelVersion",
    "NotFittedError",
    "Segments",
    "Tables",
    "WarmstartError",
    "Workspace",
    "WorkspaceError",
    "atomic_write_bytes",
    "check_references",
    "check_utf8",
    "conform_interactions",
    "conform_items",
    "conform_users",
    "detect_segments",
    "entity_segments",
    "fetch_movielens_100k",
    "load_citeulike",
    "load_files",
    "load_movielens_100k",
    "new_run_id",
    "popularity_segments",
    "read_table",
    "segment_counts",
    "segment_transitions",
    "segments_as_of",
    "summarize_segments",
    "with_first_seen",
]
