"""Graph optimisation and the smaller variants (fp16, int8) of an exported fp32 graph."""

from __future__ import annotations

import logging
from typing import Any

from duorank.model_folder import INT8_ACTIVATIONS, VARIANTS
from duorank.onnx_graphs import copy_model, half, optimize

log = logging.getLogger("duorank.models_export")


def to_fp16(model: Any, facts: dict[str, Any]) -> Any:
    """Half-precision weights and activations with float32 inputs/outputs, on the fused graph.

    Fusing first matters: the fused Attention takes the mask as an index, while the unfused graph's additive
    mask (1 - mask) * float32 min would overflow to -inf in fp16 and give 0 * -inf = NaN.
    """
    return half(optimize(model, facts))


INT8_RECIPE = {"weights": "int8 per output column, 7-bit range", "activations": INT8_ACTIVATIONS}
"""What `to_int8` records in a manifest's int8 variant; a folder without it has the older per-tensor recipe
(run one text per call)."""

# 7-bit weights: AVX2's u8 x s8 multiply-add (vpmaddubsw) cannot saturate: the same integers on every CPU
_W_RANGE = 63.0


def to_int8(model: Any, facts: dict[str, Any]) -> Any:
    """Dynamic int8 with one activation scale per token: every MatMul with a constant 2-D weight becomes
    an integer GEMM (`MatMulIntegerToFloat`) on int8 weights and uint8 activations.

    - Weights: symmetric, one scale per output column, in [-63, 63]. On AVX2 without VNNI onnxruntime
      multiplies u8 x s8 pairs with a saturating 16-bit add; the 7-bit range keeps every sum exact, so
      integer results are the same on every CPU (the float ops around them differ in the last bits).
    - Activations: each row (token) x gets its own scale amax(|x|) / 127, quantised at run time to
      uint8 around 128; the GEMM's float output is multiplied back by amax. One scale per token makes a
      text's result independent of its batch and its padding (the integer GEMM is exact), so int8 runs
      batched like fp32. Per-tensor scales (onnxruntime's `quantize_dynamic`) made results depend on the
      neighbours and cost quality on MiniLM's heavy-tailed FFN activations.
    - Embedding tables (constant 2-D `Gather` data): int8 rows, one scale per row.
    - Activation x activation MatMuls (attention) and everything else stay fp32.

    all-MiniLM-L6-v2, against its fp32 graph (docs/models.md, "int8"): edge-set mean cosine 0.992 (the
    per-tensor recipe: 0.990), SciFact abstracts mean 0.996.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    m = copy_model(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 17)
    consts: dict[str, Any] = {
        "int8/eps": np.array(1e-12, np.float32),
        "int8/127": np.array(127.0, np.float32),
        "int8/one": np.array(1.0, np.float32),
        "int8/zero_point": np.array(128, np.uint8),
    }
    if opset >= 18:
        consts["int8/axes"] = np.array([-1], np.int64)
    added = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    quantized: dict[str, tuple[str, str]] = {}  # activation -> (uint8 codes, per-token amax)
    weights: dict[str, tuple[str, str]] = {}  # float weight -> (int8 codes, column scales)
    nodes = []
    for n in g.node:
        table = inits.get(n.input[0]) if n.op_type == "Gather" else None
        if (
            table is not None
            and len(table.dims) == 2
            and not any(a.name == "axis" and a.i for a in n.attribute)
        ):
            # embedding tables: int8 rows, one scale per row, looked up beside the codes
            e = numpy_helper.to_array(table).astype(np.float32)
            scale = np.abs(e).max(axis=1, keepdims=True) / 127.0
            scale[scale == 0] = 1.0
            name, out = n.input[0], n.output[0]
            added += [
                numpy_helper.from_array(np.rint(e / scale).astype(np.int8), name + "/int8"),
                numpy_helper.from_array(scale.astype(np.float32), name + "/int8_scale"),
            ]
            nodes += [
                helper.make_node("Gather", [name + "/int8", n.input[1]], [out + "/int8_rows"]),
                helper.make_node("Gather", [name + "/int8_scale", n.input[1]], [out + "/int8_row_scales"]),
                helper.make_node(
                    "Cast", [out + "/int8_rows"], [out + "/float_rows"], to=onnx.TensorProto.FLOAT
                ),
                helper.make_node("Mul", [out + "/float_rows", out + "/int8_row_scales"], [out]),
            ]
            continue
        w_init = inits.get(n.input[1]) if n.op_type == "MatMul" else None
        if w_init is None or len(w_init.dims) != 2:
            nodes.append(n)
            continue
        x, base = n.input[0], n.input[1]
        if base not in weights:
            w = numpy_helper.to_array(w_init).astype(np.float32)
            scale = np.abs(w).max(axis=0) / _W_RANGE
            scale[scale == 0] = 1.0
            codes = np.clip(np.rint(w / scale), -_W_RANGE, _W_RANGE).astype(np.int8)
            weights[base] = (base + "/int8", base + "/int8_scale")
            # the GEMM's output is multiplied by amax afterwards: the activation scale's 1/127 lives here
            added += [
                numpy_helper.from_array(codes, weights[base][0]),
                numpy_helper.from_array((scale / 127.0).astype(np.float32), weights[base][1]),
            ]
        if x not in quantized:
            p = x + "/per_token"
            reduce = (
                helper.make_node("ReduceMax", [p + "_abs", "int8/axes"], [p + "_amax"], keepdims=1)
                if opset >= 18
                else helper.make_node("ReduceMax", [p + "_abs"], [p + "_amax"], keepdims=1, axes=[-1])
            )
            nodes += [
                helper.make_node("Abs", [x], [p + "_abs"]),
                reduce,
                helper.make_node("Max", [p + "_amax", "int8/eps"], [p + "_scale"]),
                helper.make_node("Div", ["int8/127", p + "_scale"], [p + "_inverse"]),
                helper.make_node("Mul", [x, p + "_inverse"], [p + "_scaled"]),
                helper.make_node(
                    "QuantizeLinear", [p + "_scaled", "int8/one", "int8/zero_point"], [p + "_u8"]
                ),
            ]
            quantized[x] = (p + "_u8", p + "_scale")
        codes_u8, amax = quantized[x]
        out = n.output[0]
        nodes += [
            helper.make_node(
                "MatMulIntegerToFloat",
                [codes_u8, weights[base][0], "int8/one", weights[base][1], "int8/zero_point"],
                [out + "/int8_gemm"],
                name=(n.name or out) + "/int8",
                domain="com.microsoft",
            ),
            helper.make_node(
                "Mul", [out + "/int8_gemm", amax], [out], name=(n.name or out) + "/int8_rescale"
            ),
        ]
    fused = sum(n.op_type == "Attention" for n in nodes)
    if fused:
        log.warning("%d fused Attention nodes keep Q/K/V weights in fp32; quantise the unfused graph", fused)
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [i for i in g.initializer if i.name in used] + [i for i in added if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return m


def graph_digest(path: Any) -> str:
    """sha256 of an ONNX file's graph (nodes and weights), leaving out the file's producer fields."""
    import hashlib

    import onnx

    return hashlib.sha256(onnx.load(str(path)).graph.SerializeToString()).hexdigest()


def recorded_check(digest: str, recorded: dict[str, Any]) -> Any:
    """The int8 gate without its data: passes when the folder's int8 graph is byte for byte the graph that
    passed `retrieval_check` when `recorded` was measured (its figures are returned with the digest).

    `to_int8` is deterministic, so a built-in model quantised on a user's machine gives that very graph;
    any other graph (other weights, another recipe or onnx serialisation) does not pass and needs the
    measured gate. Returns a callable(folder) -> dict for `export(int8_check=...)`.
    """

    def check(folder: Any) -> dict[str, Any]:
        from pathlib import Path

        got = graph_digest(Path(folder) / VARIANTS["int8"])
        return {**recorded, "graph_sha256": got, "passed": got == digest and bool(recorded.get("passed"))}

    return check
