"""A local model (SmolLM2 by default, or Gemma 3 270M) run in-process by llama.cpp (llama-cpp-python) with F16
weights: the default backend."""

from __future__ import annotations

import logging
import os
import uuid
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from augment._backend import Generation
from augment._inprocess import InProcessBackend
from augment._models import DEFAULT_LOCAL_MODEL, local_model, model_tokenizer
from augment._prompts import Messages
from catalog import BackendError, ConfigError

log = logging.getLogger(__name__)

Weights = Literal["f16", "bf16", "q8_0", "f32"]


def llamacpp_name(model: str = DEFAULT_LOCAL_MODEL, weights: Weights = "f16") -> str:
    """The name of a local model run by llama.cpp with these weights, in provenance, cache keys and file names."""
    return f"{local_model(model).stem}-{weights}-llamacpp"


LLAMACPP_NAME = llamacpp_name()  # the default model's: "smollm2-135m-instruct-f16-llamacpp"


def llamacpp_gguf(cache_dir: Path, model: str = DEFAULT_LOCAL_MODEL, weights: Weights = "f16") -> Path:
    """The model's shipped GGUF re-encoded with F16 (or BF16, for CPUs with AVX-512 BF16; or, for benchmarks, Q8_0 or
    F32) weights under CACHE/llm/, once (3-5 s), by llama.cpp's own quantiser (written to a temporary file that is
    renamed into place).

    Why not run the shipped files themselves: their quantised kernels round the activations to 8 bits before each
    dot product. SmolLM2's Q4_1 moved P(yes) by up to 0.04 from the fp32 reference and ran slower than F16 on an
    AVX2 CPU; Gemma's Q4_K_M (Q4_K, Q5_0, Q6_K and Q8_0 tensors) moved it by up to 0.091 from the F32 re-encoding
    of the same file run whole, 37 of 64 judge pairs past 0.02, where F16 stayed within 0.0026 (docs/benchmarks.md).
    Q8_0 rounds the activations too (0.058, 23 of 64).
    """
    target = Path(cache_dir) / "llm" / f"{llamacpp_name(model, weights)}.gguf"
    if target.is_file():
        return target
    llama_cpp = _import_llama_cpp()
    source = local_model(model).gguf(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    ftype = "ALL_F32" if weights == "f32" else f"MOSTLY_{weights.upper()}"
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{ftype}")
    params.allow_requantize = True  # quantised tensors are dequantised, then stored anew
    try:
        _quiet(llama_cpp)
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(temporary).encode(), params)
        if failed:
            raise BackendError(f"llama.cpp could not re-encode {source.name} as {weights} (code {failed}).")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def smollm2_llamacpp_gguf(cache_dir: Path, weights: Weights = "f16") -> Path:
    """SmolLM2's shipped Q4_1 GGUF re-encoded with `weights` (see `llamacpp_gguf`)."""
    return llamacpp_gguf(cache_dir, DEFAULT_LOCAL_MODEL, weights)


def llamacpp_features() -> frozenset[str]:
    """What this llama.cpp build can run on this CPU, as its system info names it (e.g. AVX2, AVX512_BF16, AMX_INT8):
    the build's own, which on a build for another CPU may lack what this one offers."""
    info = _import_llama_cpp().llama_print_system_info().decode("utf-8", "replace")
    # e.g. "CPU : SSE3 = 1 | AVX = 1 | ... | AVX512_BF16 = 1 | LLAMAFILE = 1 | "
    pairs = (part.rpartition("=") for part in info.split("|"))
    return frozenset(name.rpartition(":")[2].strip() for name, _, on in pairs if on.strip() == "1")


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
    weights (`llamacpp_gguf`), on the CPU; `for_model` runs another local model (Gemma 3 270M) the same way.

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
        self._context = self._new_context(gguf, context, threads, context_params)
        self.context = int(llama_cpp.llama_n_ctx(self._context))  # (llama.cpp may round it up)
        self._step = int(llama_cpp.llama_n_batch(self._context))  # a larger call would abort the process
        self._memory = llama_cpp.llama_get_memory(self._context)
        self._vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))
        self._batch = llama_cpp.llama_batch_init(self._step, 0, self._sequences)
        self._finalizer = weakref.finalize(self, _free_llama_cpp, llama_cpp, self._batch, self._context, self._model)

    def _new_context(
        self, gguf: Path, context: int, threads: int | None, context_params: Mapping[str, Any] | None
    ) -> Any:
        """A llama.cpp context of `context` tokens and `_sequences` sequences over the loaded model, with the
        fields of `context_params` set over the defaults; the model is freed when no context can be made."""
        llama_cpp = self._api
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
        made = llama_cpp.llama_init_from_model(self._model, params)
        if not made:
            llama_cpp.llama_model_free(self._model)
            raise ConfigError(f"llama.cpp could not make a context of {context} tokens for {gguf}.")
        return made

    @classmethod
    def for_model(cls, model: str, cache_dir: Path, *, weights: Weights = "f16", **options: Any) -> LlamaCppBackend:
        """The local model `model` (a name of `LOCAL_MODELS`) with `weights` (F16, or BF16 where `auto` chose it) and
        its tokenizer, both made in `cache_dir` on first use."""
        options.setdefault("name", llamacpp_name(model, weights))
        return cls(llamacpp_gguf(cache_dir, model, weights), model_tokenizer(model, cache_dir), **options)

    @classmethod
    def smollm2(cls, cache_dir: Path, **options: Any) -> LlamaCppBackend:
        """The default local model in F16 with its tokenizer, both made in `cache_dir` on first use."""
        return cls.for_model(DEFAULT_LOCAL_MODEL, cache_dir, **options)

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
        stops = self._stop_ids
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
                    if token not in stops:
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
