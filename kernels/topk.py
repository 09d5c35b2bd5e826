"""Top-k selection by streaming scores into per-query heaps.

A heap pair (ids int64[q, k], scores float32[q, k]) holds each query's best k so far with the worst at
slot 0; empty slots are (-1, -inf). Order: higher score first, equal scores by smaller id. Reset heaps
with `topk_reset`, push blocks of rows (`topk_push_dot`, offset by `row0` so a corpus can be streamed
in blocks or shards), push precomputed scores (`topk_push_scores`) or other heaps (`topk_merge`), then
`topk_sort` turns heaps into rows sorted best first.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .dot import dot_4q, row_dot

# Rows scored per block before moving to the next query: 512 x 384 x 4 B = 768 KiB stays in L2.
BLOCK_ROWS = 512
# Below this many rows a parallel launch costs more than it saves.
SERIAL_ROWS = 16384


@nb.njit(cache=True, nogil=True)
def _better(s1, i1, s2, i2):  # type: ignore[no-untyped-def]
    """(s1, i1) ranks before (s2, i2): higher score, then smaller id."""
    return s1 > s2 or (s1 == s2 and i1 < i2)


@nb.njit(cache=True, nogil=True)
def _sift_down(hs, hi, n, s, i):  # type: ignore[no-untyped-def]
    """Place (s, i) at the root of the heap hs[:n]/hi[:n] (worst at the root) and restore the order."""
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        right = child + 1
        if right < n and _better(hs[child], hi[child], hs[right], hi[right]):
            child = right
        if _better(s, i, hs[child], hi[child]):
            hs[pos] = hs[child]
            hi[pos] = hi[child]
            pos = child
        else:
            break
    hs[pos] = s
    hi[pos] = i


@nb.njit(cache=True, nogil=True)
def _push(hs, hi, s, i):  # type: ignore[no-untyped-def]
    if s > hs[0] or (s == hs[0] and i < hi[0]):
        _sift_down(hs, hi, hs.shape[0], s, i)


@nb.njit(cache=True, nogil=True)
def _push_rows(queries, x, scales, lo, hi_row, row0, mask, heap_ids, heap_scores):  # type: ignore[no-untyped-def]
    """Serial: push rows lo..hi_row-1 of x (ids row0 + r) into every query's heap, block by block.

    Queries go four at a time (dot_4q: each loaded element feeds four FMAs); the remainder one by one
    (one row at a time streams fastest: measured against two- and four-row variants).
    """
    nq = queries.shape[0]
    nq4 = nq - nq % 4
    has_mask = mask.shape[0] > 0
    has_scales = scales.shape[0] > 0
    for b0 in range(lo, hi_row, BLOCK_ROWS):
        b1 = min(hi_row, b0 + BLOCK_ROWS)
        for q in range(0, nq4, 4):
            h0, h1, h2, h3 = heap_scores[q], heap_scores[q + 1], heap_scores[q + 2], heap_scores[q + 3]
            i0, i1, i2, i3 = heap_ids[q], heap_ids[q + 1], heap_ids[q + 2], heap_ids[q + 3]
            for r in range(b0, b1):
                if has_mask and not mask[r]:
                    continue
                s0, s1, s2, s3 = dot_4q(queries, q, x, r)
                if has_scales:
                    c = scales[r]
                    s0, s1, s2, s3 = s0 * c, s1 * c, s2 * c, s3 * c
                _push(h0, i0, s0, row0 + r)
                _push(h1, i1, s1, row0 + r)
                _push(h2, i2, s2, row0 + r)
                _push(h3, i3, s3, row0 + r)
        for q in range(nq4, nq):
            qv = queries[q]
            hs = heap_scores[q]
            hi = heap_ids[q]
            for r in range(b0, b1):
                if not has_mask or mask[r]:
                    _push(hs, hi, row_dot(qv, x, r, scales), row0 + r)


@nb.njit(cache=True, nogil=True)
def _merge(src_ids, src_scores, heap_ids, heap_scores):  # type: ignore[no-untyped-def]
    for q in range(src_ids.shape[0]):
        for j in range(src_ids.shape[1]):
            if src_ids[q, j] >= 0:
                _push(heap_scores[q], heap_ids[q], src_scores[q, j], src_ids[q, j])


_PUSH = "void(f4[:, ::1], {x}, f4[::1], i8, b1[::1], i8[:, ::1], f4[:, ::1], i8)"


@nb.njit(
    [_PUSH.format(x=x) for x in ("f4[:, ::1]", "u2[:, ::1]", "i1[:, ::1]")],
    cache=True,
    nogil=True,
    parallel=True,
)
def topk_push_dot(queries, corpus, scales, row0, mask, heap_ids, heap_scores, n_threads):  # type: ignore[no-untyped-def]
    """Push <queries[q], corpus[r]> (times scales[r] if non-empty) with id row0 + r into the heaps.

    corpus: float32, float16 as uint16 bits, or int8 codes. mask: empty (all rows) or aligned with corpus.
    Splits the work n_threads ways (pass numba.get_num_threads(); calling it in here defeats the cache):
    by queries when there are enough of them, else by corpus chunks with per-thread heaps.
    """
    n = corpus.shape[0]
    nq = queries.shape[0]
    k = heap_ids.shape[1]
    nt = max(1, n_threads)
    if nt == 1 or (n < SERIAL_ROWS and nq < 4 * nt):
        _push_rows(queries, corpus, scales, 0, n, row0, mask, heap_ids, heap_scores)
    elif nq >= 4 * nt:
        step = ((nq + nt - 1) // nt + 3) // 4 * 4  # a multiple of 4 for dot_4q
        for t in nb.prange(nt):
            a = t * step
            b = min(nq, a + step)
            if a < b:
                _push_rows(queries[a:b], corpus, scales, 0, n, row0, mask, heap_ids[a:b], heap_scores[a:b])
    else:
        step = (n + nt - 1) // nt
        loc_ids = np.full((nt, nq, k), -1, np.int64)
        loc_scores = np.full((nt, nq, k), -np.inf, np.float32)
        for t in nb.prange(nt):
            a = t * step
            b = min(n, a + step)
            if a < b:
                _push_rows(queries, corpus, scales, a, b, row0, mask, loc_ids[t], loc_scores[t])
        for t in range(nt):
            _merge(loc_ids[t], loc_scores[t], heap_ids, heap_scores)


@nb.njit("void(f4[:, ::1], i8, b1[::1], i8[:, ::1], f4[:, ::1])", cache=True, nogil=True)
def topk_push_scores(scores, row0, mask, heap_ids, heap_scores):  # type: ignore[no-untyped-def]
    """Push scores[q, r] with id row0 + r (e.g. a BLAS score block); mask (empty = all) aligned with r."""
    has_mask = mask.shape[0] > 0
    for q in range(scores.shape[0]):
        hs = heap_scores[q]
        hi = heap_ids[q]
        row = scores[q]
        for r in range(row.shape[0]):
            s = row[r]
            if s > hs[0] or (s == hs[0] and row0 + r < hi[0]):
                if has_mask and not mask[r]:
                    continue
                _sift_down(hs, hi, hs.shape[0], s, row0 + r)


@nb.njit("void(i8[:, ::1], f4[:, ::1], i8[:, ::1], f4[:, ::1])", cache=True, nogil=True)
def topk_merge(src_ids, src_scores, heap_ids, heap_scores):  # type: ignore[no-untyped-def]
    """Push every (src_ids[q, j], src_scores[q, j]) with id >= 0 into heap q (shards, thread-local heaps)."""
    _merge(src_ids, src_scores, heap_ids, heap_scores)


@nb.njit("void(i8[:, ::1], f4[:, ::1])", cache=True, nogil=True)
def topk_reset(heap_ids, heap_scores):  # type: ignore[no-untyped-def]
    """Empty every heap: ids -1, scores -inf."""
    heap_ids[:] = -1
    heap_scores[:] = -np.inf


@nb.njit("void(i8[:, ::1], f4[:, ::1])", cache=True, nogil=True)
def topk_sort(heap_ids, heap_scores):  # type: ignore[no-untyped-def]
    """Heaps -> rows sorted best first (score descending, then id ascending), empty slots last."""
    k = heap_ids.shape[1]
    for q in range(heap_ids.shape[0]):
        hs = heap_scores[q]
        hi = heap_ids[q]
        for end in range(k - 1, 0, -1):
            s = hs[end]
            i = hi[end]
            hs[end] = hs[0]
            hi[end] = hi[0]
            _sift_down(hs, hi, end, s, i)
