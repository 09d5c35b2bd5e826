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
from collections.abc import Iterable, Mapping, Sequence
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


_CODES = {"ndcg": 0, "mrr": 1, "map": 2, "recall": 3, "precision": 4, "hit_rate": 5}


def _bad_score(qid: str, docs: Sequence[str], values: Sequence[object]) -> ValueError:
    for doc, v in zip(docs, values):
        ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        if not ok or not math.isfinite(float(v)):  # type: ignore[arg-type]
            return ValueError(f"run[{qid!r}][{doc!r}] = {v!r}: scores must be finite numbers")
    return ValueError(f"run[{qid!r}]: scores must be finite numbers")


def _ranked_grades(judged: Mapping[str, int], scores: Mapping[str, float], qid: str) -> NDArray[np.int64]:
    """Grades of the run's documents in trec_eval order (score desc, then doc id desc)."""
    docs = list(scores)
    values = list(scores.values())
    raw = np.asarray(values)
    if raw.ndim != 1 or raw.dtype.kind not in "iuf":  # strings, bools, None, nested sequences
        raise _bad_score(qid, docs, values)
    s = raw.astype(np.float64)
    if not np.isfinite(s).all():
        raise _bad_score(qid, docs, values)
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    if ss.size > 1 and (ss[1:] == ss[:-1]).any():  # ties: trec_eval breaks them by doc id, descending
        by_id = sorted(range(len(docs)), key=docs.__getitem__, reverse=True)
        order = np.array(sorted(by_id, key=lambda i: -s[i]), dtype=np.int64)
    grades = np.fromiter((judged.get(d, 0) for d in docs), dtype=np.int64, count=len(docs))
    return grades[order]


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
    from duorank.kernels.metrics import retrieval_metrics

    qids = list(qrels)
    missing = []
    ranked_parts, judged_parts = [], []
    for qid in qids:
        judged_map = qrels[qid]
        judged_parts.append(np.fromiter(judged_map.values(), dtype=np.int64, count=len(judged_map)))
        scores = run.get(qid)
        if not scores:
            missing.append(qid)
            ranked_parts.append(np.empty(0, np.int64))
        else:
            ranked_parts.append(_ranked_grades(judged_map, scores, qid))
    r_off = np.zeros(len(qids) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in ranked_parts], out=r_off[1:])
    j_off = np.zeros(len(qids) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in judged_parts], out=j_off[1:])
    names = list(parsed)
    codes = np.array([_CODES[parsed[n][0]] for n in names], dtype=np.int64)
    ks = np.array([parsed[n][1] for n in names], dtype=np.int64)
    out = np.empty((len(names), len(qids)), dtype=np.float64)
    retrieval_metrics(
        np.concatenate(ranked_parts) if ranked_parts else np.empty(0, np.int64),
        r_off,
        np.concatenate(judged_parts),
        j_off,
        codes,
        ks,
        int(relevance_level),
        out,
    )
    per_query = {n: dict(zip(qids, out[m].tolist())) for m, n in enumerate(names)}
    unjudged = sorted(q for q in run if q not in qrels)
    mean = {n: float(out[m].mean()) for m, n in enumerate(names)}
    return EvalResult(mean=mean, per_query=per_query, missing=missing, unjudged=unjudged)
