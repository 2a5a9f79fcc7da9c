"""Checks on generated text before it is stored: length, prompt echo, degenerate repetition, valid UTF-8, and,
given the item's fields (`ItemFacts`), a description that calls the item the wrong kind of thing (a film "a book")
or states a fact the fields contradict or do not give (a release year other than the item's, a credited person)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from augment._prompts import PromptTemplate

_WORD = re.compile(r"\w+", re.UNICODE)
_CHAT_MARKERS = ("<|im_start|>", "<|im_end|>", "<data>", "</data>", "<|endoftext|>", "<start_of_turn>", "<end_of_turn>")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


@dataclass(frozen=True)
class OutputRules:
    """Bounds on a generated text (characters after trimming)."""

    min_chars: int = 40
    max_chars: int = 1200
    min_words: int = 6
    min_distinct_trigrams: float = 0.6  # distinct / total word 3-grams; lower means it loops
    echo_words: int = 8  # a run of this many instruction words copied verbatim is an echo


def tidy(text: str) -> str:
    """Trim whitespace, and drop a trailing unfinished sentence cut off by the token limit."""
    text = text.strip()
    ends = [match.end() for match in _SENTENCE_END.finditer(text)]
    if ends and ends[-1] < len(text):
        text = text[: ends[-1]]
    return text.strip()


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def rejection_reason(
    text: str, template: PromptTemplate, rules: OutputRules = OutputRules(), facts: ItemFacts | None = None
) -> str | None:
    """Why `text` must not be stored, or None when it passes (with `facts`, also `grounding_reason`)."""
    try:
        text.encode("utf-8", errors="strict")
    except UnicodeEncodeError:
        return "invalid UTF-8"
    if any(not (ch.isprintable() or ch in "\n\t") for ch in text):
        return "control characters"
    if not text.strip():
        return "empty"
    if len(text) < rules.min_chars:
        return f"shorter than {rules.min_chars} characters"
    if len(text) > rules.max_chars:
        return f"longer than {rules.max_chars} characters"
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < rules.min_words:
        return f"fewer than {rules.min_words} words"
    if any(marker in text for marker in _CHAT_MARKERS):
        return "prompt echo (chat or data markers)"
    instruction = [w.lower() for w in _WORD.findall(f"{template.system} {template.instruction}")]
    echoed = set(_ngrams(instruction, rules.echo_words)) & set(_ngrams(words, rules.echo_words))
    if echoed:
        return "prompt echo (copies the instructions)"
    trigrams = _ngrams(words, 3)
    if trigrams and len(set(trigrams)) / len(trigrams) < rules.min_distinct_trigrams:
        return "degenerate repetition"
    return grounding_reason(text, facts)


# ------------------------------------------------------------------------------------------ grounding in the fields


@dataclass(frozen=True)
class ItemFacts:
    """What an item's own fields say, against which a description is checked: the `kind` of thing the catalogue
    holds ("film", "article"; None or "item": no kind check), its release `year` (None: no year check), and
    `known`, the fields' own text (title, categories, details, neighbours' titles): a name found there is given,
    not invented."""

    kind: str | None = None
    year: int | None = None
    known: str = ""


# What a description may call an item of each kind, and what it must not: a film is not "a book", an article is not
# "a movie". A wrong kind counts where the text names it as what the item is ("this novel", anywhere), or where its
# first sentence names it ("... is a classic example of a dystopian novel") and no right kind ("a film based on a
# novel" passes). Words with a common innocent sense are left out ("game", "play", "study": "a game of cat and
# mouse"). "Product" is wrong for both: "the product of two matrices" in an article's first sentence would be refused
# where that sentence names no right kind (with the grounded prompt it opens "This article"). An article is not
# "this book" either: SmolLM2 calls most papers one (15 of 30 read by hand); the few books a catalogue of articles
# holds lose that text, not their item (a regenerated text that calls them an article passes).
KIND_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "film": {
        "right": (
            "film",
            "films",
            "movie",
            "movies",
            "picture",
            "documentary",
            "cartoon",
            "animation",
            "comedy",
            "drama",
            "thriller",
            "western",
            "musical",
            "feature",
            "series",
            "show",
            "sequel",
            "remake",
        ),
        "wrong": (
            "book",
            "books",
            "novel",
            "novels",
            "novella",
            "article",
            "paper",
            "album",
            "song",
            "video game",
            "artifact",
            "artefact",
            "magazine",
            "journal",
            "podcast",
            "app",
            "software",
            "textbook",
            "poem",
            "painting",
            "sculpture",
            "website",
            "blog",
            "memoir",
            "biography",
            "anthology",
            "collection of stories",
            "short story",
            "board game",
            "toy",
            "doll",
            "product",
            "piece of art",
            "work of art",
        ),
        # a film has no author or readers: "by the acclaimed author", "a must-read"
        "cues": ("must-read", "must read", "readers", "reader", "author", "authors", "authored"),
    },
    "article": {
        "right": (
            "paper",
            "papers",
            "article",
            "study",
            "review",
            "survey",
            "chapter",
            "thesis",
            "report",
            "work",
            "research",
            "publication",
            "text",
            "essay",
            "tutorial",
            "overview",
            "analysis",
            "volume",
            "edition",
            "proceedings",
            "note",
            "letter",
            "handbook",
            "guide",
            "manual",
        ),
        "wrong": (
            "book",
            "books",
            "textbook",
            "product",
            "film",
            "movie",
            "documentary",
            "album",
            "song",
            "novel",
            "video game",
            "toy",
            "cartoon",
            "tv show",
            "tv series",
            "sitcom",
            "poem",
            "painting",
            "podcast",
            "musical",
        ),
        # an article is not directed, acted or screened
        "cues": ("directed by", "starring", "box office", "moviegoers", "cinematography", "screenplay"),
    },
}
_ANY_KIND = ("item", "product", *(word for words in KIND_WORDS.values() for word in words["right"]))
_NAMING = r"\b(?:this|the|a|an|is|its)\s+(?:[\w'-]+\s+){{0,2}}({})\b"
_THIS = r"\b(?:this|that)\s+(?:[\w'-]+\s+){{0,2}}({})\b"
# (a sentence ends after a lower-case letter, digit or closing mark: not at "G.I." or "D.C.")
_FIRST_SENTENCE = re.compile(r"^.*?[a-z0-9)\"'][.!?](?=\s|$)", re.DOTALL)
_YEAR = r"(1[6-9]\d\d|20\d\d)"
# A year given as the item's own: "a 2015 American drama film", "released in 2003", "released on October 4th, 2003",
# "published in 1987", "(2003)", "in 2003, ... was released"; other years ("set in 1944", "a 1920s town") are not read.
_ITEM_YEAR_AS_KIND = r"\b(?:a|an|the|this|its)\s+{year}\s+(?:[\w'-]+\s+){{0,3}}?(?:{kinds})\b"
_ITEM_YEAR = (
    re.compile(
        rf"\b(?:released|premiered|published|came out|debuted|opened|made|filmed|produced|written)\s+"
        rf"(?:(?:in|on|around|back in)\s+)?(?:[A-Za-z]+\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+)?(?:of\s+)?{_YEAR}\b",
        re.IGNORECASE,
    ),
    re.compile(rf"\(\s*{_YEAR}\s*\)"),
)
# A person credited with the item: "directed by John Malkovich", "by the acclaimed director, John C. Reilly",
# "starring Oscar Isaac", "a cast of actors including David Niven", "conducted by Dr. Maria Lopez", "by Dr. John B.S.
# Smith". A name is two or more capitalised words (initials allowed), after an optional "Dr." or "Prof.".
_PERSON = r"([A-Z][a-z'\u2019-]+(?:\s+(?:[A-Z]\.\s*)*(?:de |van |von |di )?[A-Z][a-z'\u2019-]+)+)"
_HONORIFIC = r"(?:Dr|Prof|Professor|Sir)\.?\s+"
_NAME = rf"(?:{_HONORIFIC})?{_PERSON}"
_CREDIT = re.compile(
    r"\b(?i:(?:directed|written|co-written|produced|created|authored|edited|composed|narrated|played|portrayed|"
    r"voiced|developed|proposed|introduced|invented|illustrated|performed|conducted|led|published|founded|designed)"
    r"\s+(?:[\w-]+\s+){0,3}?by|starring|stars|co-stars|featuring|director|actor|actress|author|filmmaker|"
    r"screenwriter|novelist|(?:cast|actors)\s+(?:[\w-]+\s+){0,4}?including)"
    rf",?\s+(?:(?:[a-z][\w-]*|[A-Z][a-z]+ian|American|British|French|English),?\s+){{0,3}}{_NAME}"
    rf"|\bby\s+{_HONORIFIC}{_PERSON}"
)
# "novel" as an adjective is not a kind: "a novel approach", "a novel method for reconstructing trees"
_ADJECTIVE_NOVEL = re.compile(r"\s+(?!by\b|about\b|set\b|that\b|which\b|of\b|in\b|written\b|is\b|was\b)[a-z]")


def _named(text: str, words: tuple[str, ...], naming: str) -> set[str]:
    pattern = re.compile(naming.format("|".join(re.escape(word) for word in words)), re.IGNORECASE)
    return {
        match.group(1).lower()
        for match in pattern.finditer(text)
        if not (match.group(1).lower() == "novel" and _ADJECTIVE_NOVEL.match(text, match.end()))
    }


def wrong_kinds(text: str, kind: str | None) -> list[str]:
    """The kinds of thing, other than `kind`, that `text` calls its item ("this novel" for a film), and the cues
    that it takes the item for one ("by the acclaimed author" for a film); [] for a kind without a word list."""
    words = KIND_WORDS.get(kind or "")
    if words is None:
        return []
    found = _named(text, words["wrong"], _THIS)
    match = _FIRST_SENTENCE.match(text)
    first = match.group(0) if match else text
    if not _named(first, words["right"], _NAMING):
        found |= _named(first, words["wrong"], _NAMING)
    lowered = text.lower()
    found |= {cue for cue in words["cues"] if re.search(rf"\b{re.escape(cue)}\b", lowered)}
    return sorted(found)


def invented_facts(text: str, facts: ItemFacts) -> list[str]:
    """Facts `text` states that the item's fields contradict or do not give: a year given as the item's own that
    is not its release year, and a person credited with it whom no field names."""
    found = []
    if facts.year is not None:
        right = KIND_WORDS[facts.kind]["right"] if facts.kind in KIND_WORDS else _ANY_KIND
        kinds = "|".join(re.escape(word) for word in right)
        as_kind = re.compile(_ITEM_YEAR_AS_KIND.format(year=_YEAR, kinds=kinds), re.IGNORECASE)
        for pattern in (as_kind, *_ITEM_YEAR):
            found += [f"year {m.group(1)}" for m in pattern.finditer(text) if int(m.group(1)) != facts.year]
    known = facts.known.lower()
    names = [m.group(1) or m.group(2) for m in _CREDIT.finditer(text)]
    found += [f"person {name}" for name in names if name.lower() not in known]
    return sorted(set(found))


def grounding_reason(text: str, facts: ItemFacts | None) -> str | None:
    """Why `text` contradicts the item's fields (`facts`), or None: "wrong kind of item" or "invented fact"."""
    if facts is None:
        return None
    if wrong_kinds(text, facts.kind):
        return "wrong kind of item"
    if invented_facts(text, facts):
        return "invented fact"
    return None
