"""The `duorank` command. Starts fast: heavy modules load only inside the command that needs them.

One module per command group (`models`, `evaluate`, `engine`, `serve`, `datasets`), each adding its
parsers with `add(sub)` and naming the function that runs each command (`set_defaults(run=...)`);
`GROUPS` is the registry, in the order `duorank --help` lists them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import datasets, engine, evaluate, models, serve

log = logging.getLogger("duorank.cli")

GROUPS = (models, evaluate, engine, serve, datasets)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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
    for group in GROUPS:
        group.add(sub)
    return p


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
        from ..store import FilterError, compile_filter

        try:
            compile_filter(args.where)
        except FilterError as e:
            parser.error(f"--where: {e}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="duorank: %(levelname)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 0
    _usage(parser, args)
    try:
        return int(args.run(args, parser))
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
