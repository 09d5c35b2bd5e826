"""Graph optimisation and the smaller variants (fp16, int8) of an exported fp32 graph."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("duorank.models_export")


def optimize(model: Any, facts: dict[str, Any]) -> Any:
    """onnxruntime's transformer optimizer: fused Attention / SkipLayerNormalization / BiasGelu (contrib ops)."""
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
