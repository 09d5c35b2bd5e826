"""The packaged default reranker (trained here, int8): what it ships, a needle test, and out-of-domain safety
(Banking77 as retrieval, STS Benchmark pairs: never trained or chosen on) with its default blend."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from duorank import Engine, Reranker
from duorank.eval.datasets import load_labelled, load_stsb
from duorank.eval.metrics import evaluate
from duorank.model_folder import MANIFEST, PACKAGED, ModelError
from duorank.models import RerankDefaults, list_models
from duorank.rerank import adaptive_weight, rerank_head


@pytest.fixture(scope="module")
def default_reranker():
    return Reranker.load("default")


def test_what_ships(default_reranker):
    rr = default_reranker
    folder = PACKAGED["reranker", "default"]
    assert rr.folder == folder and rr.variant == "int8"  # the only variant shipped: the smallest
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"
    m = json.loads((folder / MANIFEST).read_text())
    assert set(m["variants"]) == {"int8"} and m["variants"]["int8"]["retrieval"]["passed"]
    src = m["source"]
    assert src["data_license"]["scifact"].startswith("CC BY-NC 2.0") and "python-docs" in src["data_license"]
    assert src["split"] == "train" and src["config"]["seed"] == 0 and src["dev_curve"]
    assert 0.0 <= rr.blend <= 1.0 and rr.depth in src["config"]["depths"] and rr.long_documents == "truncate"
    # chosen on a mix of dev domains, so one weight for every first stage (per-first-stage choices are
    # recorded as provenance; the engine uses them only for a reranker tuned on one domain)
    assert "recall" not in m["rerank"] and set(src["dev_choice"]["per_recall"]) == {"dense", "bm25", "hybrid"}
    for recall in ("dense", "bm25", "hybrid"):
        assert rr.defaults(recall) == RerankDefaults(rr.blend, rr.depth, adaptive=True), recall
    row = next(r for r in list_models() if r["kind"] == "reranker" and r["name"] == "default")
    assert row["variants"] == ["int8"]


NEEDLES = [
    (
        "Which vitamin deficiency causes scurvy?",
        "Scurvy is caused by a prolonged lack of vitamin C (ascorbic acid) in the diet; it leads to bleeding "
        "gums, poor wound healing and fatigue, and is cured by eating citrus fruit.",
        [
            "Rickets softens the bones of children and is usually caused by a lack of vitamin D or calcium.",
            "Vitamin C is an antioxidant found in citrus fruits, strawberries and peppers.",
            "Scurvy grass is a small flowering plant of the cabbage family that grows along northern coasts.",
            "Beriberi results from a deficiency of thiamine (vitamin B1) and affects the nerves and heart.",
            "Sailors on long voyages ate salted meat and hard biscuits, and fresh water was often scarce.",
        ],
    ),
    (
        "how do I undo my last git commit but keep the changes",
        "Run `git reset --soft HEAD~1`: the last commit is removed from the branch while its changes stay "
        "staged in the index, ready to be committed again.",
        [
            "`git commit --amend` rewrites the message of the last commit.",
            "To discard every local change to a file, run `git checkout -- file` or `git restore file`.",
            "`git log --oneline` prints one line per commit, newest first.",
            "A merge commit has two parents: the tip of the current branch and the merged branch.",
            "`git stash` saves uncommitted changes and reverts the working tree to HEAD.",
        ],
    ),
    (
        "What is the boiling point of water at the top of Mount Everest?",
        "Because air pressure near Everest's summit is only about a third of sea level, water there boils at "
        "roughly 70 degrees Celsius instead of 100.",
        [
            "Mount Everest is 8,849 metres high and lies on the border of Nepal and China.",
            "Water boils at 100 degrees Celsius at sea level under standard atmospheric pressure.",
            "Climbers on Everest use supplemental oxygen above about 7,000 metres.",
            "The freezing point of seawater is lower than that of fresh water because of its salt.",
            "A pressure cooker raises the boiling point of water, which cooks food faster.",
        ],
    ),
]


@pytest.mark.parametrize("query,needle,hay", NEEDLES, ids=["scurvy", "git", "everest"])
def test_the_needle_ranks_first(default_reranker, query, needle, hay):
    docs = [*hay[:2], needle, *hay[2:]]
    scores = default_reranker.score(query, docs)
    assert int(np.argmax(scores)) == 2, dict(zip(docs, scores.round(3)))


def test_int8_scores_do_not_depend_on_the_batch(default_reranker):
    """The shipped int8 graph quantises activations per token (`to_int8`), so a pair's score is its own
    whatever shares its batch and however it is padded: the runtime batches it like fp32 (the older
    per-tensor recipe ran one pair per call: `test_older_per_tensor_folders_still_run_one_text_per_call`)."""
    assert not default_reranker.per_tensor_int8
    query, needle, hay = NEEDLES[0]
    docs = [needle, *hay, "short", " ".join(hay) * 3]
    together = default_reranker.score(query, docs)
    alone = np.array([default_reranker.score(query, [d])[0] for d in docs])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    shuffled = default_reranker.score(query, docs[::-1])[::-1]
    np.testing.assert_allclose(shuffled, together, atol=1e-6)


def test_int8_weights_expanded_for_gpus_keep_the_scores(default_reranker):
    """What device='cuda' loads for an int8 folder (`dequantize_weights`: int8 weights expanded to fp32,
    activations float), run here on the CPU: no activation quantisation is left, a score is the same alone
    or batched, and the scores stay those of the int8 model up to its activation rounding."""
    import onnx

    from duorank.onnx_graphs import dequantize_weights

    rr = default_reranker
    graph = dequantize_weights(onnx.load(str(rr.folder / "model.int8.onnx")))
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & {"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeLinear", "QuantizeLinear"}
    # left: the embedding tables' int8 lookups (a Gather of int8 rows, cast and scaled: cheap, GPU-native)
    int8 = {i.name for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert int8 and all(n.op_type == "Gather" for n in graph.graph.node if set(n.input) & int8)
    assert [n.op_type for n in dequantize_weights(graph).graph.node] == [n.op_type for n in graph.graph.node]
    expanded = rr.with_graph(graph.SerializeToString())  # batched as fp32 is
    for query, needle, hay in NEEDLES:
        docs = [needle, *hay, "short", " ".join(hay) * 3]
        int8, together = rr.score(query, docs), expanded.score(query, docs)
        alone = np.array([expanded.score(query, [d])[0] for d in docs])
        np.testing.assert_allclose(together, alone, atol=1e-5)
        # int8's per-token activation rounding moves these 0-1 scores by up to 0.061 (measured on the
        # default shipped 2026-11-27; the one before it: 0.023; the per-tensor graph before that: 0.10); the
        # top 3 stay in the same order
        assert np.abs(together - int8).max() < 0.08
        assert list(np.argsort(-together)[:3]) == list(np.argsort(-int8)[:3])


def test_int8_on_gpus_runs_in_fp16(default_reranker):
    """device='cuda' runs the expanded graph in fp16 (`expand_for_gpu`: fused attention, the embedding
    lookups' dequantisation kept in fp32), run here on the CPU: scores within 2e-3 of the fp32 expansion."""
    import onnx

    from duorank.onnx_graphs import dequantize_weights, expand_for_gpu

    rr = default_reranker
    int8 = onnx.load(str(rr.folder / "model.int8.onnx"))
    half, precision = expand_for_gpu(int8, rr.manifest)
    assert precision == "fp16"
    assert {"Attention", "SkipLayerNormalization"} <= {n.op_type for n in half.graph.node}
    assert expand_for_gpu(int8, None)[1] == "fp32"  # no attention shape given: the plain expansion
    runs = []
    for graph in (half, dequantize_weights(int8)):
        m = rr.with_graph(graph.SerializeToString())
        runs.append([m.score(query, [needle, *hay]) for query, needle, hay in NEEDLES])
    for fp16, fp32 in zip(*runs):
        np.testing.assert_allclose(fp16, fp32, atol=2e-3)
        assert np.argmax(fp16) == 0


def test_missing_packaged_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(PACKAGED, ("reranker", "default"), tmp_path / "nowhere")
    with pytest.raises(ModelError, match="the default reranker is missing from this installation"):
        Reranker.load("default")


def test_out_of_domain_banking77_default_blend_costs_little(
    shared_data, tmp_path, default_embedder, default_reranker
):
    """Banking77 as retrieval (a test utterance's relevant documents: the train utterances of its intent),
    a seeded slice: 20 train utterances per intent, 150 test queries; dense recall, top_k = the depth the
    reranker records for dense recall, reranked through the engine with its default blend for dense.
    Measured with the default's adaptive blend (0.6, depth 10; 2026-11-27): 73.29 -> 73.40 (paired over
    the 150 queries +0.11, 95% bootstrap interval -0.04 to +0.29). With the plain blend it shipped with
    before (0.5, depth 20): 73.29 -> 72.74. The bound keeps it from getting worse unnoticed."""
    rr = default_reranker
    docs, labels = load_labelled(shared_data / "banking77", "train")
    texts, gold = load_labelled(shared_data / "banking77", "test")
    rng = random.Random(0)
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    keep = sorted(j for ids in by_label.values() for j in rng.sample(ids, min(20, len(ids))))
    pick = sorted(rng.sample(range(len(texts)), 150))
    qids = [f"q{i}" for i in pick]
    qrels = {f"q{i}": {f"d{j}": 1 for j in keep if labels[j] == gold[i]} for i in pick}
    with Engine.create(tmp_path / "b77", default_embedder, rr, bm25=False) as eng:
        eng.add([docs[j] for j in keep], [f"d{j}" for j in keep])
        queries = [texts[i] for i in pick]
        depth = rr.defaults("dense").depth or 30
        runs = {
            name: eng.search(queries, top_k=depth, top_n=10, rerank=mode)
            for name, mode in (("dense", None), ("default blend", "cross"))
        }
    ndcg = {
        name: evaluate(
            qrels, {q: {h.id: h.score for h in hits} for q, hits in zip(qids, res.hits)}, ["ndcg@10"]
        ).mean["ndcg@10"]
        for name, res in runs.items()
    }
    print({k: round(100 * v, 2) for k, v in ndcg.items()}, rr.defaults("dense"))
    assert ndcg["default blend"] >= ndcg["dense"] - 0.01


def test_out_of_domain_stsb_default_blend_costs_little(shared_data, default_embedder, default_reranker):
    """STS Benchmark test pairs: Spearman with gold of the embedder's cosine vs the default blend of cosine
    and reranker score (z-normalised over the set, which is one list: the adaptive weight is 0.6 x (1 -
    the median reranker score, 0.88) = 0.072). Measured 2026-11-27: 82.03 vs 82.36 (paired bootstrap
    over the pairs +0.32, 95% interval +0.19 to +0.47, `bench/reranker_quality.py`; the reranker alone:
    71.91; the plain blend 0.5 it shipped with before: 81.52). The bound keeps it from getting worse
    unnoticed."""
    from scipy.stats import spearmanr

    s1, s2, gold = load_stsb(shared_data / "stsb", "test")
    cos = (default_embedder.encode(s1) * default_embedder.encode(s2)).sum(axis=1)
    cross = np.concatenate(
        [s.scores for s in default_reranker.score_groups([(a, [b]) for a, b in zip(s1, s2)])]
    )
    chosen = default_reranker.defaults()  # the set is one list: an adaptive weight scales by its median
    mixed = rerank_head(cos, cross, chosen.blend, adaptive=chosen.adaptive)  # the engine's own blend
    rho = {"cosine": spearmanr(cos, gold).statistic, "default blend": spearmanr(mixed, gold).statistic}
    applied = adaptive_weight(chosen.blend, cross) if chosen.adaptive else chosen.blend
    print({k: round(100 * v, 2) for k, v in rho.items()}, "blend", default_reranker.blend, "applied", applied)
    assert rho["default blend"] >= rho["cosine"] - 0.01
