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
from itertools import chain
from typing import Any

import numpy as np

from duorank.hits import Hits

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


def _check_scores(run: Run, qids: Sequence[str]) -> None:
    """Raise the precise error for the first non-finite or non-numeric score (the slow path of a failure)."""
    for qid in qids:
        scores = run.get(qid) or {}
        for doc, v in scores.items():
            ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            if not ok or not math.isfinite(float(v)):
                raise ValueError(f"run[{qid!r}][{doc!r}] = {v!r}: scores must be finite numbers")


def _judged_ranks(qrels: Qrels, run: Run, qids: list[str]) -> tuple[Any, ...]:
    """Sparse ranking input for the metrics kernel: per query, the 0-based trec_eval ranks (score desc,
    then doc id desc) and grades of its judged documents found in the run, and the run's length.

    Every score goes through one C-level `np.fromiter`; only judged documents are ranked, by counting the
    scores above theirs in a parallel kernel; Python touches a query's whole run only to order ties.
    """
    from duorank.kernels.metrics import count_above, equal_positions

    runs = [run.get(q) or {} for q in qids]
    n_ret = np.fromiter((len(r) for r in runs), dtype=np.int64, count=len(runs))
    r_off = np.zeros(len(runs) + 1, dtype=np.int64)
    np.cumsum(n_ret, out=r_off[1:])
    try:
        flat = np.fromiter(
            chain.from_iterable(r.values() for r in runs), dtype=np.float64, count=int(r_off[-1])
        )
    except (TypeError, ValueError):
        _check_scores(run, qids)
        raise
    if not np.isfinite(flat).all() or any(
        isinstance(next(iter(r.values())), (bool, np.bool_)) for r in runs if r
    ):
        _check_scores(run, qids)
    e_query: list[int] = []
    e_doc: list[str] = []
    e_score: list[float] = []
    e_grade: list[int] = []
    for i, (qid, r) in enumerate(zip(qids, runs)):
        for d, g in qrels[qid].items():
            v = r.get(d)
            if v is not None:
                e_query.append(i)
                e_doc.append(d)
                e_score.append(v)
                e_grade.append(g)
    eq = np.array(e_query, dtype=np.int64)
    above = np.zeros(len(eq), dtype=np.int64)
    equal = np.zeros(len(eq), dtype=np.int64)
    e_scores = np.array(e_score, dtype=np.float64)
    count_above(flat, r_off, eq, e_scores, above, equal)
    tied = np.flatnonzero(equal > 1)
    if tied.size:  # equal scores: the larger doc id ranks first (trec_eval)
        pos_off = np.zeros(tied.size + 1, dtype=np.int64)
        np.cumsum(equal[tied], out=pos_off[1:])
        pos = np.empty(int(pos_off[-1]), dtype=np.int64)
        equal_positions(flat, r_off, eq, e_scores, tied, pos_off, pos)
        keys: dict[int, list[str]] = {}
        pos_list, bounds = pos.tolist(), pos_off.tolist()
        for t, e in enumerate(tied.tolist()):
            q = e_query[e]
            if q not in keys:
                keys[q] = list(runs[q])
            names = keys[q]
            doc = e_doc[e]
            above[e] += sum(1 for j in pos_list[bounds[t] : bounds[t + 1]] if names[j] > doc)
    s_off = np.zeros(len(qids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(eq, minlength=len(qids)), out=s_off[1:])
    return above, np.array(e_grade, dtype=np.int64), s_off, n_ret


def run_from_hits(
    hits: Hits, query_ids: Sequence[str], doc_ids: Sequence[str]
) -> dict[str, dict[str, float]]:
    """A run {qid: {doc_id: score}} from a Hits matrix: row r is query_ids[r], id i is doc_ids[i].

    Empty slots (-1) are skipped; an id outside doc_ids, or two ids of one row that map to the same doc id
    (e.g. two chunks of one document: group them first), raise ValueError.
    """
    if len(query_ids) != hits.ids.shape[0]:
        raise ValueError(f"{len(query_ids)} query ids for {hits.ids.shape[0]} rows of hits")
    names = np.asarray(doc_ids, dtype=object)
    run: dict[str, dict[str, float]] = {}
    for r, qid in enumerate(query_ids):
        row = hits.ids[r]
        valid = row >= 0
        ids = row[valid]
        if ids.size and ids.max() >= len(names):
            raise ValueError(
                f"hits for query {qid!r} name internal id {int(ids.max())}, beyond doc_ids ({len(names)})"
            )
        docs = names[ids].tolist()
        scores = hits.scores[r][valid].tolist()
        entry = dict(zip(docs, scores))
        if len(entry) != len(docs):
            dup = next(d for d in docs if docs.count(d) > 1)
            raise ValueError(
                f"run for query {qid!r} holds doc id {dup!r} twice; group duplicates before evaluating"
            )
        run[str(qid)] = entry
    return run


def evaluate(
    qrels: Qrels,
    run: Run | Hits,
    metrics: Iterable[str] = DEFAULT_METRICS,
    *,
    relevance_level: int = 1,
    query_ids: Sequence[str] | None = None,
    doc_ids: Sequence[str] | None = None,
) -> EvalResult:
    """Score a run against qrels {qid: {doc_id: grade}} for each 'name@k' metric.

    run: {qid: {doc_id: score}}, or a `Hits` matrix with `query_ids` (one per row) and `doc_ids` (external
    id of each internal id).
    """
    if isinstance(run, Hits):
        if query_ids is None or doc_ids is None:
            raise ValueError("a Hits run needs query_ids (one per row) and doc_ids (one per internal id)")
        run = run_from_hits(run, query_ids, doc_ids)
    parsed = {f"{b}@{k}": (b, k) for b, k in map(parse_metric, metrics)}
    if not parsed:
        raise ValueError("metrics is empty: name at least one, e.g. 'ndcg@10'")
    if not qrels:
        raise ValueError("qrels is empty: nothing to evaluate against")
    from duorank.kernels.metrics import retrieval_metrics

    qids = list(qrels)
    missing = [q for q in qids if not run.get(q)]
    ranks, grades, s_off, n_ret = _judged_ranks(qrels, run, qids)
    j_len = np.fromiter((len(qrels[q]) for q in qids), dtype=np.int64, count=len(qids))
    judged_all = np.fromiter(
        chain.from_iterable(qrels[q].values() for q in qids), dtype=np.int64, count=int(j_len.sum())
    )
    j_off = np.zeros(len(qids) + 1, dtype=np.int64)
    np.cumsum(j_len, out=j_off[1:])
    names = list(parsed)
    codes = np.array([_CODES[parsed[n][0]] for n in names], dtype=np.int64)
    ks = np.array([parsed[n][1] for n in names], dtype=np.int64)
    out = np.empty((len(names), len(qids)), dtype=np.float64)
    retrieval_metrics(ranks, grades, s_off, n_ret, judged_all, j_off, codes, ks, int(relevance_level), out)
    per_query = {n: dict(zip(qids, out[m].tolist())) for m, n in enumerate(names)}
    unjudged = sorted(q for q in run if q not in qrels)
    mean = {n: float(out[m].mean()) for m, n in enumerate(names)}
    return EvalResult(mean=mean, per_query=per_query, missing=missing, unjudged=unjudged)


def pairwise_accuracy(qrels: Qrels, run: Run, *, relevance_level: int = 1) -> tuple[float, dict[str, float]]:
    """Share of (relevant, non-relevant) candidate pairs a reranker orders correctly (ties count 1/2).

    Candidates are the run's documents per query; unjudged candidates count as non-relevant. Queries
    without at least one pair are left out of the mean (and of the per-query dict).
    """
    per_query: dict[str, float] = {}
    for qid, scores in run.items():
        judged = qrels.get(qid)
        if judged is None or not scores:
            continue
        s = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
        rel = np.fromiter(
            (judged.get(d, 0) >= relevance_level for d in scores), dtype=bool, count=len(scores)
        )
        pos, neg = s[rel], s[~rel]
        if pos.size == 0 or neg.size == 0:
            continue
        neg_sorted = np.sort(neg)
        below = np.searchsorted(neg_sorted, pos, side="left")
        equal = np.searchsorted(neg_sorted, pos, side="right") - below
        per_query[qid] = float((below + 0.5 * equal).sum() / (pos.size * neg.size))
    if not per_query:
        raise ValueError(
            "no query has both a relevant and a non-relevant candidate: pairwise accuracy undefined"
        )
    return float(np.mean(list(per_query.values()))), per_query
