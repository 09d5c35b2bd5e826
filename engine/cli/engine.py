"""The engine's commands: demo, index, search, info, bench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("duorank.cli")


def add(sub: Any) -> None:
    """demo, index, search, info, bench"""
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
    demo.set_defaults(run=_demo)
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
    ix.set_defaults(run=_index)
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
    ix.add_argument(
        "--analyzer",
        choices=["cjk", "standard", "jieba"],
        help="how BM25 splits a new collection's texts: cjk (default; Chinese, Japanese, Korean as character "
        "bigrams, other words as standard), standard (words), jieba (Chinese words; the [chinese] extra)",
    )
    ix.add_argument("--json", action="store_true", help="the ingest report as JSON on stdout")
    dist = ix.add_argument_group(
        "sharded (Ray)",
        "--shards S builds DIR as S shards with Ray Data (the [distributed] extra): an actor pool embeds, "
        "one task per shard builds it; DIR/shards.json is written last. Replaces a set DIR holds. Also "
        "reads .parquet sources (columns id, text, metadata); JSONL objects need their id.",
    )
    dist.add_argument(
        "--shards", type=int, metavar="S", help="build S shards with Ray instead of one collection"
    )
    dist.add_argument(
        "--ray", metavar="ADDRESS", help="Ray cluster to run on (default: RAY_ADDRESS or a local one)"
    )
    dist.add_argument("--workers", type=int, default=2, help="embedding actors (default: %(default)s)")
    dist.add_argument(
        "--cpus-per-worker", type=int, default=1, help="CPUs (onnxruntime threads) per actor (default: 1)"
    )
    dist.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0,
        help="GPU share per actor; > 0 embeds on CUDA (onnxruntime-gpu) (default: 0)",
    )

    se = sub.add_parser(
        "search",
        help="search a collection: recall top-k, rerank, print top-n",
        description="Search the collection DIR with the models it was built with.",
        epilog='examples:\n  duorank search kb/ "reset a password" --top-n 3\n'
        '  duorank search kb/ "tax rules" --where \'{"year": {"gte": 2020}}\' --json\n'
        '  duorank search kb/ "error 42" --recall hybrid --rerank none',
        formatter_class=raw,
    )
    se.set_defaults(run=_search)
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
    bench.set_defaults(run=_bench)
    info.set_defaults(run=_info)
    bench.add_argument(
        "--documents", type=int, default=500, help="documents to ingest (default: %(default)s)"
    )
    bench.add_argument("--queries", type=int, default=50, help="queries to time (default: %(default)s)")
    bench.add_argument("--json", action="store_true")


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import shutil

    from .. import demo
    from ..model_folder import MANIFEST, PACKAGED
    from ..pipeline import Engine

    # the packaged cross-encoder reranks when this installation has it (else: cosine with the query)
    reranker = "default" if (PACKAGED["reranker", "default"] / MANIFEST).is_file() else None
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
    with Engine.open(folder, reranker=reranker or None) as eng:
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


def _index_sharded(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..shard_build import build_shards

    if args.shards < 1 or args.workers < 1 or args.cpus_per_worker < 1:
        parser.error("--shards, --workers and --cpus-per-worker must be >= 1")
    if args.gpus_per_worker < 0:
        parser.error("--gpus-per-worker must be >= 0")
    if (Path(args.collection) / "collection.json").is_file():
        parser.error(f"{args.collection} holds a single collection: build the shards in another folder")
    report = build_shards(
        args.collection,
        args.sources,
        args.shards,
        embedder=args.model,
        reranker=args.reranker,
        index=args.index,
        dtype=args.dtype,
        bm25=not args.no_bm25,
        analyzer=args.analyzer,
        chunk_tokens=args.chunk_tokens,
        chunk_overlap=args.chunk_overlap,
        address=args.ray,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
    )
    out = {
        "collection": str(report.path),
        "documents": report.documents,
        "chunks": report.chunks,
        "per_shard": report.counts,
        "seconds": round(report.seconds, 3),
        "nodes": len(report.nodes),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"built {args.shards} shards of {report.documents} documents ({report.chunks} chunks: "
            f"{', '.join(map(str, report.counts))}) in {report.seconds:.1f} s on {len(report.nodes)} "
            f"node(s); open {report.path}"
        )
    return 0


def _load_source(source: str) -> tuple[list[str], list[str], list[dict[str, Any]] | None]:

    if source == "-" or source.endswith(".jsonl"):
        from ..eval.datasets import json_objects  # one JSON-lines reader: errors name file and line

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
    if args.shards is not None:
        return _index_sharded(args, parser)
    from ..pipeline import Engine

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
        eng = Engine.open(args.collection, "a")
    else:
        eng = Engine.create(
            args.collection,
            args.model,
            args.reranker,
            index=args.index,
            dtype=args.dtype,
            bm25=not args.no_bm25,
            analyzer=args.analyzer,
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
    from ..pipeline import Engine

    with Engine.open(args.collection, embedder=args.model, reranker=args.reranker or None) as eng:
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
    from ..collection import Collection

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

    from .. import demo, machine
    from ..pipeline import Engine

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
