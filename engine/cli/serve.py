"""`duorank serve`: the engine (or its models alone) as an HTTP service."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .options import SPIN_HELP


def add(sub: Any) -> None:
    """`duorank serve ...`"""
    sv = sub.add_parser(
        "serve",
        help="serve a collection (or models alone) over HTTP: OpenAI, Cohere and TEI shapes, /search",
        description="Serve the engine folder DIR with the models it records, or --models EMBEDDER[,RERANKER] "
        "alone (no DIR), until SIGTERM or Ctrl-C. Routes: POST /v1/embeddings (OpenAI), /v1/rerank and "
        "/rerank (Cohere, Jina, TEI), /embed (TEI), /search, /documents (--writable); GET /health, /info, "
        "/metrics (Prometheus), /openapi.json. Concurrent requests are batched together. Needs the "
        "[server] extra.",
        epilog='examples:\n  duorank serve kb/ --api-key "$(openssl rand -hex 16)"\n'
        "  duorank serve --models default,default --port 8081\n"
        "  curl -s localhost:8080/search -H 'Authorization: Bearer KEY' "
        '-d \'{"query": "reset a password"}\'',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sv.set_defaults(run=_serve)
    sv.add_argument("collection", nargs="?", metavar="DIR", help="engine folder (made by duorank index)")
    sv.add_argument("--models", metavar="EMBEDDER[,RERANKER]", help="serve these models alone (no DIR)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    sv.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    sv.add_argument(
        "--api-key",
        default=os.environ.get("DUORANK_API_KEY"),
        help="needed as 'Authorization: Bearer KEY' "
        "on every route but /health (default: $DUORANK_API_KEY; none: no key)",
    )
    sv.add_argument("--writable", action="store_true", help="allow POST / DELETE /documents")
    sv.add_argument(
        "--ray", metavar="ADDRESS", help="for a sharded DIR: the Ray cluster its shard actors run on"
    )
    sv.add_argument("--max-queue", type=int, default=4096, help="items queued per stage before 429")
    sv.add_argument("--max-batch", type=int, default=256, help="items one batch takes (default: 256)")
    sv.add_argument("--max-body-mb", type=float, default=8.0, help="request body cap, MB (default: 8)")
    sv.add_argument("--max-inputs", type=int, default=2048, help="texts per embedding / search request")
    sv.add_argument("--max-documents", type=int, default=1000, help="documents per rerank request")
    sv.add_argument("--threads", type=int, help="onnxruntime threads (default: CPU count, at most 4)")
    sv.add_argument("--spin", action="store_true", help=SPIN_HELP)
    sv.add_argument("--grace", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM")
    sv.add_argument(
        "--drain",
        type=float,
        default=0.0,
        metavar="S",
        help="on SIGTERM, answer 503 at /health but keep serving for S seconds before closing "
        "(a load balancer's time to notice; default: 0)",
    )


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..serve import serve
    from ..serve.app import Limits

    if (args.collection is None) == (args.models is None):
        parser.error("serve: give DIR or --models EMBEDDER[,RERANKER] (one of them)")
    for name in ("port", "max_queue", "max_batch", "max_inputs", "max_documents"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    limits = Limits(
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
        max_inputs=args.max_inputs,
        max_documents=args.max_documents,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
    )
    serve(
        args.collection,
        models=args.models,
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        writable=args.writable,
        limits=limits,
        threads=args.threads,
        spin=args.spin,
        grace_s=args.grace,
        drain_s=args.drain,
        ray_address=args.ray,
    )
    return 0
