"""The reranker's quality table: SciFact test, every first stage x depth x (plain, reranked, blended), with
rerank latency; out-of-domain rows (Banking77 as retrieval, STS Benchmark pairs); a plot of nDCG@10 vs depth.

    python bench/reranker_quality.py [--reranker default] [--data ../shared/data] [--out bench/results]

Writes reranker_quality.json, reranker_quality.md and (with matplotlib) reranker_quality.png to --out. Nothing
here chooses anything: the blend weight and depth are the ones the model recorded from its dev set. The
test split and the out-of-domain sets are only measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from duorank import Embedder, ExactIndex, Reranker
from duorank.eval.datasets import load_beir, load_labelled, load_stsb
from duorank.eval.metrics import evaluate
from duorank.eval.run import corpus_vectors
from duorank.eval.significance import randomization_test
from duorank.lexical import BM25, blend, rrf

log = logging.getLogger("reranker_quality")
METRICS = ["ndcg@10", "mrr@10", "recall@10"]


def first_stages(emb: Embedder, corpus: list[str], queries: list[str], depth: int) -> dict[str, Any]:
    index = ExactIndex(dim=emb.dim)
    index.add(corpus_vectors(emb, corpus))
    dense = index.search(emb.encode(queries, "query"), depth)
    bm25 = BM25.build(corpus).search(queries, depth)
    return {"dense": dense, "bm25": bm25, "hybrid": rrf([dense, bm25], depth)}


def ranked(hits: Any, i: int) -> tuple[list[int], np.ndarray]:
    keep = hits.ids[i] >= 0
    return hits.ids[i][keep].tolist(), hits.scores[i][keep].astype(np.float64)


def rerank_run(
    stages: dict[str, Any],
    scores: dict[tuple[int, int], float],
    qids: list[str],
    doc_ids: list[str],
    *,
    source: str,
    depth: int,
    a: float | None,
) -> dict[str, dict[str, float]]:
    """The run of `source` with its top `depth` reordered by the reranker (blended with weight a, None: no
    rerank); candidates beyond the depth keep their first-stage order below."""
    run = {}
    for i, q in enumerate(qids):
        docs, first = ranked(stages[source], i)
        if a is None:
            final = first
        else:
            head = np.array([scores[i, d] for d in docs[:depth]])
            head = head if a == 1.0 else blend(first[:depth], head, a)
            rest = len(docs) - len(head)
            final = np.concatenate([head, head.min() - np.arange(1, rest + 1)]) if rest > 0 else head
        run[q] = {doc_ids[d]: float(s) for d, s in zip(docs, final)}
    return run


def score_pairs(rr: Reranker, queries: list[str], corpus: list[str], wanted: dict[int, list[int]]) -> dict:
    keys = [(i, d) for i, docs in wanted.items() for d in docs]
    groups = [(queries[i], [corpus[d] for d in docs]) for i, docs in wanted.items()]
    t = time.perf_counter()
    out = rr.score_groups(groups, progress=True)
    seconds = time.perf_counter() - t
    flat = np.concatenate(out) if out else np.empty(0)
    return {"scores": dict(zip(keys, flat.tolist())), "pairs": len(keys), "seconds": seconds}


def latency(
    rr: Reranker, queries: list[str], corpus: list[str], hits: Any, depths: list[int], n: int
) -> dict:
    """Median wall time of reranking one query's top-d, per depth, over the first n queries (batch 1)."""
    out = {}
    for d in depths:
        times = []
        for i in range(n):
            docs, _ = ranked(hits, i)
            t = time.perf_counter()
            rr.score(queries[i], [corpus[j] for j in docs[:d]])
            times.append(1e3 * (time.perf_counter() - t))
        out[d] = float(np.median(times))
    return out


