"""Retrieval metrics over ranked relevance grades, trec_eval's definitions, all queries in parallel.

Inputs are flat and sparse: for query q, the 0-based ranks (trec_eval order: score descending, ties by
document id descending) and grades of its judged documents that were retrieved, the number retrieved,
and `judged[j_off[q]:j_off[q+1]]`, every grade the qrels give query q. `codes[m]`, `ks[m]` name
metric m; `out[m, q]` receives its value.
Codes: 0 nDCG (linear gain, log2 discount), 1 MRR, 2 MAP, 3 recall, 4 precision, 5 hit rate.
A document is relevant when its grade >= level.
"""

from __future__ import annotations

import numba as nb
import numpy as np

NDCG, MRR, MAP, RECALL, PRECISION, HIT_RATE = 0, 1, 2, 3, 4, 5


@nb.njit(
    "f8(i8[::1], i8[::1], i8, i8, i8)",
    cache=True,
    nogil=True,
)
def _one(ranked, judged, code, k, level):  # type: ignore[no-untyped-def]
    """Metric `code` at cutoff k for one query."""
    n = min(k, ranked.shape[0])
    if code == PRECISION or code == HIT_RATE or code == MRR:
        hits = 0
        for i in range(n):
            if ranked[i] >= level:
                if code == MRR:
                    return 1.0 / (i + 1)
                if code == HIT_RATE:
                    return 1.0
                hits += 1
        return hits / k if code == PRECISION else 0.0
    n_rel = 0
    for j in range(judged.shape[0]):
        if judged[j] >= level:
            n_rel += 1
    if n_rel == 0:
        return 0.0
    if code == RECALL or code == MAP:
        hits = 0
        ap = 0.0
        for i in range(n):
            if ranked[i] >= level:
                hits += 1
                ap += hits / (i + 1)
        return hits / n_rel if code == RECALL else ap / n_rel
    # nDCG: gains are positive grades; the ideal ranking sorts every positive judged grade
    dcg = 0.0
    for i in range(n):
        if ranked[i] > 0:
            dcg += ranked[i] / np.log2(i + 2.0)
    ideal = np.sort(judged)[::-1]
    idcg = 0.0
    for i in range(min(k, ideal.shape[0])):
        if ideal[i] <= 0:
            break
        idcg += ideal[i] / np.log2(i + 2.0)
    return dcg / idcg if idcg > 0 else 0.0


@nb.njit(
    "void(i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], i8, f8[:, ::1])",
    parallel=True,
    cache=True,
    nogil=True,
)
def retrieval_metrics(ranks, grades, s_off, n_ret, judged, j_off, codes, ks, level, out):  # type: ignore[no-untyped-def]
    """out[m, q] = metric (codes[m], ks[m]) of query q; queries run in parallel.

    Sparse input: query q retrieved n_ret[q] documents; its judged ones sit at 0-based `ranks[s_off[q]:
    s_off[q+1]]` with `grades[...]`; every other retrieved document has grade 0.
    """
    nq = n_ret.shape[0]
    kmax = 0
    for m in range(ks.shape[0]):
        kmax = max(kmax, ks[m])
    for q in nb.prange(nq):
        dense = np.zeros(min(n_ret[q], kmax), dtype=np.int64)
        for i in range(s_off[q], s_off[q + 1]):
            if ranks[i] < dense.shape[0]:
                dense[ranks[i]] = grades[i]
        j = judged[j_off[q] : j_off[q + 1]]
        for m in range(codes.shape[0]):
            out[m, q] = _one(dense, j, codes[m], ks[m], level)
