"""The `duorank` command. Starts fast: heavy modules load only inside the command that needs them."""

from __future__ import annotations

import argparse
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="duorank",
        description="Performance-first retrieval for RAG: embed, search (exact, HNSW, BM25, hybrid), rerank.",
        epilog="Data goes to stdout, logs to stderr. Exit codes: 0 ok, 1 error, 2 usage.",
    )
    p.add_argument("--version", action="version", version=f"duorank {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-vv: debug)")
    p.add_subparsers(dest="command", metavar="COMMAND")
    return p


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
