"""HnswIndex (USearch) against exact search: recall, scores, filters, edge cases, persistence, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duorank import ExactIndex, IndexFormatError
from duorank.hnsw import HnswIndex
from tests.conftest import clustered, embedding_like, unit_rows


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1338)
    x = clustered(rng, 5000, 48, clusters=50)
    q = clustered(rng, 200, 48, clusters=50)
    exact = ExactIndex(dim=48)
    exact.add(x)
    return x, q, exact


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
def test_recall_and_scores_against_exact(data, dtype):
    x, q, exact = data
    h = HnswIndex(dim=48, dtype=dtype, expansion_search=128)
    h.add(x)
    assert len(h) == 5000
    # i8 has no float32 rescoring here (ExactIndex has): its quantisation error reorders close neighbours
    assert h.recall_against(exact, q, 10) >= {"f32": 0.95, "f16": 0.95, "i8": 0.85}[dtype]
    got, truth = h.search(q, 10), exact.search(q, 10)
    tol = {"f32": 1e-5, "f16": 2e-3, "i8": 3e-2}[dtype]
    for g_ids, g_s, t_ids, t_s in zip(got.ids, got.scores, truth.ids, truth.scores):
        common, gi, ti = np.intersect1d(g_ids, t_ids, return_indices=True)
        np.testing.assert_allclose(g_s[gi], t_s[ti], atol=tol)
        assert (np.diff(g_s) <= 1e-6).all()  # descending


@pytest.mark.parametrize(("dtype", "floor"), [("f32", 0.95), ("f16", 0.93), ("i8", 0.93)])
def test_default_parameters_reach_recall_on_embedding_like_data(dtype, floor):
    """The issue's gate: default connectivity / expansion, 384-d rows with the structure of embeddings."""
    rng = np.random.default_rng(5)
    x = embedding_like(rng, 20_200, 384, clusters=200)
    exact = ExactIndex(dim=384)
    exact.add(x[:20_000])
    h = HnswIndex(dim=384, dtype=dtype)
    h.add(x[:20_000])
    recall = h.recall_against(exact, x[20_000:], 10)
    print(f"HNSW {dtype} recall@10 = {recall:.4f} (20k x 384, defaults)")
    assert recall >= floor


def test_expansion_search_trades_speed_for_recall(data):
    x, q, exact = data
    h = HnswIndex(dim=48, connectivity=8, expansion_search=2)
    h.add(x)
    low = h.recall_against(exact, q, 10)
    h.expansion_search = 256
    assert h.recall_against(exact, q, 10) >= max(low, 0.97)
    with pytest.raises(ValueError, match="expansion_search must be an int >= 2"):
        h.expansion_search = 1


def test_allowed_filter_tops_up_to_k(data):
    x, q, exact = data
    h = HnswIndex(dim=48)
    h.add(x)
    rare = np.arange(0, 5000, 250)  # 20 allowed ids: post-filtering must widen the search
    got = h.search(q[:20], 10, allowed=rare)
    truth = exact.search(q[:20], 10, allowed=rare)
    assert np.isin(got.ids, rare).all()
    assert np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(got.ids, truth.ids)]) >= 0.9
    few = h.search(q[:2], 10, allowed=[3, 7])
    assert sorted(few.ids[0][:2].tolist()) == [3, 7] and (few.ids[:, 2:] == -1).all()
    none = h.search(q[:1], 5, allowed=np.array([], dtype=np.int64))
    assert (none.ids == -1).all() and np.isneginf(none.scores).all()


