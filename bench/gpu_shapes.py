"""What a GPU session pays for input shapes it has not met: SciFact's corpus embedded twice (cold, then
warm) and 20 queries' top-100 candidates reranked twice, for several `pad_multiple` values (the padded
length of each batch rounded up to a multiple: fewer distinct shapes, a little more padding).

Each value runs in a process of its own, so that nothing one run loaded (CUDA kernels load lazily, on first
use) helps the next. Run on a machine with a GPU:

    python bench/gpu_shapes.py --model FOLDER --data ../shared/data/scifact [--multiples 1,8,16,32,64]

Prints a Markdown table and writes --out (JSON). `--device cpu` runs it on the CPU (a dry run; slow).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def one(args: argparse.Namespace) -> dict[str, Any]:
    from duorank import Embedder, ExactIndex, Reranker, batching
    from duorank.eval.datasets import load_beir

    if args.int8_precision == "fp32":  # the baseline: int8 weights expanded to fp32 (before fp16)
        from duorank import onnx_graphs

        onnx_graphs.expand_for_gpu = lambda model, facts: (onnx_graphs.dequantize_weights(model), "fp32")
    t = time.perf_counter()
    emb = Embedder.load(args.model, device=args.device)
    rr = Reranker.load(args.reranker, device=args.device)
    load_s = time.perf_counter() - t
    emb.pad_multiple = rr.pad_multiple = args.one
    ds = load_beir(args.data, "test")
    corpus = [ds.corpus[d] for d in ds.doc_ids()][: args.docs]
    queries = list(ds.queries.values())[: args.queries]
    lengths = np.array([len(e.ids) for e in emb.tokenizer.encode_batch(corpus)])
    plan = batching.plan(lengths, emb.batch_tokens, 512, args.one, emb.max_length)
    shapes = [(len(b), batching.width(int(lengths[b].max()), args.one, emb.max_length)) for b in plan]
    out: dict[str, Any] = {"pad_multiple": args.one, "load_s": load_s, "batches": len(plan)}
    out["reranker"] = {"variant": rr.variant, "int8_runs_in": rr.expanded_precision}
    out["shapes"] = len(set(shapes))
    out["padded_tokens"] = sum(rows * width for rows, width in shapes)
    out["tokens"] = int(lengths.sum())
    for run in ("cold", "warm"):
        t = time.perf_counter()
        vecs = emb.encode(corpus)
        out[f"embed_{run}_s"] = time.perf_counter() - t
    np.save(args.vectors, vecs)
    index = ExactIndex(dim=emb.dim)
    index.add(vecs)
    hits = index.search(emb.encode(queries, kind="query"), 100)
    groups = [(q, [corpus[j] for j in hits.ids[i] if j >= 0]) for i, q in enumerate(queries)]
    for run in ("cold", "warm"):
        ts = []
        for q, docs in groups:
            t = time.perf_counter()
            rr.score(q, docs)
            ts.append(time.perf_counter() - t)
        out[f"rerank_{run}_ms_median"] = 1e3 * float(np.median(ts))
        out[f"rerank_{run}_ms_total"] = 1e3 * float(np.sum(ts))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="embedder name or folder")
    ap.add_argument("--reranker", default="default")
    ap.add_argument("--data", type=Path, required=True, help="SciFact BEIR folder")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--multiples", default="1,8,16,32,64")
    ap.add_argument("--docs", type=int, default=None, help="first N corpus documents only (dry runs)")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("gpu_shapes.json"))
    ap.add_argument(
        "--int8-precision",
        default="auto",
        choices=["auto", "fp32"],
        help="an int8 reranker on CUDA: as duorank runs it (auto) or expanded to fp32 only",
    )
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args)))
        return 0
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in (int(x) for x in args.multiples.split(",")):
            cmd = [sys.executable, __file__, "--one", str(m), "--vectors", f"{tmp}/{m}.npy"]
            cmd += ["--model", str(args.model), "--reranker", args.reranker, "--data", str(args.data)]
            cmd += ["--device", args.device, "--queries", str(args.queries)]
            cmd += ["--int8-precision", args.int8_precision]
            cmd += ["--docs", str(args.docs)] if args.docs else []
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            row = json.loads(done.stdout.strip().splitlines()[-1])
            first = np.load(f"{tmp}/{rows[0]['pad_multiple'] if rows else m}.npy")
            row["max_abs_diff_vs_first"] = float(np.abs(np.load(f"{tmp}/{m}.npy") - first).max())
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    args.out.write_text(json.dumps({"device": args.device, "model": str(args.model), "rows": rows}, indent=1))
    print("| pad multiple | shapes | padding | embed cold s | warm s | rerank cold ms/q | warm ms/q | diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pad_multiple']} | {r['shapes']} | {r['padded_tokens'] / r['tokens'] - 1:+.1%} "
            f"| {r['embed_cold_s']:.2f} | {r['embed_warm_s']:.2f} | {r['rerank_cold_ms_median']:.1f} "
            f"| {r['rerank_warm_ms_median']:.1f} | {r['max_abs_diff_vs_first']:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
