"""What augmentation needs of a language model: the `Backend` protocol and the `Generation` it returns.

Three backends implement it: the local SmolLM2-135M-Instruct run in-process by llama.cpp (`augment._llamacpp`,
the default) or by transformers (`augment._local`: the fp32 reference, bf16, GPUs, fine-tuning), and any
OpenAI-compatible HTTP server (`augment._http`: vLLM, Ollama, TGI, llama.cpp server). All take chat messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from augment._prompts import Messages

YES_WORDS = ("yes",)
NO_WORDS = ("no",)


@dataclass(frozen=True)
class Generation:
    """One generated text and the number of new tokens it took."""

    text: str
    tokens: int


@runtime_checkable
class Backend(Protocol):
    """What augmentation needs from a language model."""

    @property
    def model_name(self) -> str:
        """Names the model in provenance and cache keys."""
        ...

    def generate(
        self, prompts: Sequence[Messages], *, max_new_tokens: int, seed: int = 0, temperature: float = 0.0
    ) -> list[Generation]:
        """One completion per chat prompt; greedy when `temperature` is 0."""
        ...

    def yes_probability(self, prompts: Sequence[Messages]) -> np.ndarray:
        """P(yes) / (P(yes) + P(no)) of each prompt's first answer token, read from the next-token distribution;
        NaN where the answer is unknown (neither yes nor no among the tokens the backend sees)."""
        ...
