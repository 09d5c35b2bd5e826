"""HNSW graph search over a graph in USearch's saved form (docs/format.md, v2).

`hnsw_parse` copies the node tape of a saved USearch index (key, level, then the neighbour lists of levels
0..level) into flat arrays (`hnsw_tape` writes one from them); `hnsw_search` walks them: greedy descent
through the upper levels, then a best-first beam of width `ef` on level 0, the algorithm USearch, hnswlib
and FAISS share. Rows are stored vectors (float32, float16 as uint16 bits, or int8 codes with per-row
scales) that the caller normalised; the walk ranks by the dot product and the scores it returns are divided
by the query's norm, so they are cosines and queries need no normalising copy. HNSW's time goes to cache
misses on vectors: when a node is expanded, the first cache line of each unvisited neighbour's vector is
requested at once (hnswlib does the same), then the neighbours are scored four rows at a time (`row_dot4`,
as FAISS does), so four streams of loads are in flight. That is what puts this walk ahead of USearch's
own search on the same graph (2-3x) and level with FAISS's walk per distance computed.

`mask[slot]` (uint8) says which nodes may be returned: removed nodes (key = 2**64 - 1) and nodes outside a
filter stay traversable, as in hnswlib's filtered search, so the walk still reaches the allowed ones.
"""

from __future__ import annotations

import llvmlite.ir as lir
import numba as nb
import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic

from .dot import FASTMATH, row_dot, row_dot4


