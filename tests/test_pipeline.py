"""The engine end to end with the real default embedder: a SciFact slice, chunking, rerank, persistence."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from duorank import Engine, ModelMismatchError, Reranker
from duorank.eval.metrics import evaluate
from duorank.model_folder import MANIFEST
from duorank.models import RerankDefaults
from duorank.models_export import export
from duorank.rerank import rerank_head
from duorank.store import FilterError
from tests.tiny_bert import tiny_bert_folder

N_DOCS = 600
N_QUERIES = 120


@pytest.fixture(scope="module")
def scifact_slice(shared_data, tmp_path_factory, default_embedder):
    """SciFact test queries with their relevant abstracts plus other abstracts: N_DOCS documents, in an
    engine folder and as the evaluation's Dataset."""
    from dataclasses import replace

    from duorank.eval.datasets import load_beir

    ds = load_beir(shared_data / "scifact")
    qids = sorted(ds.qrels)[:N_QUERIES]
    relevant = sorted({d for q in qids for d in ds.qrels[q]})
    others = [d for d in ds.doc_ids() if d not in set(relevant)]
    rng = np.random.default_rng(0)
    doc_ids = relevant + [others[i] for i in rng.choice(len(others), N_DOCS - len(relevant), replace=False)]
    texts = [ds.corpus[d] for d in doc_ids]
    folder = tmp_path_factory.mktemp("engine") / "scifact"
    with Engine.create(folder, default_embedder) as eng:
        report = eng.add(texts, doc_ids, [{"n": i % 10} for i in range(len(doc_ids))])
    assert report.documents == N_DOCS and report.chunks == N_DOCS
    queries = [ds.queries[q] for q in qids]
    qrels = {q: ds.qrels[q] for q in qids}
    part = replace(
        ds, corpus={d: ds.corpus[d] for d in doc_ids}, queries=dict(zip(qids, queries)), qrels=qrels
    )
    return folder, qids, queries, qrels, part


def _ndcg(res, qids, qrels) -> float:
    run = {q: {h.id: h.score for h in hits} for q, hits in zip(qids, res.hits)}
    return evaluate(qrels, run, ["ndcg@10"]).mean["ndcg@10"]


def test_recall_sources_and_embedding_rerank_on_scifact(scifact_slice, default_embedder):
    folder, qids, queries, qrels, _ = scifact_slice
    eng = Engine.open(folder, embedder=default_embedder)
    scores = {}
    for recall in ("dense", "bm25", "hybrid"):
        res = eng.search(queries, top_k=50, top_n=10, recall=recall, rerank=None)
        scores[recall] = _ndcg(res, qids, qrels)
    reranked = eng.search(queries, top_k=50, top_n=10, recall="bm25", rerank="embedding")
    scores["bm25+embedding"] = _ndcg(reranked, qids, qrels)
    print({k: round(100 * v, 2) for k, v in scores.items()})
    assert scores["dense"] > 0.6 and scores["bm25"] > 0.6  # the full-corpus figures are 64.5 and 68.6
    assert scores["hybrid"] >= max(scores["dense"], scores["bm25"])
    assert scores["bm25+embedding"] > scores["bm25"]  # rerank of BM25's candidates by the embedder helps
    hit = reranked[0][0]
    assert hit.recall_rank >= 1 and hit.text and hit.parent == hit.id and hit.metadata.keys() == {"n"}
    assert hit.rerank_score == hit.score  # rerank="embedding": the cosine, not blended
    eng.close()


def test_the_default_reranker_improves_dense_on_scifact(scifact_slice, default_embedder):
    """The packaged cross-encoder (trained here, docs/training.md) over dense candidates, with
    its recorded blend and depth: better nDCG@10 than dense alone on the slice (SciFact test queries,
    never used in training or choosing)."""
    folder, qids, queries, qrels, _ = scifact_slice
    rr = Reranker.load("default")
    with Engine.open(folder, embedder=default_embedder, reranker=rr) as eng:
        dense = _ndcg(eng.search(queries, top_k=50, top_n=10, rerank=None), qids, qrels)
        res = eng.search(queries, top_k=50, top_n=10)
        reranked = _ndcg(res, qids, qrels)
    print({"dense": round(100 * dense, 2), "dense+default reranker": round(100 * reranked, 2)})
    assert res.rerank == "cross" and res.timings["rerank"] > 0
    assert reranked > dense  # measured: 83.03 -> 88.53 (blend 0.5 at depth 20; the previous default: 83.82)


