"""The first searches of a new process, with and without `Engine.warmup()`.

In a new process Numba loads its cached kernels on first use and BM25 reads its index, so the first
search pays for both. Run each mode in fresh processes, alternating (the machine's speed drifts):

    for m in cold warm cold warm; do python bench/first_query.py $m; done

Default collection: the `duorank demo` knowledge base (build it once with `duorank demo`).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from duorank import Engine
from duorank.demo import folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["cold", "warm"])
    p.add_argument("--collection", type=Path, default=None, help="engine folder (default: the demo's)")
    args = p.parse_args()
    logging.disable(logging.WARNING)
    eng = Engine.open(args.collection or folder())
    t = time.perf_counter()
    if args.mode == "warm":
        eng.warmup()
    warm_s = time.perf_counter() - t
    ms = []
    for q in ("how do I read a file line by line", "how do I sort a list"):
        t = time.perf_counter()
        eng.search(q, recall="hybrid")
        ms.append(round(1e3 * (time.perf_counter() - t), 1))
    print(f"{args.mode}: warm-up {warm_s:.2f} s, then searches {ms} ms")


if __name__ == "__main__":
    main()
