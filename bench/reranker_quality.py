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

from duorank import Embedder, Reranker
from duorank.eval.datasets import load_beir, load_labelled, load_stsb
from duorank.eval.first_stage import FirstStage
from duorank.eval.metrics import evaluate
from duorank.eval.significance import bootstrap_ci, randomization_test
from duorank.model_folder import VARIANTS
from duorank.recall import RECALLS
from duorank.rerank import adaptive_weight, blend, rerank_head

log = logging.getLogger("reranker_quality")
METRICS = ["ndcg@10", "mrr@10", "recall@10"]


def first_stages(emb: Embedder, corpus: list[str], queries: list[str], depth: int) -> dict[str, Any]:
    """The engine's three first stages over the corpus (`FirstStage`, i.e. `duorank.recall`)."""
    stage = FirstStage(corpus, emb)
    v = emb.encode(queries, kind="query")
    return {how: stage.search(how, queries, depth, vectors=v) for how in RECALLS}


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
    adaptive: bool = False,
) -> dict[str, dict[str, float]]:
    """The run of `source` with its top `depth` reordered by the reranker (blended with weight a, None: no
    rerank; `adaptive` as the engine applies a recorded weight); candidates beyond the depth keep their
    first-stage order below."""
    run = {}
    for i, q in enumerate(qids):
        docs, first = ranked(stages[source], i)
        if a is not None:
            first = rerank_head(first, [scores[i, d] for d in docs[:depth]], a, adaptive=adaptive)
        run[q] = {doc_ids[d]: float(s) for d, s in zip(docs, first)}
    return run


def score_pairs(
    rr: Reranker, queries: list[str], corpus: list[str], wanted: dict[int, list[int]], cache: Path | None
) -> dict:
    """Reranker scores of the wanted (query, document) pairs; with `cache` (a JSON file), pairs scored by an
    earlier run of the same model, variant and long-document mode are read back instead of scored again."""
    graph = rr.manifest["files"][VARIANTS[rr.variant]]["sha256"]
    tag = f"{graph}:{rr.variant}:{rr.long_documents}:{rr.max_length}:{rr.stride}:{rr.aggregate}"
    known: dict[str, float] = {}
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        known = saved["scores"] if saved.get("model") == tag else {}
    key = {(i, d): f"{queries[i]}\x1f{d}" for i, docs in wanted.items() for d in docs}
    todo = {i: [d for d in docs if key[i, d] not in known] for i, docs in wanted.items()}
    todo = {i: docs for i, docs in todo.items() if docs}
    log.info("%d pairs wanted, %d to score (%s)", len(key), sum(map(len, todo.values())), tag)
    t = time.perf_counter()
    groups = [(queries[i], [corpus[d] for d in docs]) for i, docs in todo.items()]
    got = [s.scores for s in rr.score_groups(groups, progress=True)] if groups else []
    seconds = time.perf_counter() - t
    for (i, docs), values in zip(todo.items(), got):
        known.update((key[i, d], float(v)) for d, v in zip(docs, values))
    if cache is not None and todo:
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"model": tag, "scores": known}))
        tmp.replace(cache)
    pairs = sum(map(len, todo.values()))
    return {"scores": {k: known[v] for k, v in key.items()}, "pairs": pairs, "seconds": seconds}


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


def _blends(rr: Reranker, source: str, depth: int, extra: dict[str, Any]) -> list[tuple[str, float, bool]]:
    """(label, weight, adaptive) rows for one first stage and depth: the reranker alone, its recorded blend
    for this first stage ("default" at the recorded depth; adaptive if recorded so), and `extra` dev-set
    choices for (source, depth)."""
    chosen = rr.defaults(source)
    out = [("reranker", 1.0, False)]
    if chosen.blend != 1.0 or chosen.adaptive:
        label = f"blend {chosen.blend}" + (" adaptive" if chosen.adaptive else "")
        out.append((label + (" (default)" if depth == chosen.depth else ""), chosen.blend, chosen.adaptive))
    for label, c in extra.items():
        if (c["source"], c["depth"]) == (source, depth) and c["blend"] not in (w for _, w, _ in out):
            out.append((f"blend {c['blend']} ({label})", c["blend"], chosen.adaptive))
    return out


