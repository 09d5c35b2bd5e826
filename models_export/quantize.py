"""Graph optimisation and the smaller variants (fp16, int8) of an exported fp32 graph."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("duorank.models_export")


def optimize(model: Any, facts: dict[str, Any]) -> Any:
    """onnxruntime's transformer optimizer: fused Attention, SkipLayerNorm, BiasGelu (contrib ops)."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    model = _copy(model, onnx)  # the optimizer edits its input in place
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    opt = optimize_model(
        model,
        model_type="bert",
        num_heads=facts["num_attention_heads"],
        hidden_size=facts["hidden_size"],
        opt_level=0,
    )
    log.info("optimizer fusions: %s", {k: v for k, v in opt.get_fused_operator_statistics().items() if v})
    return opt.model


def to_fp16(model: Any, facts: dict[str, Any]) -> Any:
    """Half-precision weights and activations with float32 inputs/outputs, on the fused graph.

    Fusing first matters: the fused Attention takes the mask as an index, while the unfused graph's additive
    mask (1 - mask) * float32 min would overflow to -inf in fp16 and give 0 * -inf = NaN.
    """
    from onnxruntime.transformers.onnx_model import OnnxModel

    fused = OnnxModel(optimize(model, facts))
    fused.convert_float_to_float16(keep_io_types=True)
    return fused.model


def _copy(model: Any, onnx: Any) -> Any:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def down_projections(model: Any) -> list[str]:
    """MatMul nodes whose constant weight shrinks the width (FFN output: intermediate -> hidden)."""
    from onnx import numpy_helper

    shapes = {
        i.name: tuple(numpy_helper.to_array(i).shape) for i in model.graph.initializer if len(i.dims) == 2
    }
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in shapes and shapes[n.input[1]][0] > shapes[n.input[1]][1]
    ]


def to_int8(model: Any, facts: dict[str, Any]) -> Any:
    """Dynamic int8: weights per output channel, activations per tensor at run time (MatMulInteger), with
    the FFN down-projections int8 in their weights only.

    Recipe chosen by a sensitivity scan on all-MiniLM-L6-v2 (README, "int8"): every constant-weight MatMul
    is quantised dynamically except the FFN down-projections, whose GELU inputs are heavy-tailed and lose
    the most when the activation is quantised; those keep fp32 activations and store int8 per-channel
    weights that a DequantizeLinear expands at run time (the file stays int8-sized: 23 MB for MiniLM-L6,
    not 34 MB with fp32 down-projections). Activation x activation MatMuls (attention scores) stay fp32.
    Plain per-tensor int8 of every MatMul measured mean cosine 0.94 against fp32; this recipe keeps it
    above 0.99 on the edge set.
    """
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = down_projections(model)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=excluded,
            extra_options={"MatMulConstBOnly": True},
        )
        return weight_only_int8(onnx.load(str(dst)), excluded)


def dequantize_weights(model: Any) -> Any:
    """The int8 graph of `to_int8` with its constant weights expanded back to fp32, activations float.

    Each MatMulInteger fed by a DynamicQuantizeLinear and a constant int8 weight (with its Cast and scale
    Mul) becomes one float MatMul on (Wq - Wzp) * Wscale, per column; each DequantizeLinear of constants
    becomes a constant. The weights keep their int8 rounding, the activations are no longer quantised:
    for GPUs, where onnxruntime runs dynamic quantisation on the CPU, one text per call (65x slower than
    fp16 on an H200). Embedding lookups stay int8 (a Gather, then a DequantizeLinear of its rows: cheap and
    GPU-native). A graph without these patterns comes back unchanged.
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
    used = {i for n in kept for i in n.input} | {o.name for o in m.graph.output}
    kept = [n for n in kept if n.op_type != "DynamicQuantizeLinear" or any(o in used for o in n.output)]
    used = {i for n in kept for i in n.input} | {o.name for o in m.graph.output}
    del m.graph.node[:]
    m.graph.node.extend(kept)
    keep_inits = [i for i in m.graph.initializer if i.name in used] + [w for w in weights if w.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep_inits)
    return m


def weight_only_int8(model: Any, nodes: list[str]) -> Any:
    """Store the constant weight of each named MatMul as int8 per output column (symmetric, scale =
    max|w| / 127) behind a DequantizeLinear: the activation stays fp32, the file shrinks 4x for them."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    wanted = set(nodes)
    for pos, node in reversed(list(enumerate(model.graph.node))):
        if node.name not in wanted or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        scale = np.abs(w).max(axis=0) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        base = node.input[1]
        model.graph.initializer.remove(inits[base])
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(q, base + "_wq"),
                numpy_helper.from_array(scale.astype(np.float32), base + "_wscale"),
                numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), base + "_wzero"),
            ]
        )
        deq = helper.make_node(
            "DequantizeLinear",
            [base + "_wq", base + "_wscale", base + "_wzero"],
            [base + "_dequantized"],
            name=node.name + "_weight_dequantize",
            axis=1,
        )
        node.input[1] = base + "_dequantized"
        model.graph.node.insert(pos, deq)
    return model


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