def test_edge_cases(rng):
    h = HnswIndex(dim=8)
    empty = h.search(unit_rows(rng, 2, 8), 3)
    assert empty.ids.shape == (2, 3) and (empty.ids == -1).all()
    h.add(unit_rows(rng, 1, 8), ids=[42])
    one = h.search(unit_rows(rng, 1, 8), 5)  # k > n
    assert one.ids[0].tolist() == [42, -1, -1, -1, -1] and np.isneginf(one.scores[0, 1:]).all()
    h.add(np.zeros((1, 8), np.float32), ids=[7])  # a zero vector scores 0
    z = h.search(unit_rows(rng, 1, 8), 2)
    assert 7 in z.ids[0] and z.scores[0][z.ids[0] == 7][0] == pytest.approx(0.0, abs=1e-6)
    assert 42 in h and 8 not in h and "42" not in h
    assert h.add(np.empty((0, 8), np.float32)).size == 0
    h.add(unit_rows(rng, 300, 8), progress=True)  # the progress bar path (usearch checks the callback)
    assert len(h) == 302


def test_errors(rng):
    h = HnswIndex(dim=8)
    h.add(unit_rows(rng, 3, 8), ids=[1, 2, 3])
    with pytest.raises(ValueError, match=r"ids already in the index: \[2\]"):
        h.add(unit_rows(rng, 1, 8), ids=[2])
    with pytest.raises(ValueError, match=r"unknown id\(s\), first \[9\]"):
        h.remove([1, 9])
    assert len(h) == 3  # nothing removed
    with pytest.raises(ValueError, match="got 2 vectors but 1 ids"):
        h.add(unit_rows(rng, 2, 8), ids=[5])
    with pytest.raises(ValueError):
        h.add(np.full((1, 8), np.nan, np.float32), ids=[6])
    with pytest.raises(ValueError, match=r"must have shape \(n, 8\), got \(1, 9\)"):
        h.search(unit_rows(rng, 1, 9), 1)
    with pytest.raises(ValueError, match="dtype 'f64'"):
        HnswIndex(dim=8, dtype="f64")
    with pytest.raises(ValueError, match="connectivity must be an int >= 2"):
        HnswIndex(dim=8, connectivity=1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        h.search(unit_rows(rng, 1, 8), 0)


def test_save_load_view_and_damage(tmp_path, data):
    x, q, exact = data
    h = HnswIndex(dim=48, dtype="f16")
    h.add(x[:1000], ids=np.arange(1000) * 3)
    h.save(tmp_path / "ann")
    before = h.search(q[:5], 10)
    viewed = HnswIndex.load(tmp_path / "ann")
    np.testing.assert_array_equal(viewed.search(q[:5], 10).ids, before.ids)
    with pytest.raises(ValueError, match="memory-mapped read-only"):
        viewed.add(x[:1], ids=[1])
    owned = HnswIndex.load(tmp_path / "ann", mmap=False)
    owned.add(x[1000:1001], ids=[1])
    owned.remove([0])
    assert len(owned) == 1000 and 1 in owned and 0 not in owned
    owned.save(tmp_path / "ann")  # a second generation replaces the first atomically
    files = sorted(p.name for p in (tmp_path / "ann").iterdir())
    assert len(files) == 2 and files[1] == "index.json"
    assert len(HnswIndex.load(tmp_path / "ann")) == 1000
    manifest = json.loads((tmp_path / "ann" / "index.json").read_text())
    ann = tmp_path / "ann" / manifest["files"]["ann"]["file"]
    data_bytes = bytearray(ann.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0xFF
    ann.write_bytes(bytes(data_bytes))
    with pytest.raises(IndexFormatError, match="fails its sha256 check"):
        HnswIndex.load(tmp_path / "ann")
    ann.write_bytes(bytes(data_bytes[:100]))
    with pytest.raises(IndexFormatError, match="truncated or replaced"):
        HnswIndex.load(tmp_path / "ann")
    with pytest.raises(IndexFormatError, match=r"index\.json is missing"):
        HnswIndex.load(tmp_path / "nothing")


# ---------------------------------------------------------------- the walk over USearch's saved graph
@pytest.mark.parametrize(("dtype", "floor"), [("f32", 0.999), ("f16", 0.99), ("i8", 0.9)])
def test_walk_returns_what_usearch_returns_on_the_same_graph(data, dtype, floor):
    """Same graph, same algorithm: the ids of USearch's own search, the same cosines (i8: the kernel scores
    the codes against the float query, USearch quantises the query too, so some neighbours differ; the
    recall against exact search is no worse)."""
    x, q, exact = data
    h = HnswIndex(dim=48, dtype=dtype, expansion_search=64)
    h.add(x)
    ours = h.search(q, 10)
    theirs = h._index.search(q, 10, threads=1)  # USearch's search over the same (now viewed) bytes
    keys = np.atleast_2d(theirs.keys).astype(np.int64)
    overlap = np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(ours.ids, keys)])
    assert overlap >= floor
    truth = exact.search(q, 10).ids
    recall = [
        np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(got, truth)]) for got in (ours.ids, keys)
    ]
    assert recall[0] >= recall[1] - 0.005
    if dtype == "f32":
        np.testing.assert_allclose(ours.scores[:, 0], 1.0 - np.atleast_2d(theirs.distances)[:, 0], atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 120),
    d=st.integers(2, 12),
    k=st.integers(1, 15),
    removed=st.integers(0, 30),
    seed=st.integers(0, 2**16),
)
def test_walk_is_exact_when_the_beam_covers_the_graph(n, d, k, removed, seed):
    """With ef >= n the beam holds every reachable node: the answer is exact search's (scores to 1e-5),
    removed nodes never come back, and k > n pads with (-1, -inf). (A multi-threaded USearch build is not
    deterministic, so a failing graph could not be replayed: the build here runs on one thread.)"""
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, n, d)
    q = unit_rows(rng, 3, d)
    h = HnswIndex(dim=d, expansion_search=max(2, n + k), threads=1)  # one thread: a reproducible graph
    ids = np.arange(n, dtype=np.int64) * 7 + 1
    h.add(x, ids)
    gone = ids[: min(removed, n - 1)]
    if gone.size:
        h.remove(gone)
    keep = np.setdiff1d(np.arange(n), np.arange(gone.size))
    got = h.search(q, k)
    ref = (q.astype(np.float64) @ x[keep].T.astype(np.float64)).astype(np.float32)
    truth = -np.sort(-ref, axis=1)[:, :k]
    m = truth.shape[1]
    np.testing.assert_allclose(got.scores[:, :m], truth, atol=1e-5)
    assert not np.isin(got.ids, gone).any()
    assert (got.ids[:, m:] == -1).all() and np.isneginf(got.scores[:, m:]).all()


