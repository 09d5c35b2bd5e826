"""HNSW graph construction (the FAISS variant), in parallel batches, into the arrays kernels/hnsw.py walks.

Nodes go in by level, highest first (FAISS's order), in batches that grow with the graph (at most 2% of
the nodes already in it, as ParlayANN does): every node of a batch searches the graph as it stood before
the batch (read only, one node per thread at a time), then writes its own lists, then the reverse links
are grouped by the node that receives them, so each list has one writer and no lock is needed.

Per node and level: a beam of `ef` from the best node found on the level above, then the neighbour
heuristic (keep a candidate unless a kept one is closer to it than the node is) up to the level's
capacity: 2M on level 0, M above. That 2M is what FAISS does and USearch and hnswlib do not (they keep M
for the new node's own list on every level and let reverse links fill level 0): on embedding-like rows it
reaches a recall with a smaller beam, so fewer distance computations per query. A receiving list that is
full is pruned again by the same heuristic over its old and new candidates.

That re-pruning was half the build (every list fills up, so nearly every reverse link meets a full list,
and the heuristic scores up to (2M)**2 / 2 pairs of members). Two things make it cheap: each list keeps
its members' similarities to its node, sorted best first, so no member is scored against the node again;
and a list the heuristic produced is closed (no member is more similar to an earlier one than to the
node), so a newcomer needs only its scores against the list (`_admit`): it stays unless an earlier member
occludes it, and it pushes out the later members it occludes. That is exactly what the heuristic over
the list plus the newcomer keeps (tested), for at most 2M scores instead of hundreds.

Rows are int8 codes of normalised rows with one scale each (kernels/quantize.py): the similarity is the
dot product of the codes times both scales, and a row's codes are a quarter of its float32 bytes.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .dot import FASTMATH
from .hnsw import heap_pop, heap_push, prefetch_at


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _sim(x, scales, a, b):  # type: ignore[no-untyped-def]
    """Cosine of rows a and b from their int8 codes and per-row scales."""
    ra = x[a]
    rb = x[b]
    s = np.float32(0.0)
    for i in range(ra.shape[0]):  # int8 -> float32 FMAs: faster here than int32 products
        s += np.float32(ra[i]) * np.float32(rb[i])
    return s * scales[a] * scales[b]


@nb.njit(cache=True, nogil=True)
def _list(lvl, c, nbr0, cnt0, up_row, nbr_up, cnt_up):  # type: ignore[no-untyped-def]
    """The neighbour list of node c on level lvl, as a view of its filled part."""
    if lvl == 0:
        return nbr0[c, : cnt0[c]]
    r = up_row[c] + lvl - 1
    return nbr_up[r, : cnt_up[r]]


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _beam(x, scales, p, start, lvl, ef, graph, seen, tag, heaps, out_ids, out_sims):  # type: ignore[no-untyped-def]
    """Best-first search for node p on level lvl from `start`; writes the (at most ef) nodes found into
    out_ids/out_sims, best first, and returns how many."""
    nbr0, _, cnt0, up_row, nbr_up, _, cnt_up = graph
    cd, ci, rd, ri = heaps
    s = _sim(x, scales, p, start)
    seen[start] = tag
    nc = heap_push(cd, ci, 0, -s, start)
    nr = heap_push(rd, ri, 0, s, start)
    while nc > 0:
        s0 = -cd[0]
        c0 = ci[0]
        if nr >= ef and s0 < rd[0]:
            break
        nc = heap_pop(cd, ci, nc)
        row = _list(lvl, c0, nbr0, cnt0, up_row, nbr_up, cnt_up)
        for c in row:
            if seen[c] != tag:
                for i in range(0, x.shape[1], 64):  # every cache line of the int8 row
                    prefetch_at(x, c, i)
        for c in row:
            if seen[c] == tag:
                continue
            seen[c] = tag
            s = _sim(x, scales, p, c)
            if nr < ef or s > rd[0]:
                nc = heap_push(cd, ci, nc, -s, c)
                nr = heap_push(rd, ri, nr, s, c)
                if nr > ef:
                    nr = heap_pop(rd, ri, nr)
    k = nr
    while nr > 0:  # the result heap yields the worst first
        out_ids[nr - 1] = ri[0]
        out_sims[nr - 1] = rd[0]
        nr = heap_pop(rd, ri, nr)
    return k


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _prune(x, scales, ids, sims, k, cap, out, out_sims):  # type: ignore[no-untyped-def]
    """The heuristic over candidates ids[:k] (similarities sims[:k] to the node) sorted best first: keep
    one unless a kept one is more similar to it than the node is; at most cap, all of them when there are
    at most cap. Writes the kept ones and their similarities, best first; returns how many."""
    if k <= cap:
        for i in range(k):
            out[i] = ids[i]
            out_sims[i] = sims[i]
        return k
    for i in range(k):  # the pairwise similarities below read every candidate's row
        for c in range(0, x.shape[1], 64):
            prefetch_at(x, ids[i], c)
    n = 0
    for i in range(k):
        c = ids[i]
        good = True
        for j in range(n):
            if _sim(x, scales, c, out[j]) > sims[i]:
                good = False
                break
        if good:
            out[n] = c
            out_sims[n] = sims[i]
            n += 1
            if n == cap:
                break
    return n


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _search_batch(  # type: ignore[no-untyped-def]
    x, scales, nodes, levels, entry, top, ef, graph, seen, tag, heaps, cand, csim, sel, ssim, nsel
):
    """Phase 1 for nodes[...] (one thread's share): each node's neighbours on each of its levels (ids in
    sel, similarities in ssim, best first)."""
    nbr0, _, cnt0, up_row, nbr_up, _, cnt_up = graph
    m0 = nbr0.shape[1]
    m = nbr_up.shape[1]
    for b in range(nodes.shape[0]):
        p = nodes[b, 0]
        slot = nodes[b, 1]
        lp = np.int64(levels[p])
        cur = entry
        best = _sim(x, scales, p, cur)
        for lvl in range(top, lp, -1):  # greedy descent above the node's own levels
            moved = True
            while moved:
                moved = False
                for c in _list(lvl, cur, nbr0, cnt0, up_row, nbr_up, cnt_up):
                    s = _sim(x, scales, p, c)
                    if s > best:
                        best = s
                        cur = c
                        moved = True
        for lvl in range(min(lp, top), -1, -1):
            tag[0] += np.uint32(1)
            if tag[0] == np.uint32(0xFFFFFFFF):
                seen[:] = 0
                tag[0] = 1
            k = _beam(x, scales, p, cur, lvl, ef, graph, seen, tag[0], heaps, cand, csim)
            cur = cand[0]
            cap = m0 if lvl == 0 else m
            nsel[slot, lvl] = _prune(x, scales, cand, csim, k, cap, sel[slot, lvl], ssim[slot, lvl])


@nb.njit(cache=True, nogil=True)
def _insert(ids, sims, k, c, s):  # type: ignore[no-untyped-def]
    """Insert c (similarity s) into ids[:k] / sims[:k], sorted best first, after equal ones; returns k + 1."""
    j = k
    while j > 0 and sims[j - 1] < s:
        ids[j] = ids[j - 1]
        sims[j] = sims[j - 1]
        j -= 1
    ids[j] = c
    sims[j] = s
    return k + 1


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _admit(x, scales, row, rsim, k, c, s, ids, sims):  # type: ignore[no-untyped-def]
    """Add c (similarity s to the list's node) to the list row[:k] / rsim[:k] that the heuristic closed
    (no member is more similar to an earlier member than to the node), keeping exactly what the
    heuristic over the list plus c keeps, for at most k scores instead of up to k**2 / 2: c stays unless
    an earlier member occludes it; then the later members that c occludes drop out, and the list is cut
    at its capacity. The list stays closed. ids / sims: scratch of length >= k. Returns the new length."""
    p = 0
    while p < k and rsim[p] >= s:
        p += 1
    if p == row.shape[0]:  # last of cap + 1: cut
        return k
    for j in range(p):
        if _sim(x, scales, c, row[j]) > s:
            return k
    n = 0
    for j in range(p, k):  # the later members that c does not occlude
        if _sim(x, scales, row[j], c) <= rsim[j]:
            ids[n] = row[j]
            sims[n] = rsim[j]
            n += 1
    row[p] = c
    rsim[p] = s
    n = min(n, row.shape[0] - p - 1)
    for j in range(n):
        row[p + 1 + j] = ids[j]
        rsim[p + 1 + j] = sims[j]
    return p + 1 + n


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _receive(x, scales, d, lvl, srcs, src_sims, graph, closed, ids, sims, out, out_sims):  # type: ignore[no-untyped-def]
    """Phase 3 for node d on level lvl: merge the new nodes srcs (similarities src_sims to d) that chose
    it into its list, kept sorted best first with its similarities. A list that overflows is pruned by the
    heuristic; a full list that the heuristic closed (closed[d], closed[n + row] above level 0) takes new
    members through _admit. Either way no old member is scored against d again."""
    nbr0, sim0, cnt0, up_row, nbr_up, sim_up, cnt_up = graph
    if lvl == 0:
        row = nbr0[d]
        rsim = sim0[d]
        cnt = cnt0[d : d + 1]
        f = d
    else:
        r = up_row[d] + lvl - 1
        row = nbr_up[r]
        rsim = sim_up[r]
        cnt = cnt_up[r : r + 1]
        f = nbr0.shape[0] + r
    cap = row.shape[0]
    k = cnt[0]
    if closed[f] and k == cap:
        m = 0
        for t in range(srcs.shape[0]):  # best first, as the heuristic over them all would meet them
            m = _insert(ids, sims, m, srcs[t], src_sims[t])
        for t in range(m):
            k = _admit(x, scales, row, rsim, k, ids[t], sims[t], out, out_sims)
        cnt[0] = k
        return
    for j in range(k):
        ids[j] = row[j]
        sims[j] = rsim[j]
    for t in range(srcs.shape[0]):  # a new node is in no list yet: no duplicates to look for
        k = _insert(ids, sims, k, srcs[t], src_sims[t])
    n = _prune(x, scales, ids, sims, k, cap, out, out_sims)
    closed[f] = k > cap  # appended unchecked when it fit
    for j in range(n):
        row[j] = out[j]
        rsim[j] = out_sims[j]
    cnt[0] = n


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def hnsw_build(  # type: ignore[no-untyped-def]
    x,
    scales,
    levels,
    order,
    start,
    stop,
    ef,
    nbr0,
    sim0,
    cnt0,
    up_row,
    nbr_up,
    sim_up,
    cnt_up,
    closed,
    threads,
):
    """Insert nodes order[start:stop] (start >= 1: order[:start] are in) into the graph of the int8 rows x
    (codes of normalised rows, row r ~ x[r] * scales[r]): nbr0 (n, 2M) / cnt0 for level 0, nbr_up (sum of
    levels, M) / cnt_up for the levels above, node i's level-l list in row up_row[i] + l - 1; sim0 / sim_up
    (float32, shaped like the lists) hold each neighbour's similarity, lists sorted best first; closed
    (uint8, n + sum of levels) marks the lists the heuristic last pruned (level 0, then the rows above).
    `order` lists every node by level, highest first, so order[0] is the entry and its level the top."""
    n = x.shape[0]
    graph = (nbr0, sim0, cnt0, up_row, nbr_up, sim_up, cnt_up)
    entry = order[0]
    top = np.int64(levels[entry])
    m0 = nbr0.shape[1]
    cap = max(m0, nbr_up.shape[1]) + 1
    # per thread: visit tags, beam heaps, the beam's output; per batch slot: the chosen lists
    seen = np.zeros((threads, n), np.uint32)
    tags = np.zeros((threads, 1), np.uint32)
    big = max(ef, cap) + 1
    cds = np.empty((threads, n + 1), np.float32)
    cis = np.empty((threads, n + 1), np.int32)
    rds = np.empty((threads, big + 1), np.float32)
    ris = np.empty((threads, big + 1), np.int32)
    cands = np.empty((threads, big), np.int32)
    csims = np.empty((threads, big), np.float32)
    lmax = top + 1
    bmax = max(1, stop // 50)
    sel = np.empty((bmax, lmax, m0), np.int32)
    ssim = np.empty((bmax, lmax, m0), np.float32)
    nsel = np.zeros((bmax, lmax), np.int32)
    done = start
    while done < stop:
        size = min(stop - done, max(1, done // 50))  # batches of at most 2% of the graph
        batch = order[done : done + size]
        # phase 1, in parallel, the graph read only: each new node's chosen lists
        step = (size + threads - 1) // threads
        for t in nb.prange(threads):
            lo = t * step
            hi = min(size, lo + step)
            if lo < hi:
                nodes = np.empty((hi - lo, 2), np.int64)
                for b in range(lo, hi):
                    nodes[b - lo, 0] = batch[b]
                    nodes[b - lo, 1] = b
                heaps = (cds[t], cis[t], rds[t], ris[t])
                _search_batch(
                    x,
                    scales,
                    nodes,
                    levels,
                    entry,
                    top,
                    ef,
                    graph,
                    seen[t],
                    tags[t],
                    heaps,
                    cands[t],
                    csims[t],
                    sel,
                    ssim,
                    nsel,
                )
        # phase 2: the new nodes' own lists, and their reverse links keyed (receiver, level)
        nreq = 0
        for b in range(size):
            p = batch[b]
            for lvl in range(levels[p] + 1):
                k = nsel[b, lvl]
                if lvl == 0:
                    nbr0[p, :k] = sel[b, 0, :k]
                    sim0[p, :k] = ssim[b, 0, :k]
                    cnt0[p] = k
                else:
                    r = up_row[p] + lvl - 1
                    nbr_up[r, :k] = sel[b, lvl, :k]
                    sim_up[r, :k] = ssim[b, lvl, :k]
                    cnt_up[r] = k
                nreq += k
        keys = np.empty(nreq, np.int64)
        srcs = np.empty(nreq, np.int32)
        src_sims = np.empty(nreq, np.float32)
        i = 0
        for b in range(size):
            p = batch[b]
            for lvl in range(levels[p] + 1):
                for j in range(nsel[b, lvl]):
                    keys[i] = np.int64(sel[b, lvl, j]) * lmax + lvl
                    srcs[i] = p
                    src_sims[i] = ssim[b, lvl, j]
                    i += 1
        srt = np.argsort(keys, kind="mergesort")
        keys = keys[srt]
        srcs = srcs[srt]
        src_sims = src_sims[srt]
        bounds = np.empty(nreq + 1, np.int64)
        ng = 0
        for i in range(nreq):
            if i == 0 or keys[i] != keys[i - 1]:
                bounds[ng] = i
                ng += 1
        bounds[ng] = nreq
        # phase 3, in parallel: each receiving list has one writer
        gstep = (ng + threads - 1) // threads
        for t in nb.prange(threads):
            ids = np.empty(cap + size, np.int32)
            sims = np.empty(cap + size, np.float32)
            out = np.empty(cap, np.int32)
            out_sims = np.empty(cap, np.float32)
            for g in range(t * gstep, min(ng, (t + 1) * gstep)):
                key = keys[bounds[g]]
                lo = bounds[g]
                hi = bounds[g + 1]
                _receive(
                    x,
                    scales,
                    key // lmax,
                    key % lmax,
                    srcs[lo:hi],
                    src_sims[lo:hi],
                    graph,
                    closed,
                    ids,
                    sims,
                    out,
                    out_sims,
                )
        done += size
