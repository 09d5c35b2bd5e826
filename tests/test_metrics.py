"""Retrieval metrics equal pytrec_eval (trec_eval) to 1e-9 on edge cases, random tied runs and real qrels."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duorank.eval import evaluate

pytrec_eval = pytest.importorskip("pytrec_eval")

CUTS = (1, 3, 10, 100)
OURS = [f"{m}@{k}" for m in ("ndcg", "mrr", "map", "recall", "precision", "hit_rate") for k in CUTS]


def reference(qrels, run):
    """pytrec_eval per query, keyed like ours (MRR@k derived from recip_rank: 1/rank if rank <= k)."""
    measures = {f"{m}.{','.join(map(str, CUTS))}" for m in ("ndcg_cut", "map_cut", "recall", "P", "success")}
    ev = pytrec_eval.RelevanceEvaluator(qrels, measures | {"recip_rank"})
    out = ev.evaluate(run)
    ref = {name: {} for name in OURS}
    for qid, v in out.items():
        for k in CUTS:
            ref[f"ndcg@{k}"][qid] = v[f"ndcg_cut_{k}"]
            ref[f"map@{k}"][qid] = v[f"map_cut_{k}"]
            ref[f"recall@{k}"][qid] = v[f"recall_{k}"]
            ref[f"precision@{k}"][qid] = v[f"P_{k}"]
            ref[f"hit_rate@{k}"][qid] = v[f"success_{k}"]
            rr = v["recip_rank"]
            ref[f"mrr@{k}"][qid] = rr if rr >= 1.0 / k - 1e-12 else 0.0
    return ref


def assert_matches(qrels, run):
    ours = evaluate(qrels, run, OURS)
    ref = reference(qrels, run)
    for name in OURS:
        for qid, value in ref[name].items():
            assert ours.per_query[name][qid] == pytest.approx(value, abs=1e-9), (name, qid)


def test_hand_made_edge_cases():
    qrels = {
        "ties": {"a": 1, "b": 2, "c": 0},
        "graded": {"d1": 3, "d2": 1, "d3": 2, "d9": 1},
        "none_relevant": {"x": 0},
        "short_run": {"s1": 1, "s2": 1},
        "no_relevant_retrieved": {"z": 1},
    }
    run = {
        "ties": {"c": 1.0, "a": 1.0, "b": 1.0, "d": 0.5},  # trec_eval breaks ties by doc id descending
        "graded": {"d3": 0.9, "d7": 0.8, "d1": 0.7, "d2": -1.0, "d5": -2.0},
        "none_relevant": {"x": 1.0},
        "short_run": {"s2": 0.1},  # k larger than the run
        "no_relevant_retrieved": {"y": 3.0, "w": 2.0},
    }
    assert_matches(qrels, run)


def test_random_runs_with_many_ties():
    rng = np.random.default_rng(1338)
    qrels, run = {}, {}
    for q in range(200):
        docs = [f"doc{d}" for d in rng.choice(500, 150, replace=False)]
        qrels[f"q{q}"] = {d: int(rng.integers(0, 4)) for d in docs[: int(rng.integers(1, 12))]}
        run[f"q{q}"] = {d: float(rng.integers(0, 20)) / 4 for d in docs[int(rng.integers(0, 5)) :]}
    assert_matches(qrels, run)


_DOCS = st.sampled_from([f"d{i}" for i in range(12)])


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["q1", "q2", "q3"]), st.dictionaries(_DOCS, st.integers(0, 3), max_size=6), min_size=1
    ),
    st.dictionaries(
        st.sampled_from(["q1", "q2", "q3", "q4"]),
        st.dictionaries(_DOCS, st.sampled_from([-1.0, 0.0, 0.25, 0.5, 1.0, 2.0]), max_size=12),
    ),
)
def test_any_small_run_matches_trec_eval(qrels, run):
    """Few distinct scores, so ties everywhere; empty runs, empty judgements and unjudged queries too."""
    assert_matches(qrels, run)


def test_real_scifact_qrels(shared_data):
    qrels: dict[str, dict[str, int]] = {}
    for line in (shared_data / "scifact" / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, doc, score = line.strip().split("\t")
        qrels.setdefault(qid, {})[doc] = int(score)
    doc_ids = [json.loads(line)["_id"] for line in (shared_data / "scifact" / "corpus.jsonl").open()]
    rng = np.random.default_rng(7)
    run = {}
    for qid, judged in qrels.items():  # a noisy run: relevant docs boosted, rounded scores (ties)
        cand = list(rng.choice(doc_ids, 200, replace=False)) + list(judged)
        run[qid] = {str(d): round(float(rng.random() + (d in judged) * rng.random()), 2) for d in cand}
    assert_matches(qrels, run)


def test_missing_and_unjudged_queries_are_counted():
    res = evaluate({"a": {"d": 1}, "b": {"d": 1}}, {"a": {"d": 1.0}, "zz": {"d": 1.0}}, ["ndcg@10"])
    assert res.per_query["ndcg@10"] == {"a": 1.0, "b": 0.0}
    assert res.mean["ndcg@10"] == 0.5 and res.missing == ["b"] and res.unjudged == ["zz"]


@pytest.mark.parametrize(
    ("qrels", "run", "metrics", "message"),
    [
        ({"a": {"d": 1}}, {"a": {"d": 1.0}}, ["ndcg"], "unknown metric 'ndcg': expected one of ndcg@K"),
        ({"a": {"d": 1}}, {"a": {"d": 1.0}}, ["bleu@10"], "unknown metric 'bleu@10'"),
        ({"a": {"d": 1}}, {"a": {"d": 1.0}}, ["ndcg@0"], "unknown metric 'ndcg@0'"),
        ({"a": {"d": 1}}, {"a": {"d": 1.0}}, [], "metrics is empty"),
        ({}, {"a": {"d": 1.0}}, ["ndcg@10"], "qrels is empty"),
        ({"a": {"d": 1}}, {"a": {"d": float("nan")}}, ["ndcg@10"], r"run\['a'\]\['d'\] = nan"),
        ({"a": {"d": 1}}, {"a": {"e": 0.5, "d": -np.inf}}, ["ndcg@10"], r"run\['a'\]\['d'\] = -inf"),
        ({"a": {"d": 1}}, {"a": {"e": 0.5, "d": "0.9"}}, ["ndcg@10"], r"run\['a'\]\['d'\] = '0.9'"),
        ({"a": {"d": 1}}, {"a": {"d": None}}, ["ndcg@10"], r"run\['a'\]\['d'\] = None"),
        ({"a": {"d": 1}}, {"a": {"d": True}}, ["ndcg@10"], r"run\['a'\]\['d'\] = True"),
        ({"a": {"d": 1}}, {"a": {"d": np.False_}}, ["ndcg@10"], r"run\['a'\]\['d'\] = (np\.)?False"),
    ],
)
def test_bad_input_raises(qrels, run, metrics, message):
    with pytest.raises(ValueError, match=message):
        evaluate(qrels, run, metrics)


def test_scores_of_any_numeric_type_and_mappings_of_any_kind():
    """Scores read through the C API (kernels/dict_ranks.py) agree with Python floats whatever their type
    (int, numpy scalars, a score of exactly -1.0, which is also the C API's error value), and a Mapping
    that is not a dict gives the dict's result."""
    from types import MappingProxyType

    qrels = {"a": {"d1": 1, "d2": 2, "d3": 0}, "b": {"e1": 1}}
    run = {
        "a": {"d1": -1.0, "d2": 3, "d3": np.float32(0.5), "d4": np.float64(-1.0)},
        "b": {"e1": np.int64(2)},
    }
    floats = {q: {d: float(v) for d, v in r.items()} for q, r in run.items()}
    expected = evaluate(qrels, floats, OURS).per_query
    assert evaluate(qrels, run, OURS).per_query == expected
    proxied = MappingProxyType({q: MappingProxyType(r) for q, r in floats.items()})
    assert evaluate(MappingProxyType(qrels), proxied, OURS).per_query == expected
    assert_matches(qrels, floats)


def test_ids_that_cannot_break_a_tie_raise():
    with pytest.raises(TypeError, match=r"document ids of run\['a'\] cannot be ordered"):
        evaluate({"a": {"d": 1}}, {"a": {"d": 1.0, 7: 1.0}}, ["ndcg@10"])
    # without a tie the ids are never compared, as in trec_eval
    assert evaluate({"a": {"d": 1}}, {"a": {"d": 1.0, 7: 0.5}}, ["ndcg@10"]).mean["ndcg@10"] == 1.0


def test_metric_names_are_case_insensitive_with_aliases():
    res = evaluate({"a": {"d": 1}}, {"a": {"d": 1.0}}, ["NDCG@10", "P@1", "Success@5"])
    assert set(res.mean) == {"ndcg@10", "precision@1", "hit_rate@5"}


def test_equal_to_ranx_on_tie_free_runs():
    """ranx (Numba) agrees too, on runs without ties (ranx orders ties differently from trec_eval)."""
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(1338)
    qrels, run = {}, {}
    for q in range(40):
        docs = [f"d{i}" for i in rng.choice(300, size=int(rng.integers(1, 120)), replace=False)]
        run[f"q{q}"] = {d: float(s) for d, s in zip(docs, rng.permutation(len(docs)) + rng.random())}
        judged = rng.choice(300, size=int(rng.integers(1, 10)), replace=False)
        qrels[f"q{q}"] = {f"d{i}": int(rng.integers(0, 3)) for i in judged}
    qrels["q0"] = {"d1": 0}  # no relevant document at all
    metrics = ["ndcg@10", "mrr@10", "map@100", "recall@10", "recall@100", "precision@10", "hit_rate@10"]
    ours = evaluate(qrels, run, metrics)
    with warnings.catch_warnings():  # ranx's own Numba code warns about its casts
        warnings.simplefilter("ignore")
        theirs = ranx.evaluate(
            ranx.Qrels(qrels), ranx.Run(run), metrics, return_mean=False, make_comparable=True
        )
    for m in metrics:
        by_q = dict(zip(sorted(qrels), theirs[m])) if not isinstance(theirs[m], dict) else theirs[m]
        for q in qrels:
            assert ours.per_query[m][q] == pytest.approx(by_q[q], abs=1e-6), (m, q)


def test_hits_input_with_id_maps():
    from duorank.hits import Hits

    qrels = {"q1": {"a": 1, "c": 2}, "q2": {"b": 1}}
    hits = Hits(
        np.array([[2, 0, -1], [1, 2, 0]]), np.array([[0.9, 0.5, -np.inf], [0.3, 0.2, 0.1]], np.float32)
    )
    docs = ["a", "b", "c"]
    got = evaluate(qrels, hits, ["ndcg@3", "mrr@3"], query_ids=["q1", "q2"], doc_ids=docs)
    run = {"q1": {"c": 0.9, "a": 0.5}, "q2": {"b": 0.3, "c": 0.2, "a": 0.1}}
    assert got.per_query == evaluate(qrels, run, ["ndcg@3", "mrr@3"]).per_query
    dup = Hits(np.array([[0, 1]]), np.array([[1.0, 0.5]], np.float32))
    with pytest.raises(ValueError, match="holds doc id 'x' twice"):
        evaluate(qrels, dup, ["ndcg@3"], query_ids=["q1"], doc_ids=["x", "x"])
    with pytest.raises(ValueError, match="needs query_ids"):
        evaluate(qrels, hits, ["ndcg@3"])
    with pytest.raises(ValueError, match="beyond doc_ids"):
        evaluate(qrels, hits, ["ndcg@3"], query_ids=["q1", "q2"], doc_ids=["a"])


def test_pairwise_accuracy():
    from duorank.eval import pairwise_accuracy

    qrels = {"q1": {"a": 1, "b": 0}, "q2": {"x": 2}, "q3": {"z": 1}}
    run = {
        "q1": {"a": 0.9, "b": 0.1, "c": 0.95},  # pairs (a,b) right, (a,c) wrong -> 1/2
        "q2": {"x": 0.5, "y": 0.5},  # a tie counts one half
        "q3": {"z": 1.0},  # no non-relevant candidate: left out
    }
    mean, per_query = pairwise_accuracy(qrels, run)
    assert per_query == {"q1": 0.5, "q2": 0.5} and mean == 0.5
    with pytest.raises(ValueError, match="pairwise accuracy undefined"):
        pairwise_accuracy({"q": {"a": 1}}, {"q": {"a": 1.0}})
