"""A trained reranker as the teacher of a smaller one: its logits for each training group, cached.

The student (for instance the first two layers of the teacher's own base) learns the teacher's order of
each group (the positive and its mined negatives) as well as the labels: the loss adds the KL divergence
from the teacher's softmax over the group to the student's. The teacher is any duorank reranker (a
name such as "default" or a model folder) and runs in onnxruntime, so no second torch model is held."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger("duorank.models_export.train")


class Teacher:
    """Logits of (query, document) pairs by a duorank reranker, each pair scored once (cached by key)."""

    def __init__(self, name_or_path: str, *, max_length: int, device: str = "cpu") -> None:
        from duorank import Reranker

        self.reranker = Reranker.load(name_or_path, long_documents="truncate", device=device)
        if self.reranker.max_length < max_length:
            log.warning(
                "teacher %s reads %d tokens, the student %d: the student's tail is unseen by it",
                name_or_path,
                self.reranker.max_length,
                max_length,
            )
        from .choose import sigmoid_head

        self.name = str(name_or_path)
        self._sigmoid = sigmoid_head(self.reranker)
        self._cache: dict[Any, float] = {}

    def logits(self, query: str, docs: Sequence[tuple[Any, str]]) -> NDArray[np.float64]:
        """The teacher's logit of (query, text) for each (key, text) in `docs`, float64 (n,)."""
        missing = [(k, t) for k, t in docs if k not in self._cache]
        if missing:
            quiet = logging.getLogger("duorank.models")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # "pairs were cut": the student's own input is cut the same way
            try:
                scored = self.reranker.score_groups([(query, [t for _, t in missing])])[0].scores
            finally:
                quiet.setLevel(level)
            raw = _logit(scored) if self._sigmoid else scored.astype(np.float64)
            for (k, _), s in zip(missing, raw):
                self._cache[k] = float(s)
        return np.array([self._cache[k] for k, _ in docs], dtype=np.float64)

    def provenance(self) -> dict[str, Any]:
        m = self.reranker.manifest
        return {
            "name": self.name,
            "model": m.get("name"),
            "variant": self.reranker.variant,
            "files": {f: v["sha256"] for f, v in m.get("files", {}).items()},
            "pairs_scored": len(self._cache),
        }


def _logit(p: NDArray[np.float32]) -> NDArray[np.float64]:
    """The logit behind a sigmoid head's score (clipped where float32 saturates)."""
    x = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(x) - np.log1p(-x)
