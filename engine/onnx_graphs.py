"""ONNX graph rewrites the runtime needs as well as the exporter: onnxruntime's transformer fusions, fp16,
and the int8 graph's weights expanded back to float for GPUs (an int8 folder on CUDA)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("duorank.models")


def optimize(model: Any, facts: dict[str, Any]) -> Any:
    """onnxruntime's transformer optimizer: fused Attention, SkipLayerNorm, BiasGelu (contrib ops).

    Without its symbolic shape inference, which needs sympy (85 MB installed; onnxruntime-gpu >= 1.31 no
    longer pulls it): for the default embedder the fused graph is byte for byte the one it gives with it.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model = copy_model(model)  # the optimizer edits its input in place
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


def half(fused: Any) -> Any:
    """fp16 of a fused graph; DequantizeLinear (int8 embedding lookups) stays fp32: opset 17 has no fp16
    scales. No shape inference (ONNX's cannot type the contrib ops, onnxruntime's symbolic one needs sympy):
    for the default embedder the nodes and weights equal those of the symbolic path, which only adds
    `value_info` type annotations (onnxruntime infers the types again when it loads the graph)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    return convert_float_to_float16(
        copy_model(fused),
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
    return half(fused), "fp16"


def copy_model(model: Any) -> Any:
    """A copy of an ONNX ModelProto (the rewrites here leave their input as it was)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


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
    from onnx import helper, numpy_helper

    m = copy_model(model)
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
