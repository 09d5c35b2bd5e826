"""Sharded collections on Ray against one collection, side by side in one run, on BEIR SciFact (5,183
abstracts, the 300 test queries):

- ingest documents/s: the single-process `Engine.add` (what `duorank index` runs, 2 onnxruntime threads)
  against `build_shards` with 1 and 2 embedding workers (1 thread each), with Ray's own costs shown:
  the cluster's start-up, and the job's seconds beyond the embedding (the build's seconds less the
  documents over the in-process 1-thread embedding rate times the workers), also per batch of 256;
- quality: nDCG@10 of dense, BM25 and hybrid recall (no rerank, top_k 100) over S = 1, 2 and 4 shards
  against the single collection (dense must be equal; BM25 uses each shard's own statistics);
- query latency: p50 / p99 of `Engine.search` one query at a time (dense exact, and hybrid; no rerank,
  top_k 50) over the single collection and S = 1, 2, 4 shards.

The cluster is two Ray nodes on this machine (`ray.cluster_utils.Cluster`: separate raylets, 2 logical
CPUs each, on the machine's 2 cores), as in tests/test_distributed.py.

    python bench/shards.py            # ~15 min here

Needs the [distributed] extra and ../shared/data/scifact. Prints the table; saves bench/results/shards.json.
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

RECALLS = ("dense", "bm25", "hybrid")


def ndcg10(eng: Any, ds: Any, recall: str) -> float:
    """nDCG@10 of the engine's own order (scores by rank, so that ties keep the engine's order)."""
    from duorank.eval.metrics import evaluate

    qids = list(ds.queries)
    res = eng.search([ds.queries[q] for q in qids], top_k=100, top_n=100, recall=recall, rerank=None)
    run = {q: {h.id: 1.0 / (r + 1) for r, h in enumerate(hits)} for q, hits in zip(qids, res.hits)}
    return 100 * evaluate(ds.qrels, run, ["ndcg@10"]).mean["ndcg@10"]


def latency(eng: Any, queries: list[str], recall: str) -> dict[str, float]:
    eng.search(queries[0], top_k=50, top_n=5, recall=recall, rerank=None)
    ts = []
    for q in queries:
        t = time.perf_counter()
        eng.search(q, top_k=50, top_n=5, recall=recall, rerank=None)
        ts.append(time.perf_counter() - t)
    return {"p50_ms": float(np.percentile(ts, 50) * 1e3), "p99_ms": float(np.percentile(ts, 99) * 1e3)}


def measure(eng: Any, ds: Any, queries: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {f"ndcg10_{r}": ndcg10(eng, ds, r) for r in RECALLS}
    for r in ("dense", "hybrid"):
        out[f"latency_{r}"] = latency(eng, queries, r)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=200, help="queries timed one at a time (default: 200)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shards.json")
    args = ap.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    from duorank import Embedder, Engine, build_shards, machine
    from duorank.eval.datasets import load_beir

    info = machine.describe()
    print(f"machine: {machine.summary(info)}", flush=True)
    folder = SHARED_DATA / "scifact"
    if not (folder / "corpus.jsonl").is_file():
        sys.exit(f"shards bench: SciFact not found at {folder}")
    ds = load_beir(folder, "test")
    ids = list(ds.corpus)
    queries = [ds.queries[q] for q in list(ds.queries)[: args.queries]]
    result: dict[str, Any] = {"machine": info, "documents": len(ids), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "scifact.jsonl"
        src.write_text("\n".join(json.dumps({"id": i, "text": ds.corpus[i]}) for i in ids), encoding="utf-8")
        t = time.perf_counter()
        with Engine.create(Path(tmp) / "one", "default") as one:
            one.add([ds.corpus[i] for i in ids], ids, progress=False)
            single: dict[str, Any] = {"system": "one collection", "shards": 0, "workers": 1, "threads": 2}
            single["build_s"] = time.perf_counter() - t
            single["docs_per_s"] = len(ids) / single["build_s"]
            single.update(measure(one, ds, queries))
        result["rows"].append(single)
        print(json.dumps(single), flush=True)
        # the embedding alone, one thread, in process: what a worker would cost without Ray
        emb = Embedder.load("default", threads=1)
        sample = [ds.corpus[i] for i in ids[:600]]
        emb.encode(sample[:16])
        t = time.perf_counter()
        emb.encode(emb.tokenize(sample, kind="document"))
        result["embed_docs_per_s_1_thread"] = len(sample) / (time.perf_counter() - t)

        t = time.perf_counter()
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 2, "object_store_memory": 200 << 20, "include_dashboard": False},
        )
        cluster.add_node(num_cpus=2, object_store_memory=200 << 20)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        result["ray_start_s"] = time.perf_counter() - t
        try:
            for shards, workers in ((4, 1), (2, 2), (1, 2)):
                report = build_shards(Path(tmp) / f"s{shards}w{workers}", [str(src)], shards, workers=workers)
                row: dict[str, Any] = {"system": "ray", "shards": shards, "workers": workers, "threads": 1}
                row["build_s"] = report.seconds
                row["docs_per_s"] = report.documents / report.seconds
                row["nodes"] = len(report.nodes)
                embed_s = report.documents / (result["embed_docs_per_s_1_thread"] * workers)
                row["ray_overhead_s"] = report.seconds - embed_s
                row["overhead_per_batch_ms"] = 1e3 * row["ray_overhead_s"] / -(-report.documents // 256)
                with Engine.open(report.path, cpus_per_shard=0.5) as eng:
                    row.update(measure(eng, ds, queries))
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
        finally:
            ray.shutdown()
            cluster.shutdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    one = rows[0]
    lines = [
        f"Ray cluster start-up (two local nodes): {result['ray_start_s']:.1f} s; the embedding alone in "
        f"process, 1 thread: {result['embed_docs_per_s_1_thread']:.1f} docs/s",
        "",
        "| system | shards | workers x threads | build s | docs/s | vs one | Ray's cost s (per batch ms) | "
        "nDCG@10 dense / bm25 / hybrid | dense p50 / p99 ms | hybrid p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        nd = " / ".join(f"{r[f'ndcg10_{x}']:.2f}" for x in RECALLS)
        d, h = r["latency_dense"], r["latency_hybrid"]
        lines.append(
            f"| {r['system']} | {r['shards'] or '-'} | {r['workers']} x {r['threads']} | "
            f"{r['build_s']:.0f} | {r['docs_per_s']:.1f} | {r['docs_per_s'] / one['docs_per_s']:.2f}x | "
            + (f"{r['ray_overhead_s']:.0f} ({r['overhead_per_batch_ms']:.0f}) | " if "nodes" in r else "- | ")
            + f"{nd} | "
            f"{d['p50_ms']:.1f} / {d['p99_ms']:.1f} | {h['p50_ms']:.1f} / {h['p99_ms']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
