"""HnswIndex storage dtypes side by side (the same graph builder for each; the walk scores the stored rows).

Same embedding-like rows as bench/test_ann.py (`tests.conftest.embedding_like`), M 16, ef_construction 128,
2 threads; for each ef: recall@10 against exact search, p50 of 300 single queries, queries/s of a batch of
256, and the build time. Run (about 4 minutes at 100,000 rows on 2 cores):

    python bench/ann_storage.py [N] [DTYPE ...]     # default: 100000 i8 f32
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from duorank import ExactIndex, HnswIndex
from tests.conftest import embedding_like


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    dtypes = sys.argv[2:] or ["i8", "f32"]
    x = embedding_like(np.random.default_rng(3), n + 1000, 384, clusters=max(50, n // 200), latent=64)
    base, queries = x[:n], x[n:]
    exact = ExactIndex(dim=384)
    exact.add(base)
    truth = exact.search(queries, 10).ids
    print("| dtype | build s | ef | recall@10 | p50 ms | q/s (batch 256) |\n|---|---|---|---|---|---|")
    for dtype in dtypes:
        index = HnswIndex(dim=384, dtype=dtype, connectivity=16, expansion_add=128, threads=2)
        t = time.perf_counter()
        index.add(base, progress=False)
        build = time.perf_counter() - t
        for ef in (32, 48, 64, 96, 128, 192):
            index.expansion_search = ef
            ids = index.search(queries, 10).ids
            recall = np.mean([np.intersect1d(a[a >= 0], b).size / 10 for a, b in zip(ids, truth)])
            lat = []
            for row in queries[:300]:
                t = time.perf_counter()
                index.search(row[None], 10)
                lat.append(time.perf_counter() - t)
            t = time.perf_counter()
            index.search(queries[:256], 10)
            qps = 256 / (time.perf_counter() - t)
            p50 = 1e3 * np.median(lat)
            print(f"| {dtype} | {build:.1f} | {ef} | {recall:.3f} | {p50:.2f} | {qps:.0f} |", flush=True)


if __name__ == "__main__":
    main()