def test_eval_measures_what_engine_search_returns(scifact_slice, default_embedder):
    """One recall / rerank path: every system of `duorank eval` runs the engine's first stage
    (`duorank.recall`) and rerank (`rerank_lists`: the reranker's recorded depth and blend for that recall,
    the adaptive scale, the engine's order, first-stage ties to the document added first), so its nDCG@10
    equals the one computed from `Engine.search` over the same queries, query by query; the report records
    the settings in force."""
    from dataclasses import replace

    from duorank.eval import run

    folder, qids, queries, qrels, part = scifact_slice
    qids, queries = qids[:60], queries[:60]  # half the slice's queries: the rerank is the cost
    part = replace(part, queries=dict(zip(qids, queries)), qrels={q: qrels[q] for q in qids})
    rr = Reranker.load("default")
    systems = {"dense+cross": ("dense", "cross"), "dense": ("dense", None), "bm25": ("bm25", None)}
    systems |= {"hybrid": ("hybrid", None), "bm25+embedding": ("bm25", "embedding")}
    rep = run.retrieval(
        part, default_embedder, reranker=rr, top_k=50, top_n=10, systems=list(systems), latency_queries=1
    )
    with Engine.open(folder, embedder=default_embedder, reranker=rr) as eng:
        for got in rep.systems:
            recall, rerank = systems[got.name]
            res = eng.search(queries, top_k=50, top_n=10, recall=recall, rerank=rerank)
            engine = {q: {h.id: float(10 - r) for r, h in enumerate(hits)} for q, hits in zip(qids, res.hits)}
            want = evaluate(part.qrels, engine, ["ndcg@10"])
            assert abs(got.result.mean["ndcg@10"] - want.mean["ndcg@10"]) < 1e-9, got.name
            for q in qids:
                assert abs(got.result.per_query["ndcg@10"][q] - want.per_query["ndcg@10"][q]) < 1e-9, q
    chosen = rr.defaults("dense")
    assert rep.config["rerank"]["dense+cross"] == {
        "depth": max(10, chosen.depth or 50),
        "blend": chosen.blend,
        "adaptive": chosen.adaptive,
    }


def test_batched_queries_equal_one_at_a_time(scifact_slice, default_embedder):
    folder, _, queries, _, _ = scifact_slice
    with Engine.open(folder, embedder=default_embedder) as eng:
        for recall in ("dense", "bm25", "hybrid"):
            batch = eng.search(queries[:8], top_k=20, top_n=5, recall=recall, rerank="embedding")
            for i, q in enumerate(queries[:8]):
                one = eng.search(q, top_k=20, top_n=5, recall=recall, rerank="embedding")
                assert [h.id for h in one[0]] == [h.id for h in batch[i]]
                np.testing.assert_allclose([h.score for h in one[0]], [h.score for h in batch[i]], atol=1e-5)
        assert set(batch.timings) == {"embed", "search", "fetch", "rerank", "total"}
        assert batch.timings["total"] >= batch.timings["search"] > 0


def test_filters_and_errors(scifact_slice, default_embedder):
    folder, _, queries, _, _ = scifact_slice
    with Engine.open(folder, embedder=default_embedder) as eng:
        res = eng.search(queries[:3], top_k=30, top_n=5, where={"n": {"in": [2, 3]}}, recall="hybrid")
        assert all(h.metadata["n"] in (2, 3) for hits in res.hits for h in hits)
        assert all(len(hits) == 5 for hits in res.hits)
        for kwargs, err, match in [
            ({"queries": ""}, ValueError, "empty"),
            ({"queries": []}, ValueError, "no queries"),
            ({"queries": "x", "top_n": 10, "top_k": 5}, ValueError, "top_n 10 > top_k 5"),
            ({"queries": "x", "recall": "sparse"}, ValueError, "recall"),
            ({"queries": "x", "rerank": "cross"}, ValueError, "needs a reranker"),
            ({"queries": "x", "where": {"n": {"like": 1}}}, FilterError, "unknown operator"),
        ]:
            with pytest.raises(err, match=match):
                eng.search(**kwargs)


