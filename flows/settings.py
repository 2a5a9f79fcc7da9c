"""Settings of the entry layer, read from the environment (prefix WARMSTART_) only when asked."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WarmstartSettings(BaseSettings):
    """Where warmstart keeps its data and how it detects segments."""

    model_config = SettingsConfigDict(env_prefix="WARMSTART_", extra="forbid")

    workspace: Path = Field(Path("workspace"), description="Directory of the Parquet tables and run state.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "warmstart",
        description="Cache for fetched data sets (MovieLens-100K) and converted models.",
    )
    sparse_max: int = Field(5, ge=0, description="Entities with 1..sparse_max interactions are sparse.")
    head_share: float = Field(
        0.8, gt=0, le=1, description="Share of interactions held by the head (the most popular entities)."
    )
    ranker: Literal["lightgbm", "deepfm"] = Field(
        "lightgbm", description="Ranker that evaluate and retrain train unless --ranker says otherwise."
    )
