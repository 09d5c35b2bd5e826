"""`duorank datasets get`: public BEIR datasets into the cache (needs network)."""

from __future__ import annotations

import argparse
from typing import Any


def add(sub: Any) -> None:
    """`duorank datasets ...`"""
    ds = sub.add_parser(
        "datasets",
        help="fetch public BEIR datasets into the cache (needs network)",
        epilog="example: duorank datasets get scifact",
    )
    ds.set_defaults(run=_choose)
    dsub = ds.add_subparsers(dest="datasets_command", metavar="SUBCOMMAND")
    g = dsub.add_parser(
        "get",
        help="download a BEIR zip to $DUORANK_HOME/datasets and print its path",
        epilog="example: duorank datasets get scifact",
    )
    g.set_defaults(run=_get)
    g.add_argument("name", metavar="NAME", help="BEIR name, e.g. scifact, nfcorpus, fiqa")
    g.add_argument("--url", help="download from here instead of the public BEIR location")


def _choose(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    parser.error("datasets: choose a SUBCOMMAND: get")


def _get(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..eval.datasets import get

    print(get(args.name, url=args.url))
    return 0
