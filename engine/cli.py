"""The `duorank` command. Starts fast: heavy modules load only inside the command that needs them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

log = logging.getLogger("duorank.cli")

SYSTEMS = ("bm25", "dense", "hybrid", "bm25+embedding", "dense+cross", "hybrid+cross")  # = eval.run.SYSTEMS

EXPORT_EXAMPLES = """examples:
  duorank models export ./all-MiniLM-L6-v2 ./minilm-onnx
  duorank models export ./my-cross-encoder ./reranker --kind reranker --fp16
  duorank models export sentence-transformers/all-MiniLM-L6-v2 ./out --backend optimum   (online)
"""


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="duorank",
        description="Performance-first retrieval for RAG: embed, search (exact, HNSW, BM25, hybrid), rerank.",
        epilog="Data goes to stdout, logs to stderr. Exit codes: 0 ok, 1 error, 2 usage.",
    )
    p.add_argument("--version", action="version", version=f"duorank {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-vv: debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    models = sub.add_parser(
        "models",
        help="list, build and export ONNX models",
        description="List, build and export duorank model folders (ONNX + tokenizer + manifest).",
    )
    msub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    ls = msub.add_parser(
        "list",
        help="built-in and cached models with kind, dim, variants, size and parity",
        description="List built-in names and the model folders in the cache ($DUORANK_HOME/models).",
        epilog="example: duorank models list --json",
    )
    ls.add_argument("--json", action="store_true", help="one JSON object per model on stdout")
    ex = msub.add_parser(
        "export",
        help="export a Hugging Face folder or hub id to a duorank model folder",
        description="Export SOURCE (a local Hugging Face / sentence-transformers folder, or a hub id "
        "when online) to the duorank model folder OUT. Every variant must pass the parity gate.",
        epilog=EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("source", metavar="SOURCE")
    ex.add_argument("out", metavar="OUT")
    ex.add_argument("--kind", choices=["embedder", "reranker"], help="default: read from config.json")
    ex.add_argument(
        "--backend",
        choices=["auto", "numpy", "torch", "optimum"],
        default="auto",
        help="numpy: BERT without torch; torch: torch.onnx.export; optimum: optimum's exporter",
    )
    ex.add_argument("--fp16", action="store_true", help="add the half-precision variant (for GPUs)")
    ex.add_argument(
        "--int8", action="store_true", help="add the int8 variant (needs --data for its retrieval check)"
    )
    ex.add_argument("--data", metavar="DIR", help="BEIR folder (e.g. SciFact) for the int8 retrieval check")
    ex.add_argument("--optimize", action="store_true", help="fuse with onnxruntime's transformer optimizer")
    ex.add_argument("--revision", help="hub revision (hub ids only)")
    ex.add_argument("--force", action="store_true", help="replace OUT if it exists")
    ev = sub.add_parser(
        "eval",
        help="measure retrieval, rerank, STS, clustering, classification on labelled data",
        description="Evaluate models and pipelines on labelled data (BEIR folders or zips, "
        "STS Benchmark, labelled jsonl such as Banking77).",
    )
    esub = ev.add_subparsers(dest="eval_command", metavar="TASK")
    r = esub.add_parser(
        "retrieval",
        help="BM25, dense, hybrid and reranked systems side by side",
        epilog="example: duorank eval retrieval --dataset ../shared/data/scifact --out report/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--dataset", required=True, metavar="PATH", help="BEIR folder or .zip")
    r.add_argument("--split", default="test")
    r.add_argument("--model", default="default", help="embedder name or folder (default: %(default)s)")
    r.add_argument("--reranker", help="cross-encoder name or folder: adds the +cross systems")
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
    r.add_argument("--threads", type=int, help="onnxruntime threads (default: 1)")
    for task, helptext in (
        ("sts", "STS Benchmark: Spearman of cosine vs gold"),
        ("classification", "logistic regression on frozen embeddings (e.g. Banking77)"),
        ("clustering", "k-means on embeddings: NMI, ARI, V-measure, purity"),
    ):
        t = esub.add_parser(
            task,
            help=helptext,
            epilog=f"example: duorank eval {task} --data ../shared/data/"
            + ("stsb" if task == "sts" else "banking77"),
        )
        t.add_argument("--data", required=True, metavar="PATH")
        t.add_argument("--model", default="default")
        t.add_argument("--threads", type=int)
    ds = sub.add_parser("datasets", help="fetch public BEIR datasets into the cache (needs network)")
    dsub = ds.add_subparsers(dest="datasets_command", metavar="SUBCOMMAND")
    g = dsub.add_parser(
        "get",
        help="download a BEIR zip to $DUORANK_HOME/datasets and print its path",
        epilog="example: duorank datasets get scifact",
    )
    g.add_argument("name", metavar="NAME", help="BEIR name, e.g. scifact, nfcorpus, fiqa")
    g.add_argument("--url", help="download from here instead of the public BEIR location")
    return p


def _datasets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.datasets_command is None:
        parser.error("datasets: choose a SUBCOMMAND: get")
    from .eval.datasets import get

    print(get(args.name, url=args.url))
    return 0


def _eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.eval_command is None:
        parser.error("eval: choose a TASK: retrieval, sts, classification or clustering")
    from .eval import run
    from .models import Embedder

    emb = Embedder.load(args.model, threads=args.threads)
    if args.eval_command != "retrieval":
        fn = {"sts": run.sts, "classification": run.classification, "clustering": run.clustering}
        print(json.dumps(fn[args.eval_command](emb, args.data), indent=1))
        return 0
    from .eval.datasets import load_beir
    from .eval.report import markdown, save
    from .models import Reranker

    data = load_beir(args.dataset, args.split, ignore_identical_ids=args.ignore_identical_ids)
    rr = Reranker.load(args.reranker, threads=args.threads) if args.reranker else None
    systems = args.systems.split(",") if args.systems else None
    report = run.retrieval(data, emb, reranker=rr, top_k=args.top_k, top_n=args.top_n, systems=systems)
    if args.out:
        for path in save(report, args.out):
            log.info("wrote %s", path)
    print(json.dumps(report.to_dict()) if args.json else markdown(report))
    return 0


def _models(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.models_command == "list":
        from .models import list_models

        rows = list_models()
        if args.json:
            for r in rows:
                print(json.dumps(r))
            return 0
        print(
            f"{'NAME':24} {'KIND':9} {'DIM':>4} {'VARIANTS':16} {'SIZE MB':>8}  "
            "PARITY (min cosine / max diff)  PATH"
        )
        for r in rows:
            size = f"{r['bytes'] / 1e6:.1f}" if r.get("bytes") else "-"
            print(
                f"{r['name']:24} {r['kind']:9} {r.get('dim') or '-':>4} "
                f"{','.join(r.get('variants', [])) or '-':16} "
                f"{size:>8}  {r.get('parity') or 'not built yet':30} {r.get('path', '')}"
            )
        return 0
    if args.models_command == "export":
        from .models_export import export

        check = None
        if args.int8:
            if not args.data:
                parser.error("--int8 needs --data DIR (a BEIR folder for the retrieval check)")
            from .models_export.quantize import retrieval_check

            check = retrieval_check(args.data)
        out = export(
            args.source,
            args.out,
            kind=args.kind,
            backend=args.backend,
            fp16=args.fp16,
            int8=args.int8,
            optimize=args.optimize,
            revision=args.revision,
            overwrite=args.force,
            int8_check=check,
        )
        print(out)
        return 0
    parser.error("models: choose a SUBCOMMAND: list or export (see duorank models --help)")
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="duorank: %(levelname)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 0
    handlers: dict[str, Any] = {"models": _models, "eval": _eval, "datasets": _datasets}
    try:
        return int(handlers[args.command](args, parser))
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except (
        OSError,
        ValueError,
        TypeError,
        ImportError,
    ) as e:  # DuorankError subclasses ValueError/RuntimeError
        log.error("%s", e)
        return 1
    except RuntimeError as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
