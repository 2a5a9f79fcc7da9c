"""SmolLM2 (or any causal LM checkpoint) run in-process by transformers: the fp32 reference, bf16, GPUs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from augment._backend import Generation
from augment._inprocess import InProcessBackend
from augment._models import convert_smollm2, smollm2_name
from augment._prompts import Messages
from catalog import ConfigError

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
# How far bf16's P(yes) may stray from fp32's: bf16 keeps 8 bits of mantissa, and 30 layers of rounding move the
# yes/no logits by a few hundredths (up to 0.046 on 64 judge pairs, 16 of them over 0.02, measured by
# benchmarks/augment_speed.py --precisions fp32,bf16; docs/benchmarks.md), so a bound of 0.02 would fail.
BF16_TOLERANCE = 0.05


@dataclass
class _Prefix:
    """Key/value cache of a left-padded batch of token rows: its attention mask and each row's real length."""

    cache: Any  # transformers DynamicCache, [batch, heads, width, head_dim] per layer
    mask: Any  # [batch, width], 0 where a row is padded
    lengths: Any  # [batch], real tokens per row (the next token's position)

    def select(self, rows: Sequence[int]) -> _Prefix:
        """A new prefix of the chosen rows (repeats allowed): fresh tensors, so extending it leaves this one intact."""
        import torch
        from transformers import DynamicCache

        index = torch.tensor(list(rows))
        on_device = index.to(self.cache.layers[0].keys.device)
        layers = [(layer.keys[on_device], layer.values[on_device]) for layer in self.cache.layers]
        return _Prefix(DynamicCache(ddp_cache_data=layers), self.mask[index], self.lengths[index])


