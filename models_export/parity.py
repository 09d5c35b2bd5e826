"""The parity gate: an exported model must reproduce its reference on a fixed set of awkward texts.

Embedders: cosine of pooled vectors per text (fp32 and fp16: min >= 0.9999; int8: mean >= 0.99 plus a
retrieval check, see `quantize`). Rerankers: absolute difference of the logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

LONG = " ".join(
    f"Sentence {i} of a long passage about protein folding, climate models and distributed databases."
    for i in range(40)
)
EDGE_TEXTS = [
    "",
    " ",
    "a",
    "Hello world!",
    "How do I reset my password?",
    "😀🚀🔥 emoji only? 👍🏽",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "机器学习是人工智能的一个分支。",
    "Машинное обучение — это раздел искусственного интеллекта.",
    "التعلم الآلي هو فرع من فروع الذكاء الاصطناعي",
    "def f(x):\n    return x ** 2  # code, tabs\tand newlines",
    "3.14159 2.71828 1e-9 0x7fff -42 +7 100%",
    "!!!???...,,,;;;:::",
    "UPPER CASE AND lower case AND MiXeD CaSe",
    "The mitochondria is the powerhouse of the cell; ATP synthase couples proton flow to phosphorylation.",
    LONG,  # far beyond 256 tokens: exercises truncation
    "word " * 300,
]
EDGE_PAIRS = [
    ("what is the powerhouse of the cell?", EDGE_TEXTS[14]),
    ("what is the powerhouse of the cell?", EDGE_TEXTS[6]),
    ("password reset", EDGE_TEXTS[4]),
    ("", EDGE_TEXTS[3]),
    ("emoji", EDGE_TEXTS[5]),
    ("机器学习", EDGE_TEXTS[7]),
    ("protein folding", LONG),
    ("a", ""),
]

FP_MIN_COSINE = 0.9999
INT8_MEAN_COSINE = 0.99
LOGIT_ATOL = {"fp32": 1e-3, "fp16": 5e-2, "int8": 0.5}


def cosines(a: NDArray[Any], b: NDArray[Any]) -> NDArray[np.float64]:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.where(den > 0, den, 1.0))


def figures(kind: str, got: NDArray[Any], ref: NDArray[Any]) -> dict[str, float]:
    if kind == "embedder":
        c = cosines(got, ref)
        return {
            "texts": len(c),
            "min_cosine": float(c.min()),
            "mean_cosine": float(c.mean()),
            "max_abs_diff": float(np.abs(np.asarray(got, np.float64) - ref).max()),
        }
    d = np.abs(np.asarray(got, np.float64) - ref)
    return {"pairs": len(d), "max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean())}


def passes(kind: str, variant: str, fig: dict[str, float]) -> bool:
    if kind == "embedder":
        if variant == "int8":
            return fig["mean_cosine"] >= INT8_MEAN_COSINE
        return fig["min_cosine"] >= FP_MIN_COSINE
    return fig["max_abs_diff"] <= LOGIT_ATOL[variant]


class ParityError(ValueError):
    """An exported model differs from its reference beyond the gate; nothing was written."""
