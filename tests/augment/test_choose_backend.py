"""WARMSTART_LLM_BACKEND=auto: the backend chosen by the CPU's flags (pure and cheap), and what the ledger records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import augment
from augment import (
    BF16_PATHS,
    DEFAULT_LOCAL_MODEL,
    P_YES_TOLERANCE,
    BackendChoice,
    Bf16Path,
    LlamaCppBackend,
    LocalBackend,
    choose_llm_backend,
)
from flows import augmentation
from flows.settings import WarmstartSettings

AVX2 = frozenset({"avx2", "fma", "f16c"})
ZEN4 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_bf16", "amx_int8", "amx_tile"}
FAST_LLAMACPP = Bf16Path("llamacpp", "bf16", max_p_yes_diff=0.003, speedup=1.4, needs="AVX512_BF16")
FAST_TORCH = Bf16Path("local", "bf16", max_p_yes_diff=0.01, speedup=1.6)
OFF_TORCH = Bf16Path("local", "bf16", max_p_yes_diff=0.046, speedup=2.0)  # faster, but past the tolerance
SLOW_LLAMACPP = Bf16Path("llamacpp", "bf16", max_p_yes_diff=0.003, speedup=0.9, needs="AVX512_BF16")


def test_without_bf16_instructions_llamacpp_f16_runs() -> None:
    for flags in (frozenset(), AVX2, AVX2 | {"avx512f", "avx512_vnni"}):
        choice = choose_llm_backend(flags, paths=(FAST_LLAMACPP, FAST_TORCH))
        assert choice == BackendChoice("llamacpp", "f16", "no avx512_bf16/amx_bf16")


def test_with_bf16_instructions_the_fastest_path_within_the_tolerance_runs() -> None:
    choice = choose_llm_backend(ZEN4, paths=(FAST_LLAMACPP, OFF_TORCH))
    assert (choice.kind, choice.precision) == ("llamacpp", "bf16")  # torch's bf16 is faster, but strays too far
    assert choice.reason == "avx512_bf16; P(yes) within 0.003 of fp32, 1.40x F16"
    choice = choose_llm_backend(SAPPHIRE_RAPIDS, paths=(FAST_LLAMACPP, FAST_TORCH))
    assert (choice.kind, choice.precision) == ("local", "bf16") and choice.reason.startswith("amx_bf16+avx512_bf16;")
    assert choose_llm_backend(frozenset({"amx_bf16"}), paths=(FAST_TORCH,)).kind == "local"  # AMX alone counts


def test_a_bf16_path_that_is_not_faster_or_not_close_enough_leaves_f16() -> None:
    for paths in ((), (SLOW_LLAMACPP,), (OFF_TORCH,), (SLOW_LLAMACPP, OFF_TORCH)):
        choice = choose_llm_backend(SAPPHIRE_RAPIDS, paths=paths)
        assert (choice.kind, choice.precision) == ("llamacpp", "f16")
        assert choice.reason == f"amx_bf16+avx512_bf16; no bf16 path both within {P_YES_TOLERANCE} of fp32 and faster"
    assert choose_llm_backend(ZEN4, paths=(OFF_TORCH,), tolerance=0.05).kind == "local"  # (a looser bound)


def test_llamacpp_bf16_needs_a_build_that_runs_it_and_the_measured_model() -> None:
    built_for_avx2 = frozenset({"AVX", "AVX2", "FMA", "F16C"})
    assert choose_llm_backend(ZEN4, llamacpp_features=built_for_avx2, paths=(FAST_LLAMACPP,)).precision == "f16"
    assert choose_llm_backend(ZEN4, llamacpp_features=built_for_avx2 | {"AVX512_BF16"}, paths=(FAST_LLAMACPP,)) == (
        choose_llm_backend(ZEN4, paths=(FAST_LLAMACPP,))
    )
    other = choose_llm_backend(ZEN4, model="gemma3-270m", paths=(FAST_LLAMACPP,))
    assert (other.kind, other.precision) == ("llamacpp", "f16") and DEFAULT_LOCAL_MODEL in other.reason


def test_the_measured_paths_decide_as_recorded() -> None:
    """The figures of docs/benchmarks.md ("A bf16 path on CPUs with AVX-512 BF16"): llama.cpp BF16 stays within the
    tolerance and is faster than F16; transformers bf16 is faster too but strays past it."""
    assert {(path.kind, path.precision) for path in BF16_PATHS} == {("llamacpp", "bf16"), ("local", "bf16")}
    for flags in (ZEN4, SAPPHIRE_RAPIDS):
        choice = choose_llm_backend(flags)
        assert (choice.kind, choice.precision) == ("llamacpp", "bf16")
        assert choice.reason.endswith("P(yes) within 0.0124 of fp32, 1.26x F16")
    assert choose_llm_backend(AVX2).precision == "f16"


def test_auto_builds_the_chosen_backend_and_the_ledger_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = WarmstartSettings(llm_backend="auto")
    assert WarmstartSettings().llm_backend == "llamacpp"  # auto is opt-in
    built: dict[str, object] = {}
    monkeypatch.setattr(augment, "make_backend", lambda kind, **options: built.update(options, kind=kind))
    for choice, kind, label in (
        (
            BackendChoice("llamacpp", "bf16", "avx512_bf16; P(yes) within 0.003 of fp32, 1.40x F16"),
            ("llamacpp", "bf16", "fp32"),
            "auto: llamacpp/bf16:smollm2-135m-instruct-bf16-llamacpp (avx512_bf16; P(yes) within 0.003 of fp32, "
            "1.40x F16)",
        ),
        (
            BackendChoice("local", "bf16", "amx_bf16; P(yes) within 0.01 of fp32, 1.60x F16"),
            ("local", "f16", "bf16"),
            "auto: local/bf16:smollm2-135m-instruct-bf16 (amx_bf16; P(yes) within 0.01 of fp32, 1.60x F16)",
        ),
        (
            BackendChoice("llamacpp", "f16", "no avx512_bf16/amx_bf16"),
            ("llamacpp", "f16", "fp32"),
            "auto: llamacpp/f16:smollm2-135m-instruct-f16-llamacpp (no avx512_bf16/amx_bf16)",
        ),
    ):
        monkeypatch.setattr(augmentation, "auto_backend", lambda model, c=choice: c)
        augmentation.make_backend(settings)
        assert (built["kind"], built["llamacpp_weights"], built["precision"]) == kind
        assert augmentation.backend_label(settings) == label and len(label) <= 160


def test_auto_on_this_machine_records_what_it_chose() -> None:
    """The real choice on the CPU running the tests (whatever it offers): a backend the factory knows, named in the
    label with its reason."""
    augmentation.auto_backend.cache_clear()
    choice = augmentation.auto_backend(DEFAULT_LOCAL_MODEL)
    assert choice.kind in ("llamacpp", "local") and choice.reason
    label = augmentation.backend_label(WarmstartSettings(llm_backend="auto"))
    assert label.startswith(f"auto: {choice.kind}/{choice.precision}:") and label.endswith(f"({choice.reason})")


def test_llamacpp_bf16_keeps_p_yes_within_the_tolerance(llm_cache: Path, local_llm: LocalBackend) -> None:
    """The bf16 path auto may choose, run for real (BF16 weights written once from the shipped file, about 2 s): on
    the judge's test prompts its P(yes) stays within the tolerance of the fp32 reference, and its name (in the cache
    keys and the ledger) is its own."""
    from tests.augment.test_llamacpp_backend import judge_prompts

    prompts = judge_prompts()
    local_llm.reuse_prefix = False
    reference = local_llm.yes_probability(prompts)
    local_llm.reuse_prefix = True
    backend = LlamaCppBackend.for_model(DEFAULT_LOCAL_MODEL, llm_cache, weights="bf16", batch_size=8, threads=1)
    try:
        assert backend.model_name == "smollm2-135m-instruct-bf16-llamacpp"
        scores = backend.yes_probability(prompts)
    finally:
        backend.close()
    assert np.abs(scores - reference).max() < P_YES_TOLERANCE
    assert np.abs(scores - reference).max() > 0  # (really another arithmetic than fp32's)
