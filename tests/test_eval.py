"""Evaluation beyond the metric formulas: datasets, fusion, BM25, significance, STS/clustering/classification,
the runner and its report."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from duorank.eval import significance, tasks
from duorank.eval.datasets import DatasetError, load_beir, load_labelled, load_stsb
from duorank.hits import Hits

pytest.importorskip("sklearn", reason="the [eval] extra is not installed")
pytest.importorskip("bm25s", reason="the [eval] extra is not installed")

from duorank.lexical import BM25, rrf, weighted

# ---- datasets ------------------------------------------------------------------------------------


def _beir(folder: Path, *, crlf: bool = False) -> Path:
    (folder / "qrels").mkdir(parents=True)
    docs = [
        {"_id": "d1", "title": "Cats", "text": "Cats purr when they are content."},
        {"_id": "d2", "title": "", "text": "Dogs bark at strangers."},
        {"_id": "d3", "title": "Rust", "text": "Iron rusts in wet air."},
        {"_id": "q1", "title": "", "text": "A document whose id equals a query id."},
    ]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    qs = [
        {"_id": "q1", "text": "why do cats purr"},
        {"_id": "q2", "text": "rust on iron"},
        {"_id": "q3", "text": "x"},
    ]
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in qs) + "\n")
    nl = "\r\n" if crlf else "\n"
    (folder / "qrels" / "test.tsv").write_text(
        nl.join(["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td3\t2"]) + nl
    )
    return folder


def test_beir_folder_and_zip(tmp_path):
    folder = _beir(tmp_path / "mini", crlf=True)
    ds = load_beir(folder)
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d3": 2}}  # CRLF read cleanly, grade is an int
    assert set(ds.queries) == {"q1", "q2"}  # only judged queries
    assert (
        ds.corpus["d1"] == "Cats Cats purr when they are content."
        and ds.corpus["d2"] == "Dogs bark at strangers."
    )
    z = tmp_path / "mini.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in folder.rglob("*"):
            if p.is_file():
                f.write(p, Path("mini") / p.relative_to(folder))
    dz = load_beir(z)
    assert dz.qrels == ds.qrels and dz.corpus == ds.corpus and dz.name == "mini"


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        (
            "corpus.jsonl",
            '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n',
            r"corpus\.jsonl:2: duplicate doc id 'd1'",
        ),
        ("corpus.jsonl", '{"_id": "d1", "text": "a"}\nnot json\n', r"corpus\.jsonl:2: not JSON"),
        ("corpus.jsonl", '{"text": "no id"}\n', r"corpus\.jsonl:1: expected an object with an '_id'"),
        ("queries.jsonl", '{"_id": "q1", "text": 5}\n', r"queries\.jsonl:1: 'text' must be a string"),
        ("qrels/test.tsv", "q1\td1\n", r"test\.tsv:1: expected 3 tab-separated fields, got 2"),
        ("qrels/test.tsv", "q1\tnope\t1\n", r"test\.tsv:1: unknown doc id 'nope'"),
        ("qrels/test.tsv", "q9\td1\t1\n", r"test\.tsv:1: unknown query id 'q9'"),
        ("qrels/test.tsv", "q1\td1\thigh\n", r"test\.tsv:1: grade 'high' is not an integer"),
    ],
)
def test_beir_errors_name_file_and_line(tmp_path, file, content, message):
    folder = _beir(tmp_path / "bad")
    (folder / file).write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_beir(folder)


def test_beir_missing_parts(tmp_path):
    with pytest.raises(DatasetError, match="not a BEIR folder or zip"):
        load_beir(tmp_path / "nothing")
    folder = _beir(tmp_path / "m")
    (folder / "queries.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"queries\.jsonl: missing"):
        load_beir(folder)
    with pytest.raises(DatasetError, match=r"qrels/dev\.tsv: missing"):
        load_beir(_beir(tmp_path / "n"), "dev")


def test_stsb_and_labelled_loaders(shared_data):
    s1, s2, gold = load_stsb(shared_data / "stsb", "test")
    assert len(s1) == len(s2) == len(gold) == 1379 and 0 <= min(gold) and max(gold) <= 5
    texts, labels = load_labelled(shared_data / "banking77", "test")
    assert len(texts) == 3080 and len(set(labels)) == 77


# ---- fusion and BM25 -----------------------------------------------------------------------------


def test_rrf_on_hand_made_rankings():
    a = Hits(np.array([[1, 2, 3]]), np.array([[0.9, 0.8, 0.7]], np.float32))
    b = Hits(np.array([[3, 1, -1]]), np.array([[5.0, 1.0, -np.inf]], np.float32))
    fused = rrf([a, b], 4, c=60)
    # doc 1: 1/61 + 1/62; doc 3: 1/63 + 1/61; doc 2: 1/62
    expect = {1: 1 / 61 + 1 / 62, 3: 1 / 63 + 1 / 61, 2: 1 / 62}
    assert fused.ids[0].tolist() == [1, 3, 2, -1]
    np.testing.assert_allclose(fused.scores[0][:3], [expect[1], expect[3], expect[2]], rtol=1e-6)
    w = rrf([a, b], 2, c=60, weights=[0.0, 1.0])
    assert w.ids[0].tolist() == [3, 1]


def test_weighted_fusion_on_hand_made_scores():
    a = Hits(np.array([[1, 2]]), np.array([[10.0, 0.0]], np.float32))
    b = Hits(np.array([[2, 3]]), np.array([[4.0, 2.0]], np.float32))
    fused = weighted([a, b], 3, weights=[0.5, 1.0])  # minmax: a -> {1: 1, 2: 0}; b -> {2: 1, 3: 0}
    assert fused.ids[0].tolist() == [2, 1, 3]
    np.testing.assert_allclose(fused.scores[0], [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="normalize 'rank'"):
        weighted([a, b], 3, normalize="rank")
    with pytest.raises(ValueError, match="weights must be 2 finite numbers"):
        rrf([a, b], 3, weights=[1.0])


def test_bm25_small_and_errors():
    bm = BM25.build(
        ["the cat sat on the mat", "dogs chase cats", "quantum physics", "bananas"], ids=[10, 11, 12, 13]
    )
    h = bm.search(["cat", "zzzunknown", "banana"], 3)
    assert set(h.ids[0][:2].tolist()) == {10, 11} and h.ids[0][2] == -1  # stemmed: cats == cat
    assert h.ids[1].tolist() == [-1, -1, -1] and h.ids[2].tolist() == [13, -1, -1]
    with pytest.raises(ValueError, match="texts is empty"):
        BM25.build([])
    with pytest.raises(TypeError, match="queries must be a list of str"):
        bm.search("cat", 3)


def test_bm25_scifact_matches_the_probe(shared_data):
    from duorank.eval import evaluate

    ds = load_beir(shared_data / "scifact")
    ids = ds.doc_ids()
    bm = BM25.build([ds.corpus[d] for d in ids])
    qids = list(ds.queries)
    hits = bm.search([ds.queries[q] for q in qids], 100)
    run = {
        q: {ids[i]: float(s) for i, s in zip(hits.ids[r], hits.scores[r]) if i >= 0}
        for r, q in enumerate(qids)
    }
    res = evaluate(ds.qrels, run, ["ndcg@10"])
    assert res.mean["ndcg@10"] == pytest.approx(0.6863, abs=5e-4)  # bm25s + English stemmer and stopwords


# ---- significance --------------------------------------------------------------------------------


def test_randomization_p_uniform_under_the_null():
    rng = np.random.default_rng(1338)
    ps = []
    for _ in range(300):
        base = rng.random(60)
        a = base + 0.1 * rng.standard_normal(60)
        b = base + 0.1 * rng.standard_normal(60)  # same system, different noise
        ps.append(significance.randomization_test(a, b, resamples=500, seed=int(rng.integers(1 << 30))))
    ps = np.array(ps)
    assert 0.02 <= (ps < 0.05).mean() <= 0.09  # about 5% false positives
    hist = np.histogram(ps, bins=5, range=(0, 1))[0]
    assert hist.min() >= 35  # roughly flat: 60 expected per bin


def test_randomization_detects_a_clearly_better_system():
    rng = np.random.default_rng(7)
    a = rng.random(100)
    b = a + 0.05 + 0.02 * rng.standard_normal(100)
    assert significance.randomization_test(a, b) < 0.01
    lo, hi = significance.bootstrap_ci(a, b)
    assert lo < 0.05 < hi and lo > 0


def test_holm_and_compare():
    assert significance.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert significance.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    per_query = {"dense": {"q1": 0.1, "q2": 0.2, "q3": 0.3}, "other": {"q1": 0.1, "q2": 0.2, "q3": 0.3}}
    (c,) = significance.compare(per_query, "dense", "ndcg@10", resamples=200)
    assert c.mean_diff == 0 and not c.significant and c.p_value == 1.0
    with pytest.raises(ValueError, match="baseline 'bm25' not among"):
        significance.compare(per_query, "bm25", "ndcg@10")
    with pytest.raises(ValueError, match="lacks 1 of the baseline's queries"):
        significance.compare({"dense": {"q1": 1.0}, "x": {"q2": 1.0}}, "dense", "m")


# ---- STS, clustering, classification vs scipy / scikit-learn ----------------------------------------


def test_sts_equals_scipy():
    from scipy import stats

    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((50, 8)), rng.standard_normal((50, 8))
    gold = rng.random(50) * 5
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    got = tasks.sts(a, b, gold)
    assert got["spearman"] == pytest.approx(100 * stats.spearmanr(cos, gold).statistic, abs=1e-9)
    assert got["pearson"] == pytest.approx(100 * stats.pearsonr(cos, gold).statistic, abs=1e-9)
    with pytest.raises(ValueError, match="must describe the same pairs"):
        tasks.sts(a, b[:10], gold)


def test_clustering_equals_scikit_learn():
    from sklearn import metrics
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((3, 4)) * 5
    labels = np.repeat([0, 1, 2], 20)
    x = centres[labels] + rng.standard_normal((60, 4))
    got = tasks.clustering(x, labels.tolist(), seeds=(0,))
    pred = KMeans(n_clusters=3, n_init=1, random_state=0).fit_predict(x)
    assert got["nmi"] == pytest.approx(100 * metrics.normalized_mutual_info_score(labels, pred))
    assert got["ari"] == pytest.approx(100 * metrics.adjusted_rand_score(labels, pred))
    assert got["v_measure"] == pytest.approx(100 * metrics.v_measure_score(labels, pred))
    assert tasks.purity(["a", "a", "b", "b"], [0, 0, 0, 1]) == pytest.approx(0.75)


def test_classification_equals_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(9)
    x = rng.standard_normal((80, 6))
    y = (x[:, 0] + 0.3 * rng.standard_normal(80) > 0).astype(str).tolist()
    got = tasks.classification(x[:60], y[:60], x[60:], y[60:], samples_per_label=None)
    pred = LogisticRegression(max_iter=100, random_state=42).fit(x[:60], y[:60]).predict(x[60:])
    assert got["accuracy"] == pytest.approx(100 * float(np.mean(pred == np.array(y[60:]))))
    few = tasks.classification(x[:60], y[:60], x[60:], y[60:], samples_per_label=3, experiments=4)
    assert 0 <= few["accuracy"] <= 100 and 0 <= few["macro_f1"] <= 100
    picks = tasks.training_samples(y[:60], 3, experiments=4)
    assert len(picks) == 4 and all(len(set(p.tolist())) == 6 for p in picks)  # 3 of each of the 2 labels
    assert all(sorted(np.array(y)[p].tolist()) == ["False"] * 3 + ["True"] * 3 for p in picks)
    again = tasks.training_samples(y[:60], 3, experiments=4)
    assert [p.tolist() for p in picks] == [p.tolist() for p in again]
    # only the rows an experiment fits on are read: the others may be anything (run.classification leaves
    # them unembedded, at zero)
    used = np.unique(np.concatenate(picks))
    sparse = np.zeros_like(x[:60])
    sparse[used] = x[used]
    assert tasks.classification(sparse, y[:60], x[60:], y[60:], samples_per_label=3, experiments=4) == few


# ---- the runner ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_reranker(tmp_path_factory):
    from duorank.models import Reranker
    from duorank.models_export import export
    from tests.tiny_bert import tiny_bert_folder

    src = tiny_bert_folder(tmp_path_factory.mktemp("rr") / "hf", kind="reranker", seed=2)
    return Reranker.load(export(src, src.parent / "onnx", backend="numpy"))


def test_runner_plumbing_on_a_small_dataset(tmp_path, default_embedder, tiny_reranker):
    """Every system runs end to end; numbers here are plumbing only (the reranker has random weights)."""
    from duorank.eval import run
    from duorank.eval.report import markdown, save

    ds = load_beir(_beir(tmp_path / "mini"))
    rep = run.retrieval(ds, default_embedder, reranker=tiny_reranker, top_k=3, top_n=2, latency_queries=2)
    names = [s.name for s in rep.systems]
    assert names == list(run.SYSTEMS)
    dense = next(s for s in rep.systems if s.name == "dense")
    assert dense.result.mean["hit_rate@2"] == 1.0  # the embedder finds both answers in its top 2
    assert set(dense.latency_ms) == {"embed", "search", "total"}
    assert set(next(s for s in rep.systems if s.name == "dense+cross").latency_ms) >= {"fetch", "rerank"}
    assert {c.system for c in rep.comparisons} == set(names) - {"dense"}
    text = markdown(rep)
    assert text.startswith("| system | nDCG@2 | MRR@2 | MAP@3 | R@2 | R@3 | P@2 | Hit@2 | pair acc |")
    # a reranker without recorded defaults reads all top_k and is used alone (weight 1), as in Engine.search
    assert rep.config["rerank"]["dense+cross"] == {"depth": 3, "blend": 1.0, "adaptive": False}
    assert "dense+cross: the reranker read the top 3, blend weight 1.0." in text
    files = save(rep, tmp_path / "out", plots=False)
    data = json.loads(files[0].read_text())
    assert data["config"]["embedder"]["sha256"] and len(data["systems"]) == len(names)
    assert data["systems"][1]["per_query"]["ndcg@2"].keys() == {"q1", "q2"}
    assert all(s.pairwise_accuracy is not None for s in rep.systems if s.name.startswith("dense"))
    if __import__("importlib").util.find_spec("matplotlib"):
        pngs = save(rep, tmp_path / "plots")[2:]
        assert [p.name for p in pngs] == ["ndcg_at_k.png", "quality_latency.png"]
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    with pytest.raises(ValueError, match="unknown systems"):
        run.retrieval(ds, default_embedder, systems=["splade"])


def test_a_second_reranker_at_its_defaults_equal_depth_and_equal_latency(
    tmp_path, default_embedder, tiny_reranker
):
    """challenger=(label, reranker): its rows beside the first reranker's; @depth reads the depth the
    first read on hybrid, @latency runs under a budget of the first's measured p50 rerank time; every
    hybrid+ row is compared with hybrid alone too."""
    from duorank.eval import run
    from duorank.models import Reranker

    ds = load_beir(_beir(tmp_path / "mini"))
    other = Reranker.load(tiny_reranker.folder, max_length=32)
    rep = run.retrieval(
        ds,
        default_embedder,
        reranker=tiny_reranker,
        top_k=3,
        top_n=2,
        latency_queries=2,
        systems=["dense", "hybrid", "hybrid+cross"],
        challenger=("small", other),
    )
    names = [s.name for s in rep.systems]
    assert names == ["dense", "hybrid", "hybrid+cross", "dense+small", "hybrid+small", "hybrid+small@depth",
                     "hybrid+small@latency"]  # fmt: skip
    settings, by = rep.config["rerank"], {s.name: s for s in rep.systems}
    assert settings["hybrid+small@depth"]["depth"] == settings["hybrid+cross"]["depth"] == 3
    budget = by["hybrid+cross"].latency_ms["rerank"]["p50"]
    assert settings["hybrid+small@latency"]["budget_ms"] == round(budget, 1)
    assert 0 <= settings["hybrid+small@latency"]["depth"] <= 3
    assert rep.config["challenger"]["label"] == "small"
    against = {c.system for c in rep.comparisons if c.baseline == "hybrid"}
    assert against == {"hybrid+cross", "hybrid+small", "hybrid+small@depth", "hybrid+small@latency"}
    text = rep.to_markdown()
    assert "Against hybrid (Holm-corrected over these): hybrid+cross:" in text
    assert "the deepest that fit a budget of" in text
    with pytest.raises(ValueError, match="compared with `reranker` on hybrid\\+cross"):
        run.retrieval(ds, default_embedder, systems=["dense"], challenger=("small", other))
    with pytest.raises(ValueError, match="challenger label 'a b'"):
        run.retrieval(ds, default_embedder, reranker=tiny_reranker, challenger=("a b", other))
    with pytest.raises(ValueError, match="need a reranker"):
        run.retrieval(ds, default_embedder, systems=["dense+cross"])


def test_eval_command_device_and_variant(tmp_path, default_embedder, capsys, caplog):
    """`duorank eval retrieval` end to end: the variant asked for is the one evaluated and the report says
    on which device; `--device cuda` without a working CUDA provider exits 1 naming the reason."""
    from duorank.cli import main

    data = str(_beir(tmp_path / "mini"))
    args = ["eval", "retrieval", "--data", data, "--systems", "dense", "--top-k", "3", "--top-n", "2"]
    args.append("--json")
    assert main([*args, "--variant", "int8", "--threads", "2", "--spin"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["embedder"]["variant"] == "int8"
    assert report["config"]["embedder"]["threads"] == 2 and report["config"]["embedder"]["spin"] is True
    assert report["config"]["embedder"]["device"] == "cpu"
    assert report["config"]["embedder"]["providers"] == ["CPUExecutionProvider"]
    rc = main([*args, "--device", "cuda"])
    if rc:  # no GPU here
        assert rc == 1 and "device='cuda'" in caplog.text
    else:
        providers = json.loads(capsys.readouterr().out)["config"]["embedder"]["providers"]
        assert providers[0] == "CUDAExecutionProvider"
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--device", "tpu"])
    assert exit_.value.code == 2


def test_runner_ignores_identical_ids(tmp_path, default_embedder):
    from duorank.eval import run

    ds = load_beir(_beir(tmp_path / "mini"), ignore_identical_ids=True)
    rep = run.retrieval(ds, default_embedder, top_k=4, top_n=2, systems=["dense"], latency_queries=1)
    assert "q1" not in rep.systems[0].run["q1"]


def test_datasets_get_from_a_local_url(tmp_path, capsys):
    from duorank.cli import main
    from duorank.eval.datasets import get

    folder = _beir(tmp_path / "mini")
    z = tmp_path / "src.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in folder.rglob("*"):
            if p.is_file():
                f.write(p, Path("mini") / p.relative_to(folder))
    path = get("mini", url=z.as_uri(), folder=tmp_path / "cache")
    assert path == tmp_path / "cache" / "mini.zip" and load_beir(path).qrels == load_beir(folder).qrels
    assert (
        get("mini", url="file:///nonexistent.zip", folder=tmp_path / "cache") == path
    )  # cached: no download
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a BEIR folder or zip"):
        get("junk", url=(tmp_path / "junk.zip").as_uri(), folder=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*junk*"))  # nothing half-written left behind
    with pytest.raises(DatasetError, match="could not download"):
        get("gone", url="file:///nonexistent/gone.zip", folder=tmp_path / "cache")
    assert main(["datasets", "get", "mini", "--url", z.as_uri()]) == 0
    assert capsys.readouterr().out.strip().endswith("datasets/mini.zip")
