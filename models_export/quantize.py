"""Graph optimisation and the smaller variants (fp16, int8) of an exported fp32 graph."""

from __future__ import annotations

import logging
from typing import Any

from duorank.models import INT8_ACTIVATIONS, VARIANTS

log = logging.getLogger("duorank.models_export")


def optimize(model: Any, facts: dict[str, Any]) -> Any:
    """onnxruntime's transformer optimizer: fused Attention, SkipLayerNorm, BiasGelu (contrib ops).

    Without its symbolic shape inference, which needs sympy (85 MB installed; onnxruntime-gpu >= 1.31 no
    longer pulls it): for the default embedder the fused graph is byte for byte the one it gives with it.
    """
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model = _copy(model, onnx)  # the optimizer edits its input in place
    # onnxruntime imports its fusion modules as top-level ones; this one warns that the (deliberately) absent
    # shape inference is absent, at every fusion
    for name in ("onnxruntime.transformers", "fusion_skiplayernorm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    options = FusionOptions("bert")
    options.enable_shape_inference = False
    opt = optimize_model(
        model,
        model_type="bert",
        num_heads=facts["num_attention_heads"],
        hidden_size=facts["hidden_size"],
        opt_level=0,
        optimization_options=options,
    )
    log.info("optimizer fusions: %s", {k: v for k, v in opt.get_fused_operator_statistics().items() if v})
    return opt.model


def to_fp16(model: Any, facts: dict[str, Any]) -> Any:
    """Half-precision weights and activations with float32 inputs/outputs, on the fused graph.

    Fusing first matters: the fused Attention takes the mask as an index, while the unfused graph's additive
    mask (1 - mask) * float32 min would overflow to -inf in fp16 and give 0 * -inf = NaN.
    """
    return _half(optimize(model, facts))


def _half(fused: Any) -> Any:
    """fp16 of a fused graph; DequantizeLinear (int8 embedding lookups) stays fp32: opset 17 has no fp16
    scales. No shape inference (ONNX's cannot type the contrib ops, onnxruntime's symbolic one needs sympy):
    for the default embedder the nodes and weights equal those of the symbolic path, which only adds
    `value_info` type annotations (onnxruntime infers the types again when it loads the graph)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    return convert_float_to_float16(
        _copy(fused, onnx),
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, "DequantizeLinear"],
        disable_shape_infer=True,
    )


def expand_for_gpu(model: Any, facts: dict[str, Any] | None) -> tuple[Any, str]:
    """The graph an int8 folder runs on a GPU, and its precision: `dequantize_weights`, then in fp16 (as
    fp32 folders run there) when `facts` give the attention shape and the optimizer fuses the attention
    (an unfused fp16 graph can overflow its additive mask, see `to_fp16`); otherwise in fp32."""
    graph = dequantize_weights(model)
    if not facts or not {"num_attention_heads", "hidden_size"} <= facts.keys():
        return graph, "fp32"
    try:
        fused = optimize(graph, facts)
    except Exception as e:  # an architecture the optimizer does not know: fp32 still runs
        log.warning("onnxruntime's optimizer failed on the expanded int8 graph (%s); running it in fp32", e)
        return graph, "fp32"
    if not any(n.op_type == "Attention" for n in fused.graph.node):
        return graph, "fp32"
    return _half(fused), "fp16"


def _copy(model: Any, onnx: Any) -> Any:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


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

    m = _copy(model, onnx)
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


def _per_token_matmul(n: Any, inits: dict[str, Any], producer: dict[str, Any], users: Any) -> Any:
    """(float input, fp32 weight, rescale Mul) of one per-token int8 MatMul made by `to_int8`, else None."""
    import numpy as np
    from onnx import numpy_helper

    def const(name: str) -> Any:
        return numpy_helper.to_array(inits[name]).astype(np.float64) if name in inits else None

    quant = producer.get(n.input[0])
    scaled = producer.get(quant.input[0]) if quant is not None and quant.op_type == "QuantizeLinear" else None
    if scaled is None or scaled.op_type != "Mul" or len(users[n.output[0]]) != 1:
        return None
    inverse = producer.get(scaled.input[1])
    rescale = users[n.output[0]][0]
    if inverse is None or inverse.op_type != "Div" or rescale.op_type != "Mul":
        return None
    numerator, a_scale, b_scale = const(inverse.input[0]), const(n.input[2]), const(n.input[3])
    b_zero = const(n.input[5]) if len(n.input) > 5 and n.input[5] else 0.0
    if numerator is None or a_scale is None or b_scale is None or b_zero is None:
        return None
    weight = (const(n.input[1]) - b_zero) * b_scale * a_scale * numerator
    return scaled.input[0], weight.astype(np.float32), rescale


def dequantize_weights(model: Any) -> Any:
    """The int8 graph of `to_int8` with its constant weights expanded back to fp32, activations float.

    Each per-token int8 MatMul (`MatMulIntegerToFloat` and its rescale) becomes one float MatMul; so does
    each MatMulInteger of the older per-tensor recipe fed by a DynamicQuantizeLinear and a constant int8
    weight (with its Cast and scale Mul), on (Wq - Wzp) * Wscale per column; each DequantizeLinear of
    constants becomes a constant. The weights keep their int8 rounding, the activations are no longer
    quantised: for GPUs, where onnxruntime runs dynamic quantisation on the CPU (the per-tensor recipe, one
    text per call, was 65x slower than fp16 on an H200). Embedding lookups stay int8 (a Gather, then a
    dequantisation of its rows: cheap and GPU-native). A graph without these patterns comes back unchanged.
    """
    from collections import defaultdict

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    m = _copy(model, onnx)
    inits = {i.name: i for i in m.graph.initializer}

    def const(name: str) -> Any:
        return numpy_helper.to_array(inits[name]).astype(np.float32)

    producer = {o: n for n in m.graph.node for o in n.output}
    users: dict[str, list[Any]] = defaultdict(list)
    for n in m.graph.node:
        for i in n.input:
            users[i].append(n)
    replace: dict[int, Any] = {}  # id(node) -> its float replacement (None: drop)
    weights = []
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and all(i in inits for i in n.input if i):
            zero = const(n.input[2]) if len(n.input) > 2 and n.input[2] else 0.0
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            q, scale = const(n.input[0]), const(n.input[1])
            shape = [1] * q.ndim
            if scale.ndim:
                shape[axis] = -1
            weights.append(
                numpy_helper.from_array((q - np.reshape(zero, shape)) * scale.reshape(shape), n.output[0])
            )
            replace[id(n)] = None
            continue
        if n.op_type == "MatMulIntegerToFloat" and n.input[1] in inits:
            per_token = _per_token_matmul(n, inits, producer, users)
            if per_token is not None:
                x, weight, rescale = per_token
                name = n.input[1] + "_dequantized"
                weights.append(numpy_helper.from_array(weight, name))
                replace[id(n)] = helper.make_node(
                    "MatMul", [x, name], list(rescale.output), name=n.name + "_float"
                )
                replace[id(rescale)] = None
            continue
        if n.op_type != "MatMulInteger" or n.input[1] not in inits:
            continue
        dql = producer.get(n.input[0])
        if dql is None or dql.op_type != "DynamicQuantizeLinear" or len(users[n.output[0]]) != 1:
            continue
        cast = users[n.output[0]][0]
        if cast.op_type != "Cast" or len(users[cast.output[0]]) != 1:
            continue
        mul = users[cast.output[0]][0]
        scales = producer.get(next((i for i in mul.input if i != cast.output[0]), ""))
        if mul.op_type != "Mul" or scales is None:
            continue
        w_scale = next((i for i in scales.input if i in inits), None)
        if w_scale is None:
            continue
        q = const(n.input[1])
        zero = const(n.input[3]) if len(n.input) > 3 and n.input[3] else 0.0
        name = n.input[1] + "_dequantized"
        weights.append(numpy_helper.from_array((q - zero) * const(w_scale), name))
        replace[id(n)] = helper.make_node(
            "MatMul", [dql.input[0], name], list(mul.output), name=n.name + "_float"
        )
        replace[id(cast)] = replace[id(mul)] = None
        if len(users[scales.output[0]]) == 1:
            replace[id(scales)] = None
    if not replace:
        return m
    nodes = [replace.get(id(n), n) for n in m.graph.node]
    kept = [n for n in nodes if n is not None]
    while True:  # drop what fed only the removed quantisation (activation scales, DynamicQuantizeLinear)
        used = {i for n in kept for i in n.input} | {o.name for o in m.graph.output}
        live = [n for n in kept if any(o in used for o in n.output)]
        if len(live) == len(kept):
            break
        kept = live
    del m.graph.node[:]
    m.graph.node.extend(kept)
    keep_inits = [i for i in m.graph.initializer if i.name in used] + [w for w in weights if w.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep_inits)
    return m


def retrieval_check(
    data: Any,
    *,
    max_drop: float = 1.0,
    k: int = 10,
    split: str = "test",
    queries: Any = None,
    depth: int = 20,
) -> Any:
    """The quality half of the int8 gate: nDCG@k on a labelled BEIR set (SciFact), int8 within max_drop
    points of fp32. An embedder embeds the whole corpus with each variant and searches it; a reranker
    reranks the BM25 top `depth` of each query (documents cut at its max_length) with each variant.

    data: a BEIR folder (its `split`) or a loaded `Dataset`; queries: a subset of its query ids (default
    all). Returns a callable(folder) -> dict for `export(int8_check=...)`; it takes minutes on a small CPU.
    """
    import numpy as np

    from duorank.eval.datasets import Dataset, load_beir
    from duorank.eval.metrics import evaluate
    from duorank.models import Embedder, Reranker, read_manifest

    ds = data if isinstance(data, Dataset) else load_beir(data, split)
    doc_ids = ds.doc_ids()
    qids = list(ds.queries) if queries is None else list(queries)
    qrels = {q: ds.qrels[q] for q in qids}
    candidates: list[Any] = []

    def embedder_run(folder: Any, variant: str) -> dict[str, dict[str, float]]:
        emb = Embedder.load(folder, variant=variant, threads=2)
        d = emb.encode([ds.corpus[i] for i in doc_ids], progress=True)
        q = emb.encode([ds.queries[i] for i in qids], "query")
        s = q @ d.T
        top = np.argsort(-s, axis=1)[:, :100]
        return {qid: {doc_ids[j]: float(s[r, j]) for j in top[r]} for r, qid in enumerate(qids)}

    def reranker_run(folder: Any, variant: str) -> dict[str, dict[str, float]]:
        if not candidates:
            from duorank.lexical import BM25

            hits = BM25.build([ds.corpus[i] for i in doc_ids]).search([ds.queries[q] for q in qids], depth)
            candidates.extend([doc_ids[j] for j in row[row >= 0]] for row in hits.ids)
        rr = Reranker.load(folder, variant=variant, threads=2, long_documents="truncate")
        groups = [(ds.queries[q], [ds.corpus[d] for d in docs]) for q, docs in zip(qids, candidates)]
        scores = rr.score_groups(groups)
        return {q: dict(zip(docs, map(float, s))) for q, docs, s in zip(qids, candidates, scores)}

    def check(folder: Any) -> dict[str, Any]:
        kind = read_manifest(folder, verify=False)["kind"]
        run = reranker_run if kind == "reranker" else embedder_run
        base, quant = (
            100 * evaluate(qrels, run(folder, v), [f"ndcg@{k}"]).mean[f"ndcg@{k}"] for v in ("fp32", "int8")
        )
        return {
            "dataset": ds.name,
            "split": ds.split,
            "queries": len(qids),
            **({"bm25_depth": depth} if kind == "reranker" else {}),
            f"ndcg@{k}_fp32": round(base, 2),
            f"ndcg@{k}_int8": round(quant, 2),
            "max_drop": max_drop,
            "passed": base - quant <= max_drop,
        }

    return check


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
