"""Kernels against a float64 numpy reference: ids equal, scores to 1e-5; hypothesis for the properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from duorank import kernels as K
from tests.conftest import unit_rows
from tests.reference import normalized, topk_reference

NO_SCALES = np.empty(0, np.float32)
NO_MASK = np.empty(0, np.bool_)


def empty_heaps(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.empty((nq, k), np.int64)
    scores = np.empty((nq, k), np.float32)
    K.topk_reset(ids, scores)
    return ids, scores


def search(q, x, k, *, scales=NO_SCALES, mask=NO_MASK, threads=2):
    ids, scores = empty_heaps(q.shape[0], k)
    K.topk_push_dot(q, x, scales, 0, mask, ids, scores, threads)
    K.topk_sort(ids, scores)
    return ids, scores


@pytest.mark.parametrize("nq", [1, 3, 40])
@pytest.mark.parametrize("threads", [1, 2])
def test_push_dot_f32_matches_reference(rng, nq, threads):
    # 20,000 rows > SERIAL_ROWS: nq=1,3 take the per-thread-heap path, nq=40 the split-queries path.
    x = unit_rows(rng, 20_000, 48)
    q = unit_rows(rng, nq, 48)
    ids, scores = search(q, x, 10, threads=threads)
    ref_ids, ref_scores = topk_reference(q, x, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_streamed_blocks_and_merged_shards_equal_one_shot(rng):
    x = unit_rows(rng, 5_000, 32)
    q = unit_rows(rng, 4, 32)
    one_ids, one_scores = search(q, x, 7)
    ids, scores = empty_heaps(4, 7)
    for i0 in range(0, 5_000, 1_234):  # FAISS-style: stream blocks, ids shifted by row0
        K.topk_push_dot(q, x[i0 : i0 + 1_234], NO_SCALES, i0, NO_MASK, ids, scores, 2)
    K.topk_sort(ids, scores)
    np.testing.assert_array_equal(ids, one_ids)
    np.testing.assert_array_equal(scores, one_scores)
    merged_ids, merged_scores = empty_heaps(4, 7)
    for i0 in (0, 2_500):  # two shards searched apart, then merged
        s_ids, s_scores = empty_heaps(4, 7)
        K.topk_push_dot(q, x[i0 : i0 + 2_500], NO_SCALES, i0, NO_MASK, s_ids, s_scores, 1)
        K.topk_merge(s_ids, s_scores, merged_ids, merged_scores)
    K.topk_sort(merged_ids, merged_scores)
    np.testing.assert_array_equal(merged_ids, one_ids)


def test_push_scores_equals_push_dot(rng):
    x = unit_rows(rng, 3_000, 24)
    q = unit_rows(rng, 5, 24)
    mask = rng.random(3_000) < 0.3
    ids, scores = empty_heaps(5, 9)
    block = 1_000
    for i0 in range(0, 3_000, block):
        s = np.ascontiguousarray(q @ x[i0 : i0 + block].T)
        K.topk_push_scores(s, i0, mask[i0 : i0 + block], ids, scores)
    K.topk_sort(ids, scores)
    ref_ids, _ = topk_reference(q, x, 9, allowed=np.flatnonzero(mask))
    np.testing.assert_array_equal(ids, ref_ids)


def test_mask_restricts_rows(rng):
    x = unit_rows(rng, 30_000, 16)
    q = unit_rows(rng, 2, 16)
    mask = np.zeros(30_000, np.bool_)
    allowed = rng.choice(30_000, 25, replace=False)
    mask[allowed] = True
    ids, scores = search(q, x, 30, mask=mask)
    ref_ids, ref_scores = topk_reference(q, x, 30, allowed=allowed)
    np.testing.assert_array_equal(ids, ref_ids)
    assert (ids[:, 25:] == -1).all() and np.isneginf(scores[:, 25:]).all()


def test_k_larger_than_n_and_empty_corpus(rng):
    x = unit_rows(rng, 3, 8)
    q = unit_rows(rng, 2, 8)
    ids, scores = search(q, x, 5)
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert sorted(ids[0, :3]) == [0, 1, 2]
    ids, scores = search(q, np.empty((0, 8), np.float32), 4)
    assert (ids == -1).all() and np.isneginf(scores).all()


def test_ties_rank_smaller_id_first():
    x = np.zeros((6, 4), np.float32)
    x[:, 0] = [0.5, 1.0, 0.5, 1.0, 0.0, 1.0]
    q = np.array([[1.0, 0, 0, 0]], np.float32)
    ids, scores = search(q, x, 6)
    np.testing.assert_array_equal(ids[0], [1, 3, 5, 0, 2, 4])


def test_f16_bits_and_i8_codes_score_like_f32(rng):
    x = unit_rows(rng, 2_000, 64)
    q = unit_rows(rng, 3, 64)
    exact = q.astype(np.float64) @ x.astype(np.float64).T
    rows = np.tile(np.arange(2_000, dtype=np.int64), (3, 1))
    out = np.empty((3, 2_000), np.float32)
    K.dot_gather(q, x.astype(np.float16).view(np.uint16), NO_SCALES, rows, out)
    np.testing.assert_allclose(out, q @ x.astype(np.float16).astype(np.float64).T, atol=1e-5)
    codes = np.empty(x.shape, np.int8)
    scales = np.empty(2_000, np.float32)
    K.quantize_rows_i8(x, codes, scales)
    np.testing.assert_allclose(codes * scales[:, None], x, atol=float(scales.max()) / 2 + 1e-7)
    K.dot_gather(q, codes, scales, rows, out)
    np.testing.assert_allclose(out, exact, atol=0.02)
    rows[:, ::2] = -1
    K.dot_gather(q, x, NO_SCALES, rows, out)
    assert np.isneginf(out[:, ::2]).all()
    np.testing.assert_allclose(out[:, 1::2], exact[:, 1::2], atol=1e-5)


def test_wrong_dtype_fails_loudly(rng):
    x64 = rng.standard_normal((10, 4))
    ids, scores = empty_heaps(1, 2)
    with pytest.raises(TypeError, match="No matching definition"):
        K.topk_push_dot(x64[:1], x64, NO_SCALES, 0, NO_MASK, ids, scores, 1)


def test_normalize_rows_in_place_zero_rows_stay_zero(rng):
    x = rng.standard_normal((50, 33)).astype(np.float32) * 7
    x[[3, 17]] = 0
    ref = normalized(x)
    ref_norms = np.linalg.norm(x.astype(np.float64), axis=1)
    norms = np.empty(50, np.float32)
    K.normalize_rows(x, norms)
    np.testing.assert_allclose(x, ref, atol=1e-6)
    assert (x[[3, 17]] == 0).all() and (norms[[3, 17]] == 0).all()
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-6)


# ---------------------------------------------------------------- properties
small = st.integers(min_value=-3, max_value=3).map(float)  # small integers: exact float32 dots, many ties


@st.composite
def problems(draw):
    d = draw(st.integers(1, 8))
    n = draw(st.integers(0, 40))
    nq = draw(st.integers(1, 5))
    x = draw(arrays(np.float32, (n, d), elements=small))
    q = draw(arrays(np.float32, (nq, d), elements=small))
    k = draw(st.integers(1, 12))
    mask = draw(arrays(np.bool_, (n,))) if draw(st.booleans()) else None
    return x, q, k, mask


@settings(max_examples=150, deadline=None)
@given(problems(), st.sampled_from([1, 2]))
def test_property_topk_equals_reference_with_exact_ties(problem, threads):
    x, q, k, mask = problem
    ids, scores = search(q, x, k, mask=NO_MASK if mask is None else mask, threads=threads)
    ref_ids, ref_scores = topk_reference(q, x, k, allowed=None if mask is None else np.flatnonzero(mask))
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


@settings(max_examples=100, deadline=None)
@given(problems(), st.integers(1, 4))
def test_property_any_split_into_shards_merges_to_the_same(problem, parts):
    x, q, k, _ = problem
    ref_ids, _ = search(q, x, k, threads=1)
    ids, scores = empty_heaps(q.shape[0], k)
    bounds = np.linspace(0, x.shape[0], parts + 1).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        s_ids, s_scores = empty_heaps(q.shape[0], k)
        K.topk_push_dot(q, np.ascontiguousarray(x[a:b]), NO_SCALES, int(a), NO_MASK, s_ids, s_scores, 2)
        K.topk_merge(s_ids, s_scores, ids, scores)
    K.topk_sort(ids, scores)
    np.testing.assert_array_equal(ids, ref_ids)


@settings(max_examples=100, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(0, 20), st.integers(1, 40)),
        elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False),
    )
)
def test_property_normalize_matches_float64(x):
    ref = normalized(x)
    norms = np.empty(x.shape[0], np.float32)
    x = x.copy()
    K.normalize_rows(x, norms)
    np.testing.assert_allclose(x, ref, atol=1e-6)
    nonzero = np.linalg.norm(ref, axis=1) > 0
    np.testing.assert_allclose(np.linalg.norm(x[nonzero].astype(np.float64), axis=1), 1.0, atol=1e-5)
