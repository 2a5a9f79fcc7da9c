"""Descriptions that do not invent (issue 31, item 2): the validator refuses a text that calls the item a wrong kind
of thing or states a year or a person its fields contradict or do not give, and describe_items rejects such a text
with its reason and stores nothing. The parametrised texts are SmolLM2-135M's own, from the samples of
benchmarks/model_descriptions.py (docs/benchmarks.md); the stand-in models' are written here; no language model
runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from augment import (
    ITEM_DESCRIPTION,
    ITEM_DESCRIPTION_GROUNDED,
    Generation,
    GenerationCache,
    ItemFacts,
    Messages,
    describe_items,
    grounding_reason,
    invented_facts,
    neighbour_titles,
    rejection_reason,
    wrong_kinds,
)

FILM_1997 = ItemFacts(kind="film", year=1997, known="Title: Oscar & Lucinda")

# SmolLM2's films that are not films (wrong kind), each with the item's kind and year
WRONG_KIND = [
    (
        "film",
        1996,
        "This book contains a collection of comedies written by a famous American author named John B. Dillon. "
        "It's available at the library, but you can't find it online unless you're looking for a specific title.",
    ),
    (
        "film",
        1997,
        "G.I. Jane is a classic example of a dystopian novel by D.E.D.S., set during World War II. It's a gripping "
        "tale of war with a focus on social commentary, using themes like oppression, rebellion, and the human "
        "condition.",
    ),
    (
        "film",
        1995,
        "The Dream Man is a gripping thriller set in the 1980s by the acclaimed author of the title, which "
        "has been praised as one of the best thrillers ever written.",
    ),
    (
        "film",
        1995,
        "Virtuosity is a science fiction thriller set in a dystopian future where technology has surpassed "
        "human intelligence. It's a must-read for sci-fi fans.",
    ),
    (
        "film",
        1995,
        "Goofy Movie, A - This product contains a fun animated film with humor and lighthearted themes. It "
        "was released in 1995 and has been praised by many fans as a great example of how to make entertaining movies "
        "without using any commercials.",
    ),
    (
        "film",
        1968,
        "The Night of the Living Dead by Alec Whitmore is a horror novel set on a haunted island where the undead "
        "stalk. It's a classic horror tale with elements of the supernatural, but also touches on themes of fate and "
        "destiny.",
    ),
    (
        "article",
        None,
        "This book focuses on the neural mechanisms underlying human behavior and decision-making under uncertainty "
        "using the ultimatum game as a model. It explores how individuals can make rational choices when faced with "
        "limited resources and potential consequences.",
    ),
    # ("Link analysis in national Web domains" with the old prompt, once "this book" was refused)
    (
        "article",
        None,
        "This product offers link analysis to improve your web browser's speed. It includes additional services such "
        "as SEO, analytics, and content marketing tools like Google Analytics.",
    ),
    # (a real book, "Basics of Qualitative Research", in a catalogue of articles: the check's known false alarm)
    (
        "article",
        None,
        "This book focuses on developing grounded theory by using techniques such as inductive reasoning and critical "
        "thinking to create new knowledge from existing research.",
    ),
    # (a film's text, as a CiteULike article's would read if it called the paper a film)
    (
        "article",
        None,
        "The Platoon is a 2015 American drama film directed by John Malkovich and starring Michael B. Jackson as a "
        "retired Marine. It was released on October 3, 1987, and has since been adapted into a Broadway musical.",
    ),
]
# SmolLM2's films with invented facts: a year given as the film's that is not its release year, a credited person
INVENTED = [
    (
        1986,
        "The Platoon is a 2015 American drama film directed by John Malkovich and starring Michael B. Jackson as a "
        "retired Marine. It was released on October 3, 1987, and has since been adapted into a Broadway musical.",
    ),
    (
        1997,
        'The 2003 film "Oscar & Lucinda" was released on October 4th, 1997, starring Oscar Isaac as Lucinda and '
        "starring the iconic actress Lucinda Starr (Dorothy Lennox). It's a romantic drama with a strong focus on the "
        "relationship between a beautiful and talented woman and a handsome and charismatic man.",
    ),
    (
        1995,
        'The 2018 film "Hunted" by the acclaimed director, John C. Reilly, has been praised for its innovative use '
        "of technology and its exploration of social justice themes.",
    ),
    (
        1996,
        "Mondo is a 200-year-old Italian film noir directed by Alessandro Bianchi. It was released in 1996 as a "
        "film with a quiet pace.",
    ),
]
# Texts the validator lets through: right kind, no contradicted year, no credited person (whatever else is wrong
# with them: the validator is conservative, and a hand count is in docs/benchmarks.md)
ACCEPTED = [
    (
        "film",
        1997,
        "The Rainmaker, The is a 1997 drama film about a young woman named Aria who becomes a mother to a "
        "child after her husband's death. It explores themes of love, loss, and the human condition.",
    ),
    (
        "film",
        1993,
        "The Jurassic Park is a film about a prehistoric creature named Zephyrus, which was released in 1993 "
        "as a sci-fi adventure movie. It's a must-have for any science fiction fan.",
    ),
    (
        "film",
        1991,
        'The "Terminator 2: Judgment Day" is a sci-fi thriller set in 2004 that follows a robot named Kyle as he goes '
        "on a mission to save humanity from an impending disaster.",
    ),
    (
        "film",
        1995,
        'The title "Smoke" by the 1990s drama plays on the theme of smoke as a metaphor for life\'s fleeting nature. '
        "It was released in 1995 and has since been adapted into various films across different genres.",
    ),
    (
        "film",
        1996,
        "This documentary features Marlene Dietrich's work as a pioneering voice for women's rights and social "
        "justice. It explores the complexities of her personal life and legacy through the lens of her own "
        "experiences, often using subtle references to her past.",
    ),
    (
        "article",
        None,
        'The title "The neighbor-joining method" focuses on a novel approach to reconstructing phylogenetic trees from '
        "gene expression data. It provides an overview of a previously developed method but does so with cautionary "
        "notes about potential limitations and challenges associated with such methods.",
    ),
    (
        "article",
        None,
        "This article discusses the neural basis of economic decision-making under uncertainty by analyzing the "
        "behavior of neurons in the prefrontal cortex (PFC) during the ultimatum game. This topic has been extensively "
        "researched using neuroeconomics techniques, which have shed light on how brain processes complex "
        "decision-making under uncertainty.",
    ),
]


@pytest.mark.parametrize(("kind", "year", "text"), WRONG_KIND)
def test_a_wrong_kind_of_thing_is_refused(kind: str, year: int | None, text: str) -> None:
    assert wrong_kinds(text, kind)
    assert grounding_reason(text, ItemFacts(kind=kind, year=year)) == "wrong kind of item"
    assert rejection_reason(text, ITEM_DESCRIPTION, facts=ItemFacts(kind=kind, year=year)) == "wrong kind of item"


@pytest.mark.parametrize(("year", "text"), INVENTED)
def test_an_invented_year_or_person_is_refused(year: int, text: str) -> None:
    facts = ItemFacts(kind="film", year=year, known="Title: Hunted, The Oscar & Lucinda Platoon Mondo")
    assert not wrong_kinds(text, "film")
    assert invented_facts(text, facts)
    assert grounding_reason(text, facts) == "invented fact"


def test_what_the_facts_are_and_what_they_give() -> None:
    found = invented_facts(INVENTED[0][1], ItemFacts(kind="film", year=1986))
    assert found == ["person John Malkovich", "person Michael B. Jackson", "year 1987", "year 2015"]
    # a name the fields give is not invented; the right year is not either
    text = "Oscar & Lucinda is a 1997 film starring Oscar Isaac. Fans of period drama will like it."
    assert invented_facts(text, ItemFacts(kind="film", year=1997, known="Title: Oscar & Lucinda")) == [
        "person Oscar Isaac"
    ]
    assert invented_facts(text, ItemFacts(kind="film", year=1997, known="Oscar Isaac")) == []
    assert invented_facts(text, FILM_1997) and not invented_facts(text.replace(" starring Oscar Isaac", ""), FILM_1997)


@pytest.mark.parametrize(("kind", "year", "text"), ACCEPTED)
def test_right_kinds_and_given_years_pass(kind: str, year: int | None, text: str) -> None:
    assert grounding_reason(text, ItemFacts(kind=kind, year=year)) is None


def test_no_facts_or_an_unknown_kind_checks_nothing() -> None:
    text = WRONG_KIND[0][2]
    assert grounding_reason(text, None) is None and rejection_reason(text, ITEM_DESCRIPTION) is None
    assert wrong_kinds(text, "item") == [] and wrong_kinds(text, None) == []


class BookBackend:
    """A stand-in model that calls every film a book on its first (greedy) attempt and a film after."""

    model_name = "book"

    def __init__(self, always: bool = False) -> None:
        self.always, self.seen = always, []  # type: ignore[var-annotated]

    def generate(
        self, prompts: Sequence[Messages], *, max_new_tokens: int, seed: int = 0, temperature: float = 0.0
    ) -> list[Generation]:
        self.seen.extend(prompts)
        book = "This book is a gripping story about a boxer and his trainer, for readers who like sports."
        film = "This film is a gripping story about a boxer and his trainer, for viewers who like sports."
        return [Generation(book if self.always or seed == 0 else film, 20)] * len(prompts)

    def yes_probability(self, prompts: Sequence[Messages]) -> np.ndarray:
        return np.full(len(prompts), np.nan)


FILMS = pl.DataFrame(
    {
        "item_id": ["1", "2"],
        "title": ["Rocky", "Raging Bull"],
        "categories": [["Drama", "Sport"], ["Drama"]],
        "released": [1976, 1980],
        "text": ["Released in 1976.", None],
    }
)


def test_describe_items_rejects_a_wrong_kind_with_its_reason_and_stores_nothing(tmp_path: Path) -> None:
    cache = GenerationCache(tmp_path)
    frame, stats = describe_items(FILMS, BookBackend(always=True), cache, kind="film", show_progress=False)
    assert frame.is_empty() and stats.rejected == 2 and stats.generated == 0
    assert stats.reasons == {"wrong kind of item": 6}  # 3 attempts each
    # a resampled text that is a film is stored, the rejected first attempt counted
    frame, stats = describe_items(FILMS, BookBackend(), cache, kind="film", show_progress=False)
    assert frame["description"].str.starts_with("This film").all() and stats.reasons == {"wrong kind of item": 2}
    assert frame["prompt_version"].to_list() == [ITEM_DESCRIPTION_GROUNDED.id] * 2 and stats.rejected == 0


def test_a_cached_text_is_checked_again(tmp_path: Path) -> None:
    cache = GenerationCache(tmp_path)
    stored, _ = describe_items(
        FILMS, BookBackend(always=True), cache, kind="film", check_facts=False, show_progress=False
    )
    assert stored.height == 2  # the check off: the book is stored and cached
    frame, stats = describe_items(FILMS, BookBackend(always=True), cache, kind="film", show_progress=False)
    assert frame.is_empty() and stats.cached == 0 and stats.rejected == 2


def test_the_grounded_prompt_names_the_kind_and_every_field(tmp_path: Path) -> None:
    backend = BookBackend()
    neighbours = pl.DataFrame({"item_id": ["1"], "titles": [["Rocky II", "Hoosiers"]]})
    describe_items(FILMS, backend, GenerationCache(tmp_path), kind="film", neighbours=neighbours, show_progress=False)
    content = backend.seen[0][1]["content"]
    assert content.startswith(
        "<data>\nKind: film\nTitle: Rocky\nCategories: Drama, Sport\nReleased: 1976\nDetails: Released in 1976.\n"
        "Similar films:\n- Rocky II\n- Hoosiers\n</data>"
    )
    assert "this film" in content and "It is a film: call it a film" in content and "{kind}" not in content
    second = backend.seen[1][1]["content"]
    assert "Similar films" not in second and "Details" not in second and "Released: 1980" in second
    article = ITEM_DESCRIPTION_GROUNDED.for_kind("article").instruction
    assert "It is an article: call it an article" in article and "other articles" in article
    # the plain prompt stays the old one (the benchmark's "before"), with the kind for its validator only
    plain, _ = describe_items(FILMS, backend, GenerationCache(tmp_path), template=ITEM_DESCRIPTION, kind="film")
    assert plain["prompt_version"].to_list() == [ITEM_DESCRIPTION.id] * 2


def test_neighbour_titles_skip_the_item_its_twins_and_repeats() -> None:
    warm = pl.DataFrame({"item_id": ["a", "b", "c", "d", "e"], "title": ["Heat", "Heat", "Ronin", "Ronin", "Up"]})
    vectors = np.array([[1, 0], [1, 0.01], [1, 0.1], [1, 0.11], [0, 1]], dtype=np.float32)
    found = neighbour_titles(["a", "z"], vectors[[0, 4]], warm, vectors, k=2, target_titles=["Heat", "Zed"])
    assert found.rows() == [("a", ["Ronin", "Up"]), ("z", ["Up", "Ronin"])]