@intrinsic
def prefetch_at(typingctx, x, r, c):  # type: ignore[no-untyped-def]
    """Hint the CPU to load the cache line holding x[r, c] (llvm.prefetch: read, high locality)."""
    sig = types.void(x, r, c)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        xty, rty, cty = signature.args
        arr = context.make_array(xty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer2(
            context,
            builder,
            arr.data,
            cgutils.unpack_tuple(builder, arr.shape),
            cgutils.unpack_tuple(builder, arr.strides),
            xty.layout,
            [
                context.cast(builder, args[1], rty, types.intp),
                context.cast(builder, args[2], cty, types.intp),
            ],
        )
        i8p = lir.IntType(8).as_pointer()
        i32 = lir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, lir.FunctionType(lir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8"
        )
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(cache=True, nogil=True)
def heap_push(hd, hi, n, d, i):  # type: ignore[no-untyped-def]
    """Push (d, i) on the min-heap hd[:n]/hi[:n] (smallest d at 0); returns the new size."""
    j = n
    while j > 0:
        p = (j - 1) >> 1
        if hd[p] <= d:
            break
        hd[j] = hd[p]
        hi[j] = hi[p]
        j = p
    hd[j] = d
    hi[j] = i
    return n + 1


@nb.njit(cache=True, nogil=True)
def heap_pop(hd, hi, n):  # type: ignore[no-untyped-def]
    """Drop the root of the min-heap hd[:n]/hi[:n]; returns the new size."""
    n -= 1
    d = hd[n]
    i = hi[n]
    j = 0
    while True:
        c = 2 * j + 1
        if c >= n:
            break
        if c + 1 < n and hd[c + 1] < hd[c]:
            c += 1
        if hd[c] >= d:
            break
        hd[j] = hd[c]
        hi[j] = hi[c]
        j = c
    hd[j] = d
    hi[j] = i
    return n


@nb.njit(cache=True, nogil=True)
def _u32(b, o):  # type: ignore[no-untyped-def]
    lo = np.int64(b[o]) | (np.int64(b[o + 1]) << 8)
    return lo | (np.int64(b[o + 2]) << 16) | (np.int64(b[o + 3]) << 24)


@nb.njit(cache=True, nogil=True)
def _read_list(tape, o, row):  # type: ignore[no-untyped-def]
    """Read a u32 count and row.shape[0] u32 slots at byte o into row; the count, or -1 if it overflows."""
    c = _u32(tape, o)
    if c > row.shape[0]:
        return -1
    for j in range(row.shape[0]):
        row[j] = _u32(tape, o + 4 + 4 * j)
    return c


@nb.njit(cache=True, nogil=True)
def hnsw_parse(tape, start, levels, nbr0, cnt0, up_row, nbr_up, cnt_up, keys):  # type: ignore[no-untyped-def]
    """Read USearch's node tape from byte `start`: per node a u64 key, an i16 level, then for each level
    0..level a u32 count and the u32 neighbour slots (nbr0.shape[1] on level 0, nbr_up.shape[1] above).
    Level-l lists (l >= 1) of node i land in row up_row[i] + l - 1 of nbr_up. Returns the end offset, or
    -1 if the tape is shorter than the levels say (a truncated file) or a count exceeds its list."""
    m0 = nbr0.shape[1]
    m = nbr_up.shape[1]
    n = levels.shape[0]
    o = start
    r = 0
    for i in range(n):
        lvl = np.int64(levels[i])
        if o + 10 + 4 * (1 + m0) + lvl * 4 * (1 + m) > tape.shape[0]:
            return -1
        k = np.uint64(0)
        for t in range(8):
            k |= np.uint64(tape[o + t]) << np.uint64(8 * t)
        keys[i] = k
        o += 10
        cnt0[i] = _read_list(tape, o, nbr0[i])
        if cnt0[i] < 0:
            return -1
        o += 4 * (1 + m0)
        up_row[i] = r
        for _ in range(lvl):
            cnt_up[r] = _read_list(tape, o, nbr_up[r])
            if cnt_up[r] < 0:
                return -1
            o += 4 * (1 + m)
            r += 1
    return o


@nb.njit(cache=True, nogil=True)
def _put(tape, o, v, nbytes):  # type: ignore[no-untyped-def]
    for t in range(nbytes):
        tape[o + t] = np.uint8((v >> (8 * t)) & 0xFF)


@nb.njit(cache=True, nogil=True)
def hnsw_tape(keys, levels, nbr0, cnt0, up_row, nbr_up, cnt_up, tape, start):  # type: ignore[no-untyped-def]
    """hnsw_parse's inverse: write each node's u64 key, i16 level and, for levels 0..level, a u32 count and
    the u32 slots (zero past the count) into tape from byte `start`. Returns the end offset."""
    m0 = nbr0.shape[1]
    m = nbr_up.shape[1]
    o = start
    for i in range(keys.shape[0]):
        _put(tape, o, np.int64(keys[i]), 8)
        _put(tape, o + 8, np.int64(levels[i]) & 0xFFFF, 2)
        o += 10
        _put(tape, o, np.int64(cnt0[i]), 4)
        for j in range(m0):
            _put(tape, o + 4 + 4 * j, np.int64(nbr0[i, j]) if j < cnt0[i] else 0, 4)
        o += 4 * (1 + m0)
        for lvl in range(np.int64(levels[i])):
            r = up_row[i] + lvl
            _put(tape, o, np.int64(cnt_up[r]), 4)
            for j in range(m):
                _put(tape, o + 4 + 4 * j, np.int64(nbr_up[r, j]) if j < cnt_up[r] else 0, 4)
            o += 4 * (1 + m)
    return o


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _walk(q, graph, entry, top, mask, ef, seen, tag, heaps):  # type: ignore[no-untyped-def]
    """One query: returns the size of the result heap (min-heap of scores, at most ef allowed nodes)."""
    x, scales, nbr0, cnt0, up_row, nbr_up, cnt_up, _ = graph
    cd, ci, rd, ri = heaps
    fresh = np.empty(nbr0.shape[1], np.int32)
    cur = entry
    best = row_dot(q, x, cur, scales)
    for lvl in range(top, 0, -1):  # greedy descent: move to the best neighbour until none is better
        moved = True
        while moved:
            moved = False
            r = up_row[cur] + lvl - 1
            for j in range(cnt_up[r]):
                c = nbr_up[r, j]
                s = row_dot(q, x, c, scales)
                if s > best:
                    best = s
                    cur = c
                    moved = True
    seen[cur] = tag
    nc = heap_push(cd, ci, 0, -best, cur)  # candidates: min-heap of -score (best first)
    nr = 0  # results: min-heap of score (worst first)
    if mask[cur]:
        nr = heap_push(rd, ri, 0, best, cur)
    while nc > 0:
        s0 = -cd[0]
        c0 = ci[0]
        if nr >= ef and s0 < rd[0]:
            break
        nc = heap_pop(cd, ci, nc)
        m = 0
        for j in range(cnt0[c0]):  # the unvisited neighbours, their vectors' first lines requested
            c = nbr0[c0, j]
            if seen[c] != tag:
                seen[c] = tag
                fresh[m] = c
                m += 1
                prefetch_at(x, c, 0)
        for j in range(0, m, 4):  # four rows at a time: four independent streams of loads in flight
            if j + 4 <= m:
                s4 = row_dot4(q, x, fresh[j], fresh[j + 1], fresh[j + 2], fresh[j + 3], scales)
            else:
                s4 = (
                    row_dot(q, x, fresh[j], scales),
                    row_dot(q, x, fresh[min(j + 1, m - 1)], scales),
                    row_dot(q, x, fresh[min(j + 2, m - 1)], scales),
                    np.float32(0.0),
                )
            for u in range(min(4, m - j)):  # inline: a helper function here measured 10% slower
                c = fresh[j + u]
                s = s4[u]
                if nr < ef or s > rd[0]:
                    nc = heap_push(cd, ci, nc, -s, c)
                    if mask[c]:
                        nr = heap_push(rd, ri, nr, s, c)
                        if nr > ef:
                            nr = heap_pop(rd, ri, nr)
    return nr


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _search_rows(queries, lo, hi, graph, entry, top, mask, ef, seen, tags, t, out_ids, out_scores):  # type: ignore[no-untyped-def]
    keys = graph[7]
    k = out_ids.shape[1]
    n = keys.shape[0]
    rd = np.empty(ef + 1, np.float32)
    ri = np.empty(ef + 1, np.int32)
    heaps = (np.empty(n + 1, np.float32), np.empty(n + 1, np.int32), rd, ri)
    for q in range(lo, hi):
        if tags[t] == 255:  # the visit tags (one byte a node) wrap: start a clean slate
            seen[:] = 0
            tags[t] = 0
        tags[t] += np.uint8(1)
        nr = _walk(queries[q], graph, entry, top, mask, ef, seen, tags[t], heaps)
        acc = 0.0  # the walk ranks by q . x; the scores are cosines: divide by the query's norm
        for i in range(queries.shape[1]):
            acc += np.float64(queries[q, i]) * np.float64(queries[q, i])
        inv = np.float32(1.0 / np.sqrt(acc)) if acc > 0.0 else np.float32(0.0)
        for j in range(k):
            out_ids[q, j] = -1
            out_scores[q, j] = -np.inf
        while nr > 0:  # the heap yields worst first: fill from the back
            s = rd[0]
            i = ri[0]
            nr = heap_pop(rd, ri, nr)
            if nr < k:
                out_ids[q, nr] = keys[i]
                out_scores[q, nr] = s * inv


# Compiled on first use, not at import (unlike the other kernels): the tape and vectors are often a
# read-only memory map, a separate Numba type for each array, too many signatures to build up front.
# `graph` is the tuple (x, scales, nbr0, cnt0, up_row, nbr_up, cnt_up, keys): the stored rows (float32,
# float16 bits or int8 codes), per-row scales (int8: 1 / norm of the codes; else empty), the level-0 lists
# and counts, each node's first upper-level row, the upper-level lists and counts, and the int64 ids.


@nb.njit(cache=True, nogil=True)
def hnsw_search(queries, graph, entry, top, mask, ef, seen, tags, out_ids, out_scores):  # type: ignore[no-untyped-def]
    """Serial top-k (k = out_ids.shape[1] <= ef) per query, best first; (-1, -inf) where fewer than k
    allowed nodes were found. seen (one row, n uint8 visit tags) and tags (its counter) carry over between
    calls, so no call clears an n-sized array."""
    _search_rows(
        queries, 0, queries.shape[0], graph, entry, top, mask, ef, seen[0], tags, 0, out_ids, out_scores
    )


@nb.njit(cache=True, nogil=True, parallel=True)
def hnsw_search_parallel(queries, graph, entry, top, mask, ef, seen, tags, out_ids, out_scores):  # type: ignore[no-untyped-def]
    """hnsw_search with the queries split seen.shape[0] ways (one visit-tag row and counter per part)."""
    nt = seen.shape[0]
    nq = queries.shape[0]
    step = (nq + nt - 1) // nt
    for t in nb.prange(nt):
        lo = t * step
        hi = min(nq, lo + step)
        if lo < hi:
            _search_rows(queries, lo, hi, graph, entry, top, mask, ef, seen[t], tags, t, out_ids, out_scores)
