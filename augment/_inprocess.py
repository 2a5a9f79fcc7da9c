"""The base of the in-process backends (llama.cpp and transformers): chat template, answer tokens, and the plan
of shared prefixes that lets a judge run each user's history once for all of that user's candidates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from augment._backend import NO_WORDS, YES_WORDS
from augment._prompts import Messages
from catalog import ConfigError

# Tokens that end a chat turn, besides the tokenizer's end of sequence: Gemma ends its turns with <end_of_turn> and
# keeps <eos> for the end of a document (SmolLM2's end of sequence is its end of turn, <|im_end|>).
END_OF_TURN = ("<end_of_turn>", "<|im_end|>")


class InProcessBackend:
    """What the in-process backends share: the chat template and tokenizer (a transformers tokenizer, so that
    every runtime reads exactly the same prompt tokens), the answer tokens, and the judge's plan of shared
    prefixes. Subclasses set `tokenizer`, `batch_size`, `reuse_prefix` and `_name`, then call `_init_answers`."""

    tokenizer: Any
    batch_size: int
    reuse_prefix: bool
    _name: str
    prompt_tokens: int  # tokens actually run through the model by yes_probability (after prefix reuse)

    @property
    def model_name(self) -> str:
        return self._name

    def _init_answers(self) -> None:
        self._yes_ids = self._answer_ids(YES_WORDS)
        self._no_ids = self._answer_ids(NO_WORDS)
        self._stop_ids = self._end_ids()
        self.prompt_tokens = 0

    def _end_ids(self) -> frozenset[int]:
        """The tokens that end a generation: end of sequence, and the chat template's end of turn."""
        special = set(self.tokenizer.all_special_tokens) | {
            token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special
        }
        ends = {self.tokenizer.eos_token_id} | {
            self.tokenizer.convert_tokens_to_ids(token) for token in END_OF_TURN if token in special
        }
        return frozenset(int(token) for token in ends if token is not None)

    def _answer_ids(self, words: Sequence[str]) -> list[int]:
        """Single-token spellings of the answer words (yes, Yes, YES, with or without a leading space)."""
        ids: set[int] = set()
        for word in words:
            for form in (word, word.capitalize(), word.upper()):
                for spelled in (form, f" {form}"):
                    tokens = self.tokenizer.encode(spelled, add_special_tokens=False)
                    if len(tokens) == 1:
                        ids.add(tokens[0])
        if not ids:
            raise ConfigError(f"the tokenizer of {self._name} has no single token for {words}.")
        return sorted(ids)

    def _render(self, prompt: Messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def count_tokens(self, prompts: Sequence[Messages], *, shared_prefix: bool = False) -> int:
        """Tokens the model reads for `prompts`: whole, or as `yes_probability` runs them (`shared_prefix`)."""
        rendered = [self._render(prompt) for prompt in prompts]
        if not shared_prefix or not rendered:
            return sum(len(row) for row in rendered)
        common, groups = self._plan(rendered)
        return common + sum(
            (shared - common if len(members) > 1 else 0) + sum(len(rendered[m]) - shared for m in members)
            for shared, members in groups
        )

    def _generation_prefix(self, rendered: Sequence[list[int]]) -> int:
        """Tokens every prompt of a `generate` call shares, run once (0 without `reuse_prefix`); each prompt
        keeps at least one token of its own to run."""
        common = min(_common_length(rendered[0], row) for row in rendered) if self.reuse_prefix else 0
        return min(common, min(len(row) for row in rendered) - 1)

    def _plan(self, rendered: Sequence[list[int]]) -> tuple[int, list[tuple[int, list[int]]]]:
        """(length of the prefix every prompt shares, groups as (shared prefix length, member indices)).

        Prompts are sorted by their tokens, so prompts sharing a prefix are adjacent whatever order they came
        in; a prompt joins the group before it when that runs fewer tokens than running it on its own (the
        group's shared prefix may shrink). A group of one is run on the common prefix alone.
        """
        order = sorted(range(len(rendered)), key=lambda i: rendered[i])
        shortest = min(len(row) for row in rendered)
        common = min(_common_length(rendered[order[0]], rendered[order[-1]]), shortest - 1)
        if not self.reuse_prefix or common == 0:  # (chat templates always share their first token)
            return 0, [(0, [index]) for index in order]
        groups: list[tuple[int, list[int]]] = []

        def cost(shared: int, members: list[int]) -> int:  # tokens run after the common prefix
            if len(members) == 1:
                return len(rendered[members[0]]) - common
            return shared - common + sum(len(rendered[m]) - shared for m in members)

        for index in order:
            row = rendered[index]
            if groups:
                shared, members = groups[-1]
                joined = min(_common_length(rendered[members[-1]], row), shared, len(row) - 1)
                if cost(joined, [*members, index]) < cost(shared, members) + len(row) - common:
                    groups[-1] = (joined, [*members, index])
                    continue
            groups.append((len(row) - 1, [index]))
        # (a group shares more than the common prefix: joining on the common prefix alone saves nothing)
        return common, [(shared if len(members) > 1 else common, members) for shared, members in groups]


def _common_length(first: Sequence[int], second: Sequence[int]) -> int:
    """Length of the longest common prefix of two token rows."""
    limit = min(len(first), len(second))
    return next((i for i in range(limit) if first[i] != second[i]), limit)
