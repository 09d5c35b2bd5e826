"""`duorank eval`: retrieval (every recall / rerank system side by side), STS, classification, clustering,
bitext mining."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from .options import SPIN_HELP, device_options

log = logging.getLogger("duorank.cli")

SYSTEMS = ("bm25", "dense", "hybrid", "bm25+embedding", "dense+cross", "hybrid+cross")  # = eval.run.SYSTEMS


def add(sub: Any) -> None:
    """`duorank eval ...`"""
    ev = sub.add_parser(
        "eval",
        help="measure retrieval, rerank, STS, clustering, classification on labelled data",
        description="Evaluate models and pipelines on labelled data (BEIR folders or zips, "
        "STS Benchmark, labelled jsonl such as Banking77).",
        epilog="example: duorank eval retrieval --data ./scifact --reranker default",
    )
    ev.set_defaults(run=_choose)
    esub = ev.add_subparsers(dest="eval_command", metavar="TASK")
    r = esub.add_parser(
        "retrieval",
        help="BM25, dense, hybrid and reranked systems side by side",
        epilog="examples:\n  duorank eval retrieval --data ./scifact --out report/\n"
        "  duorank eval retrieval --data ./scifact --reranker default --compare-reranker fast",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.set_defaults(run=_retrieval)
    r.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="BEIR folder or .zip, or hsk-spans (Chinese known-item spans of the HSK sentences)",
    )
    r.add_argument("--analyzer", help="BM25's analyzer: cjk (default), standard or jieba")
    r.add_argument("--split", default="test")
    r.add_argument("--model", default="default", help="embedder name or folder (default: %(default)s)")
    r.add_argument("--reranker", help="cross-encoder name or folder: adds the +cross systems")
    r.add_argument(
        "--compare-reranker",
        metavar="NAME",
        help="a second cross-encoder beside --reranker (e.g. fast): its rows at its own defaults, at "
        "--reranker's depth and at --reranker's latency",
    )
    r.add_argument("--top-k", type=int, default=100, help="first-stage candidates (default: %(default)s)")
    r.add_argument(
        "--top-n", type=int, default=10, help="cutoff of the headline metrics (default: %(default)s)"
    )
    r.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    r.add_argument(
        "--ignore-identical-ids", action="store_true", help="drop hits whose doc id is the query id"
    )
    r.add_argument("--out", metavar="DIR", help="write report.json, report.md and plots here")
    r.add_argument("--json", action="store_true", help="print the JSON report instead of the Markdown table")
    r.add_argument("--threads", type=int, help="onnxruntime threads (default: CPU count, at most 4)")
    r.add_argument("--spin", action="store_true", help=SPIN_HELP)
    device_options(r)
    for task, helptext in (
        ("sts", "STS Benchmark: Spearman of cosine vs gold"),
        ("classification", "logistic regression on frozen embeddings (e.g. Banking77)"),
        ("clustering", "k-means on embeddings: NMI, ARI, V-measure, purity"),
    ):
        t = esub.add_parser(
            task,
            help=helptext,
            epilog=f"example: duorank eval {task} --data ./" + ("stsb" if task == "sts" else "banking77"),
        )
        t.set_defaults(run=_embedding_task)
        t.add_argument("--data", required=True, metavar="PATH")
        t.add_argument("--model", default="default")
        t.add_argument("--threads", type=int, help="onnxruntime threads (default: CPU count, at most 4)")
        t.add_argument("--spin", action="store_true", help=SPIN_HELP)
        device_options(t)
    b = esub.add_parser(
        "bitext",
        help="bitext mining: nearest-neighbour translation matching, both ways (MTEB's BitextMining)",
        description="Each sentence's nearest neighbour by cosine among the translations must be its own. "
        "Default data: the HSK sentences (English and Chinese; pip install 'duorank[multilingual]').",
        epilog="example: duorank eval bitext --model multilingual",
    )
    b.set_defaults(run=_bitext)
    b.add_argument("--data", metavar="JSONL", help='pairs, one {"source", "target"} a line (default: HSK)')
    b.add_argument("--model", default="default")
    b.add_argument("--threads", type=int, help="onnxruntime threads (default: CPU count, at most 4)")
    b.add_argument("--spin", action="store_true", help=SPIN_HELP)
    device_options(b)


def _choose(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    parser.error("eval: choose a TASK: retrieval, sts, classification, clustering or bitext")


def _embedder(args: argparse.Namespace) -> Any:
    from ..models import Embedder

    return Embedder.load(
        args.model, device=args.device, variant=args.variant, threads=args.threads, spin=args.spin
    )


def _embedding_task(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..eval import run

    fn = {"sts": run.sts, "classification": run.classification, "clustering": run.clustering}
    print(json.dumps(fn[args.eval_command](_embedder(args), args.data), indent=1))
    return 0


def _bitext(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..eval import run
    from ..eval.datasets import json_objects

    source = target = None
    if args.data:
        with open(args.data, encoding="utf-8") as f:
            rows = [(n, obj) for n, obj in json_objects(f, args.data)]
        bad = [n for n, o in rows if not all(isinstance(o.get(k), str) for k in ("source", "target"))]
        if bad:
            parser.error(f'{args.data}: line {bad[0]}: expected {{"source": str, "target": str}}')
        source = [str(o["source"]) for _, o in rows]
        target = [str(o["target"]) for _, o in rows]
    print(json.dumps(run.bitext(_embedder(args), source, target), indent=1))
    return 0


def _retrieval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..eval import run
    from ..eval.datasets import load_beir
    from ..eval.report import markdown, save
    from ..models import Reranker

    emb = _embedder(args)
    if args.data == "hsk-spans":
        from ..eval import hsk

        data = hsk.spans()
    else:
        data = load_beir(args.data, args.split, ignore_identical_ids=args.ignore_identical_ids)
    rr = (
        Reranker.load(args.reranker, device=args.device, threads=args.threads, spin=args.spin)
        if args.reranker
        else None
    )
    systems = args.systems.split(",") if args.systems else None
    challenger = None
    if args.compare_reranker:
        if rr is None:
            parser.error("--compare-reranker needs --reranker (the reranker it is compared with)")
        second = Reranker.load(
            args.compare_reranker, device=args.device, threads=args.threads, spin=args.spin
        )
        challenger = (Path(args.compare_reranker).name, second)
    report = run.retrieval(
        data,
        emb,
        reranker=rr,
        top_k=args.top_k,
        top_n=args.top_n,
        systems=systems,
        analyzer=args.analyzer,
        challenger=challenger,
    )
    if args.out:
        for path in save(report, args.out):
            log.info("wrote %s", path)
    print(json.dumps(report.to_dict()) if args.json else markdown(report))
    return 0
