"""The generation cache: keyed by (model, prompt version, input hash), atomic, and a bad entry is a miss."""

from __future__ import annotations

from pathlib import Path

from augment import GenerationCache, input_hash


def test_round_trip_and_key_parts(tmp_path: Path) -> None:
    cache = GenerationCache(tmp_path)
    digest = input_hash([{"role": "user", "content": "x"}])
    assert cache.get("m", "p@1", digest) is None
    cache.put("m", "p@1", digest, "text", tokens=3)
    assert cache.get("m", "p@1", digest)["value"] == "text"
    assert cache.get("m", "p@2", digest) is None  # another prompt version
    assert cache.get("other", "p@1", digest) is None  # another model
    assert cache.get("m", "p@1", input_hash([{"role": "user", "content": "y"}])) is None
    assert (cache.hits, cache.misses) == (1, 4)
    assert GenerationCache(tmp_path).get("m", "p@1", digest)["tokens"] == 3  # persists across instances
    assert not list(tmp_path.rglob("*.tmp"))


def test_unreadable_entry_is_a_miss(tmp_path: Path) -> None:
    cache = GenerationCache(tmp_path)
    cache.put("m/with:odd chars", "p@1", "abc", 0.25)
    (entry,) = tmp_path.rglob("*.json")
    entry.write_text("{not json", encoding="utf-8")
    assert cache.get("m/with:odd chars", "p@1", "abc") is None


def test_input_hash_is_canonical() -> None:
    assert input_hash({"a": 1, "b": [1, 2]}) == input_hash({"b": [1, 2], "a": 1})
    assert input_hash("é") != input_hash("e")
