"""BERT-family encoder -> ONNX without torch: weights from `model.safetensors`, graph from onnx.helper.

Handles `BertModel` (embedders) and `BertForSequenceClassification` (cross-encoders), and the XLM-RoBERTa
family (multilingual-e5, bge-m3: `XLMRobertaModel`, `XLMRobertaForSequenceClassification`), whose position
ids start after the padding index and whose classifier head reads `<s>` without a pooler. The graph uses the
op pattern that `torch.onnx.export` writes for Hugging Face BERT (MatMul + Add linears, Erf GELU,
LayerNormalization, an additive (1 - mask) * min attention bias), so onnxruntime's transformer optimizer
fuses it into Attention / SkipLayerNormalization / BiasGelu exactly as it fuses a torch export.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .deps import require

OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
MODEL_TYPES = ("bert", "xlm-roberta")


def position_offset(cfg: dict[str, Any]) -> int:
    """The first position id: 0 for BERT; padding index + 1 for XLM-RoBERTa (fairseq's convention)."""
    return int(cfg.get("pad_token_id", 1)) + 1 if cfg.get("model_type") == "xlm-roberta" else 0


class BertConfigError(ValueError):
    """The folder's config.json or weights are not a BERT model this builder handles."""


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; a Hugging Face model folder has a config.json") from None
    if cfg.get("model_type") not in MODEL_TYPES:
        raise BertConfigError(
            f"{path}: model_type {cfg.get('model_type')!r}; the torch-free builder handles {MODEL_TYPES} "
            "(use backend='torch' or 'optimum' for other architectures)"
        )
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise BertConfigError(
            f"{path}: position_embedding_type {cfg['position_embedding_type']!r}, expected 'absolute'"
        )
    if cfg.get("hidden_act", "gelu") not in _ACTIVATIONS:
        raise BertConfigError(f"{path}: hidden_act {cfg['hidden_act']!r}, expected one of {_ACTIVATIONS}")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise BertConfigError(f"{path}: hidden_size {cfg['hidden_size']} not divisible by the head count")
    return cfg


def load_weights(folder: Path) -> dict[str, np.ndarray]:
    """Tensors of `model.safetensors` as float32 numpy arrays, any `bert.` / `roberta.` prefix removed."""
    st = require("safetensors.numpy", "safetensors")
    path = folder / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; the torch-free builder reads safetensors weights "
            "(pytorch_model.bin needs backend='torch')"
        )
    raw = st.load_file(str(path))
    out = {}
    for name, arr in raw.items():
        key = name.split(".", 1)[1] if name.startswith(("bert.", "roberta.")) else name
        out[key] = np.asarray(arr, dtype=np.float32) if arr.dtype != np.int64 else arr
    return out


class _Graph:
    """A tiny builder: named nodes and initializers, unique names, constants made once."""

    def __init__(self) -> None:
        self.onnx = require("onnx", "onnx")
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0
        self._consts: dict[tuple[str, bytes], str] = {}

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.array(arr, order="C", copy=True), name))
        return name

    def const(self, arr: np.ndarray) -> str:
        key = (str(arr.dtype), arr.tobytes() + str(arr.shape).encode())
        if key not in self._consts:
            self._consts[key] = self.init(self.name("const"), arr)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        out = self.name(hint or op_type)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=out + "_node", **attrs))
        return out


def _linear(g: _Graph, x: str, w: dict[str, np.ndarray], prefix: str) -> str:
    weight = g.init(prefix + ".weight", w[prefix + ".weight"].T)  # torch stores (out, in)
    bias = g.init(prefix + ".bias", w[prefix + ".bias"])
    return g.op("Add", [g.op("MatMul", [x, weight]), bias])


def _layer_norm(g: _Graph, x: str, w: dict[str, np.ndarray], prefix: str, eps: float) -> str:
    scale = g.init(prefix + ".weight", w[prefix + ".weight"])
    bias = g.init(prefix + ".bias", w[prefix + ".bias"])
    return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)


def _activation(g: _Graph, x: str, kind: str) -> str:
    f32 = np.float32
    if kind == "relu":
        return g.op("Relu", [x])
    if kind == "gelu":  # exact: x * 0.5 * (1 + erf(x / sqrt(2)))
        erf = g.op("Erf", [g.op("Div", [x, g.const(np.array(math.sqrt(2.0), f32))])])
        return g.op(
            "Mul",
            [g.op("Mul", [x, g.op("Add", [erf, g.const(np.array(1.0, f32))])]), g.const(np.array(0.5, f32))],
        )
    # tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    cube = g.op("Pow", [x, g.const(np.array(3.0, f32))])
    inner = g.op("Add", [x, g.op("Mul", [cube, g.const(np.array(0.044715, f32))])])
    t = g.op("Tanh", [g.op("Mul", [inner, g.const(np.array(math.sqrt(2.0 / math.pi), f32))])])
    return g.op(
        "Mul", [g.op("Mul", [x, g.const(np.array(0.5, f32))]), g.op("Add", [t, g.const(np.array(1.0, f32))])]
    )


def _attention(
    g: _Graph, x: str, bias: str, w: dict[str, np.ndarray], prefix: str, heads: int, hidden: int
) -> str:
    d = hidden // heads
    split = g.const(np.array([0, 0, heads, d], np.int64))
    q = g.op(
        "Transpose", [g.op("Reshape", [_linear(g, x, w, prefix + ".self.query"), split])], perm=[0, 2, 1, 3]
    )
    k = g.op(
        "Transpose", [g.op("Reshape", [_linear(g, x, w, prefix + ".self.key"), split])], perm=[0, 2, 3, 1]
    )
    v = g.op(
        "Transpose", [g.op("Reshape", [_linear(g, x, w, prefix + ".self.value"), split])], perm=[0, 2, 1, 3]
    )
    scores = g.op("Div", [g.op("MatMul", [q, k]), g.const(np.array(math.sqrt(d), np.float32))])
    probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const(np.array([0, 0, hidden], np.int64))])
    return _linear(g, ctx, w, prefix + ".output.dense")


