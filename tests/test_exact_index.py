"""ExactIndex against the float64 reference; compact dtypes by recall; persistence; every error path."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from duorank import ExactIndex, Hits, IndexFormatError
from tests.conftest import clustered, unit_rows
from tests.reference import normalized, topk_reference


def recall(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(r)) / len(r) for g, r in zip(got, ref)]))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1338)
    x = clustered(rng, 20_000, 64, clusters=200)
    q = clustered(rng, 100, 64, clusters=200)
    return x, q


@pytest.mark.parametrize("nq", [1, 16, 100])  # 100 >= BLAS_MIN_QUERIES takes the BLAS path
def test_f32_equals_reference(data, nq):
    x, q = data
    index = ExactIndex(dim=64)
    index.add(x * 3.0)  # not unit length: the index normalises
    hits = index.search(q[:nq], k=10)
    ref_ids, ref_scores = topk_reference(q[:nq], x, 10)
    assert isinstance(hits, Hits) and hits.ids.dtype == np.int64 and hits.scores.dtype == np.float32
    np.testing.assert_array_equal(hits.ids, ref_ids)
    np.testing.assert_allclose(hits.scores, ref_scores, atol=1e-5)


@pytest.mark.parametrize("nq", [1, 7, 100])  # fused kernel (1, 7 = 4 + 3 remainder) and BLAS path (100)
@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_compact_dtypes_recall_after_rescoring(data, dtype, nq):
    x, q = data
    q = q[:nq]
    index = ExactIndex(dim=64, dtype=dtype)
    index.add(x)
    ref_ids, ref_scores = topk_reference(q, x, 10)
    hits = index.search(q, k=10)
    assert recall(hits.ids, ref_ids) >= 0.99
    # Rescored scores are exact float32 cosines of the returned ids.
    exact = np.einsum("qd,qkd->qk", normalized(q), x[hits.ids].astype(np.float64))
    np.testing.assert_allclose(hits.scores, exact, atol=1e-5)
    approx = index.search(q, k=10, rescore=False)
    assert recall(approx.ids, ref_ids) >= 0.8
    assert np.all(np.diff(approx.scores, axis=1) <= 0)


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 0.5])  # 0.001, 0.01: gather path; else masked scan
@pytest.mark.parametrize("nq", [1, 100])
@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
def test_filtered_search_equals_brute_force_over_the_subset(data, dtype, nq, fraction):
    x, q = data
    index = ExactIndex(dim=64, dtype=dtype)
    index.add(x, ids=np.arange(x.shape[0]) + 1000)
    allowed = np.random.default_rng(5).choice(x.shape[0], max(1, int(fraction * x.shape[0])), replace=False)
    hits = index.search(q[:nq], k=10, allowed=allowed + 1000)
    ref_ids, ref_scores = topk_reference(q[:nq], x, 10, allowed=allowed)
    if dtype == "f32":
        np.testing.assert_array_equal(hits.ids, ref_ids + 1000 * (ref_ids >= 0))
        np.testing.assert_allclose(hits.scores, ref_scores, atol=1e-5)
    else:
        assert recall(hits.ids - 1000, ref_ids) >= 0.99
    assert np.isin(hits.ids[hits.ids >= 0], allowed + 1000).all()


def test_allowed_ids_and_tie_order_follow_ids_not_insertion():
    index = ExactIndex(dim=3)
    v = np.array([[1, 0, 0]] * 4 + [[0, 1, 0]], np.float32)
    index.add(v, ids=[40, 7, 19, 3, 100])
    hits = index.search([1, 0, 0], k=5)
    np.testing.assert_array_equal(hits.ids[0], [3, 7, 19, 40, 100])
    hits = index.search([[1, 0, 0]], k=3, allowed=[100, 19])
    np.testing.assert_array_equal(hits.ids[0], [19, 100, -1])
    assert np.isneginf(hits.scores[0, 2])
    ids, scores = hits.query(0)
    assert ids.tolist() == [19, 100] and scores.shape == (2,)


@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_compact_scores_are_rescored_even_when_k_covers_the_index(rng, dtype):
    x = unit_rows(rng, 5, 16)
    index = ExactIndex(dim=16, dtype=dtype)
    index.add(x)
    hits = index.search(x[:2], k=5)
    ref_ids, ref_scores = topk_reference(x[:2], x, 5)
    np.testing.assert_array_equal(hits.ids, ref_ids)
    np.testing.assert_allclose(hits.scores, ref_scores, atol=1e-5)


def test_edge_sizes(rng):
    index = ExactIndex(dim=8)
    hits = index.search(unit_rows(rng, 2, 8), k=3)
    assert hits.ids.shape == (2, 3) and (hits.ids == -1).all() and np.isneginf(hits.scores).all()
    index.add(unit_rows(rng, 1, 8), ids=[5])
    hits = index.search(unit_rows(rng, 1, 8), k=4)
    assert hits.ids[0].tolist() == [5, -1, -1, -1]
    assert len(index) == 1 and 5 in index and 6 not in index


def test_zero_vectors_are_kept_scored_zero_and_reported(caplog, rng):
    index = ExactIndex(dim=4)
    with caplog.at_level(logging.WARNING, logger="duorank"):
        index.add(np.array([[0, 0, 0, 0], [1, 0, 0, 0]], np.float32))
    assert "1 zero vector" in caplog.text
    hits = index.search([0, 1, 0, 0], k=2)
    assert hits.scores[0].tolist() == [0.0, 0.0] and hits.ids[0].tolist() == [0, 1]
    hits = index.search([0, 0, 0, 0], k=2)  # a zero query scores 0 everywhere: ties by id
    assert hits.ids[0].tolist() == [0, 1]


def test_float64_and_non_contiguous_input_do_not_alias(rng):
    base = rng.standard_normal((200, 20))
    x = base[:, ::2]  # float64, non-contiguous
    before = x.copy()
    index = ExactIndex(dim=10)
    index.add(x)
    np.testing.assert_array_equal(x, before)  # the caller's array is untouched
    q32 = np.asfortranarray(x[:5].astype(np.float32))
    hits = index.search(q32, k=1)
    assert hits.ids[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_add_remove_then_search(data):
    x, q = data
    index = ExactIndex(dim=64, dtype="i8")
    ids = np.arange(x.shape[0]) * 3 + 1
    order = np.random.default_rng(0).permutation(x.shape[0])
    index.add(x[order[:12_000]], ids=ids[order[:12_000]])
    index.add(x[order[12_000:]], ids=ids[order[12_000:]])
    drop = ids[::2]
    index.remove(drop)
    keep = np.setdiff1d(ids, drop)
    ref_ids, _ = topk_reference(q, x[(keep - 1) // 3], 10, ids=keep)
    assert recall(index.search(q, k=10).ids, ref_ids) >= 0.99
    assert len(index) == keep.size
    new = index.add(x[:2])
    assert new.tolist() == [int(keep.max()) + 1, int(keep.max()) + 2]


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path, data, dtype, mmap):
    x, q = data
    index = ExactIndex(dim=64, dtype=dtype)
    index.add(x[:5_000], ids=np.arange(5_000) * 2)
    before = index.search(q, k=10)
    index.save(tmp_path / "idx")
    loaded = ExactIndex.load(tmp_path / "idx", mmap=mmap)
    after = loaded.search(q, k=10)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)
    assert loaded.dtype.value == dtype and len(loaded) == 5_000
    if mmap:
        assert not loaded.vectors.flags.writeable
    loaded.add(x[5_000:5_010], ids=np.arange(10) * 2 + 1)  # adding to a mapped index copies, never writes
    assert len(ExactIndex.load(tmp_path / "idx")) == 5_000
    loaded.save(tmp_path / "idx")
    assert len(ExactIndex.load(tmp_path / "idx")) == 5_010
    assert sorted(p.name.split(".")[0] for p in (tmp_path / "idx").iterdir()).count("vectors") == 1


def corrupt_cases():
    def truncate(folder, man):
        f = folder / man["files"]["vectors"]["file"]
        f.write_bytes(f.read_bytes()[:-7])

    def flip(folder, man):
        f = folder / man["files"]["vectors"]["file"]
        b = bytearray(f.read_bytes())
        b[-3] ^= 0xFF
        f.write_bytes(bytes(b))

    def remove(folder, man):
        (folder / man["files"]["ids"]["file"]).unlink()

    def bad_json(folder, man):
        (folder / "index.json").write_text("{not json")

    def version(folder, man):
        (folder / "index.json").write_text(json.dumps({**man, "version": 99}))

    def no_manifest(folder, man):
        (folder / "index.json").unlink()

    return [
        (truncate, "truncated or replaced"),
        (flip, "sha256"),
        (remove, "is missing"),
        (bad_json, "not valid JSON"),
        (version, "format version 99"),
        (no_manifest, "index.json is missing"),
    ]


@pytest.mark.parametrize(("damage", "message"), corrupt_cases())
def test_corrupt_index_raises_precise_error(tmp_path, rng, damage, message):
    index = ExactIndex(dim=8)
    index.add(unit_rows(rng, 50, 8))
    index.save(tmp_path)
    damage(tmp_path, json.loads((tmp_path / "index.json").read_text()))
    with pytest.raises(IndexFormatError, match=message):
        ExactIndex.load(tmp_path)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda i: i.add(np.ones((2, 5), np.float32)), ValueError, r"shape \(n, 4\), got \(2, 5\)"),
        (lambda i: i.add(np.array([[np.nan, 0, 0, 1]])), ValueError, "non-finite"),
        (lambda i: i.add(np.array([[np.inf, 0, 0, 1]])), ValueError, "non-finite"),
        (lambda i: i.add(np.array([["a", "b", "c", "d"]])), TypeError, "real numeric"),
        (lambda i: i.add(np.ones((2, 4)), ids=[1, 1]), ValueError, r"duplicates: \[1\]"),
        (lambda i: i.add(np.ones((1, 4)), ids=[0]), ValueError, r"already in the index: \[0\]"),
        (lambda i: i.add(np.ones((2, 4)), ids=[7]), ValueError, "2 vectors but 1 ids"),
        (lambda i: i.add(np.ones((1, 4)), ids=[-3]), ValueError, ">= 0"),
        (lambda i: i.add(np.ones((1, 4)), ids=[1.5]), TypeError, "must be integers"),
        (lambda i: i.remove([0, 99]), ValueError, r"unknown id\(s\), first \[99\]"),
        (lambda i: i.search(np.ones(4), k=0), ValueError, "k must be >= 1, got 0"),
        (lambda i: i.search(np.ones(4), k=2.0), TypeError, "k must be an int"),
        (lambda i: i.search(np.ones(3)), ValueError, r"queries must have shape \(n, 4\)"),
        (lambda i: i.search(np.full(4, np.nan)), ValueError, "queries has non-finite"),
        (lambda i: i.search(np.ones(4), allowed=[5]), ValueError, r"allowed: 1 unknown id\(s\), first \[5\]"),
    ],
)
def test_errors_name_the_value(call, error, message):
    index = ExactIndex(dim=4)
    index.add(np.eye(4, dtype=np.float32))
    with pytest.raises(error, match=message):
        call(index)
    assert len(index) == 4  # nothing lost


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"dtype must be one of \['f32', 'f16', 'i8'\], got 'f64'"):
        ExactIndex(dim=4, dtype="f64")
    with pytest.raises(ValueError, match="dim must be a positive int, got 0"):
        ExactIndex(dim=0)
    with pytest.raises(TypeError):
        ExactIndex(4)  # type: ignore[misc]  # keyword-only