def dev_choices(rr: Reranker) -> dict[str, Any]:
    """Choices the recorded dev grid gives under other rules than the shipped one, for comparison rows: the
    best on the SciFact dev queries alone (what `choose-blend --data scifact` would record for a user
    whose domain is SciFact's)."""
    grid = (rr.manifest.get("source", {}).get("dev_choice") or {}).get("grid") or []
    rows = [r for r in grid if "scifact" in r.get("per_dataset", {})]
    if not rows:
        return {}
    best = max(rows, key=lambda r: r["per_dataset"]["scifact"])
    return {"SciFact dev choice": {k: best[k] for k in ("source", "depth", "blend")}}


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
    scored = score_pairs(rr, queries, corpus, wanted, args.cache)
    qrels = {q: ds.qrels[q] for q in qids}
    base = {
        s: evaluate(qrels, rerank_run(stages, {}, qids, doc_ids, source=s, depth=0, a=None), METRICS)
        for s in stages
    }
    lat = latency(rr, queries, corpus, stages["hybrid"], args.depths, args.latency_queries)
    extra = dev_choices(rr)
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
            for label, a, adaptive in _blends(rr, source, depth, extra):
                r = evaluate(
                    qrels,
                    rerank_run(
                        stages,
                        scored["scores"],
                        qids,
                        doc_ids,
                        source=source,
                        depth=depth,
                        a=a,
                        adaptive=adaptive,
                    ),
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
        "other_dev_choices": extra,
        "rows": rows,
    }


def banking(args: argparse.Namespace, emb: Embedder, rr: Reranker) -> dict[str, Any]:
    """Banking77 as retrieval: a test utterance's relevant documents are the train utterances of its
    intent. Each first stage is reranked at the depth and blend the model records for it."""
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
    stages = first_stages(emb, docs, queries, 100)
    depth = {source: rr.defaults(source).depth or 30 for source in stages}
    wanted = {}
    for i in range(len(qids)):
        seen: list[int] = []
        for source, hits in stages.items():
            seen.extend(d for d in ranked(hits, i)[0][: depth[source]] if d not in seen)
        wanted[i] = seen
    scored = score_pairs(rr, queries, docs, wanted, args.cache)
    rows = []
    for source in stages:
        chosen = rr.defaults(source)
        a, adapt = chosen.blend, chosen.adaptive
        plain: list[float] = []
        rows_of = (
            ("none", None, False),
            ("reranker", 1.0, False),
            (f"blend {a}{' adaptive' if adapt else ''} (default)", a, adapt),
        )
        for label, w, adaptive in rows_of:
            run = rerank_run(
                stages,
                scored["scores"],
                qids,
                doc_ids,
                source=source,
                depth=depth[source],
                a=w,
                adaptive=adaptive,
            )
            r = evaluate(qrels, run, METRICS)
            per = [r.per_query["ndcg@10"][q] for q in qids]
            plain = plain or per
            rows.append(
                {
                    "first_stage": source,
                    "depth": depth[source],
                    "rerank": label,
                    **{m: round(100 * v, 2) for m, v in r.mean.items()},
                    **(uncertainty(plain, per) if w is not None else {}),
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
    """STS Benchmark pairs ranked by the embedder's cosine (the dense first stage) and blended with the
    reranker at the weight it records for dense recall."""
    from scipy.stats import spearmanr

    s1, s2, gold = load_stsb(Path(args.data) / "stsb", "test")
    a, b = emb.encode(s1), emb.encode(s2)
    cos = (a * b).sum(axis=1).astype(np.float64)
    cross = np.array([rr.score(x, [y])[0] for x, y in zip(s1, s2)], dtype=np.float64)
    chosen = rr.defaults("dense")
    w = adaptive_weight(chosen.blend, cross) if chosen.adaptive else chosen.blend  # one list: the whole set
    rows = [
        {
            "scores": name,
            "spearman": round(100 * float(spearmanr(v, gold).statistic), 2),
            **(spearman_ci(cos, v, gold) if v is not cos else {}),
        }
        for name, v in (
            ("embedding cosine", cos),
            ("reranker", cross),
            (
                f"blend {w:.3g} (default for dense{', adaptive' if chosen.adaptive else ''})",
                blend(cos, cross, w),
            ),
            *((f"blend {rr.blend} (overall default)", blend(cos, cross, rr.blend)),)
            * (rr.blend != chosen.blend),
        )
    ]
    log.info("stsb %s", rows)
    return {"dataset": "stsb test", "pairs": len(gold), "rows": rows}


def uncertainty(base: list[float], other: list[float]) -> dict[str, Any]:
    """Paired per-query comparison with the first stage alone, in points: the mean difference, its 95%
    bootstrap interval and the randomization p-value (out-of-domain losses are small: are they noise?)."""
    lo, hi = bootstrap_ci(base, other, seed=0)
    return {
        "delta": round(100 * float(np.mean(np.subtract(other, base))), 2),
        "ci95": [round(100 * lo, 2), round(100 * hi, 2)],
        "p": round(randomization_test(base, other), 4),
    }


def spearman_ci(
    base: np.ndarray, other: np.ndarray, gold: np.ndarray, resamples: int = 2000
) -> dict[str, Any]:
    """Spearman(other) - Spearman(base) against gold, with a paired bootstrap over the pairs (seed 0): the
    difference's 95% interval and the share of resamples in which `other` is below `base`."""
    from scipy.stats import rankdata

    def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # row-wise, over resampled pairs
        rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
        rx -= rx.mean(axis=1, keepdims=True)
        ry -= ry.mean(axis=1, keepdims=True)
        return (rx * ry).sum(axis=1) / np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))

    base, other, gold = (np.asarray(x, dtype=np.float64) for x in (base, other, gold))
    idx = np.random.default_rng(0).integers(0, gold.size, size=(resamples, gold.size))
    d = np.concatenate(
        [spearman(other[i], gold[i]) - spearman(base[i], gold[i]) for i in np.array_split(idx, 20)]
    )
    lo, hi = np.quantile(d, [0.025, 0.975])
    return {
        "delta": round(
            100 * float((spearman(other[None], gold[None]) - spearman(base[None], gold[None]))[0]), 2
        ),
        "ci95": [round(100 * float(lo), 2), round(100 * float(hi), 2)],
        "below": round(float((d < 0).mean()), 3),
    }


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
                "| first stage | depth | rerank | nDCG@10 | MRR@10 | R@10 | vs alone [95% CI], p |",
                "|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {r['first_stage']} | {r['depth']} | {r['rerank']} | {r['ndcg@10']:.2f} | "
                f"{r['mrr@10']:.2f} | {r['recall@10']:.2f} | {_versus(r)} |"
                for r in result[key]["rows"]
            ]
    if "stsb" in result:
        lines += [
            "",
            f"STS Benchmark test ({result['stsb']['pairs']} pairs)",
            "",
            "| scores | Spearman | vs embedding cosine [95% CI], share of resamples below |",
            "|---|---|---|",
        ]
        lines += [f"| {r['scores']} | {r['spearman']:.2f} | {_versus(r)} |" for r in result["stsb"]["rows"]]
    return "\n".join(lines) + "\n"


