"""Retrieval metrics at cutoffs, computed as trec_eval computes them.

Ranking: score descending, equal scores by document id descending (trec_eval's order, so numbers match
pytrec_eval). A document is relevant when its grade >= relevance_level (default 1); nDCG uses the grade
as linear gain with a log2(rank + 1) discount, the ideal ranking built from every judged grade.
Queries: every query of the qrels is scored; one missing from the run scores 0 and is counted in
`EvalResult.missing`; a run query absent from the qrels is not judged and is counted in `unjudged`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]

KNOWN_METRICS = ("ndcg", "mrr", "map", "recall", "precision", "hit_rate")
_ALIASES = {"p": "precision", "success": "hit_rate", "hitrate": "hit_rate", "r": "recall"}
_NAME = re.compile(r"^([a-z_]+)@(\d+)$")
DEFAULT_METRICS = ("ndcg@10", "mrr@10", "map@100", "recall@100", "precision@10", "hit_rate@10")


@dataclass(frozen=True)
class EvalResult:
    """Mean and per-query value of each metric (keys are the normalised names, e.g. 'ndcg@10')."""

    mean: dict[str, float]
    per_query: dict[str, dict[str, float]]
    missing: list[str] = field(default_factory=list)  # judged queries with no run: scored 0
    unjudged: list[str] = field(default_factory=list)  # run queries absent from the qrels: ignored


def parse_metric(name: str) -> tuple[str, int]:
    """'NDCG@10' -> ('ndcg', 10); an unknown name raises ValueError listing the known ones."""
    m = _NAME.match(str(name).strip().lower())
    base = _ALIASES.get(m.group(1), m.group(1)) if m else None
    if m is None or base not in KNOWN_METRICS or int(m.group(2)) < 1:
        known = ", ".join(f"{k}@K" for k in KNOWN_METRICS)
        raise ValueError(f"unknown metric {name!r}: expected one of {known} with K >= 1")
    return str(base), int(m.group(2))


def _ranked_grades(judged: Mapping[str, int], scores: Mapping[str, float], qid: str) -> NDArray[np.float64]:
    """Grades of the run's documents in trec_eval order (score desc, then doc id desc)."""
    items = sorted(scores.items(), key=lambda kv: kv[0], reverse=True)
    for doc, s in items:
        if (
            not isinstance(s, (int, float, np.integer, np.floating))
            or isinstance(s, bool)
            or not math.isfinite(s)
        ):
            raise ValueError(f"run[{qid!r}][{doc!r}] = {s!r}: scores must be finite numbers")
    items.sort(key=lambda kv: -float(kv[1]))
    return np.array([judged.get(doc, 0) for doc, _ in items], dtype=np.float64)


def _query_metric(
    base: str, k: int, ranked: NDArray[np.float64], judged: NDArray[np.float64], level: int
) -> float:
    top = ranked[:k]
    hit = top >= level
    n_rel = int((judged >= level).sum())
    if base == "precision":
        return float(hit.sum()) / k
    if base == "hit_rate":
        return float(hit.any())
    if base == "mrr":
        return 1.0 / (int(np.argmax(hit)) + 1) if hit.any() else 0.0
    if n_rel == 0:
        return 0.0
    if base == "recall":
        return float(hit.sum()) / n_rel
    if base == "map":
        ranks = np.flatnonzero(hit) + 1
        return float((np.arange(1, ranks.size + 1) / ranks).sum()) / n_rel
    # ndcg
    discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    gains = np.where(top > 0, top, 0.0)
    ideal = np.sort(judged[judged > 0])[::-1][:k]
    idcg = float((ideal * discount[: ideal.size]).sum())
    return float((gains * discount[: gains.size]).sum()) / idcg if idcg > 0 else 0.0


def evaluate(
    qrels: Qrels,
    run: Run,
    metrics: Iterable[str] = DEFAULT_METRICS,
    *,
    relevance_level: int = 1,
) -> EvalResult:
    """Score a run {qid: {doc_id: score}} against qrels {qid: {doc_id: grade}} for each 'name@k' metric."""
    parsed = {f"{b}@{k}": (b, k) for b, k in map(parse_metric, metrics)}
    if not parsed:
        raise ValueError("metrics is empty: name at least one, e.g. 'ndcg@10'")
    if not qrels:
        raise ValueError("qrels is empty: nothing to evaluate against")
    per_query: dict[str, dict[str, float]] = {name: {} for name in parsed}
    missing = []
    for qid, judged_map in qrels.items():
        judged = np.array(list(judged_map.values()), dtype=np.float64)
        scores = run.get(qid)
        if not scores:
            missing.append(qid)
            ranked = np.empty(0, np.float64)
        else:
            ranked = _ranked_grades(judged_map, scores, qid)
        for name, (base, k) in parsed.items():
            per_query[name][qid] = _query_metric(base, k, ranked, judged, relevance_level)
    unjudged = sorted(q for q in run if q not in qrels)
    mean = {name: float(np.mean(list(v.values()))) for name, v in per_query.items()}
    return EvalResult(mean=mean, per_query=per_query, missing=missing, unjudged=unjudged)