def test_other_model_is_refused(scifact_slice, tmp_path):
    folder, *_ = scifact_slice
    other = export(tiny_bert_folder(tmp_path / "hf", kind="embedder"), tmp_path / "tiny", backend="numpy")
    with pytest.raises(ModelMismatchError, match="holds 384-d vectors"):
        Engine.open(folder, embedder=other)


def test_chunking_grouping_truncation_and_delete(tmp_path, default_embedder):
    long_doc = " ".join(f"Sentence {i} talks about topic {i % 7} in some detail." for i in range(120))
    texts = [long_doc, "A short note about cats.", "Dogs and wolves are related animals."]
    with Engine.create(tmp_path / "plain", default_embedder) as eng:
        report = eng.add(texts, ["long", "cat", "dog"])
    assert report.truncated == 1 and report.chunks == 3  # one vector per document: the long one is cut
    with Engine.create(tmp_path / "c", default_embedder, chunk_tokens=64, chunk_overlap=8) as eng:
        report = eng.add(texts, ["long", "cat", "dog"], [{"lang": "en"}] * 3)
        assert report.truncated == 0 and report.chunks > 10
        ids = eng.collection.store.external_ids(eng.collection.ids)
        assert ids[0] == "long#0" and "cat" in ids and "dog" in ids
        res = eng.search("topic 3 details", top_k=20, top_n=3, rerank=None)
        assert all(h.parent == "long" and h.id.startswith("long#") for h in res[0])
        assert res[0][0].metadata == {"lang": "en"}
        grouped = eng.search("topic 3 details", top_k=len(eng), top_n=3, rerank=None, group=True)
        assert grouped[0][0].parent == "long" and len({h.parent for h in grouped[0]}) == 3
        eng.delete(["long"])
        assert len(eng) == 2
        with pytest.raises(ValueError, match="unknown ids"):
            eng.delete(["nope"])
    with Engine.open(tmp_path / "c") as eng:  # reopened: chunking settings and contents persisted
        assert eng.chunk_tokens == 64 and len(eng) == 2
        assert eng.search("cats", top_n=1, rerank=None)[0][0].id == "cat"


