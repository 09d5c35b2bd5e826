"""A fast reranker (a 2-layer student distilled from the 6-layer `default`: `duorank models
train-reranker --layers 2 --teacher default`, docs/training.md) side by side with `default`:

- speed: 50 (query, passage) pairs of up to 256 tokens (a SciFact test query and its hybrid top 50) per
  call, p50 / p99 over 30 queries at 2 threads: fast (at its recorded window length and at 256), default
  (256), and sentence-transformers' `CrossEncoder.predict` (fp32 PyTorch) on the same pairs with a
  cross-encoder of each shape (all-MiniLM-L6-v2 cut to 2 and 6 layers: speed only), in a child process;
- quality on SciFact test (300 queries): `duorank.eval.run.retrieval` with `challenger=("fast", ...)`:
  hybrid, hybrid + default at its defaults, hybrid + fast at its defaults, at default's depth and at
  default's latency; paired randomization tests against hybrid;
- out of domain, each first stage against each reranker at its defaults: Banking77 as retrieval (300
  test utterances, dense and hybrid), Python-docs pseudo-queries neither trained on (400 of this
  machine's, the 200 used in training left out), STS Benchmark (Spearman of the dense blend).

    python bench/fast_reranker.py --fast FOLDER [--only speed,scifact,banking77,python-docs,stsb]

Needs ../shared/data. Prints the tables; saves bench/results/fast_reranker.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import SHARED_DATA  # noqa: E402

PARTS = ("speed", "scifact", "banking77", "python-docs", "stsb")
OOD_SYSTEMS = ["dense", "hybrid", "dense+cross", "hybrid+cross"]


def speed(rerankers: dict[str, Any], fast: str, emb: Any, threads: int, n_queries: int) -> dict[str, Any]:
    """p50 / p99 ms of scoring 50 pairs in one call, per reranker, and the CrossEncoder peers'."""
    from duorank import Reranker
    from duorank.eval.datasets import load_beir
    from duorank.eval.first_stage import FirstStage

    ds = load_beir(SHARED_DATA / "scifact", "test")
    ids = ds.doc_ids()
    stage = FirstStage([ds.corpus[d] for d in ids], emb)
    qids = list(ds.queries)[:n_queries]
    queries = [ds.queries[q] for q in qids]
    hits = stage.search("hybrid", queries, 50, vectors=emb.encode(queries, kind="query"))
    groups = [(q, [ds.corpus[ids[i]] for i in row[row >= 0]]) for q, row in zip(queries, hits.ids)]
    rows: dict[str, Any] = {}
    models = {
        **{f"{name} at {rr.max_length} (recorded)": rr for name, rr in rerankers.items()},
        **{
            f"{name} at {n}": Reranker.load(folder, threads=threads, max_length=n, long_documents="truncate")
            for name, folder in (("default", "default"), ("fast", fast))
            for n in (128, 192, 256)
        },
    }
    for name, rr in models.items():
        for g in groups[:3]:
            rr.score(*g)  # warm-up
        ts = []
        for g in groups:
            t = time.perf_counter()
            rr.score(*g)
            ts.append(1e3 * (time.perf_counter() - t))
        rows[name] = {"max_length": rr.max_length, **_percentiles(ts)}
        print(f"  {name} (max_length {rr.max_length}): p50 {rows[name]['p50']:.1f} ms", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "groups.json"
        data.write_text(json.dumps(groups), encoding="utf-8")
        for layers in (2, 6):
            rows[f"CrossEncoder.predict, {layers} layers"] = _st_peer(data, layers, threads)
    return {"pairs_per_call": 50, "queries": len(groups), "threads": threads, "rows": rows}


def speed_table(rows: dict[str, Any]) -> str:
    """Markdown: p50 / p99 per row and how many times faster than the 6-layer int8 at 256 tokens and
    than CrossEncoder.predict of the same shape (2 layers for the fast rows, 6 for the default's)."""
    six = rows["default at 256"]["p50"]
    lines = [
        "| reranker | p50 / p99 ms (50 pairs) | vs default int8 at 256 | vs CrossEncoder, same layers |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "p50" not in r:
            lines.append(f"| {name} | {r.get('error', '-')} | - | - |")
            continue
        peer = rows.get(f"CrossEncoder.predict, {2 if name.startswith('fast') else 6} layers", {})
        versus = f"{peer['p50'] / r['p50']:.2f}x" if "p50" in peer and "CrossEncoder" not in name else "-"
        lines.append(f"| {name} | {r['p50']:.1f} / {r['p99']:.1f} | {six / r['p50']:.2f}x | {versus} |")
    return "\n".join(lines)


def _percentiles(ts: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(ts, 50)), "p99": float(np.percentile(ts, 99))}


def _st_peer(data: Path, layers: int, threads: int) -> dict[str, Any]:
    """CrossEncoder.predict of the same groups in a child process (PyTorch's own OpenMP policy)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    cmd = [sys.executable, __file__, "--st-peer", str(data), str(layers), str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def st_peer(data: Path, layers: int, threads: int) -> dict[str, float]:
    import sentence_transformers as st
    import torch
    import transformers

    from duorank.models_export.builtin import weights_folder

    torch.set_num_threads(threads)
    base = weights_folder("default")[0]
    with tempfile.TemporaryDirectory() as tmp:
        config = transformers.AutoConfig.from_pretrained(base, num_labels=1, num_hidden_layers=layers)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(base, config=config)
        model.save_pretrained(tmp)
        transformers.AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
        ce = st.CrossEncoder(tmp, device="cpu", max_length=256)
    groups = json.loads(data.read_text(encoding="utf-8"))
    for q, docs in groups[:3]:
        ce.predict([(q, d) for d in docs], batch_size=50)
    ts = []
    for q, docs in groups:
        t = time.perf_counter()
        ce.predict([(q, d) for d in docs], batch_size=50)
        ts.append(1e3 * (time.perf_counter() - t))
    return {"max_length": 256, **_percentiles(ts)}


def quality(ds: Any, emb: Any, default: Any, fast: Any, systems: list[str]) -> dict[str, Any]:
    """eval.run.retrieval with fast as the challenger of default: the rows and their comparisons."""
    from duorank.eval import run

    rep = run.retrieval(ds, emb, reranker=default, systems=systems, challenger=("fast", fast), top_k=100)
    out = rep.to_dict()
    for s in out["systems"]:
        s.pop("per_query")
    print(rep.to_markdown(), file=sys.stderr)
    return {"markdown": rep.to_markdown(), **out}


def banking77(emb: Any, default: Any, fast: Any, n: int) -> dict[str, Any]:
    """Banking77 as retrieval: `n` seeded test utterances, the train utterances of the same intent."""
    import random

    from duorank.eval.datasets import Dataset, load_labelled

    docs, doc_labels = load_labelled(SHARED_DATA / "banking77", "train")
    texts, labels = load_labelled(SHARED_DATA / "banking77", "test")
    pick = sorted(random.Random(0).sample(range(len(texts)), n))
    corpus = {f"d{j}": t for j, t in enumerate(docs)}
    queries = {f"t{i}": texts[i] for i in pick}
    qrels = {f"t{i}": {f"d{j}": 1 for j, lab in enumerate(doc_labels) if lab == labels[i]} for i in pick}
    ds = Dataset(name="banking77", corpus=corpus, titles={}, queries=queries, qrels=qrels, split="test")
    return quality(ds, emb, default, fast, OOD_SYSTEMS)


def python_docs(emb: Any, default: Any, fast: Any, n: int, trained: int) -> dict[str, Any]:
    """Python-docs pseudo-queries neither reranker trained on: the first `n` of the seeded order minus
    the `trained` the training set took (pseudo.python_docs_dataset keeps a seeded prefix)."""
    from duorank.eval.datasets import Dataset
    from duorank.models_export.pseudo import python_docs_dataset

    full, seen = python_docs_dataset(n), set(python_docs_dataset(trained).queries)
    keep = {q: t for q, t in full.queries.items() if q not in seen}
    ds = Dataset(
        name="python-docs (held out)",
        corpus=full.corpus,
        titles={},
        queries=keep,
        qrels={q: full.qrels[q] for q in keep},
        split="held-out",
    )
    return {
        "queries": len(keep),
        **quality(ds, emb, default, fast, OOD_SYSTEMS),
    }


def stsb(emb: Any, rerankers: dict[str, Any]) -> dict[str, Any]:
    """STS Benchmark test: Spearman of the embedder's cosine, and of its blend with each reranker at the
    weight that reranker records for dense recall (adaptive: one list, the whole set)."""
    from scipy.stats import spearmanr

    from duorank.eval.datasets import load_stsb
    from duorank.rerank import adaptive_weight, blend

    s1, s2, gold = load_stsb(SHARED_DATA / "stsb", "test")
    a, b = emb.encode(s1), emb.encode(s2)
    cos = (a * b).sum(axis=1).astype(np.float64)
    rows = {"embedding cosine": round(100 * float(spearmanr(cos, gold).statistic), 2)}
    for name, rr in rerankers.items():
        cross = np.concatenate([s.scores for s in rr.score_groups([(x, [y]) for x, y in zip(s1, s2)])])
        chosen = rr.defaults("dense")
        w = adaptive_weight(chosen.blend, cross) if chosen.adaptive else chosen.blend
        rows[f"{name} alone"] = round(100 * float(spearmanr(cross, gold).statistic), 2)
        rows[f"{name} blend (default for dense)"] = round(
            100 * float(spearmanr(blend(cos, cross, w), gold).statistic), 2
        )
    print(rows, file=sys.stderr)
    return {"pairs": len(gold), "spearman": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", metavar="FOLDER", help="the student reranker (a folder or name); required")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma list of: {', '.join(PARTS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed-queries", type=int, default=30)
    p.add_argument("--banking-queries", type=int, default=300)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "fast_reranker.json"))
    p.add_argument("--st-peer", nargs=3, metavar=("GROUPS", "LAYERS", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.st_peer:
        print(json.dumps(st_peer(Path(args.st_peer[0]), int(args.st_peer[1]), int(args.st_peer[2]))))
        return 0
    if not args.fast:
        p.error("--fast FOLDER is required (a reranker trained with --layers 2 --teacher default)")
    from duorank import Embedder, Reranker
    from duorank.eval.datasets import load_beir
    from duorank.machine import describe

    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"--only: unknown {sorted(unknown)}; expected some of {', '.join(PARTS)}")
    if not SHARED_DATA.is_dir():
        print(f"needs the evaluation data at {SHARED_DATA}", file=sys.stderr)
        return 2
    emb = Embedder.load("default", threads=args.threads)
    default = Reranker.load("default", threads=args.threads)
    fast = Reranker.load(args.fast, threads=args.threads, long_documents="truncate")
    for rr in (default, fast):
        rr.measure_cost()  # the cost model the @latency row's budget uses, as warmup() measures it
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": describe(),
        "threads": args.threads,
    }
    both = {"default": default, "fast": fast}
    if "speed" in parts:
        result["speed"] = speed(both, args.fast, emb, args.threads, args.speed_queries)
        print(speed_table(result["speed"]["rows"]))
    if "scifact" in parts:
        ds = load_beir(SHARED_DATA / "scifact", "test")
        result["scifact"] = quality(ds, emb, default, fast, ["dense", "hybrid", "hybrid+cross"])
    if "banking77" in parts:
        result["banking77"] = banking77(emb, default, fast, args.banking_queries)
    if "python-docs" in parts:
        result["python-docs"] = python_docs(emb, default, fast, 600, 200)
    if "stsb" in parts:
        result["stsb"] = stsb(emb, both)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
