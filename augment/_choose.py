"""Which in-process backend to run on this CPU (WARMSTART_LLM_BACKEND=auto): a bf16 path where the CPU has bf16
dot products (AVX-512 BF16, or AMX, whose CPUs have AVX-512 BF16 too) and the path was measured both within the
P(yes) tolerance and faster than llama.cpp F16; otherwise llama.cpp F16, the default. Pure: the caller passes the
CPU's flags (`encoders.cpu_flags()`) and, for llama.cpp, what its build can run (`llamacpp_features()`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from augment._models import DEFAULT_LOCAL_MODEL

# How far a backend's P(yes) may stray from the fp32 reference's on the judge's pairs to stand in for it: the bound
# llama.cpp F16, the default, was chosen by (it stays within 0.002; docs/benchmarks.md, issue 15).
P_YES_TOLERANCE = 0.02
# CPU flags (Linux's names) that give bf16 dot products. llama.cpp's BF16 kernels use AVX-512 BF16 (vdpbf16ps);
# torch's use AVX-512 BF16 or AMX tiles.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class Bf16Path:
    """A bf16 path as measured on a CPU with AVX-512 BF16: `max_p_yes_diff`, its largest |P(yes) - fp32| on the
    judge's pairs; `speedup`, llama.cpp F16's CPU seconds over its own on the same work, the smaller of the judge's
    and description generation's at the product's batch (16); `needs`, a feature its llama.cpp build must have
    (None: any)."""

    kind: Literal["llamacpp", "local"]
    precision: str  # llama.cpp's weights, or transformers' precision
    max_p_yes_diff: float
    speedup: float
    needs: str | None = None


# Measured by benchmarks/augment_speed.py on a 2-core AMD EPYC (Zen 4: avx512_bf16, avx512_vnni, no AMX), one thread,
# CPU seconds under a load average of 8-11, two alternating rounds (docs/benchmarks.md, "A bf16 path on CPUs with
# AVX-512 BF16", issue 31 item 5, 2026-12-06). llama.cpp BF16: P(yes) within 0.0124 of fp32 (mean 0.0031, 256 pairs;
# F16: 0.0021), the judge 1.48-1.66x F16's speed, descriptions at batch 16 1.40x (32 new tokens) and 1.26x per new
# token (96, the product's limit). transformers bf16: 1.66x and 1.29x (32 tokens), but P(yes) 0.0465 away (18 of 64
# pairs past 0.02). Remeasure on a CPU with AMX: these decide what `auto` runs.
BF16_PATHS: tuple[Bf16Path, ...] = (
    Bf16Path("llamacpp", "bf16", max_p_yes_diff=0.0124, speedup=1.26, needs="AVX512_BF16"),
    Bf16Path("local", "bf16", max_p_yes_diff=0.0465, speedup=1.29),
)


@dataclass(frozen=True)
class BackendChoice:
    """The backend `auto` runs: llama.cpp with `precision` weights ("f16", "bf16") or transformers at `precision`
    ("bf16"), and why, in a few words (recorded beside the backend in the augmentation ledger)."""

    kind: Literal["llamacpp", "local"]
    precision: str
    reason: str


def choose_llm_backend(
    flags: frozenset[str],
    *,
    model: str = DEFAULT_LOCAL_MODEL,
    llamacpp_features: frozenset[str] | None = None,
    paths: Sequence[Bf16Path] = BF16_PATHS,
    tolerance: float = P_YES_TOLERANCE,
) -> BackendChoice:
    """The fastest measured backend for a CPU with these `flags` that keeps P(yes) within `tolerance` of fp32's:
    among `paths` those within the tolerance, faster than llama.cpp F16 and runnable here (a llama.cpp path needs
    its feature in `llamacpp_features`, when given), the fastest; else llama.cpp F16. The bf16 paths were measured
    with `DEFAULT_LOCAL_MODEL` only, so another model runs F16."""
    bf16 = sorted(flags & BF16_FLAGS)
    if not bf16:
        return BackendChoice("llamacpp", "f16", "no avx512_bf16/amx_bf16")
    if model != DEFAULT_LOCAL_MODEL:
        return BackendChoice("llamacpp", "f16", f"{'+'.join(bf16)}; bf16 measured with {DEFAULT_LOCAL_MODEL} only")
    passing = []
    for path in paths:
        if path.max_p_yes_diff > tolerance or path.speedup <= 1.0:
            continue
        built = llamacpp_features is None or path.needs is None or path.needs in llamacpp_features
        if path.kind == "llamacpp" and not built:
            continue  # (a llama.cpp build without the instructions would convert bf16 in software)
        passing.append(path)
    if not passing:
        return BackendChoice(
            "llamacpp", "f16", f"{'+'.join(bf16)}; no bf16 path both within {tolerance} of fp32 and faster"
        )
    best = max(passing, key=lambda path: path.speedup)
    return BackendChoice(
        best.kind,
        best.precision,
        f"{'+'.join(bf16)}; P(yes) within {best.max_p_yes_diff:.3g} of fp32, {best.speedup:.2f}x F16",
    )
