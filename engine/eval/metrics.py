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


def _as_dict(m: Mapping[Any, Any] | None) -> dict[Any, Any]:
    return m if type(m) is dict else dict(m or {})


_BOOLS = np.array([id(True), id(False), id(np.True_), id(np.False_)], dtype=np.intp)


def _judged_ranks(
    judged: list[dict[str, int]], run: Run, qids: list[str], j_len: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """trec_eval's 0-based rank (score desc, then doc id desc) of every judged document, flat in the
    qrels' order (-1: not retrieved), and each run's length. A Numba kernel reads the dicts through
    CPython's C API (kernels/dict_ranks.py); on a bad score or id it stops and this names the value.
    """
    from duorank.kernels.dict_ranks import BAD_SCORE, judged_ranks

    runs = [_as_dict(run.get(q)) for q in qids]
    longest = max(map(len, runs), default=0)
    ranks = np.empty(int(j_len.sum()), dtype=np.int64)
    n_ret = np.empty(len(qids), dtype=np.int64)
    status = judged_ranks(
        np.array([id(r) for r in runs], dtype=np.intp),
        np.array([id(j) for j in judged], dtype=np.intp),
        _BOOLS,
        ranks,
        n_ret,
        np.empty(longest, dtype=np.float64),
        np.empty(longest, dtype=np.intp),
    )
    if status == 0:
        return ranks, n_ret
    qid = qids[int(n_ret[0])]
    if status == BAD_SCORE:
        _check_scores(run, [qid])
        raise ValueError(f"run[{qid!r}] holds a score that is not a finite number")
    raise TypeError(
        f"document ids of run[{qid!r}] cannot be ordered with '>' (trec_eval breaks score ties by id): "
        "use str ids"
    )


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
    judged = [_as_dict(qrels[q]) for q in qids]
    j_len = np.fromiter(map(len, judged), dtype=np.int64, count=len(qids))
    judged_all = np.fromiter(
        chain.from_iterable(j.values() for j in judged), dtype=np.int64, count=int(j_len.sum())
    )
    j_off = np.zeros(len(qids) + 1, dtype=np.int64)
    np.cumsum(j_len, out=j_off[1:])
    all_ranks, n_ret = _judged_ranks(judged, run, qids, j_len)
    found = all_ranks >= 0
    ranks, grades = all_ranks[found], judged_all[found]
    found_before = np.zeros(found.size + 1, dtype=np.int64)
    np.cumsum(found, out=found_before[1:])
    s_off = found_before[j_off]  # query q's retrieved judged documents: ranks[s_off[q]:s_off[q + 1]]
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
