"""The model runtime: ONNX embedders and cross-encoder rerankers (onnxruntime, tokenizers, numpy; no torch).

A model is a folder (docs/format.md): `model.onnx` (+ `model.fp16.onnx`, `model.int8.onnx`), `tokenizer.json`
and `duorank-model.json`. `Embedder.load("default")` builds the default folder once from an installed weights
package (see `duorank.models_export.builtin`).

Rooms: `registry` (names and folders), `runtime` (sessions, providers, batching), `embedder`, `reranker`.
"""

from __future__ import annotations

from .embedder import Embedder, Tokens
from .registry import known_names, list_models, resolve
from .reranker import PairTokens, RerankDefaults, Reranker, Scored
from .runtime import DEFAULT_BATCH_TOKENS, DEFAULT_THREADS, DeviceError, OnnxModel, open_session

__all__ = [
    "DEFAULT_BATCH_TOKENS",
    "DEFAULT_THREADS",
    "DeviceError",
    "Embedder",
    "OnnxModel",
    "PairTokens",
    "RerankDefaults",
    "Reranker",
    "Scored",
    "Tokens",
    "known_names",
    "list_models",
    "open_session",
    "resolve",
]