def scifact(args: argparse.Namespace, emb: Embedder, rr: Reranker) -> dict[str, Any]:
    ds = load_beir(Path(args.data) / "scifact", "test")
    doc_ids = ds.doc_ids()
    corpus = [ds.corpus[d] for d in doc_ids]
    qids = list(ds.queries)[: args.max_queries]
    queries = [ds.queries[q] for q in qids]
    deepest = max(args.depths)
    stages = first_stages(emb, corpus, queries, max(100, deepest))
    wanted: dict[int, list[int]] = {}
    for source, hits in stages.items():
        depth = (
            deepest if source in args.deep_sources else max(d for d in args.depths if d <= args.shallow_max)
        )
        for i in range(len(qids)):
            docs, _ = ranked(hits, i)
            have = wanted.setdefault(i, [])
            have.extend(d for d in docs[:depth] if d not in have)
    log.info("SciFact test: reranking %d distinct pairs", sum(map(len, wanted.values())))
    scored = score_pairs(rr, queries, corpus, wanted)
    qrels = {q: ds.qrels[q] for q in qids}
    base = {
        s: evaluate(qrels, rerank_run(stages, {}, qids, doc_ids, source=s, depth=0, a=None), METRICS)
        for s in stages
    }
    lat = latency(rr, queries, corpus, stages["hybrid"], args.depths, args.latency_queries)
    rows = []
    for source in stages:
        rows.append(
            {
                "first_stage": source,
                "depth": None,
                "rerank": "none",
                **{m: round(100 * v, 2) for m, v in base[source].mean.items()},
                "rerank_ms": 0.0,
            }
        )
        for depth in args.depths:
            if depth > args.shallow_max and source not in args.deep_sources:
                continue
            for label, a in (("reranker", 1.0), (f"blend {rr.blend}", rr.blend)):
                if label != "reranker" and rr.blend == 1.0:
                    continue
                r = evaluate(
                    qrels,
                    rerank_run(stages, scored["scores"], qids, doc_ids, source=source, depth=depth, a=a),
                    METRICS,
                )
                p = randomization_test(
                    [base["hybrid"].per_query["ndcg@10"][q] for q in qids],
                    [r.per_query["ndcg@10"][q] for q in qids],
                )
                rows.append(
                    {
                        "first_stage": source,
                        "depth": depth,
                        "rerank": label,
                        **{m: round(100 * v, 2) for m, v in r.mean.items()},
                        "rerank_ms": round(lat[depth], 1),
                        "p_vs_hybrid": round(p, 4),
                    }
                )
                log.info("%s", rows[-1])
    chosen = rr.manifest.get("source", {}).get("dev_choice") or {}
    return {
        "dataset": "scifact test",
        "queries": len(qids),
        "pairs_scored": scored["pairs"],
        "ms_per_pair_batched": round(1e3 * scored["seconds"] / max(1, scored["pairs"]), 2),
        "dev_choice": {k: v for k, v in chosen.items() if k != "grid"},
        "rows": rows,
    }


def banking(args: argparse.Namespace, emb: Embedder, rr: Reranker) -> dict[str, Any]:
    """Banking77 as retrieval: a test utterance's relevant documents are the train utterances of its
    intent."""
    path = Path(args.data) / "banking77"
    docs, doc_labels = load_labelled(path, "train")
    texts, labels = load_labelled(path, "test")
    pick = sorted(random.Random(0).sample(range(len(texts)), args.banking_queries))
    queries = [texts[i] for i in pick]
    qids = [f"t{i}" for i in pick]
    doc_ids = [f"d{j}" for j in range(len(docs))]
    qrels = {
        q: {doc_ids[j]: 1 for j, lab in enumerate(doc_labels) if lab == labels[i]} for q, i in zip(qids, pick)
    }
    depth = rr.depth or 30
    stages = first_stages(emb, docs, queries, 100)
    wanted = {}
    for i in range(len(qids)):
        seen: list[int] = []
        for hits in stages.values():
            seen.extend(d for d in ranked(hits, i)[0][:depth] if d not in seen)
        wanted[i] = seen
    scored = score_pairs(rr, queries, docs, wanted)
    rows = []
    for source in stages:
        for label, a in (("none", None), ("reranker", 1.0), (f"blend {rr.blend} (default)", rr.blend)):
            r = evaluate(
                qrels,
                rerank_run(stages, scored["scores"], qids, doc_ids, source=source, depth=depth, a=a),
                METRICS,
            )
            rows.append(
                {
                    "first_stage": source,
                    "depth": depth,
                    "rerank": label,
                    **{m: round(100 * v, 2) for m, v in r.mean.items()},
                }
            )
            log.info("banking77 %s", rows[-1])
    return {
        "dataset": "banking77 (test utterances -> train utterances of the same intent)",
        "queries": len(qids),
        "documents": len(docs),
        "rows": rows,
    }


