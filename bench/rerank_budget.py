"""Reranking within a latency budget, on BEIR SciFact (5,183 abstracts, the 300 test queries), hybrid recall
(top_k 50) and the packaged reranker, one query a call as a service answers them:

- the depth curve: rerank depth 0 (recall alone), 5, 10, 20, 30: nDCG@10 and the search's p50 / p99;
- the budget: `Engine.search(..., rerank_budget_ms=B)` for B = 25, 50, 100 ms and none: the depth each
  query got (mean, min, max), nDCG@10 and the search's p50 / p99.

    python bench/rerank_budget.py          # ~12 min here
    python bench/rerank_budget.py --reranker fast --depths 5,10,20,30,50 \
        --out bench/results/rerank_budget_fast.json

Needs ../shared/data/scifact. Prints the table; saves bench/results/rerank_budget.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import SHARED_DATA  # noqa: E402


def run(eng: Any, ds: Any, **options: Any) -> dict[str, Any]:
    from duorank.eval.metrics import evaluate

    qids = list(ds.queries)
    runs, ts, depths = {}, [], []
    for q in qids:
        t = time.perf_counter()
        res = eng.search(ds.queries[q], top_k=50, top_n=10, recall="hybrid", **options)
        ts.append(time.perf_counter() - t)
        depths.append(res.rerank_depth or 0)
        runs[q] = {h.id: 1.0 / (r + 1) for r, h in enumerate(res[0])}
    return {
        **options,
        "ndcg10": 100 * evaluate(ds.qrels, runs, ["ndcg@10"]).mean["ndcg@10"],
        "p50_ms": float(np.percentile(ts, 50) * 1e3),
        "p99_ms": float(np.percentile(ts, 99) * 1e3),
        "depth_mean": float(np.mean(depths)),
        "depth_min": int(np.min(depths)),
        "depth_max": int(np.max(depths)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rerank_budget.json")
    ap.add_argument("--budgets-only", action="store_true", help="leave out the fixed-depth curve")
    ap.add_argument("--reranker", default="default", help="reranker name or folder (default, fast, ...)")
    ap.add_argument("--depths", default="5,10,20,30", help="the fixed depths of the curve")
    args = ap.parse_args()
    from duorank import Engine, machine
    from duorank.eval.datasets import load_beir

    info = machine.describe()
    print(f"machine: {machine.summary(info)}", flush=True)
    ds = load_beir(SHARED_DATA / "scifact", "test")
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        Engine.create(Path(tmp) / "kb", "default", args.reranker) as eng,
    ):
        ids = list(ds.corpus)
        eng.add([ds.corpus[i] for i in ids], ids, progress=False)
        eng.warmup()
        cost = eng.reranker.cost if eng.reranker is not None else None
        print(f"cost model: {cost}", flush=True)
        depths = [int(d) for d in args.depths.split(",") if d.strip()]
        for depth in () if args.budgets_only else depths:
            rows.append(run(eng, ds, rerank_depth=depth))
            print(json.dumps(rows[-1]), flush=True)
        rows.append(run(eng, ds, rerank=None))
        print(json.dumps(rows[-1]), flush=True)
        for budget in (None, 200, 100, 50, 25):
            rows.append(run(eng, ds, rerank_budget_ms=budget))
            print(json.dumps(rows[-1]), flush=True)
    model = None
    if cost is not None:
        model = {"lengths": cost.lengths, "ms_per_window": cost.ms_per_window, "fixed_ms": cost.fixed_ms}
    result = {"machine": info, "reranker": args.reranker, "cost_model": model, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(rows))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | depth mean (min-max) | nDCG@10 | search p50 / p99 ms |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if "rerank_depth" in r:
            name = f"rerank_depth={r['rerank_depth']}"
        elif "rerank" in r:
            name = "no rerank (hybrid alone)"
        elif r.get("rerank_budget_ms") is None:
            name = "default depth, no budget"
        else:
            name = f"rerank_budget_ms={r['rerank_budget_ms']}"
        lines.append(
            f"| {name} | {r['depth_mean']:.1f} ({r['depth_min']}-{r['depth_max']}) | {r['ndcg10']:.2f} | "
            f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
