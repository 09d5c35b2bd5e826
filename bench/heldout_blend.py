"""The blend weight a reranker earns on a domain it never trained on (a leave-one-domain-out estimate).

`choose-blend` chooses on dev queries of the training domains, where a reranker is at its best; out of its
domains it is weaker, and a weight chosen in-domain can cost there. Here every labelled query of a dataset
the reranker did not train on is a dev query: the same grid (dense, BM25, hybrid RRF x depth x weight) and
the same rule as `choose-blend`, printed (markdown table to stdout, the whole grid as JSON with --out).
Nothing is recorded in the model.

    python bench/heldout_blend.py FOLDER --python-docs 200     # FOLDER trained without the Python docs
    python bench/heldout_blend.py FOLDER --data ../shared/data/scifact --split train   # ... without SciFact

A folder whose manifest says it trained on the dataset is refused. Never use it with the sets that measure
out-of-domain quality (Banking77, STS Benchmark): those are never used to choose.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from duorank import Reranker
from duorank.eval.datasets import Dataset, load_beir
from duorank.models_export.pseudo import python_docs_dataset
from duorank.models_export.train import (
    Part,
    TrainConfig,
    choose_blend,
    first_stage_runs,
    judged_queries,
    pair_scorer,
    sigmoid_head,
)

log = logging.getLogger("heldout_blend")


def held_out_part(ds: Dataset, cfg: TrainConfig) -> Part:
    """Every judged query of `ds` as a dev query, with the first-stage lists `choose-blend` reranks."""
    runs, scores = first_stage_runs(ds, cfg.sources, max(cfg.depths))
    return Part(ds, [], judged_queries(ds), runs, scores, {})


def trained_on(rr: Reranker) -> set[str]:
    src = (rr.manifest or {}).get("source", {})
    names = set(src.get("train_queries", {}))
    base = src.get("base_training", {})
    while base:  # a checkpoint fine-tuned further trained on its parent's data too
        names |= set(base.get("train_queries", {}))
        base = base.get("base_training", {})
    return names


def table(choice: dict[str, Any]) -> str:
    weights = sorted({r["blend"] for r in choice["grid"]})
    lines = ["| first stage | depth | " + " | ".join(f"{a:.1f}" for a in weights) + " |"]
    lines.append("|---|---|" + "---|" * len(weights))
    cells: dict[tuple[str, int], list[str]] = {}
    for r in choice["grid"]:
        cells.setdefault((r["source"], r["depth"]), []).append(f"{100 * r['dev_ndcg@10']:.2f}")
    lines += [f"| {s} | {d} | " + " | ".join(v) + " |" for (s, d), v in cells.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a duorank reranker folder")
    p.add_argument("--python-docs", type=int, metavar="N", help="the N Python-docs pseudo-queries (seed 0)")
    p.add_argument("--data", help="a BEIR folder instead")
    p.add_argument("--split", default="train", help="its split (never test: default %(default)s)")
    p.add_argument("--variant", help="fp32, fp16 or int8 (default: the folder's best for this CPU)")
    p.add_argument("--out", type=Path, help="write the choice and the whole grid here (JSON)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    if (args.python_docs is None) == (args.data is None):
        p.error("give one of --python-docs N or --data BEIR")
    if args.split == "test":
        p.error("the test split is never used to choose")
    ds = python_docs_dataset(args.python_docs) if args.python_docs else load_beir(args.data, args.split)
    rr = Reranker.load(args.folder, variant=args.variant, long_documents="truncate")
    if ds.name in trained_on(rr):
        p.error(f"{args.folder} trained on {ds.name}: not a held-out domain for it")
    cfg = TrainConfig()
    choice = choose_blend(pair_scorer(rr), [held_out_part(ds, cfg)], cfg, adaptive=sigmoid_head(rr))
    print(f"{rr.folder} ({rr.variant}) on {ds.name} ({len(ds.queries)} queries, none trained on), nDCG@10:\n")
    print(table(choice))
    print(f"\nthe dev rule here: {json.dumps({k: choice[k] for k in ('source', 'depth', 'blend')})}")
    print(f"per first stage: {json.dumps(choice['per_recall'])}")
    if args.out:
        args.out.write_text(json.dumps({"folder": str(rr.folder), "variant": rr.variant, **choice}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
