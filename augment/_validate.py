"""Checks on generated text before it is stored: length, prompt echo, degenerate repetition, valid UTF-8."""

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


def rejection_reason(text: str, template: PromptTemplate, rules: OutputRules = OutputRules()) -> str | None:
    """Why `text` must not be stored, or None when it passes."""
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
    return None
