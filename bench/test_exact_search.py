"""Exact search: duorank ExactIndex (f32, f16, i8) vs numpy (matmul + argpartition) and faiss IndexFlatIP.

Same run, same data (random unit vectors, d=384), 2 threads. Also measures this machine's read
bandwidth so batch-1 speed can be stated as a share of it. Run:

    python -m pytest bench/test_exact_search.py --benchmark-disable-gc -p no:cacheprovider -q
    DUORANK_BENCH_N=100000 python -m pytest bench/test_exact_search.py ...   # only the 100k corpus

The table (queries/s, ratio to each peer, GB/s scanned) prints at the end and is saved to
bench/results/exact_search.json.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
import pytest

import duorank
from bench.conftest import TABLES, record, timed

D = 384
SIZES = [int(s) for s in os.environ.get("DUORANK_BENCH_N", "100000,1000000").split(",")]
BATCHES = [1, 16, 256]
KS = [10, 100]
THREADS = 2
numba.set_num_threads(THREADS)


@numba.njit("f4(f4[::1])", fastmath={"reassoc", "contract"}, nogil=True, cache=True)
def _sum(x):  # type: ignore[no-untyped-def]
    s = np.float32(0)
    for i in range(x.shape[0]):
        s += x[i]
    return s


@numba.njit("f4(f4[::1], i8)", fastmath={"reassoc", "contract"}, nogil=True, cache=True, parallel=True)
def _psum(x, nt):  # type: ignore[no-untyped-def]
    step = (x.shape[0] + nt - 1) // nt
    s = np.float32(0)
    for t in numba.prange(nt):
        s += _sum(x[t * step : min(x.shape[0], (t + 1) * step)])
    return s


def bandwidth(x: np.ndarray) -> float:
    """Best GB/s of a vectorised sum over x, 1 or 2 threads (one core nearly saturates memory here)."""
    flat = x.reshape(-1)
    best = 0.0
    for _ in range(7):
        for f in (lambda: _sum(flat), lambda: _psum(flat, THREADS)):
            t = time.perf_counter()
            f()
            best = max(best, x.nbytes / (time.perf_counter() - t) / 1e9)
    return best


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"N{n // 1000}k")
def corpus(request: Any) -> Iterator[dict[str, Any]]:
    n = request.param
    rng = np.random.default_rng(1338)
    x = np.empty((n, D), np.float32)
    for i in range(0, n, 100_000):  # chunked: no float64 copy of the whole corpus
        blk = rng.standard_normal((min(100_000, n - i), D), dtype=np.float32)
        x[i : i + blk.shape[0]] = blk / np.linalg.norm(blk, axis=1, keepdims=True)
    q = rng.standard_normal((max(BATCHES), D), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    out: dict[str, Any] = {"n": n, "x": x, "q": q, "gbps": bandwidth(x)}
    yield out
    out.clear()


_ENGINES: dict[tuple[int, str], Any] = {}


def engine(corpus: dict[str, Any], name: str) -> Any:
    key = (corpus["n"], name)
    if key not in _ENGINES:
        if any(n != corpus["n"] for n, _ in _ENGINES):  # free the previous corpus's engines
            _ENGINES.clear()
        x = corpus["x"]
        if name.startswith("duorank"):
            index = duorank.ExactIndex(dim=D, dtype=name.split("-")[1], normalize=False)
            index.add(x)
            _ENGINES[key] = index
        elif name == "faiss":
            faiss = pytest.importorskip("faiss")
            faiss.omp_set_num_threads(THREADS)
            index = faiss.IndexFlatIP(D)
            index.add(x)
            _ENGINES[key] = index
        else:
            _ENGINES[key] = x
    return _ENGINES[key]


def numpy_topk(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    ps = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-ps, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(ps, order, axis=1)


BYTES_PER_ROW = {
    "duorank-f32": 4 * D,
    "duorank-f16": 2 * D,
    "duorank-i8": D + 4,
    "numpy": 4 * D,
    "faiss": 4 * D,
}


@pytest.mark.parametrize("k", KS, ids=lambda k: f"k{k}")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("name", ["numpy", "faiss", "duorank-f32", "duorank-f16", "duorank-i8"])
def test_exact_search(benchmark: Any, corpus: dict[str, Any], name: str, batch: int, k: int) -> None:
    q = corpus["q"][:batch]
    eng = engine(corpus, name)
    if name == "numpy":
        fn = lambda: numpy_topk(eng, q, k)  # noqa: E731
    elif name == "faiss":
        fn = lambda: eng.search(q, k)  # noqa: E731
    else:
        fn = lambda: eng.search(q, k=k)  # noqa: E731
    sec = timed(benchmark, fn, budget_s=3.0 if corpus["n"] < 500_000 else 6.0)
    scanned = corpus["n"] * BYTES_PER_ROW[name] / sec / 1e9
    record(
        "exact_search",
        {
            "n": corpus["n"],
            "batch": batch,
            "k": k,
            "engine": name,
            "seconds": sec,
            "qps": batch / sec,
            "gbps": scanned,
            "bandwidth_gbps": corpus["gbps"],
        },
    )


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| N | batch | k | engine | q/s | x numpy | x faiss | x duorank-f32 | GB/s | % bandwidth |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["n"], r["batch"], r["k"], r["engine"]): r for r in rows}
    for (n, b, k, name), r in sorted(by.items(), key=lambda t: (t[0][0], t[0][1], t[0][2])):

        def ratio(peer: str, r: dict[str, Any] = r, n: int = n, b: int = b, k: int = k) -> str:
            p = by.get((n, b, k, peer))
            return f"{r['qps'] / p['qps']:.2f}" if p else "-"

        lines.append(
            f"| {n // 1000}k | {b} | {k} | {name} | {r['qps']:,.0f} | {ratio('numpy')} | {ratio('faiss')} "
            f"| {ratio('duorank-f32')} | {r['gbps']:.1f} | {100 * r['gbps'] / r['bandwidth_gbps']:.0f}% |"
        )
    bw = sorted({(r["n"], r["bandwidth_gbps"]) for r in rows})
    lines.append(
        "read bandwidth measured in this run: " + ", ".join(f"{n // 1000}k: {g:.1f} GB/s" for n, g in bw)
    )
    return "\n".join(lines)


TABLES["exact_search"] = _table
