"""Shared bench machinery: a results table printed at the end of the run and saved as JSON."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# faiss uses OpenMP; its default active spin-wait steals the other core on 2-core machines
# (docs/search.md, "Thread pool").
# Give the peer its best setting before anything loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

RESULTS: dict[str, list[dict[str, Any]]] = {}
TABLES: dict[str, Callable[[list[dict[str, Any]]], str]] = {}
OUT = Path(__file__).parent / "results"


def scifact_texts(folder: Path) -> tuple[list[str], list[str]] | None:
    """SciFact's abstracts ("title. text") and queries from `folder`, or None where it is absent."""
    if not folder.is_dir():
        return None
    docs = [json.loads(line) for line in open(folder / "corpus.jsonl", encoding="utf-8")]
    queries = [json.loads(line)["text"] for line in open(folder / "queries.jsonl", encoding="utf-8")]
    return [d["title"] + ". " + d["text"] for d in docs], queries


def chunk_corpus(abstracts: list[str], n: int) -> tuple[list[str], Any]:
    """n chunks of about three sentences cut from `abstracts` (repeated to n), and n synthetic
    embedding-like unit vectors for them (fixed seed): search cost depends on the count, not the content."""
    import numpy as np  # here, not at the top: nothing may load before OMP_WAIT_POLICY is set

    from tests.conftest import embedding_like

    chunks = []
    for a in abstracts:
        sentences = a.split(". ")
        chunks += [". ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3)]
    texts = [chunks[i % len(chunks)] for i in range(n)]
    return texts, embedding_like(np.random.default_rng(0), n, 384, clusters=500, latent=64)


def record(table: str, row: dict[str, Any]) -> None:
    RESULTS.setdefault(table, []).append(row)


def timed(benchmark: Any, fn: Callable[..., Any], *args: Any, budget_s: float = 2.0) -> float:
    """Run fn under pytest-benchmark with a round count fitted to ~budget_s; returns the median seconds."""
    t = time.perf_counter()
    fn(*args)  # warm-up (JIT, caches), also sizes the rounds
    first = time.perf_counter() - t
    rounds = max(3, min(50, int(budget_s / max(first, 1e-6))))
    benchmark.pedantic(fn, args=args, rounds=rounds, iterations=1, warmup_rounds=0)
    return float(benchmark.stats.stats.median)


def latency(fn: Callable[[], Any], n: int = 200) -> tuple[float, float]:
    """p50 and p99 milliseconds of n calls of fn, after 10 warm-up calls."""
    import numpy as np  # here, not at the top: nothing may load before OMP_WAIT_POLICY is set

    for _ in range(10):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.percentile(ts, 50) * 1e3), float(np.percentile(ts, 99) * 1e3)


def int8_for_speed(fp32_folder: Path, out: Path) -> Path:
    """A folder holding only the per-token int8 graph (`quantize.to_int8`) of fp32_folder, written without
    the quality gate: for speed runs only (random-weight models, where no gate means anything, or models
    whose gate is run and reported elsewhere, as the default embedder's in docs/models.md)."""
    import onnx

    from duorank.model_folder import read_manifest
    from duorank.models_export.folder import write_model_folder
    from duorank.models_export.quantize import INT8_RECIPE, to_int8

    m = read_manifest(fp32_folder)
    manifest = {k: v for k, v in m.items() if k not in ("files", "format")}
    manifest["variants"] = {"int8": {"file": "model.int8.onnx", **INT8_RECIPE}}
    graph = to_int8(onnx.load(str(fp32_folder / "model.onnx")), {})
    files = {"model.int8.onnx": graph.SerializeToString(), "tokenizer.json": fp32_folder / "tokenizer.json"}
    return write_model_folder(out, files, manifest, overwrite=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    from duorank import machine

    info = machine.describe()
    OUT.mkdir(exist_ok=True)
    for table, rows in RESULTS.items():
        (OUT / f"{table}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
        terminalreporter.write_sep("=", f"duorank bench: {table}")
        terminalreporter.write_line(f"machine: {machine.summary(info)}")
        terminalreporter.write_line(TABLES[table](rows) if table in TABLES else json.dumps(rows, indent=1))