def test_search_after_changes_sees_them(rng):
    """The search form is re-read after add and remove; an index searched (frozen) stays writable."""
    x = unit_rows(rng, 400, 16)
    h = HnswIndex(dim=16)
    h.add(x[:200])
    assert h.search(x[:3], 1).ids[:, 0].tolist() == [0, 1, 2]
    h.add(x[200:], ids=np.arange(200, 400))
    assert h.search(x[300:303], 1).ids[:, 0].tolist() == [300, 301, 302]
    h.remove([300])
    assert 300 not in h.search(x[300:301], 5).ids[0]
    assert len(h) == 399


def test_one_query_at_a_time_across_the_visit_tag_wrap(data):
    """Single-query searches past 255 walks (the one-byte visit tags wrap and are cleared) and unnormalised
    queries return what the batch of unit queries returns, scores as cosines."""
    x, q, _ = data
    h = HnswIndex(dim=48, threads=1)
    h.add(x)
    batch = h.search(q, 10)
    for _ in range(2):
        for i in range(q.shape[0]):
            got = h.search(3.5 * q[i], 10)
            np.testing.assert_array_equal(got.ids[0], batch.ids[i])
            np.testing.assert_allclose(got.scores[0], batch.scores[i], atol=1e-5)


def test_concurrent_searches_from_threads_agree(data):
    from concurrent.futures import ThreadPoolExecutor

    x, q, _ = data
    h = HnswIndex(dim=48, threads=2)
    h.add(x)
    alone = h.search(q, 10)
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda i: h.search(q[i % 2 :: 2], 10), range(8)))
    for i, got in enumerate(runs):
        np.testing.assert_array_equal(got.ids, alone.ids[i % 2 :: 2])