def build(folder: Path, *, kind: str) -> tuple[Any, dict[str, Any]]:
    """The ONNX model of the BERT in `folder` and facts for the manifest (dim, output, head).

    kind "embedder" -> output `last_hidden_state` (batch, seq, hidden), pooled at run time;
    kind "reranker" -> output `logits` (batch, num_labels) from the pooler + classifier head.
    """
    if kind not in ("embedder", "reranker"):
        raise ValueError(f"kind {kind!r}, expected 'embedder' or 'reranker'")
    folder = Path(folder)
    cfg = read_config(folder)
    w = load_weights(folder)
    hidden, heads, eps = (
        cfg["hidden_size"],
        cfg["num_attention_heads"],
        float(cfg.get("layer_norm_eps", 1e-12)),
    )
    roberta_head = "classifier.out_proj.weight" in w  # XLMRobertaForSequenceClassification
    if kind == "reranker" and "classifier.weight" not in w and not roberta_head:
        raise BertConfigError(f"{folder}: no classifier head in model.safetensors; is it a cross-encoder?")
    missing = [
        k
        for k in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight")
        if k not in w
    ]
    if missing:
        raise BertConfigError(f"{folder}/model.safetensors: missing tensors {missing}; not a BERT checkpoint")

    g = _Graph()
    helper, tp = g.onnx.helper, g.onnx.TensorProto
    ids, mask, types = INPUTS

    # Embeddings: word + position[offset:offset + seq] + token type, then LayerNorm.
    word = g.op(
        "Gather", [g.init("embeddings.word_embeddings.weight", w["embeddings.word_embeddings.weight"]), ids]
    )
    seq_len = g.op("Gather", [g.op("Shape", [ids]), g.const(np.array(1, np.int64))], axis=0)
    table = g.init(
        "embeddings.position_ids",
        np.arange(position_offset(cfg), cfg["max_position_embeddings"], dtype=np.int64)[None, :],
    )
    end = g.op("Unsqueeze", [seq_len, g.const(np.array([0], np.int64))])
    positions = g.op(
        "Slice", [table, g.const(np.array([0], np.int64)), end, g.const(np.array([1], np.int64))]
    )
    pos = g.op(
        "Gather",
        [
            g.init("embeddings.position_embeddings.weight", w["embeddings.position_embeddings.weight"]),
            positions,
        ],
    )
    typ = g.op(
        "Gather",
        [
            g.init("embeddings.token_type_embeddings.weight", w["embeddings.token_type_embeddings.weight"]),
            types,
        ],
    )
    x = _layer_norm(g, g.op("Add", [g.op("Add", [word, typ]), pos]), w, "embeddings.LayerNorm", eps)

    # Additive attention bias: (1 - mask[:, None, None, :]) * float32 min.
    m = g.op(
        "Unsqueeze",
        [g.op("Unsqueeze", [mask, g.const(np.array([1], np.int64))]), g.const(np.array([2], np.int64))],
    )
    m = g.op("Cast", [m], to=tp.FLOAT)
    bias = g.op(
        "Mul",
        [
            g.op("Sub", [g.const(np.array(1.0, np.float32)), m]),
            g.const(np.array(np.finfo(np.float32).min, np.float32)),
        ],
    )

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        attn = _attention(g, x, bias, w, p + ".attention", heads, hidden)
        x = _layer_norm(g, g.op("Add", [attn, x]), w, p + ".attention.output.LayerNorm", eps)
        inter = _activation(g, _linear(g, x, w, p + ".intermediate.dense"), cfg.get("hidden_act", "gelu"))
        x = _layer_norm(
            g, g.op("Add", [_linear(g, inter, w, p + ".output.dense"), x]), w, p + ".output.LayerNorm", eps
        )

    facts: dict[str, Any] = {
        "architecture": cfg["model_type"],
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "max_position_embeddings": cfg["max_position_embeddings"],
    }
    seq = ["batch", "sequence"]
    if kind == "embedder":
        out_name, out_shape = "last_hidden_state", ["batch", "sequence", hidden]
        g.nodes.append(helper.make_node("Identity", [x], [out_name], name="last_hidden_state_node"))
        facts.update(output=out_name, dim=hidden)
    else:
        cls = g.op("Gather", [x, g.const(np.array(0, np.int64))], axis=1)
        if roberta_head:  # dense + tanh + out_proj on <s>
            num_labels = int(w["classifier.out_proj.weight"].shape[0])
            pooled = g.op("Tanh", [_linear(g, cls, w, "classifier.dense")])
            logits = _linear(g, pooled, w, "classifier.out_proj")
        else:
            num_labels = int(w["classifier.weight"].shape[0])
            pooled = g.op("Tanh", [_linear(g, cls, w, "pooler.dense")])
            logits = _linear(g, pooled, w, "classifier")
        out_name, out_shape = "logits", ["batch", num_labels]
        g.nodes.append(helper.make_node("Identity", [logits], [out_name], name="logits_node"))
        facts.update(output=out_name, num_labels=num_labels, dim=num_labels)

    graph = helper.make_graph(
        g.nodes,
        f"duorank_bert_{kind}",
        [helper.make_tensor_value_info(n, tp.INT64, seq) for n in INPUTS],
        [helper.make_tensor_value_info(out_name, tp.FLOAT, out_shape)],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="duorank")
    model.ir_version = 8  # readable by onnxruntime >= 1.13
    g.onnx.checker.check_model(model, full_check=True)
    return model, facts
