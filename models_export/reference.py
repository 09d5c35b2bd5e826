"""A float64 numpy forward pass of BERT and XLM-RoBERTa, straight from the safetensors weights: the torch-free
reference.

The ONNX graph from `bert_onnx` is checked against this at export time when torch is not installed (and the
test suite checks this against PyTorch where it is). Slow and simple on purpose: one formula per line.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray


def _ln(x: NDArray[np.float64], w: dict[str, NDArray[Any]], p: str, eps: float) -> NDArray[np.float64]:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]


def _lin(x: NDArray[np.float64], w: dict[str, NDArray[Any]], p: str) -> NDArray[np.float64]:
    return x @ w[p + ".weight"].T.astype(np.float64) + w[p + ".bias"]


def _act(x: NDArray[np.float64], kind: str) -> NDArray[np.float64]:
    if kind == "relu":
        return np.maximum(x, 0)
    if kind == "gelu":
        try:
            from scipy.special import erf
        except ImportError:
            erf = np.vectorize(math.erf)
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def forward(
    cfg: dict[str, Any],
    w: dict[str, NDArray[Any]],
    ids: NDArray[np.int64],
    types: NDArray[np.int64],
    kind: str,
) -> NDArray[np.float64]:
    """One unpadded sequence: last hidden state (seq, hidden) for embedders, logits for rerankers."""
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    heads = cfg["num_attention_heads"]
    n = len(ids)
    start = int(cfg.get("pad_token_id", 1)) + 1 if cfg.get("model_type") == "xlm-roberta" else 0
    x = (
        w["embeddings.word_embeddings.weight"][ids].astype(np.float64)
        + w["embeddings.position_embeddings.weight"][start : start + n]
        + w["embeddings.token_type_embeddings.weight"][types]
    )
    x = _ln(x, w, "embeddings.LayerNorm", eps)
    d = x.shape[1] // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q, k, v = (
            _lin(x, w, f"{p}.attention.self.{t}").reshape(n, heads, d).transpose(1, 0, 2)
            for t in ("query", "key", "value")
        )
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(n, heads * d)
        x = _ln(_lin(ctx, w, f"{p}.attention.output.dense") + x, w, f"{p}.attention.output.LayerNorm", eps)
        h = _act(_lin(x, w, f"{p}.intermediate.dense"), cfg.get("hidden_act", "gelu"))
        x = _ln(_lin(h, w, f"{p}.output.dense") + x, w, f"{p}.output.LayerNorm", eps)
    if kind == "embedder":
        return x
    if "classifier.out_proj.weight" in w:  # XLM-RoBERTa's head: dense + tanh + out_proj on <s>
        return _lin(np.tanh(_lin(x[:1], w, "classifier.dense")), w, "classifier.out_proj")[0]
    return _lin(np.tanh(_lin(x[:1], w, "pooler.dense")), w, "classifier")[0]