def test_graph_reader_rejects_damaged_or_foreign_bytes(rng):
    from usearch.index import Index

    from duorank.hnsw_graph import UsearchGraph

    x = unit_rows(rng, 300, 8)
    ix = Index(ndim=8, metric="cos", dtype="f32")
    ix.add(np.arange(300), x)
    good = np.frombuffer(ix.save(), dtype=np.uint8)
    assert len(UsearchGraph(good, 8, source="good")) == 300
    with pytest.raises(IndexFormatError, match="no USearch head"):
        UsearchGraph(good[:1000], 8, source="t")
    with pytest.raises(IndexFormatError, match="node tape is truncated"):
        UsearchGraph(good[:-50], 8, source="t")
    with pytest.raises(IndexFormatError, match="no USearch head"):
        UsearchGraph(np.zeros(5000, np.uint8), 8, source="t")
    with pytest.raises(IndexFormatError, match=r"32 bytes a vector, expected 16 x 4"):
        UsearchGraph(good, 16, source="t")
    ip = Index(ndim=8, metric="ip", dtype="f32")
    ip.add(np.arange(10), x[:10])
    with pytest.raises(IndexFormatError, match=r"USearch kinds \(metric, scalar, key, slot\) = \(105"):
        UsearchGraph(np.frombuffer(ip.save(), dtype=np.uint8), 8, source="t")


@pytest.mark.parametrize(("dtype", "tol"), [("f32", 1e-5), ("f16", 2e-3), ("i8", 3e-2)])
def test_selective_filter_scores_stored_rows_exactly(rng, dtype, tol):
    """A filter of a few ids is answered from the stored rows: decoded per dtype (f16 bits, i8 codes)."""
    x = unit_rows(rng, 3000, 16)
    h = HnswIndex(dim=16, dtype=dtype)
    h.add(x)
    exact = ExactIndex(dim=16)
    exact.add(x)
    allow = [1, 2, 3, 10, 20]
    got, truth = h.search(x[:5], 5, allowed=allow), exact.search(x[:5], 5, allowed=allow)
    np.testing.assert_array_equal(np.sort(got.ids, axis=1), np.sort(truth.ids, axis=1))
    np.testing.assert_allclose(np.sort(got.scores, axis=1), np.sort(truth.scores, axis=1), atol=tol)


# ---------------------------------------------------------------- the graph duorank builds
@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
def test_duorank_builder_stores_the_rows_and_beats_usearchs_graph(dtype):
    """builder="duorank" (the default) builds the graph itself and hands USearch a file it reads as its own:
    the stored rows come back unchanged, USearch's own search over it agrees with the walk, and at the same
    beam it finds at least what a graph USearch built finds."""
    rng = np.random.default_rng(8)
    x = embedding_like(rng, 8_200, 384, clusters=80)
    exact = ExactIndex(dim=384)
    exact.add(x[:8_000])
    unit = x[:8_000] / np.linalg.norm(x[:8_000], axis=1, keepdims=True)  # as add() normalises
    recall = {}
    for builder in ("duorank", "usearch"):
        h = HnswIndex(dim=384, dtype=dtype, builder=builder, expansion_search=32)
        h.add(x[:8_000])
        assert str(h._index.dtype).lower().endswith(dtype) and len(h) == 8_000
        if dtype != "i8":
            stored = np.asarray(h._index.get(np.arange(8_000, dtype=np.uint64)))
            np.testing.assert_array_equal(stored, unit.astype(stored.dtype))
        recall[builder] = h.recall_against(exact, x[8_000:], 10)
        theirs = h._index.search(x[8_000:], 10, threads=1)
        ours = h.search(x[8_000:], 10).ids
        overlap = np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(ours, theirs.keys)])
        assert overlap >= (0.99 if dtype == "f32" else 0.9)
    print(f"{dtype} recall@10 at ef 32, built by duorank / USearch:", recall)
    assert recall["duorank"] >= recall["usearch"] - 0.005
    with pytest.raises(ValueError, match="builder 'faiss', expected 'duorank' or 'usearch'"):
        HnswIndex(dim=4, builder="faiss")


