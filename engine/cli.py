"""The `duorank` command. Starts fast: heavy modules load only inside the command that needs them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

log = logging.getLogger("duorank.cli")

SPIN_HELP = "onnxruntime's threads spin between nodes while a call runs: faster for one caller at a time"
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
        epilog='example: duorank index kb/ notes/ && duorank search kb/ "how do I reset my password?"\n'
        "Data goes to stdout, logs to stderr. Exit codes: 0 ok, 1 error, 2 usage, 130 interrupted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"duorank {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-vv: debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    models = sub.add_parser(
        "models",
        help="list, build and export ONNX models",
        description="List, build and export duorank model folders (ONNX + tokenizer + manifest).",
        epilog="example: duorank models list",
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
    qz = msub.add_parser(
        "quantize",
        help="add the int8 variant to an exported model folder (parity + quality gate)",
        description="Quantise FOLDER's fp32 graph to int8 (the recipe of `export --int8`), check it against "
        "the fp32 graph on the edge set and on labelled data (--data: nDCG@10 within 1 point), and add it to "
        "FOLDER (or write --out with the --keep variants).",
        epilog="example:\n  duorank models quantize ./reranker --data ./scifact --out ./rr-int8 --keep int8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    qz.add_argument("folder", metavar="FOLDER")
    qz.add_argument(
        "--data", required=True, metavar="DIR", help="BEIR folder for the quality check (test split)"
    )
    qz.add_argument("--out", metavar="DIR", help="write a new folder instead of adding to FOLDER")
    qz.add_argument("--keep", default="fp32,fp16,int8", help="variants --out keeps (default: %(default)s)")
    qz.add_argument("--force", action="store_true", help="replace --out if it exists")
    cb = msub.add_parser(
        "choose-blend",
        help="choose a reranker's blend weight and depth on your labelled queries (no training)",
        description="Score the dev queries of BEIR (the seeded split training uses) with FOLDER's reranker "
        "over dense, BM25 and hybrid candidates; choose the (depth, blend) that is best on average without "
        "losing on any dataset against the same first stage alone, and record it in FOLDER's manifest: "
        "with one --data and no --python-docs, one pair per first stage (search uses the pair for the "
        "--recall it runs); with several dev domains, one pair for all.",
        epilog="example:\n  duorank models choose-blend ./reranker --data ./my-qrels --python-docs 200",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cb.add_argument("folder", metavar="FOLDER")
    cb.add_argument("--data", required=True, action="append", metavar="BEIR", help="repeat for several")
    cb.add_argument("--split", default="train")
    cb.add_argument(
        "--python-docs", type=int, default=0, metavar="N", help="add N Python-docs pseudo-queries"
    )
    _split_options(cb)
    tr = msub.add_parser(
        "train-reranker",
        help="fine-tune a cross-encoder on labelled queries (BEIR layout) and export it",
        description="Fine-tune a cross-encoder from an encoder's weights on the labelled queries of a "
        "BEIR dataset (never its test split), choose the blend weight and rerank depth on a held-out dev "
        "part, and export it through the parity gate. Needs the [export] extra (torch, transformers).",
        epilog="examples:\n  duorank models train-reranker --data ./scifact --out ./reranker\n"
        "  duorank models train-reranker --base ./my-encoder --data ./my-qrels --out ./rr --epochs 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("--base", help="Hugging Face encoder folder (default: all-MiniLM-L6-v2 from [models])")
    tr.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="BEIR",
        help="BEIR folder or zip with qrels/<split>.tsv; repeat to train on a mixture; or one "
        "FILE.json.gz of prepare-training",
    )
    tr.add_argument(
        "--python-docs",
        type=int,
        default=0,
        metavar="N",
        help="mix in N pseudo-queries from this machine's Python docs (out-of-domain robustness)",
    )
    tr.add_argument("--split", default="train", help="labelled split to train on (default: %(default)s)")
    tr.add_argument("--out", required=True, metavar="DIR", help="the model folder to write")
    tr.add_argument("--epochs", type=int, default=2, help="passes over the training queries (default: 2)")
    tr.add_argument("--batch-size", type=int, default=16, help="pairs per step (groups of --group-size)")
    tr.add_argument("--group-size", type=int, default=8, help="1 positive + N-1 negatives (default: 8)")
    tr.add_argument(
        "--max-length", type=int, default=256, help="tokens per (query, document) pair (default: 256)"
    )
    tr.add_argument("--lr", type=float, default=5e-5, help="AdamW peak learning rate (default: 5e-5)")
    tr.add_argument("--negatives", type=int, default=50, help="depth of the lists negatives come from")
    tr.add_argument("--sources", default="dense,bm25", help="first stages for negatives: dense,bm25")
    _split_options(tr)
    tr.add_argument("--max-queries", type=int, help="train on the first N queries only (quick runs)")
    tr.add_argument("--max-steps", type=int, help="stop after N steps")
    tr.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs, CPUs with native bf16)")
    tr.add_argument("--int8", action="store_true", help="add the int8 variant (checked on the dev queries)")
    tr.add_argument("--force", action="store_true", help="replace OUT if it exists")
    tr.add_argument(
        "--distill",
        type=int,
        default=0,
        metavar="N",
        help="mix in N sentence pairs scored by the embedder (keeps graded similarity)",
    )
    tr.add_argument("--distill-weight", type=float, default=1.0, help="weight of that loss (default: 1)")
    tr.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to train")
    tr.add_argument(
        "--train-seed",
        type=int,
        metavar="N",
        help="seed of the initialisation, example order and negatives (default: --seed, which also "
        "seeds the split; a prepared set keeps its own)",
    )
    tr.add_argument(
        "--no-export",
        action="store_true",
        help="write the trained checkpoint (+ duorank-train.json) instead of a model folder; "
        "`duorank models export` it later",
    )
    pt = msub.add_parser(
        "prepare-training",
        help="compute a reranker's training set (splits, negatives, distillation pairs) into one file",
        description="Everything train-reranker computes before its first step, in one gzip JSON file: "
        "per dataset the seeded train/dev split, negatives mined from the first stages, the dev queries' "
        "candidate lists, and --distill pairs scored by the embedder. Training from it (train-reranker "
        "--data FILE.json.gz) needs only torch and transformers: prepare here, train on a GPU machine.",
        epilog="example:\n  duorank models prepare-training --data ./scifact --python-docs 200"
        " --distill 16000 --out set.json.gz\n  duorank models train-reranker --data set.json.gz "
        "--device cuda --bf16 --no-export --out ./ckpt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pt.add_argument("--data", required=True, action="append", metavar="BEIR", help="repeat for several")
    pt.add_argument("--split", default="train")
    pt.add_argument("--python-docs", type=int, default=0, metavar="N")
    pt.add_argument("--distill", type=int, default=0, metavar="N")
    pt.add_argument("--negatives", type=int, default=50)
    pt.add_argument("--sources", default="dense,bm25")
    _split_options(pt)
    pt.add_argument("--max-queries", type=int)
    pt.add_argument("--out", required=True, metavar="FILE.json.gz")
    ev = sub.add_parser(
        "eval",
        help="measure retrieval, rerank, STS, clustering, classification on labelled data",
        description="Evaluate models and pipelines on labelled data (BEIR folders or zips, "
        "STS Benchmark, labelled jsonl such as Banking77).",
        epilog="example: duorank eval retrieval --data ./scifact --reranker default",
    )
    esub = ev.add_subparsers(dest="eval_command", metavar="TASK")
    r = esub.add_parser(
        "retrieval",
        help="BM25, dense, hybrid and reranked systems side by side",
        epilog="example: duorank eval retrieval --data ./scifact --out report/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--data", required=True, metavar="PATH", help="BEIR folder or .zip")
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
    r.add_argument("--threads", type=int, help="onnxruntime threads (default: CPU count, at most 4)")
    r.add_argument("--spin", action="store_true", help=SPIN_HELP)
    _device_options(r)
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
        t.add_argument("--data", required=True, metavar="PATH")
        t.add_argument("--model", default="default")
        t.add_argument("--threads", type=int, help="onnxruntime threads (default: CPU count, at most 4)")
        t.add_argument("--spin", action="store_true", help=SPIN_HELP)
        _device_options(t)
    _engine_commands(sub)
    ds = sub.add_parser(
        "datasets",
        help="fetch public BEIR datasets into the cache (needs network)",
        epilog="example: duorank datasets get scifact",
    )
    dsub = ds.add_subparsers(dest="datasets_command", metavar="SUBCOMMAND")
    g = dsub.add_parser(
        "get",
        help="download a BEIR zip to $DUORANK_HOME/datasets and print its path",
        epilog="example: duorank datasets get scifact",
    )
    g.add_argument("name", metavar="NAME", help="BEIR name, e.g. scifact, nfcorpus, fiqa")
    g.add_argument("--url", help="download from here instead of the public BEIR location")
    return p


def _engine_commands(sub: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    demo = sub.add_parser(
        "demo",
        help="ask questions of the Python documentation on this machine (built once, cached)",
        description="Builds (once) a knowledge base from the installed Python's documentation (pydoc "
        "topics and the standard library's docstrings, chunked) with the default models, then answers "
        "sample questions or yours: the top passages after rerank, their rank before, timings per stage.",
        epilog='examples:\n  duorank demo\n  duorank demo "how do I copy a directory tree?"\n'
        '  duorank demo --json "sort a list of dicts by a key"',
        formatter_class=raw,
    )
    demo.add_argument("question", nargs="*", help="your question (default: a few sample questions)")
    demo.add_argument("--top-k", type=int, default=50, help="candidates recalled (default: %(default)s)")
    demo.add_argument(
        "--top-n", type=int, default=3, help="passages shown per question (default: %(default)s)"
    )
    demo.add_argument("--rebuild", action="store_true", help="rebuild the cached knowledge base")
    demo.add_argument("--max-documents", type=int, help="index only the first N documents (quick tries)")
    demo.add_argument("--json", action="store_true", help="results as JSON on stdout")

    ix = sub.add_parser(
        "index",
        help="add text files, folders of .txt/.md, or JSONL to a collection",
        description="Embed documents and add them to the collection DIR (created if missing). Each SOURCE "
        "is a .txt/.md file (one document), a folder (each .txt/.md file below it is a document, its id the "
        'relative path) or a .jsonl file (one {"id", "text", "metadata"} object per line; - '
        "reads stdin). Empty documents are skipped with a warning (--strict: an error). All or nothing: an "
        "error or Ctrl-C leaves the collection as it was.",
        epilog="examples:\n  duorank index kb/ notes/\n"
        "  duorank index kb/ docs.jsonl more.jsonl --index hnsw --chunk-tokens 200",
        formatter_class=raw,
    )
    ix.add_argument("collection", metavar="DIR")
    ix.add_argument("sources", nargs="+", metavar="SOURCE")
    ix.add_argument("--strict", action="store_true", help="fail on an empty document instead of skipping it")
    ix.add_argument("--model", default="default", help="embedder for a new collection (default: %(default)s)")
    ix.add_argument("--reranker", help="reranker to record for searches of a new collection")
    ix.add_argument(
        "--index", choices=["exact", "hnsw"], default="exact", help="vector index of a new collection"
    )
    ix.add_argument("--dtype", choices=["f32", "f16", "i8"], default="f32", help="stored vector precision")
    ix.add_argument("--chunk-tokens", type=int, help="split documents longer than this (tokens)")
    ix.add_argument("--chunk-overlap", type=int, default=32, help="tokens shared by consecutive chunks")
    ix.add_argument("--no-bm25", action="store_true", help="no BM25 index (no bm25/hybrid recall)")
    ix.add_argument("--json", action="store_true", help="the ingest report as JSON on stdout")

    se = sub.add_parser(
        "search",
        help="search a collection: recall top-k, rerank, print top-n",
        description="Search the collection DIR with the models it was built with.",
        epilog='examples:\n  duorank search kb/ "reset a password" --top-n 3\n'
        '  duorank search kb/ "tax rules" --where \'{"year": {"gte": 2020}}\' --json\n'
        '  duorank search kb/ "error 42" --recall hybrid --rerank none',
        formatter_class=raw,
    )
    se.add_argument("collection", metavar="DIR")
    se.add_argument("query", nargs="+", help="one or more queries")
    se.add_argument("--top-k", type=int, default=50, help="candidates recalled (default: %(default)s)")
    se.add_argument("--top-n", type=int, default=5, help="results kept (default: %(default)s)")
    se.add_argument("--where", metavar="JSON", help='metadata filter, e.g. \'{"lang": "en"}\'')
    se.add_argument("--recall", choices=["dense", "bm25", "hybrid"], default="dense")
    se.add_argument("--rerank", choices=["auto", "cross", "embedding", "none"], default="auto")
    se.add_argument("--group", action="store_true", help="one result per document (best chunk)")
    se.add_argument("--model", help="embedder to use (must be the one the collection was built with)")
    se.add_argument(
        "--reranker", help="reranker to use instead of the recorded one ('default': the packaged one)"
    )
    se.add_argument(
        "--rerank-depth",
        type=int,
        help="candidates the reranker reads (default: the depth it records for --recall)",
    )
    se.add_argument(
        "--rerank-blend",
        type=float,
        help="weight of the reranker vs recall, 0..1 (default: the weight it records for --recall)",
    )
    se.add_argument("--json", action="store_true", help="results as JSON on stdout")

    info = sub.add_parser("info", help="what a collection holds", epilog="example: duorank info kb/ --json")
    info.add_argument("collection", metavar="DIR")
    info.add_argument("--json", action="store_true")

    bench = sub.add_parser(
        "bench",
        help="a quick self-benchmark on this machine: ingest docs/s and query latency",
        description="Indexes the first N documents of the Python documentation corpus into a temporary "
        "collection with the default embedder and times ingest and queries (batch 1, per stage).",
        epilog="example: duorank bench --documents 500 --json",
    )
    bench.add_argument(
        "--documents", type=int, default=500, help="documents to ingest (default: %(default)s)"
    )
    bench.add_argument("--queries", type=int, default=50, help="queries to time (default: %(default)s)")
    bench.add_argument("--json", action="store_true")


def _usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks argparse cannot express; failures exit 2 like any usage error."""
    for name in ("top_k", "top_n", "max_documents", "documents", "queries", "chunk_tokens"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if getattr(args, "top_n", None) and getattr(args, "top_k", None) and args.top_n > args.top_k:
        parser.error(f"--top-n {args.top_n} > --top-k {args.top_k}: rerank keeps top-n of the top-k")
    for q in getattr(args, "query", None) or getattr(args, "question", None) or []:
        if not q.strip():
            parser.error("empty query: give a question with words in it")
    if getattr(args, "where", None) is not None:
        try:
            args.where = json.loads(args.where)
        except json.JSONDecodeError as e:
            parser.error(f'--where is not valid JSON ({e}): e.g. \'{{"lang": "en"}}\'')
        from .store import FilterError, compile_filter

        try:
            compile_filter(args.where)
        except FilterError as e:
            parser.error(f"--where: {e}")


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import shutil

    from . import demo
    from .model_folder import MANIFEST, PACKAGED
    from .pipeline import Engine

    # the packaged cross-encoder reranks when this installation has it (else: cosine with the query)
    reranker = "default" if (PACKAGED["reranker"] / MANIFEST).is_file() else None
    folder = (
        demo.folder()
        if args.max_documents is None
        else demo.folder().with_name(f"{demo.folder().name}-first{args.max_documents}")
    )
    if args.rebuild and folder.exists():
        shutil.rmtree(folder)
    if not (folder / "collection.json").is_file():
        texts, ids, meta = demo.corpus(args.max_documents)
        log.warning("building the demo knowledge base (once): %d documents into %s", len(texts), folder)
        building = folder.with_name(folder.name + ".building")
        shutil.rmtree(building, ignore_errors=True)  # what an interrupted build left
        with Engine.create(building, reranker=reranker, chunk_tokens=200, chunk_overlap=32) as eng:
            eng.add(texts, ids, meta)  # a progress bar when stderr is a terminal
        shutil.rmtree(folder, ignore_errors=True)
        building.rename(folder)  # complete, or absent
    with Engine.open(folder, reranker=reranker or True) as eng:
        questions = [" ".join(args.question)] if args.question else demo.QUESTIONS
        recall = "hybrid"
        rerank = "cross" if eng.reranker is not None else "embedding"
        res = eng.search(
            questions, top_k=args.top_k, top_n=args.top_n, recall=recall, rerank=rerank, group=True
        )
        if args.json:
            print(json.dumps(res.to_dict(), indent=1))
            return 0
        print(
            f"{len(eng.collection)} passages of the Python {sys.version.split()[0]} documentation; "
            f"recall {recall} top-{args.top_k}, rerank {rerank}, top-{args.top_n} shown"
        )
        for q, hits in zip(res.queries, res.hits):
            print(f"\nQ: {q}")
            for rank, h in enumerate(hits, 1):
                text = " ".join(h.text.split())
                own = "" if h.rerank_score is None else f"reranker {h.rerank_score:.3f}, "
                before = f"rank before rerank: {h.recall_rank}"
                print(f"  {rank}. [{h.parent}] score {h.score:.3f} ({own}{before})")
                print(f"     {text[:300]}{'...' if len(text) > 300 else ''}")
        t = res.timings
        print(
            f"\ntimings for {len(questions)} questions (ms): embed {t['embed']:.1f}, "
            f"search {t['search']:.1f}, fetch {t['fetch']:.1f}, rerank {t['rerank']:.1f}, "
            f"total {t['total']:.1f}"
        )
    return 0


def _load_source(source: str) -> tuple[list[str], list[str], list[dict[str, Any]] | None]:
    from pathlib import Path

    if source == "-" or source.endswith(".jsonl"):
        from .eval.datasets import json_objects  # one JSON-lines reader: errors name file and line

        stream = sys.stdin if source == "-" else open(source, encoding="utf-8")
        texts: list[str] = []
        ids: list[str] = []
        meta: list[dict[str, Any]] = []
        with stream:
            for n, obj in json_objects(stream, source):
                if not isinstance(obj.get("text"), str):
                    raise ValueError(f"{source}:{n}: expected an object with a string 'text'")
                texts.append(str(obj["text"]))
                ids.append(str(obj.get("id", obj.get("_id", n))))
                m = obj.get("metadata") or {}
                if not isinstance(m, dict):
                    raise ValueError(f"{source}:{n}: 'metadata' must be a JSON object")
                meta.append(m)
        return texts, ids, meta
    path = Path(source)
    if path.is_file():
        return [path.read_text(encoding="utf-8")], [path.name], None
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
        if not files:
            raise ValueError(f"{path}: no .txt or .md files below it")
        return [p.read_text(encoding="utf-8") for p in files], [str(p.relative_to(path)) for p in files], None
    raise FileNotFoundError(f"{source}: no such file or folder")


def _without_empty(
    texts: list[str], ids: list[str], meta: list[dict[str, Any]], strict: bool
) -> tuple[list[str], list[str], list[dict[str, Any]], int]:
    """The documents with text in them (real corpora hold empty ones), and how many were dropped; with
    `strict`, an empty document is an error instead."""
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if not empty:
        return texts, ids, meta, 0
    first = ", ".join(repr(ids[i]) for i in empty[:5]) + (", ..." if len(empty) > 5 else "")
    if strict:
        raise ValueError(f"{len(empty)} empty documents (ids {first}); --strict refuses them")
    log.warning("skipped %d empty documents (ids %s)", len(empty), first)
    keep = [i for i, t in enumerate(texts) if t.strip()]
    return [texts[i] for i in keep], [ids[i] for i in keep], [meta[i] for i in keep], len(empty)


def _index(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pathlib import Path

    from .pipeline import Engine

    texts: list[str] = []
    ids: list[str] = []
    meta: list[dict[str, Any]] = []
    for source in args.sources:
        t, i, m = _load_source(source)
        texts += t
        ids += i
        meta += m if m is not None else [{} for _ in t]
    texts, ids, meta, skipped = _without_empty(texts, ids, meta, args.strict)
    if not texts:
        raise ValueError(f"nothing to add: every document of {', '.join(args.sources)} is empty")
    if (Path(args.collection) / "collection.json").is_file():
        eng = Engine.open(args.collection, "a", reranker=False)
    else:
        eng = Engine.create(
            args.collection,
            args.model,
            args.reranker,
            index=args.index,
            dtype=args.dtype,
            bm25=not args.no_bm25,
            chunk_tokens=args.chunk_tokens,
            chunk_overlap=args.chunk_overlap if args.chunk_tokens else 0,
        )
    with eng:
        report = eng.add(texts, ids, meta)
    out = {
        "collection": args.collection,
        "documents": report.documents,
        "skipped_empty": skipped,
        "chunks": report.chunks,
        "truncated": report.truncated,
        "seconds": round(report.seconds, 3),
        "total": len(eng),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"added {report.documents} documents ({report.chunks} chunks, {report.truncated} cut at the "
            f"model's max length; {skipped} empty skipped) in {report.seconds:.1f} s; "
            f"{args.collection} holds {len(eng)} chunks"
        )
    return 0


def _search(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .pipeline import Engine

    reranker: Any = (
        args.reranker if args.reranker else (False if args.rerank in ("none", "embedding") else True)
    )
    with Engine.open(args.collection, embedder=args.model, reranker=reranker) as eng:
        rerank = None if args.rerank == "none" else args.rerank
        res = eng.search(
            args.query,
            args.top_k,
            args.top_n,
            where=args.where,
            recall=args.recall,
            rerank=rerank,
            group=args.group,
            rerank_depth=args.rerank_depth,
            rerank_blend=args.rerank_blend,
        )
    if args.json:
        print(json.dumps(res.to_dict()))
        return 0
    for q, hits in zip(res.queries, res.hits):
        print(f"# {q}")
        for rank, h in enumerate(hits, 1):
            text = " ".join(h.text.split())
            own = "" if h.rerank_score is None else f", reranker {h.rerank_score:.4f}"
            print(f"{rank}\t{h.score:.4f}\t{h.id}\t(recall rank {h.recall_rank}{own})\t{text[:200]}")
    t = res.timings
    log.info("timings (ms): %s", ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    return 0


def _info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .collection import Collection

    with Collection.open(args.collection, verify=False) as c:
        stats = c.stats()
        stats["engine"] = c.manifest.get("extra", {}).get("engine")
        stats["bm25"] = c.manifest.get("bm25") is not None
    if args.json:
        print(json.dumps(stats))
        return 0
    for key, value in stats.items():
        print(f"{key:16} {value}")
    return 0


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import tempfile
    import time

    import numpy as np

    from . import demo, machine
    from .pipeline import Engine

    texts, ids, meta = demo.corpus(args.documents)
    with tempfile.TemporaryDirectory() as tmp:
        eng = Engine.create(f"{tmp}/c", chunk_tokens=200, chunk_overlap=32)
        report = eng.add(texts, ids, meta)
        questions = [t.split(":", 1)[0].replace(".", " ") for t in texts[: args.queries]]
        eng.warmup()
        stages: dict[str, list[float]] = {}
        for q in questions:
            t = eng.search(q, top_k=50, top_n=5, rerank=None).timings
            for k, v in t.items():
                stages.setdefault(k, []).append(v)
        t0 = time.perf_counter()
        eng.search(questions, top_k=50, top_n=5, rerank=None)
        batch_s = time.perf_counter() - t0
        eng.close()
    out: dict[str, Any] = {
        "machine": machine.describe(),
        "documents": report.documents,
        "chunks": report.chunks,
        "ingest_docs_per_s": report.documents / report.seconds,
        "ingest_chunks_per_s": report.chunks / report.seconds,
        "query_p50_ms": {k: float(np.median(v)) for k, v in stages.items()},
        "batch_queries_per_s": len(questions) / batch_s,
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"machine: {machine.summary(out['machine'])}")
    print(f"ingest: {out['ingest_docs_per_s']:.1f} documents/s ({out['ingest_chunks_per_s']:.1f} chunks/s)")
    p50 = out["query_p50_ms"]
    print("query p50 (ms, batch 1, dense top-50): " + ", ".join(f"{k} {v:.2f}" for k, v in p50.items()))
    print(f"batch of {len(questions)} queries: {out['batch_queries_per_s']:.0f} queries/s")
    return 0


def _datasets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.datasets_command is None:
        parser.error("datasets: choose a SUBCOMMAND: get")
    from .eval.datasets import get

    print(get(args.name, url=args.url))
    return 0


def _device_options(p: argparse.ArgumentParser) -> None:
    from .model_folder import VARIANTS

    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="onnxruntime provider (default: %(default)s)"
    )
    p.add_argument(
        "--variant",
        choices=list(VARIANTS),
        help="embedder variant (default: fp32 on cpu, fp16 on cuda where the folder has it)",
    )


def _split_options(p: argparse.ArgumentParser) -> None:
    """The seeded train / dev split of labelled queries, the same in training and in choosing."""
    p.add_argument(
        "--dev-fraction",
        type=float,
        default=0.135,
        help="share of each dataset's queries held out as dev (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of that split (default: %(default)s)")


def _eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.eval_command is None:
        parser.error("eval: choose a TASK: retrieval, sts, classification or clustering")
    from .eval import run
    from .models import Embedder

    emb = Embedder.load(
        args.model, device=args.device, variant=args.variant, threads=args.threads, spin=args.spin
    )
    if args.eval_command != "retrieval":
        fn = {"sts": run.sts, "classification": run.classification, "clustering": run.clustering}
        print(json.dumps(fn[args.eval_command](emb, args.data), indent=1))
        return 0
    from .eval.datasets import load_beir
    from .eval.report import markdown, save
    from .models import Reranker

    data = load_beir(args.data, args.split, ignore_identical_ids=args.ignore_identical_ids)
    rr = (
        Reranker.load(args.reranker, device=args.device, threads=args.threads, spin=args.spin)
        if args.reranker
        else None
    )
    systems = args.systems.split(",") if args.systems else None
    report = run.retrieval(data, emb, reranker=rr, top_k=args.top_k, top_n=args.top_n, systems=systems)
    if args.out:
        for path in save(report, args.out):
            log.info("wrote %s", path)
    print(json.dumps(report.to_dict()) if args.json else markdown(report))
    return 0


def _preparation(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields of prepare-training and train-reranker that decide the training set."""
    return {
        "negatives": args.negatives,
        "sources": tuple(s.strip() for s in args.sources.split(",") if s.strip()),
        "dev_fraction": args.dev_fraction,
        "seed": args.seed,
        "max_queries": args.max_queries,
        "python_docs": args.python_docs,
        "distill": args.distill,
    }


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
            from .models_export.gate import retrieval_check

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
    if args.models_command == "quantize":
        from .models_export import add_int8
        from .models_export.gate import retrieval_check

        keep = tuple(v.strip() for v in args.keep.split(",") if v.strip())
        print(
            add_int8(args.folder, retrieval_check(args.data), out=args.out, keep=keep, overwrite=args.force)
        )
        return 0
    if args.models_command == "choose-blend":
        from .models_export.train import TrainConfig, choose_defaults

        cfg = TrainConfig(dev_fraction=args.dev_fraction, seed=args.seed, python_docs=args.python_docs)
        choice = choose_defaults(args.folder, args.data, split=args.split, config=cfg)
        print(json.dumps({k: v for k, v in choice.items() if k != "grid"}))
        return 0
    if args.models_command == "prepare-training":
        from .models_export.train import TrainConfig, prepare_training, save_prepared

        if not args.out.endswith(".json.gz"):
            parser.error(f"--out {args.out!r}: expected a name ending in .json.gz")
        cfg = TrainConfig(**_preparation(args))
        print(save_prepared(prepare_training(args.data, split=args.split, config=cfg), args.out))
        return 0
    if args.models_command == "train-reranker":
        from .models_export.builtin import weights_folder
        from .models_export.train import TrainConfig, is_prepared, train_reranker

        if any(is_prepared(d) for d in args.data) and len(args.data) > 1:
            parser.error("--data FILE.json.gz (a prepared training set) goes alone")

        config = TrainConfig(
            **_preparation(args),
            epochs=args.epochs,
            batch_size=args.batch_size,
            group_size=args.group_size,
            max_length=args.max_length,
            lr=args.lr,
            max_steps=args.max_steps,
            bf16=args.bf16,
            int8=args.int8,
            distill_weight=args.distill_weight,
            device=args.device,
            train_seed=args.train_seed,
        )
        base = args.base or weights_folder("default")[0]
        data = args.data[0] if is_prepared(args.data[0]) else args.data
        report = train_reranker(
            base,
            data,
            args.out,
            split=args.split,
            config=config,
            overwrite=args.force,
            export_onnx=not args.no_export,
        )
        print(report.out)
        log.warning(
            "trained %d steps in %.0f s; dev choice: %s top-%d, blend %.1f",
            report.steps,
            report.seconds,
            report.source,
            report.depth,
            report.blend,
        )
        return 0
    parser.error(
        "models: choose a SUBCOMMAND: list, export, quantize, prepare-training, train-reranker or "
        "choose-blend "
        "(see duorank models --help)"
    )
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
    handlers: dict[str, Any] = {
        "models": _models,
        "eval": _eval,
        "datasets": _datasets,
        "demo": _demo,
        "index": _index,
        "search": _search,
        "info": _info,
        "bench": _bench,
    }
    _usage(parser, args)
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
