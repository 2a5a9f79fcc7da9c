"""The local model run by llama.cpp (F16 weights): the same answers as the transformers fp32 reference within the
stated tolerance, prefix reuse that changes nothing but the tokens run, batching and order that change nothing,
and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from augment import (
    Backend,
    InProcessBackend,
    LlamaCppBackend,
    LocalBackend,
    item_description_messages,
    judge_messages,
    smollm2_llamacpp_gguf,
    smollm2_tokenizer,
)
from catalog import BackendError, ConfigError

HISTORY = ["Matrix factorization techniques for recommender systems", "Latent Dirichlet allocation"]
OTHER = ["Bird song learning in zebra finches", "Owl hearing and sound localisation"]
CANDIDATES = ["Probabilistic topic models", "Gene expression in yeast", "Collaborative filtering for implicit feedback"]
# P(yes) of the F16 weights against the fp32 reference: at most 0.0019 over 64 CiteULike pairs (docs/benchmarks.md)
TOLERANCE = 0.02
# the same prompt in batches of other shapes: llama.cpp's F16 kernels sum in another order (about 1e-3 apart)
SHAPE_NOISE = 5e-3


def judge_prompts() -> list[list[dict[str, str]]]:
    """Two users with four candidates each and a user with one, interleaved (pairs arrive in any order)."""
    prompts = [judge_messages(h, c) for c in [*CANDIDATES, "Owls"] for h in (HISTORY, OTHER)]
    return [*prompts, judge_messages(["Bird song"], "Owls")]


def test_it_is_an_in_process_backend(llamacpp_llm: LlamaCppBackend) -> None:
    assert isinstance(llamacpp_llm, Backend) and isinstance(llamacpp_llm, InProcessBackend)
    assert llamacpp_llm.model_name == "smollm2-135m-instruct-f16-llamacpp"


def test_yes_probability_matches_the_fp32_reference(llamacpp_llm: LlamaCppBackend, local_llm: LocalBackend) -> None:
    prompts = judge_prompts()
    local_llm.reuse_prefix = False
    reference = local_llm.yes_probability(prompts)
    local_llm.reuse_prefix = True
    scores = llamacpp_llm.yes_probability(prompts)
    assert scores.shape == (len(prompts),) and np.all((scores > 0) & (scores < 1))
    assert np.abs(scores - reference).max() < TOLERANCE
    # (the candidates differ: a backend answering one constant would pass the tolerance on near-equal answers)
    assert np.ptp(reference) > 2 * TOLERANCE


def judged(backend: LlamaCppBackend, prompts: list[list[dict[str, str]]], *, reuse: bool) -> tuple[np.ndarray, int]:
    """(P(yes) of each prompt, tokens the model ran for them) with prefix reuse on or off."""
    backend.reuse_prefix, before = reuse, backend.prompt_tokens
    try:
        return backend.yes_probability(prompts), backend.prompt_tokens - before
    finally:
        backend.reuse_prefix = True


def test_prefix_reuse_and_order_change_only_the_tokens_run(llamacpp_llm: LlamaCppBackend) -> None:
    prompts = judge_prompts()
    plain, plain_tokens = judged(llamacpp_llm, prompts, reuse=False)
    shared, shared_tokens = judged(llamacpp_llm, prompts, reuse=True)
    shuffled = np.random.default_rng(0).permutation(len(prompts))
    reordered, _ = judged(llamacpp_llm, [prompts[i] for i in shuffled], reuse=True)
    np.testing.assert_allclose(shared, plain, atol=SHAPE_NOISE)
    np.testing.assert_allclose(reordered[np.argsort(shuffled)], shared, atol=1e-6)
    assert shared_tokens == llamacpp_llm.count_tokens(prompts, shared_prefix=True) < plain_tokens
    assert plain_tokens == llamacpp_llm.count_tokens(prompts)


def test_greedy_text_matches_the_fp32_reference(llamacpp_llm: LlamaCppBackend, local_llm: LocalBackend) -> None:
    titles = ["Deep learning", "A survey of graph neural networks", "Latent Dirichlet allocation"]
    prompts = [item_description_messages(t) for t in titles]
    reference = local_llm.generate(prompts, max_new_tokens=24)
    texts = llamacpp_llm.generate(prompts, max_new_tokens=24)
    # greedy decoding over F16 weights may part from fp32's where two tokens nearly tie; on short texts it did not
    assert [g.text for g in texts] == [g.text for g in reference]
    assert [g.tokens for g in texts] == [g.tokens for g in reference]


def test_batch_size_and_order_do_not_change_generation(llamacpp_llm: LlamaCppBackend) -> None:
    prompts = [item_description_messages(t) for t in ("Owls", "Gene expression in yeast", "Deep learning")]
    batched = llamacpp_llm.generate(prompts, max_new_tokens=16)
    llamacpp_llm.batch_size = 1
    try:
        one_by_one = llamacpp_llm.generate(list(reversed(prompts)), max_new_tokens=16)
    finally:
        llamacpp_llm.batch_size = 8
    assert [g.text for g in batched] == [g.text for g in reversed(one_by_one)]
    assert all(g.text.strip() and 0 < g.tokens <= 16 for g in batched)


def test_sampling_is_seeded_and_differs_from_greedy(llamacpp_llm: LlamaCppBackend) -> None:
    prompt = [item_description_messages("Deep learning")]
    one = llamacpp_llm.generate(prompt, max_new_tokens=24, seed=3, temperature=0.9)
    two = llamacpp_llm.generate(prompt, max_new_tokens=24, seed=3, temperature=0.9)
    others = {llamacpp_llm.generate(prompt, max_new_tokens=24, seed=s, temperature=0.9)[0].text for s in range(4)}
    assert one == two and len(others) > 1


def test_empty_inputs(llamacpp_llm: LlamaCppBackend) -> None:
    assert llamacpp_llm.generate([], max_new_tokens=4) == []
    assert llamacpp_llm.yes_probability([]).shape == (0,)


def test_a_prompt_longer_than_the_context_is_refused(llm_cache: Path) -> None:
    small = LlamaCppBackend.smollm2(llm_cache, batch_size=2, threads=1, context=256)
    long = judge_messages([" ".join(f"w{i}" for i in range(60))] * 12, "Owls")  # about 990 tokens
    with pytest.raises(BackendError, match=r"exceeds the llama\.cpp context"):
        small.yes_probability([long])
    with pytest.raises(BackendError, match=r"exceeds the llama\.cpp context"):
        small.generate([item_description_messages("Owls")], max_new_tokens=400)
    # past those guards, more tokens than the key/value cache holds are a clear error, not an abort (a call of
    # more tokens than llama.cpp's batch, which it lowers to a small context, aborts the process)
    with pytest.raises(BackendError, match=r"could not run a batch of \d+ tokens \(code 1\)"):
        small._run([(list(range(300)), 2, 0)])
    # the next call starts from a clear cache; rows that fit the context one at a time but not all at once run
    # in turn, with the same answers
    prompts = [judge_messages(HISTORY, c) for c in CANDIDATES]
    roomy = LlamaCppBackend.smollm2(llm_cache, batch_size=8, threads=1)
    np.testing.assert_allclose(small.yes_probability(prompts), roomy.yes_probability(prompts), atol=SHAPE_NOISE)
    small.close()
    roomy.close()


def test_the_f16_file_is_made_once(llm_cache: Path, tmp_path: Path) -> None:
    path = smollm2_llamacpp_gguf(llm_cache)
    stamp = path.stat().st_mtime_ns
    assert smollm2_llamacpp_gguf(llm_cache) == path and path.stat().st_mtime_ns == stamp
    assert not list(path.parent.glob(".*.tmp"))  # written through a temporary file renamed into place


def test_a_fresh_cache_gets_the_tokenizer_alone_and_the_same_tokens(
    llm_cache: Path, tmp_path: Path, local_llm: LocalBackend
) -> None:
    directory = smollm2_tokenizer(tmp_path)
    assert (directory / "tokenizer.json").is_file()
    assert not list(directory.glob("*.safetensors"))  # no fp32 model converted that llama.cpp would never run
    stamp = (directory / "tokenizer.json").stat().st_mtime_ns
    assert smollm2_tokenizer(tmp_path) == directory
    assert (directory / "tokenizer.json").stat().st_mtime_ns == stamp
    assert not list(directory.parent.glob(".*.tmp"))
    backend = LlamaCppBackend(smollm2_llamacpp_gguf(llm_cache), directory, threads=1)
    prompts = [*judge_prompts(), item_description_messages("Owls & larks: 日本の鳥")]
    assert [backend._render(p) for p in prompts] == [local_llm._render(p) for p in prompts]
    backend.close()


def test_bad_files_and_batch_sizes_are_clear_errors(llm_cache: Path, tmp_path: Path) -> None:
    tokenizer = smollm2_tokenizer(llm_cache)
    with pytest.raises(ConfigError, match="not a GGUF file"):
        LlamaCppBackend(tmp_path / "missing.gguf", tokenizer)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ConfigError, match="could not load"):
        LlamaCppBackend(broken, tokenizer)
    with pytest.raises(ConfigError, match="at most"):
        LlamaCppBackend(smollm2_llamacpp_gguf(llm_cache), tokenizer, batch_size=100_000)
    with pytest.raises(ConfigError, match="no parameter 'flash_attention'"):
        LlamaCppBackend(smollm2_llamacpp_gguf(llm_cache), tokenizer, context_params={"flash_attention": 1})