def test_cross_rerank_plumbing(tmp_path, default_embedder):
    """A random-weight cross-encoder (plumbing only: no quality claim): the engine's final order is the
    reranker's own scores for the recalled candidates, batched across queries."""
    src = tiny_bert_folder(tmp_path / "hf", kind="reranker", seed=3)
    rr = Reranker.load(export(src, tmp_path / "rr", backend="numpy"))
    texts = [f"document {i} about {w}" for i, w in enumerate(["cats", "dogs", "fish", "birds", "trees"] * 4)]
    with Engine.create(tmp_path / "c", default_embedder, rr) as eng:
        eng.add(texts)
        queries = ["cats and dogs", "green trees"]
        res = eng.search(queries, top_k=8, top_n=3)
        assert res.rerank == "cross" and res.timings["rerank"] > 0
        for q, hits in zip(queries, res.hits):
            recalled = eng.search(q, top_k=8, top_n=8, rerank=None)[0]
            own = rr.score(q, [h.text for h in recalled])
            want = [recalled[i].id for i in np.lexsort((np.arange(8), -own))[:3]]
            assert [h.id for h in hits] == want
            np.testing.assert_allclose([h.score for h in hits], np.sort(own)[::-1][:3], atol=1e-6)
        assert rr.blend == 1.0  # no trained weight recorded: the reranker alone
        same = eng.search(queries, top_k=8, top_n=3, rerank_blend=1.0)
        assert [[h.id for h in hits] for hits in same.hits] == [[h.id for h in hits] for hits in res.hits]
        first_stage = eng.search(queries, top_k=8, top_n=3, rerank_blend=0.0)
        recall_order = eng.search(queries, top_k=8, top_n=3, rerank=None)
        assert [[h.id for h in h_] for h_ in first_stage.hits] == [
            [h.id for h in h_] for h_ in recall_order.hits
        ]
        # a blended hit keeps the reranker's own score (a threshold works on it); no rerank, none
        for q, hits in zip(queries, eng.search(queries, top_k=8, top_n=8, rerank_blend=0.5).hits):
            own = rr.score(q, [h.text for h in hits])
            np.testing.assert_allclose([h.rerank_score for h in hits], own, atol=1e-6)
            assert any(abs(h.score - h.rerank_score) > 1e-3 for h in hits)  # score is the blend
        assert all(h.rerank_score is None for hits in recall_order.hits for h in hits)
        with pytest.raises(ValueError, match="rerank_blend"):
            eng.search(queries, top_k=8, top_n=3, rerank_blend=2.0)
        # rerank_depth: the reranker reads the first 4 candidates; the other 4 follow in recall order
        shallow = eng.search(queries[0], top_k=8, top_n=8, rerank_depth=4)[0]
        recalled = eng.search(queries[0], top_k=8, top_n=8, rerank=None)[0]
        head = rr.score(queries[0], [h.text for h in recalled[:4]])
        assert [h.id for h in shallow[:4]] == [recalled[i].id for i in np.lexsort((np.arange(4), -head))]
        assert [h.id for h in shallow[4:]] == [h.id for h in recalled[4:]]
        assert max(h.score for h in shallow[4:]) < min(h.score for h in shallow[:4])
        assert all(h.rerank_score is not None for h in shallow[:4])
        assert all(h.rerank_score is None for h in shallow[4:])  # below the depth: never reranked
        for bad in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match="rerank_depth"):
                eng.search(queries, top_k=8, top_n=3, rerank_depth=bad)
    with Engine.open(tmp_path / "c") as eng:  # the reranker recorded at create comes back
        assert eng.reranker is not None and eng.search("cats", top_k=5, top_n=2).rerank == "cross"
    assert json.loads(json.dumps(res.to_dict()))["queries"][0]["query"] == "cats and dogs"
    assert res.to_dict([1])["queries"] == res.to_dict()["queries"][1:2]
    assert all(h.to_dict() == dataclasses.asdict(h) for hits in res.hits for h in hits)  # every field


