"""The model registry: versions exist once their metadata does, one current version per ranker, a promotion log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalog import ModelRegistry, Workspace, WorkspaceError


def _save(registry: ModelRegistry, ranker: str, version: str, *, finished: bool = True) -> Path:
    directory = registry.path(ranker, version)
    directory.mkdir(parents=True)
    (directory / "model.txt").write_text("tree")
    if finished:  # rankers write metadata.json last
        (directory / "metadata.json").write_text(json.dumps({"kind": ranker}))
    return directory


def test_versions_current_promote_and_rollback(tmp_path: Path) -> None:
    registry = Workspace(tmp_path).models
    assert registry.versions() == [] and registry.current("lightgbm") is None
    _save(registry, "lightgbm", "20260101T000000Z-aaaaaa")
    _save(registry, "lightgbm", "20260102T000000Z-bbbbbb")
    _save(registry, "lightgbm", "20260103T000000Z-cccccc", finished=False)  # a save killed half-way
    _save(registry, "deepfm", "20260101T000000Z-dddddd")
    assert [v.version for v in registry.versions("lightgbm")] == ["20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"]
    assert {v.ranker for v in registry.versions()} == {"lightgbm", "deepfm"}

    registry.promote("lightgbm", "20260101T000000Z-aaaaaa", reason="first")
    entry = registry.promote("lightgbm", "20260102T000000Z-bbbbbb", reason="better", run_id="r2")
    assert entry["previous"] == "20260101T000000Z-aaaaaa" and entry["run_id"] == "r2"
    assert registry.current("lightgbm") == "20260102T000000Z-bbbbbb"
    assert registry.current("deepfm") is None  # each ranker has its own current version
    assert [v.current for v in registry.versions("lightgbm")] == [False, True]
    assert registry.previous("lightgbm") == "20260101T000000Z-aaaaaa"
    assert [e["reason"] for e in registry.promotions()] == ["first", "better"]
    # Readable without the metrics store, by another process: a plain JSON file.
    assert ModelRegistry(tmp_path / "models").current("lightgbm") == "20260102T000000Z-bbbbbb"


def test_promoting_what_does_not_exist_changes_nothing(tmp_path: Path) -> None:
    registry = Workspace(tmp_path).models
    _save(registry, "lightgbm", "v1")
    _save(registry, "lightgbm", "v2", finished=False)
    registry.promote("lightgbm", "v1", reason="first")
    for version in ("v2", "v3"):
        with pytest.raises(WorkspaceError, match=r"no saved version .* \(versions: v1\)"):
            registry.promote("lightgbm", version, reason="typo")
    with pytest.raises(WorkspaceError, match="plain directory name"):
        registry.path("lightgbm", "../v1")
    assert registry.current("lightgbm") == "v1" and len(registry.promotions()) == 1


def test_a_corrupt_current_file_is_a_clear_error(tmp_path: Path) -> None:
    registry = Workspace(tmp_path).models
    registry.root.mkdir(parents=True)
    (registry.root / "current.json").write_text("{not json")
    with pytest.raises(WorkspaceError, match=r"not valid JSON.*promote a version"):
        registry.current("lightgbm")