@pytest.mark.parametrize("n", [1, 2, 3, 40])
def test_duorank_builder_small_graphs_and_duplicates(n):
    """Tiny graphs, repeated rows and zero rows build and answer exactly with a beam over everything."""
    rng = np.random.default_rng(n)
    x = unit_rows(rng, n, 8)
    if n > 2:
        x[1] = x[0]
        x[2] = 0.0
    h = HnswIndex(dim=8, expansion_search=64)
    h.add(x)
    got = h.search(x, min(n, 5))
    ref = x.astype(np.float64) @ x.T.astype(np.float64)
    np.testing.assert_allclose(got.scores, -np.sort(-ref, axis=1)[:, : min(n, 5)], atol=1e-5)


def test_adds_extend_the_graph_or_rebuild_it_and_removed_rows_stay_gone(rng):
    """An add smaller than the index goes into USearch's graph; one at least as large rebuilds the graph
    over the live rows and the new ones: removed rows stay gone, every other row is found."""
    x = unit_rows(rng, 3_100, 24)
    h = HnswIndex(dim=24, expansion_search=64)
    h.add(x[:1_000])
    h.remove(np.arange(10))
    h.add(x[1_000:1_050], ids=np.arange(1_000, 1_050))  # smaller: USearch's own insert
    h.add(x[1_050:], ids=np.arange(1_050, 3_100))  # larger: a rebuild over 3,090 rows
    assert len(h) == 3_090 and 5 not in h and 5_000 not in h
    got = h.search(x, 1).ids[:, 0]
    assert (got[10:] == np.arange(10, 3_100)).mean() >= 0.99
    assert not np.isin(got, np.arange(10)).any()
    unit = x[10:] / np.linalg.norm(x[10:], axis=1, keepdims=True)
    np.testing.assert_array_equal(np.asarray(h._index.get(np.arange(10, 3_100, dtype=np.uint64))), unit)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(12, 80),
    cap=st.integers(2, 10),
    newcomer=st.integers(0, 1000),
    seed=st.integers(0, 2**31 - 1),
)
def test_builder_admits_into_a_closed_list_as_the_heuristic_would(n, cap, newcomer, seed):
    """The builder's shortcut for a full list the heuristic closed (kernels/hnsw_build.py `_admit`) keeps
    exactly what the heuristic over the list plus the newcomer keeps, wherever the newcomer ranks."""
    import importlib

    hb = importlib.import_module("duorank.kernels.hnsw_build")
    rng = np.random.default_rng(seed)
    x = rng.integers(-127, 128, (n, 12)).astype(np.int8)
    x[x.sum(axis=1) == 0, 0] = 1
    scales = (1 / np.linalg.norm(x.astype(np.float32), axis=1)).astype(np.float32)
    sims = np.array([hb._sim(x, scales, 0, i) for i in range(n)], np.float32)
    cand = (np.argsort(-sims[1:], kind="stable") + 1).astype(np.int32)
    c = cand[newcomer % cand.size]
    cand = cand[cand != c]
    row = np.empty(cap, np.int32)
    rsim = np.empty(cap, np.float32)
    k = hb._prune(x, scales, cand, sims[cand], cand.size, cap, row, rsim)
    if cand.size <= cap or k < cap:  # the heuristic did not run, or left room: no shortcut
        return
    at = int((rsim >= sims[c]).sum())  # the list is sorted best first; ties: the newcomer after
    merged = np.insert(row, at, c).astype(np.int32)
    want = np.empty(cap, np.int32)
    want_sims = np.empty(cap, np.float32)
    kept = hb._prune(x, scales, merged, sims[merged], merged.size, cap, want, want_sims)
    got = hb._admit(x, scales, row, rsim, cap, c, sims[c], np.empty(cap, np.int32), np.empty(cap, np.float32))
    assert got == kept
    np.testing.assert_array_equal(row[:got], want[:kept])
    np.testing.assert_array_equal(rsim[:got], want_sims[:kept])