def test_recorded_blend_and_depth_per_recall(tmp_path, default_embedder):
    """A reranker's manifest records a (blend, depth) for each first stage; search uses the one for its
    recall (plumbing with a random-weight cross-encoder: no quality claim)."""
    src = tiny_bert_folder(tmp_path / "hf", kind="reranker", seed=3)
    folder = export(src, tmp_path / "rr", backend="numpy")
    rr = Reranker.load(folder)
    assert rr.defaults("dense") == RerankDefaults(1.0, None) == rr.defaults()  # nothing recorded
    with pytest.raises(ValueError, match="recall 'sparse'"):
        rr.defaults("sparse")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["rerank"] = {
        "blend": 0.5,
        "depth": 6,
        "recall": {"dense": {"blend": 0.0, "depth": 3}, "bm25": {"blend": 1.0, "depth": 4}},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    rr = Reranker.load(folder)
    assert rr.defaults("dense") == RerankDefaults(0.0, 3) and rr.defaults("bm25") == RerankDefaults(1.0, 4)
    assert rr.defaults("hybrid") == RerankDefaults(0.5, 6) == rr.defaults() and (rr.blend, rr.depth) == (
        0.5,
        6,
    )
    texts = [f"document {i} about {w}" for i, w in enumerate(["cats", "dogs", "fish", "birds", "trees"] * 4)]
    with Engine.create(tmp_path / "c", default_embedder, rr) as eng:
        eng.add(texts)
        q = "cats and dogs"
        for recall, depth in (("dense", 3), ("bm25", 4)):  # top_n = depth: the reranked head itself
            recalled = eng.search(q, top_k=8, top_n=8, recall=recall, rerank=None)[0]
            got = [h.id for h in eng.search(q, top_k=8, top_n=depth, recall=recall)[0]]
            own = rr.score(q, [h.text for h in recalled[:depth]])
            by_reranker = [recalled[i].id for i in np.lexsort((np.arange(depth), -own))]
            # dense: blend 0.0, its own order; bm25: blend 1.0, the reranker's order of its first 4 only
            assert got == ([h.id for h in recalled[:depth]] if recall == "dense" else by_reranker)
    # recorded as adaptive: the default weight is scaled per list; a weight given to search is used as given
    manifest["rerank"] = {"blend": 0.8, "depth": 6, "scale": "adaptive"}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    rr = Reranker.load(folder)
    assert rr.defaults("hybrid") == RerankDefaults(0.8, 6, True)
    with Engine.open(tmp_path / "c", reranker=rr) as eng:
        recalled = eng.search(q, top_k=8, top_n=8, rerank=None)[0]
        first = np.array([h.recall_score for h in recalled])
        own = rr.score(q, [h.text for h in recalled[:6]])
        for given, adaptive in ((None, True), (0.8, False)):  # top_n = the recorded depth: the head itself
            got = eng.search(q, top_k=8, top_n=6, rerank_blend=given)[0]
            want = rerank_head(first, own, 0.8, adaptive=adaptive)[:6]
            np.testing.assert_allclose([h.score for h in got], np.sort(want)[::-1], atol=1e-6)
        assert not np.allclose(rerank_head(first, own, 0.8, adaptive=True), rerank_head(first, own, 0.8))


WARM_SCRIPT = """
import json, sys
from numba.core.registry import CPUDispatcher
from duorank import Engine

def loaded():  # compiled kernel signatures in this process (Numba loads them from its cache on first use)
    mods = [m for name, m in list(sys.modules.items()) if name.startswith("duorank.kernels")]
    return sum(len(v.signatures) for m in mods for v in vars(m).values() if isinstance(v, CPUDispatcher))

eng = Engine.open(sys.argv[1])
if sys.argv[2] != "rerank":  # the same engine without its reranker
    eng = Engine(eng.collection, eng.embedder)
warm = eng.warmup() if sys.argv[3] == "warm" else None
before, bm25_before = loaded(), "bm25s" in sys.modules
one = eng.search("green trees", top_k=8, top_n=3, recall="hybrid")
many = eng.search([f"animal number {i}" for i in range(70)], top_k=8, top_n=3, recall="dense", rerank=None)
print(json.dumps({"warm": warm, "before": before, "after": loaded(), "bm25_before": bm25_before,
                  "ids": [h.id for h in one[0]], "ids_many": [h.id for h in many[5]]}))
"""


def test_warmup_pays_the_first_query_costs(tmp_path, default_embedder):
    """A new process's first searches load Numba's cached kernels and the BM25 index (0.7-1.2 s on the
    demo collection here). After Engine.warmup() they load nothing more: the single-query and batched
    kernels are loaded and BM25 is read, and results are those of a process without a warm-up."""
    import subprocess
    import sys

    src = tiny_bert_folder(tmp_path / "hf", kind="reranker", seed=3)
    rr = Reranker.load(export(src, tmp_path / "rr", backend="numpy"))
    texts = [f"document {i} about {w}" for i, w in enumerate(["cats", "dogs", "fish", "birds", "trees"] * 4)]
    with Engine.create(tmp_path / "c", default_embedder, rr) as eng:
        eng.add(texts)
        assert set(eng.warmup()) == {"embed", "search", "fetch", "rerank", "total"}  # in this process too
    with Engine.create(tmp_path / "empty", default_embedder, rr) as eng:
        empty = eng.warmup()  # nothing to search: the models only
        assert empty["search"] == 0.0 and empty["rerank"] > 0 and len(eng) == 0

    def run(*args: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", WARM_SCRIPT, str(tmp_path / "c"), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    cold, warm = run("rerank", "cold"), run("rerank", "warm")
    assert cold["after"] > cold["before"] and not cold["bm25_before"]  # the searches loaded kernels and BM25
    assert warm["before"] == warm["after"] > 0 and warm["bm25_before"]  # the warm-up had loaded them all
    assert warm["warm"]["rerank"] > 0 and warm["warm"]["search"] > 0
    assert (warm["ids"], warm["ids_many"]) == (cold["ids"], cold["ids_many"])
