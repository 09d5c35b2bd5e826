"""Reranking a recalled list: which candidates the reranker reads (depth), how its score is mixed with the
first stage's (blend, adaptive weight), and the order that results (ties keep the first stage's order).

`rerank_lists` is the one implementation: `Engine.search` and `duorank eval` call it, and training's dev
grid applies its `rerank_head` and `best_first`, so the numbers an evaluation reports are those a user's
search returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .lexical import normalise


@dataclass(frozen=True, slots=True)
class Reranked:
    """Per query: the final scores of its whole candidate list (order it with `best_first`) and the
    reranker's own scores of the head it read; the settings that were in force."""

    final: list[NDArray[np.float64]]
    own: list[NDArray[np.float32]]
    truncated: int  # (query, document) pairs cut at the reranker's max_length
    depth: int  # candidates the reranker read per query (at most)
    blend: float  # the weight of its score, before the adaptive scale
    adaptive: bool  # whether each list's weight was scaled by `adaptive_weight`

    def settings(self) -> dict[str, Any]:
        return {"depth": self.depth, "blend": self.blend, "adaptive": self.adaptive}


def rerank_lists(
    reranker: Any,
    queries: Sequence[str],
    texts: Sequence[Sequence[str]],
    first: Sequence[ArrayLike],
    *,
    recall: str,
    top_n: int,
    top_k: int,
    depth: int | None = None,
    weight: float | None = None,
) -> Reranked:
    """Rerank each query's candidate list (its `texts`, best first, with their first-stage scores `first`):
    the reranker reads the first `depth` (default: the depth it records for `recall`, raised to top_n, or
    all top_k for a reranker without one) and its scores are blended with the first stage's by `weight`
    (default: the weight it records for `recall`, scaled per list by `adaptive_weight` when it records the
    adaptive scale; a weight given here is used as given)."""
    chosen = reranker.defaults(recall)
    d = depth or max(top_n, chosen.depth or top_k)
    scored = reranker.score_groups([(q, list(t[:d])) for q, t in zip(queries, texts)])
    a = chosen.blend if weight is None else float(weight)
    adaptive = bool(chosen.adaptive) and weight is None
    final = [rerank_head(f, s.scores, a, adaptive=adaptive) for s, f in zip(scored, first)]
    own = [s.scores for s in scored]
    return Reranked(final, own, sum(s.n_truncated for s in scored), d, a, adaptive)


def blend(first: ArrayLike, second: ArrayLike, weight: float) -> NDArray[np.float64]:
    """weight * z(second) + (1 - weight) * z(first), each score z-normalised within its list (one query's
    candidates): how a reranker's score is mixed with the first stage's. weight 1.0 keeps second's order."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blend weight {weight!r}: expected 0 <= weight <= 1 (1: the reranker alone)")
    a = normalise(np.asarray(first, dtype=np.float64), "zscore")
    b = normalise(np.asarray(second, dtype=np.float64), "zscore")
    if a.shape != b.shape:
        raise ValueError(f"blend: {a.shape} first-stage scores but {b.shape} reranker scores")
    return weight * b + (1.0 - weight) * a


def best_first(scores: ArrayLike) -> NDArray[np.intp]:
    """Positions of one candidate list's final scores, best first; equal scores keep the list's order (the
    first stage's), as `Engine.search` returns them."""
    s = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(s.shape[0]), -s))


def adaptive_weight(weight: float, scores: ArrayLike) -> float:
    """A default blend weight scaled by how well the reranker tells this list apart: weight * (1 - the
    median of its scores), for scores in [0, 1] (a sigmoid head). In its own domains a reranker scores
    most candidates near 0 and the weight stays; out of them it scores most of a list high (median of
    the non-relevant: 0.004 on SciFact dev, 0.83 on Banking77 for the packaged one), and the first stage
    keeps more say."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return weight
    if not (s.min() >= 0.0 and s.max() <= 1.0):
        raise ValueError(
            f"adaptive blend: reranker scores span [{s.min():.4g}, {s.max():.4g}]; expected [0, 1] "
            "(a sigmoid head)"
        )
    return float(weight * (1.0 - np.median(s)))


def rerank_head(
    first: ArrayLike, head: ArrayLike, weight: float, *, adaptive: bool = False
) -> NDArray[np.float64]:
    """Final scores of one query's candidate list when a reranker scored only its head (the first
    len(head)): the head blended with its first-stage scores (weight 1.0: the reranker alone; with
    `adaptive`, the weight scaled by `adaptive_weight` first), then the rest in first-stage order, every
    one below the head."""
    first = np.asarray(first, dtype=np.float64)
    head = np.asarray(head, dtype=np.float64)
    if head.ndim != 1 or first.ndim != 1 or head.shape[0] > first.shape[0]:
        raise ValueError(f"rerank_head: {head.shape} head scores for {first.shape} candidates")
    if adaptive:
        weight = adaptive_weight(weight, head)
    top = head if weight == 1.0 else blend(first[: head.shape[0]], head, weight)
    rest = first.shape[0] - top.shape[0]
    if rest == 0:
        return top
    floor = top.min() if top.size else 0.0
    return np.concatenate([top, floor - np.arange(1, rest + 1, dtype=np.float64)])
