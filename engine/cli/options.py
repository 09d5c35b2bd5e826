"""Options several commands share."""

from __future__ import annotations

import argparse
from typing import Any

SPIN_HELP = "onnxruntime's threads spin between nodes while a call runs: faster for one caller at a time"


def device_options(p: argparse.ArgumentParser) -> None:
    from ..model_folder import VARIANTS

    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="onnxruntime provider (default: %(default)s)"
    )
    p.add_argument(
        "--variant",
        choices=list(VARIANTS),
        help="embedder variant (default: fp32 on cpu, fp16 on cuda where the folder has it)",
    )


def split_options(p: argparse.ArgumentParser) -> None:
    """The seeded train / dev split of labelled queries, the same in training and in choosing."""
    p.add_argument(
        "--dev-fraction",
        type=float,
        default=0.135,
        help="share of each dataset's queries held out as dev (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of that split (default: %(default)s)")


def preparation(args: argparse.Namespace) -> dict[str, Any]:
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
