"""Is system B really better than A on the same queries? Paired randomization test, bootstrap CI, Holm.

All three work on per-query values (e.g. `EvalResult.per_query["ndcg@10"]`) of two systems over the same
queries, with a fixed seed so a report is reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

_CHUNK = 1000  # resamples per block: bounds memory at _CHUNK x n_queries


def _paired(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"paired values must be two 1-D arrays of one length, got {x.shape} and {y.shape}")
    if x.size == 0:
        raise ValueError("no queries to compare")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("per-query values must be finite")
    return y - x


def randomization_test(a: ArrayLike, b: ArrayLike, *, resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of mean(b - a) under the null that the labels A/B are exchangeable per query.

    Each resample flips the sign of every query's difference with probability 1/2; p = (count of
    |resampled mean| >= |observed mean| + 1) / (resamples + 1).
    """
    d = _paired(a, b)
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    extreme = 0
    done = 0
    while done < resamples:
        m = min(_CHUNK, resamples - done)
        signs = rng.integers(0, 2, size=(m, d.size), dtype=np.int8) * 2 - 1
        means = np.abs(signs @ d) / d.size
        extreme += int((means >= observed - 1e-12).sum())
        done += m
    return (extreme + 1) / (resamples + 1)


def bootstrap_ci(
    a: ArrayLike, b: ArrayLike, *, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of mean(b - a), resampling queries with replacement."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence}, expected a value in (0, 1)")
    d = _paired(a, b)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        m = min(_CHUNK, resamples - start)
        means[start : start + m] = d[rng.integers(0, d.size, size=(m, d.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (p.size - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


@dataclass(frozen=True)
class Comparison:
    baseline: str
    system: str
    metric: str
    mean_diff: float  # system - baseline
    p_value: float
    p_holm: float
    ci_low: float
    ci_high: float
    significant: bool  # p_holm < alpha


def compare(
    per_query: Mapping[str, Mapping[str, float]],
    baseline: str,
    metric: str,
    *,
    alpha: float = 0.05,
    resamples: int = 10_000,
    seed: int = 0,
) -> list[Comparison]:
    """Every system against `baseline` on one metric; Holm-corrected over the comparisons made.

    per_query: system name -> {qid: value}; all systems must cover the baseline's queries.
    """
    if baseline not in per_query:
        raise ValueError(f"baseline {baseline!r} not among the systems {sorted(per_query)}")
    qids = sorted(per_query[baseline])
    base = [per_query[baseline][q] for q in qids]
    rows = []
    for name, values in per_query.items():
        if name == baseline:
            continue
        lacking = [q for q in qids if q not in values]
        if lacking:
            raise ValueError(
                f"system {name!r} lacks {len(lacking)} of the baseline's queries, e.g. {lacking[:3]}"
            )
        other = [values[q] for q in qids]
        p = randomization_test(base, other, resamples=resamples, seed=seed)
        lo, hi = bootstrap_ci(base, other, resamples=resamples, seed=seed)
        rows.append((name, float(np.mean(other) - np.mean(base)), p, lo, hi))
    adjusted = holm([r[2] for r in rows]) if rows else []
    return [
        Comparison(baseline, n, metric, d, p, ph, lo, hi, ph < alpha)
        for (n, d, p, lo, hi), ph in zip(rows, adjusted)
    ]
