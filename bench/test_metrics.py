"""Retrieval metrics: duorank.eval.evaluate vs pytrec_eval (trec_eval in C) and ranx (Numba), same run.

10,000 queries x 1,000 retrieved documents (synthetic run, seeded; 1-8 graded judgements per query),
six metrics: nDCG@10, MRR@10, MAP@100, Recall@100, P@10, HitRate@10. Each tool starts from the same
Python dicts, so its conversion cost counts (that is what a user pays); ranx is also timed on its
prebuilt Qrels/Run objects. Run:

    python -m pytest bench/test_metrics.py --benchmark-disable-gc -p no:cacheprovider -q
    DUORANK_BENCH_QUERIES=2000 python -m pytest bench/test_metrics.py ...   # smaller

The table prints at the end and is saved to bench/results/metrics.json.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from bench.conftest import TABLES, record
from duorank.eval import evaluate

NQ = int(os.environ.get("DUORANK_BENCH_QUERIES", "10000"))
NDOC = 1000
METRICS = ["ndcg@10", "mrr@10", "map@100", "recall@100", "precision@10", "hit_rate@10"]


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    rng = np.random.default_rng(1338)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    pool = 100_000
    for q in range(NQ):
        docs = rng.choice(pool, size=NDOC, replace=False)
        scores = np.round(rng.standard_normal(NDOC), 3)  # rounding makes ties, as real runs have
        qid = f"q{q}"
        run[qid] = {f"d{d}": float(s) for d, s in zip(docs.tolist(), scores.tolist())}
        n_j = int(rng.integers(1, 9))
        judged = np.concatenate([rng.choice(docs, size=n_j // 2 + 1), rng.choice(pool, size=n_j - n_j // 2)])
        qrels[qid] = {f"d{d}": int(rng.integers(0, 3)) for d in judged.tolist()}
    return qrels, run


def _timed(benchmark: Any, fn: Any) -> float:
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    return float(benchmark.stats.stats.median)


def test_duorank(benchmark, data):
    qrels, run = data
    evaluate(qrels, {k: run[k] for k in list(run)[:10]}, METRICS)  # compile / load the kernel
    t = _timed(benchmark, lambda: evaluate(qrels, run, METRICS))
    record("metrics", {"engine": "duorank evaluate (dicts in)", "seconds": t})


def test_pytrec_eval(benchmark, data):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels, run = data
    measures = {"ndcg_cut.10", "recip_rank", "map_cut.100", "recall.100", "P.10", "success.10"}

    def go() -> Any:
        return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)

    record("metrics", {"engine": "pytrec_eval (dicts in)", "seconds": _timed(benchmark, go)})


def _ranx() -> Any:
    import warnings

    warnings.simplefilter("ignore")  # ranx's Numba code warns about its own casts
    return pytest.importorskip("ranx")


def test_ranx(benchmark, data):
    ranx = _ranx()
    qrels, run = data

    def go() -> Any:
        return ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), METRICS, make_comparable=True)

    record("metrics", {"engine": "ranx (dicts in)", "seconds": _timed(benchmark, go)})


def test_ranx_prebuilt(benchmark, data):
    ranx = _ranx()
    qrels, run = data
    q, r = ranx.Qrels(qrels), ranx.Run(run)
    t = _timed(benchmark, lambda: ranx.evaluate(q, r, METRICS, save_results_in_run=False))
    record("metrics", {"engine": "ranx (prebuilt Qrels/Run)", "seconds": t})


def _table(rows: list[dict[str, Any]]) -> str:
    ours = next((r["seconds"] for r in rows if r["engine"].startswith("duorank")), None)
    lines = [f"{NQ} queries x {NDOC} docs, 6 metrics", f"{'engine':34} {'seconds':>8} {'duorank x':>10}"]
    for r in rows:
        ratio = f"{r['seconds'] / ours:.2f}" if ours else "-"
        lines.append(f"{r['engine']:34} {r['seconds']:>8.2f} {ratio:>10}")
    return "\n".join(lines)


TABLES["metrics"] = _table