class LocalBackend(InProcessBackend):
    """A causal LM run in-process by transformers (by default the converted SmolLM2-135M-Instruct on the CPU).

    `precision` picks the arithmetic: fp32 (the reference) or bf16 weights and activations (fast on CPUs with
    AVX-512 BF16 or AMX, and on GPUs). Dynamic int8 quantisation (torch.ao) was measured and left out: it moved
    P(yes) by up to 0.55 (docs/benchmarks.md). Attention is PyTorch's SDPA; `device` "auto" takes a CUDA GPU
    when there is one.

    Batches are left-padded and sorted by length; greedy decoding is deterministic, sampling is seeded; the
    prefix all prompts of a `generate` call share runs once (`reuse_prefix`).
    `yes_probability` sorts the prompts so that those sharing a prefix are adjacent, computes the prefix all
    prompts share once, then each group's shared part (a user's history) once per group, and runs every
    candidate of a group in batches over that cache, reading only the last position's logits
    (`reuse_prefix`; off, each prompt runs whole).
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        name: str | None = None,
        batch_size: int = 16,
        repetition_penalty: float = 1.1,
        threads: int | None = None,
        reuse_prefix: bool = True,
        precision: Precision = "fp32",
        device: str = "auto",
    ) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (Path(model_dir) / "config.json").is_file():
            raise ConfigError(f"{model_dir} holds no transformers checkpoint (config.json); convert one first.")
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown LLM precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
        if threads:
            torch.set_num_threads(threads)
        self.model_dir = Path(model_dir)
        self._name = name or self.model_dir.name
        self.batch_size = batch_size
        self.repetition_penalty = repetition_penalty
        self.reuse_prefix = reuse_prefix
        self.precision = precision
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=dtype, attn_implementation="sdpa", local_files_only=True
        )
        # (moved only off the CPU: `.to` on a model another thread is still loading meets meta tensors)
        self.model = (model if self.device == "cpu" else model.to(self.device)).eval()
        self._init_answers()

    @classmethod
    def smollm2(cls, cache_dir: Path, *, precision: Precision = "fp32", **options: Any) -> LocalBackend:
        """The default local model, converted into `cache_dir` on first use."""
        return cls(convert_smollm2(cache_dir), name=smollm2_name(precision), precision=precision, **options)

    def _left_padded(self, rows: Sequence[list[int]]) -> tuple[Any, Any]:
        import torch

        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        return ids, mask

    def generate(
        self, prompts: Sequence[Messages], *, max_new_tokens: int, seed: int = 0, temperature: float = 0.0
    ) -> list[Generation]:
        import torch

        rendered = [self._render(prompt) for prompt in prompts]
        results: list[Generation | None] = [None] * len(rendered)
        if not rendered:
            return []
        # the prefix every prompt shares (system prompt, the data block's opening) runs once, as a cache that
        # each batch continues from; the rest of each prompt is left-padded after it
        common = self._generation_prefix(rendered)
        base = self._extend([rendered[0][:common]], None, count=False)[1] if common > 0 else None
        order = np.argsort([len(row) for row in rendered], kind="stable")
        eos = self.tokenizer.eos_token_id  # the chat template's end of turn (<|im_end|>): generation stops there
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            ids, mask = self._left_padded([rendered[i][common:] for i in chosen])
            cache = None
            if base is not None:
                cache = base.select([0] * len(chosen)).cache
                ids = torch.cat([torch.tensor([rendered[0][:common]]).expand(len(chosen), -1), ids], dim=1)
                mask = torch.cat([torch.ones(len(chosen), common, dtype=mask.dtype), mask], dim=1)
            torch.manual_seed(seed)
            sampling = {"temperature": temperature, "top_p": 0.95} if temperature > 0 else {}
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),  # positions follow the mask: pads take none
                    cache=cache,
                    max_new_tokens=max_new_tokens,
                    repetition_penalty=self.repetition_penalty,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=eos,
                    do_sample=temperature > 0,
                    **sampling,
                )
            for row, index in zip(output[:, ids.shape[1] :].tolist(), chosen, strict=True):
                length = row.index(eos) + 1 if eos in row else len(row)
                text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
                results[int(index)] = Generation(text=text, tokens=length)
        return [result for result in results if result is not None]

    def _answer_margin(self, logits: Any) -> Any:
        """log P(yes) - log P(no) of each row of next-token logits (the softmax's normaliser cancels)."""
        import torch

        logits = logits.float()
        return torch.logsumexp(logits[:, self._yes_ids], dim=-1) - torch.logsumexp(logits[:, self._no_ids], dim=-1)

    def _answer_probability(self, logits: Any) -> np.ndarray:
        import torch

        return torch.sigmoid(self._answer_margin(logits)).cpu().numpy().astype(np.float64)

    def next_token_logprobs(self, prompts: Sequence[Messages], top: int) -> list[list[tuple[str, float]]]:
        """The `top` most likely first tokens of each answer with their log-probabilities (as servers report)."""
        import torch

        rendered = [self._render(prompt) for prompt in prompts]
        logits, _ = self._extend(rendered, None)
        values, indices = torch.log_softmax(logits.float(), dim=-1).topk(top, dim=-1)
        return [
            [(self.tokenizer.decode([token]), float(value)) for token, value in zip(row_i, row_v, strict=True)]
            for row_i, row_v in zip(indices.tolist(), values.tolist(), strict=True)
        ]

    def _extend(
        self, rows: Sequence[list[int]], prefix: _Prefix | None, *, count: bool = True, states: bool = False
    ) -> tuple[Any, _Prefix]:
        """Run left-padded `rows` after `prefix` (one prefix row per row; consumed): the next-token logits after
        each row (or, with `states`, the final hidden state the logits are read from), computed at the last
        position only, and the key/value cache of prefix + rows."""
        import torch

        ids, mask = self._left_padded(rows)
        if prefix is None:
            past_mask, past_lengths, cache = mask[:, :0], torch.zeros(len(rows), dtype=torch.long), None
        else:
            past_mask, past_lengths, cache = prefix.mask, prefix.lengths, prefix.cache
        # pads sit between the prefix and the row (or at the start): masked out, their positions do not matter
        positions = past_lengths[:, None] + (mask.cumsum(-1) - 1).clamp(min=0)
        full_mask = torch.cat([past_mask, mask], dim=1)
        with torch.inference_mode():
            output = self.model(
                input_ids=ids.to(self.device),
                attention_mask=full_mask.to(self.device),
                position_ids=positions.to(self.device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                output_hidden_states=states,
            )
        self.prompt_tokens += int(mask.sum()) if count else 0
        last = output.hidden_states[-1][:, -1, :] if states else output.logits[:, -1, :]
        return last, _Prefix(output.cache, full_mask, past_lengths + mask.sum(-1))

    def yes_probability(self, prompts: Sequence[Messages]) -> np.ndarray:
        return self._read_answers(prompts, lambda logits: self._answer_probability(logits)[:, None], states=False)[:, 0]

    def answer_states(self, prompts: Sequence[Messages]) -> tuple[np.ndarray, np.ndarray]:
        """(margin, state) of each prompt: the answer's log-odds log P(yes) - log P(no), and the final hidden
        state (after the last norm) at the answer position that the next-token logits are read from.

        A judge tuned on its output layer alone (`augment.experimental.finetune_judge`, method "head") learns from
        these: its margin is the base margin plus a linear function of the state, so one pass serves both judges.
        """
        import torch

        head = self.model.get_output_embeddings()

        def read(states: Any) -> np.ndarray:
            with torch.inference_mode():
                margin = self._answer_margin(head(states))
            return torch.cat([margin[:, None], states.float()], dim=1).cpu().numpy().astype(np.float64)

        joined = self._read_answers(prompts, read, states=True)
        width = self.model.config.hidden_size + 1
        joined = joined.reshape(len(prompts), width)
        return joined[:, 0], joined[:, 1:]

    def _read_answers(self, prompts: Sequence[Messages], read: Any, *, states: bool) -> np.ndarray:
        """`read` (last-position logits, or hidden states with `states`, to a [batch, width] array) of every
        prompt, in prompt order, computed over shared prefixes (see the class docstring)."""
        rendered = [self._render(prompt) for prompt in prompts]
        rows: list[np.ndarray | None] = [None] * len(rendered)
        if not rendered:
            return np.zeros((0, 1), dtype=np.float64)
        common, groups = self._plan(rendered)
        base = self._extend([rendered[0][:common]], None)[1] if common else None

        def score(members: list[int], suffixes: list[list[int]], prefix: _Prefix | None, at: list[int]) -> None:
            """Candidates in batches packed by suffix length, each over its row of `prefix`."""
            order = sorted(range(len(members)), key=lambda k: len(suffixes[k]))
            for start in range(0, len(order), self.batch_size):
                chosen = order[start : start + self.batch_size]
                past = prefix.select([at[k] for k in chosen]) if prefix is not None else None
                last, _ = self._extend([suffixes[k] for k in chosen], past, states=states)
                for k, row in zip(chosen, read(last), strict=True):
                    rows[members[k]] = row

        singles = [members[0] for shared, members in groups if len(members) == 1]
        if singles:
            score(singles, [rendered[i][common:] for i in singles], base, [0] * len(singles))
        shared_groups = [group for group in groups if len(group[1]) > 1]
        for start in range(0, len(shared_groups), self.batch_size):
            chunk = shared_groups[start : start + self.batch_size]
            # each group's shared part once, all groups of the chunk in one pass over the common prefix
            past = base.select([0] * len(chunk)) if base is not None else None
            _, prefix = self._extend([rendered[members[0]][common:shared] for shared, members in chunk], past)
            members = [m for _, group in chunk for m in group]
            at = [g for g, (_, group) in enumerate(chunk) for _ in group]
            shared_of = {m: shared for shared, group in chunk for m in group}
            score(members, [rendered[m][shared_of[m] :] for m in members], prefix, at)
        return np.stack([row for row in rows if row is not None])