def _versus(row: dict[str, Any]) -> str:
    if "delta" not in row:
        return "-"
    lo, hi = row["ci95"]
    tail = f"p = {row['p']}" if "p" in row else f"below in {100 * row['below']:.1f}%"
    return f"{row['delta']:+.2f} [{lo:+.2f}, {hi:+.2f}], {tail}"


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
        mine = [r for r in rows if r["first_stage"] == source and r["depth"]]
        for label, style in (("reranker", "--"), ("blend", "-")):
            pts = sorted(
                (r["depth"], r["ndcg@10"])
                for r in mine
                if r["rerank"].startswith(label) and "dev choice" not in r["rerank"]
            )
            if pts:
                ax.plot(*zip(*pts), style, marker="o", color=colour, label=f"{source} + {label}")
        for r in (r for r in mine if "dev choice" in r["rerank"]):
            ax.plot(
                r["depth"], r["ndcg@10"], "*", markersize=12, color=colour, label=f"{source} {r['rerank']}"
            )
    ax.set_xlabel("rerank depth (candidates read by the cross-encoder)")
    ax.set_ylabel("nDCG@10 (SciFact test)")
    ax.set_title("Reranker quality vs depth (dotted: first stage alone)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reranker", default="default")
    p.add_argument("--model", default="default", help="the embedder of the first stages (name or folder)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
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
    p.add_argument(
        "--cache",
        type=Path,
        help="JSON file of reranker scores kept between runs of the same model (a full table scores ~45k "
        "pairs, ~40 min on 2 cores)",
    )
    p.add_argument("--latency-only", action="store_true", help="only the per-depth rerank latency (SciFact)")
    p.add_argument("--replot", action="store_true", help="redraw the table and plot from --out's JSON")
    args = p.parse_args()
    args.depths = [int(d) for d in args.depths.split(",")]
    args.deep_sources = set(args.deep_sources.split(","))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    if args.replot:
        saved = json.loads((Path(args.out) / "reranker_quality.json").read_text())
        (Path(args.out) / "reranker_quality.md").write_text(markdown(saved))
        plot(saved, Path(args.out) / "reranker_quality.png")
        return 0
    emb = Embedder.load(args.model, device=args.device, threads=args.threads)
    rr = Reranker.load(
        args.reranker,
        device=args.device,
        variant=args.variant,
        threads=args.threads,
        long_documents=args.long_documents,
    )
    log.info("reranker %s (%s), defaults %s", rr.folder, rr.variant, {s: rr.defaults(s) for s in RECALLS})
    result: dict[str, Any] = {
        "reranker": str(rr.folder),
        "variant": rr.variant,
        "blend": rr.blend,
        "depth": rr.depth,
        "per_recall": {
            s: dict(zip(("blend", "depth"), (d.blend, d.depth))) for s in RECALLS for d in [rr.defaults(s)]
        },
        "long_documents": args.long_documents,
        "device": args.device,
        "embedder": {"folder": str(emb.folder), "variant": emb.variant},
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
