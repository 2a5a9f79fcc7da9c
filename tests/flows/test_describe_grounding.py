"""The describe step's grounding (issue 31, item 2): the kind of thing a workspace's catalogue holds, from the data
set it ingested, and each item's nearest warm neighbours from its item embeddings. No language model runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from augment import Generation, Messages
from catalog import Columns, Tables, Workspace
from flows.augmentation import describe_step, item_kind, warm_neighbours


def _workspace(root: Path, dataset: str) -> Workspace:
    space = Workspace(root)
    items = pl.DataFrame(
        {
            Columns.item: ["new", "w1", "w2", "w3", "twin"],
            Columns.title: ["Heat", "Ronin", "Up", "Thief", "Heat"],
            Columns.categories: [["Crime"], ["Action"], ["Animation"], ["Crime"], ["Crime"]],
            Columns.released: [1995, 1998, 2009, 1981, 1995],
        }
    )
    interactions = pl.DataFrame({Columns.user: ["u", "u", "u", "u"], Columns.item: ["w1", "w2", "w3", "twin"]})
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.8, 0.3], [1, 0]], dtype=np.float32)
    embeddings = pl.DataFrame(
        {Columns.item: items[Columns.item], "embedding": vectors},
        schema={Columns.item: pl.String, "embedding": pl.Array(pl.Float32, 2)},
    )
    for name, frame in ((Tables.items, items), (Tables.interactions, interactions)):
        space.write(name, frame, run_id="r", source="test")
    space.write(Tables.item_embeddings, embeddings, run_id="r", source="test")
    space.write(
        Tables.segments,
        pl.DataFrame(
            {
                Columns.kind: ["item"],
                "entity_id": ["new"],
                Columns.segment: ["cold"],
                "is_new": [True],
                Columns.n_interactions: [0],
            }
        ),
        run_id="r",
        source="test",
    )
    space.update_state(dataset=dataset)
    return space


def test_the_kind_comes_from_the_ingested_data_set(tmp_path: Path) -> None:
    assert item_kind(_workspace(tmp_path / "a", "ml-100k")) == "film"
    assert item_kind(_workspace(tmp_path / "b", "citeulike-a")) == "article"
    assert item_kind(_workspace(tmp_path / "c", "workspace")) == "item"  # files of unknown content
    space = _workspace(tmp_path / "d", "workspace")
    space.update_state(item_kind="podcast")
    assert item_kind(space) == "podcast"


def test_neighbours_are_warm_items_nearest_first(tmp_path: Path) -> None:
    space = _workspace(tmp_path, "ml-100k")
    found = warm_neighbours(space, space.read(Tables.items).filter(pl.col(Columns.item) == "new"), k=2)
    assert found is not None and found.rows() == [("new", ["Ronin", "Thief"])]  # not itself, nor its twin "Heat"
    assert warm_neighbours(Workspace(tmp_path / "empty"), space.read(Tables.items)) is None


class Recorder:
    model_name = "recorder"

    def __init__(self, text: str) -> None:
        self.text, self.seen = text, []  # type: ignore[var-annotated]

    def generate(
        self, prompts: Sequence[Messages], *, max_new_tokens: int, seed: int = 0, temperature: float = 0.0
    ) -> list[Generation]:
        self.seen.extend(prompts)
        return [Generation(self.text, 20)] * len(prompts)

    def yes_probability(self, prompts: Sequence[Messages]) -> np.ndarray:
        return np.full(len(prompts), np.nan)


def test_describe_step_grounds_the_prompt_and_stores_no_refused_text(tmp_path: Path) -> None:
    space = _workspace(tmp_path / "ws", "ml-100k")
    book = Recorder("This novel follows a thief and a detective through Los Angeles, for readers of crime.")
    report = describe_step(space, book, cache_dir=tmp_path / "cache", run_id="r1", segments=["cold"])
    assert report.stats.rejected == 1 and report.stats.reasons == {"wrong kind of item": 3}
    assert not space.exists(Tables.item_descriptions) or space.read(Tables.item_descriptions).is_empty()
    content = book.seen[0][1]["content"]
    assert "Kind: film\nTitle: Heat\nCategories: Crime\nReleased: 1995\nSimilar films:\n- Ronin\n- Thief" in content
    film = Recorder("This film follows a thief and a detective through Los Angeles, for fans of crime.")
    report = describe_step(space, film, cache_dir=tmp_path / "cache", run_id="r2", segments=["cold"])
    table = space.read(Tables.item_descriptions)
    assert report.stats.generated == 1 and table["description"].to_list() == [film.text]
    assert space.provenance(Tables.item_descriptions)["parameters"]["prompt"] == "item_description_grounded@2"
