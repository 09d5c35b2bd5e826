"""Reranking a recalled list: which candidates the reranker reads (depth), how its score is mixed with the
first stage's (blend, adaptive weight), and the order that results (ties keep the first stage's order).

`rerank_lists` is the one implementation: `Engine.search` and `duorank eval` call it, and training's dev
grid applies its `rerank_head` and `best_first`, so the numbers an evaluation reports are those a user's
search returns.
"""

from __future__ import annotations

import time
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
    budget_ms: float | None = None,
) -> Reranked:
    """Rerank each query's candidate list (its `texts`, best first, with their first-stage scores `first`):
    the reranker reads the first `depth` (default: the depth it records for `recall`, raised to top_n, or
    all top_k for a reranker without one) and its scores are blended with the first stage's by `weight`
    (default: the weight it records for `recall`, scaled per list by `adaptive_weight` when it records the
    adaptive scale; a weight given here is used as given). `budget_ms`: the depth is the deepest, up to
    `depth` if given, else up to top_k, whose predicted cost (`reranker.cost`, a `RerankCost`, measured
    now if the reranker has none, times `reranker.cost_scale`, what recent reranks took against their
    prediction) fits the budget, over all the queries together; 0 when not even one candidate each fits.
    Each budgeted rerank reports its time (`reranker.observe_cost`)."""
    chosen = reranker.defaults(recall)
    d = min(top_k, depth or (top_k if budget_ms is not None else max(top_n, chosen.depth or top_k)))
    a = chosen.blend if weight is None else float(weight)
    adaptive = bool(chosen.adaptive) and weight is None
    predicted = 0.0
    if budget_ms is None:
        tokens = reranker.tokenize([(q, list(t[:d])) for q, t in zip(queries, texts)])
    else:
        cost = reranker.cost if reranker.cost is not None else reranker.measure_cost()
        windows = reranker.long_documents == "windows"
        # the model's prediction scaled by how far the recent reranks ran past it (Reranker.cost_scale)
        budget = _check_budget(budget_ms) / reranker.cost_scale
        # tokenise only as deep as may fit: first as many as fit at max_length a window, then twice that
        widest = float(cost.per_window(np.array([reranker.max_length], np.float64))[0])
        k = min(d, max(1, int(budget / max(widest * len(queries), 1e-9)) + 1))
        while True:
            tokens = reranker.tokenize([(q, list(t[:k])) for q, t in zip(queries, texts)])
            fits = budget_depth(cost, tokens, budget, k, windows=windows)
            if fits < k or k >= d or all(len(t) <= k for t in texts):
                break
            k = min(d, 2 * k)
        d = fits
        if d == 0:
            empty = np.empty(0, np.float32)
            final = [rerank_head(f, empty, 1.0) for f in first]
            return Reranked(final, [empty] * len(final), 0, 0, a, adaptive)
        tokens = tokens.head(d)
        predicted = cost.estimate([len(w.ids) for e in tokens.encodings for w in _windows(e, windows)])
    t0 = time.perf_counter()
    scored = reranker.score_groups(tokens)
    if predicted:
        reranker.observe_cost(predicted, 1e3 * (time.perf_counter() - t0))
    final = [rerank_head(f, s.scores, a, adaptive=adaptive) for s, f in zip(scored, first)]
    own = [s.scores for s in scored]
    return Reranked(final, own, sum(s.n_truncated for s in scored), d, a, adaptive)


@dataclass(frozen=True, slots=True)
class RerankCost:
    """What one reranker costs on this machine (`Reranker.measure_cost`): `fixed_ms` a call, and the
    milliseconds a window of each padded length in `lengths` takes inside a batch (`ms_per_window`);
    between the lengths it is interpolated, past the longest extrapolated linearly."""

    fixed_ms: float
    lengths: tuple[int, ...]
    ms_per_window: tuple[float, ...]

    def estimate(self, window_lengths: ArrayLike) -> float:
        """Predicted milliseconds to score windows of these token lengths in one call."""
        lengths = np.asarray(window_lengths, dtype=np.float64)
        if lengths.size == 0:
            return 0.0
        return self.fixed_ms + float(self.per_window(lengths).sum())

    def per_window(self, lengths: NDArray[np.float64]) -> NDArray[np.float64]:
        xs, ys = np.asarray(self.lengths, np.float64), np.asarray(self.ms_per_window, np.float64)
        out = np.interp(lengths, xs, ys)
        if len(xs) > 1:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
            out = np.where(lengths > xs[-1], ys[-1] + slope * (lengths - xs[-1]), out)
        return np.asarray(out, np.float64)


def budget_depth(cost: RerankCost, tokens: Any, budget_ms: float, cap: int, *, windows: bool = True) -> int:
    """The deepest d <= cap such that reading the first d candidates of every group of `tokens` (a
    `PairTokens`: pairs, and their overflowing windows when `windows`) is predicted to take at most
    `budget_ms`."""
    _check_budget(budget_ms)
    per_pair, start = [], 0
    for size in tokens.sizes:
        enc = tokens.encodings[start : start + size]
        start += size
        ms = [
            cost.per_window(np.array([len(w.ids) for w in [e, *e.overflowing]], np.float64)).sum()
            for e in enc
        ]
        per_pair.append(np.cumsum(np.asarray(ms, np.float64)))
    best = 0
    for d in range(1, cap + 1):
        total = cost.fixed_ms + sum(float(c[min(d, len(c)) - 1]) for c in per_pair if len(c))
        if total > budget_ms:
            break
        best = d
    return best


def _check_budget(budget_ms: Any) -> float:
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float, np.floating)) or budget_ms < 0:
        raise ValueError(f"rerank budget {budget_ms!r} ms: expected a number >= 0")
    return float(budget_ms)


def _windows(encoding: Any, windows: bool) -> list[Any]:
    return [encoding, *encoding.overflowing] if windows else [encoding]


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