def stsb(args: argparse.Namespace, emb: Embedder, rr: Reranker) -> dict[str, Any]:
    from scipy.stats import spearmanr

    s1, s2, gold = load_stsb(Path(args.data) / "stsb", "test")
    a, b = emb.encode(s1), emb.encode(s2)
    cos = (a * b).sum(axis=1).astype(np.float64)
    cross = np.array([rr.score(x, [y])[0] for x, y in zip(s1, s2)], dtype=np.float64)
    mixed = blend(cos, cross, rr.blend)
    rows = [
        {"scores": name, "spearman": round(100 * float(spearmanr(v, gold).statistic), 2)}
        for name, v in (
            ("embedding cosine", cos),
            ("reranker", cross),
            (f"blend {rr.blend} (default)", mixed),
        )
    ]
    log.info("stsb %s", rows)
    return {"dataset": "stsb test", "pairs": len(gold), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    sf = result["scifact"]
    lines = [
        f"SciFact test ({sf['queries']} queries); rerank ms = median per query at batch 1 (hybrid lists)",
        "",
        "| first stage | depth | rerank | nDCG@10 | MRR@10 | R@10 | rerank ms/query | p vs hybrid |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sf["rows"]:
        lines.append(
            f"| {r['first_stage']} | {r['depth'] or '-'} | {r['rerank']} | {r['ndcg@10']:.2f} | "
            f"{r['mrr@10']:.2f} | {r['recall@10']:.2f} | {r['rerank_ms'] or '-'} | "
            f"{r.get('p_vs_hybrid', '-')} |"
        )
    for key in ("banking77",):
        if key in result:
            lines += [
                "",
                f"{result[key]['dataset']}, {result[key]['queries']} queries",
                "",
                "| first stage | depth | rerank | nDCG@10 | MRR@10 | R@10 |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {r['first_stage']} | {r['depth']} | {r['rerank']} | {r['ndcg@10']:.2f} | "
                f"{r['mrr@10']:.2f} | {r['recall@10']:.2f} |"
                for r in result[key]["rows"]
            ]
    if "stsb" in result:
        lines += [
            "",
            f"STS Benchmark test ({result['stsb']['pairs']} pairs)",
            "",
            "| scores | Spearman |",
            "|---|---|",
        ]
        lines += [f"| {r['scores']} | {r['spearman']:.2f} |" for r in result["stsb"]["rows"]]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    rows = result["scifact"]["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"dense": "tab:blue", "bm25": "tab:orange", "hybrid": "tab:green"}
    for source, colour in colours.items():
        plain = next(r for r in rows if r["first_stage"] == source and r["depth"] is None)
        ax.axhline(plain["ndcg@10"], color=colour, linestyle=":", linewidth=1)
        for label, style in (("reranker", "--"), ("blend", "-")):
            pts = sorted(
                (r["depth"], r["ndcg@10"])
                for r in rows
                if r["first_stage"] == source and r["depth"] and r["rerank"].startswith(label)
            )
            if pts:
                ax.plot(*zip(*pts), style, marker="o", color=colour, label=f"{source} + {label}")
    ax.set_xlabel("rerank depth (candidates read by the cross-encoder)")
    ax.set_ylabel("nDCG@10 (SciFact test)")
    ax.set_title("Reranker quality vs depth (dotted: first stage alone)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reranker", default="default")
    p.add_argument("--variant")
    p.add_argument("--long-documents", default="truncate", choices=["truncate", "windows"])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--depths", default="10,20,30,50,100")
    p.add_argument("--deep-sources", default="hybrid", help="first stages also reranked beyond --shallow-max")
    p.add_argument("--shallow-max", type=int, default=50, help="deepest rerank of the other first stages")
    p.add_argument("--latency-queries", type=int, default=10)
    p.add_argument("--banking-queries", type=int, default=500)
    p.add_argument("--max-queries", type=int, help="SciFact: the first N test queries only (smoke runs)")
    p.add_argument("--skip", default="", help="comma list of: scifact, banking77, stsb")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-only", action="store_true", help="only the per-depth rerank latency (SciFact)")
    args = p.parse_args()
    args.depths = [int(d) for d in args.depths.split(",")]
    args.deep_sources = set(args.deep_sources.split(","))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    emb = Embedder.load("default", threads=args.threads)
    rr = Reranker.load(
        args.reranker, variant=args.variant, threads=args.threads, long_documents=args.long_documents
    )
    log.info("reranker %s (%s), blend %s, depth %s", rr.folder, rr.variant, rr.blend, rr.depth)
    result: dict[str, Any] = {
        "reranker": str(rr.folder),
        "variant": rr.variant,
        "blend": rr.blend,
        "depth": rr.depth,
        "long_documents": args.long_documents,
    }
    if args.latency_only:
        ds = load_beir(Path(args.data) / "scifact", "test")
        corpus = [ds.corpus[d] for d in ds.doc_ids()]
        queries = list(ds.queries.values())[: args.latency_queries]
        hybrid = first_stages(emb, corpus, queries, max(args.depths))["hybrid"]
        lat = latency(rr, queries, corpus, hybrid, args.depths, args.latency_queries)
        print(json.dumps({"variant": rr.variant, "long_documents": args.long_documents, "rerank_ms": lat}))
        return 0
    skip = set(args.skip.split(","))
    for name, fn in (("scifact", scifact), ("banking77", banking), ("stsb", stsb)):
        if name not in skip:
            result[name] = fn(args, emb, rr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reranker_quality.json").write_text(json.dumps(result, indent=1))
    if "scifact" in result:
        (out / "reranker_quality.md").write_text(markdown(result))
        plot(result, out / "reranker_quality.png")
    print(json.dumps({k: v for k, v in result.items() if k != "scifact"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
