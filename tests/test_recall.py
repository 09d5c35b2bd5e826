"""The first stage (`duorank.recall`): dense, BM25 and hybrid over indexes or over a collection."""

from __future__ import annotations

import numpy as np
import pytest

from duorank import Collection, ExactIndex
from duorank.lexical import BM25, rrf, weighted
from duorank.recall import RECALLS, recall

WORDS = "river stone maple cloud ember harbor violet copper lantern meadow orbit quartz".split()


def corpus(n: int, dim: int = 16, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=6)) for _ in range(n)]
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return texts, v / np.linalg.norm(v, axis=1, keepdims=True)


def test_each_recall_is_its_source_or_their_fusion():
    texts, vecs = corpus(200)
    index = ExactIndex(dim=vecs.shape[1])
    index.add(vecs)
    bm25 = BM25.build(texts)
    queries, qv = ["river stone", "ember orbit quartz"], vecs[:2]

    def dense(k):
        return index.search(qv, k)

    def lexical(k):
        return bm25.search(queries, k)

    for how in RECALLS:
        got = recall(how, 20, dense=dense, lexical=lexical)
        if how == "dense":
            want = index.search(qv, 20)
        elif how == "bm25":
            want = bm25.search(queries, 20)
        else:
            want = rrf([index.search(qv, 20), bm25.search(queries, 20)], 20)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)
    w = recall("hybrid", 20, dense=dense, lexical=lexical, fusion="weighted")
    np.testing.assert_array_equal(w.ids, weighted([dense(20), lexical(20)], 20).ids)


def test_bad_recall_names_the_value():
    with pytest.raises(ValueError, match="recall 'sparse'"):
        recall("sparse", 5, dense=lambda k: None)
    with pytest.raises(ValueError, match="fusion 'max'"):
        recall("hybrid", 5, dense=lambda k: None, lexical=lambda k: None, fusion="max")
    with pytest.raises(ValueError, match="needs a lexical"):
        recall("hybrid", 5, dense=lambda k: None)
    with pytest.raises(ValueError, match="needs a dense"):
        recall("dense", 5, lexical=lambda k: None)


def test_over_a_collection_the_fused_list_reads_its_documents_once(tmp_path):
    """Collection.search takes vectors (dense) or texts (BM25); unfetched legs fused by `recall` give a
    Found over the fused ids whose documents are those of the collection."""
    texts, vecs = corpus(120, seed=1)
    c = Collection.create(tmp_path / "c", dim=vecs.shape[1], bm25=True)
    c.add(vecs, texts, [f"d{i}" for i in range(len(texts))])
    queries = ["maple cloud", "violet lantern"]
    fused = recall(
        "hybrid",
        10,
        dense=lambda k: c.search(vecs[:2], k, fetch=False),
        lexical=lambda k: c.search(queries, k, fetch=False),
    )
    want = rrf([c.search(vecs[:2], 10), c.search(queries, 10)], 10)
    np.testing.assert_array_equal(fused.ids, want.ids)
    assert fused.strategy == "exact"
    for q in range(2):
        ids = fused.ids[q][fused.ids[q] >= 0]
        assert fused.external_ids[q] == [f"d{i}" for i in ids]
        assert fused.texts[q] == [texts[i] for i in ids]
    c.close()
