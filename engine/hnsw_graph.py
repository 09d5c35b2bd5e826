"""A USearch HNSW graph in its saved bytes: written (`built`, `retyped`) and searched (`UsearchGraph`).

`built` writes the file for a graph duorank's kernel built (kernels/hnsw_build.py); `retyped` gives a
graph USearch built on int8 codes its float rows back. Searching with USearch itself was 2-3x slower than
hnswlib or FAISS at equal recall, so `UsearchGraph` reads the saved form (a file mapped
read-only, or the bytes of `Index.save()`) into flat arrays once: the vectors stay a view of those bytes,
the neighbour lists become int32 matrices (about 4 x (1 + 2M) bytes a node on level 0). The walk is the
same algorithm, so on the same graph it returns the same results as USearch's search; see kernels/hnsw.py
for what makes it faster.

Format (USearch v2, docs/format.md): a matrix block (u32 rows, u32 bytes per row, or both u64, then the
rows), a 64-byte head (magic "usearch", version, metric/scalar/key/slot kinds, counts, dimensions), the
graph header (u64 size, connectivity, base connectivity, max level, entry slot), an i16 level per node,
then the node tape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from .errors import IndexFormatError

MAGIC = b"usearch"
HEAD_BYTES = 64
GRAPH_HEADER_BYTES = 40
# scalar kinds in the head (usearch scalar_kind_t) -> the NumPy view the kernel reads
SCALARS = {11: np.float32, 12: np.uint16, 23: np.int8}
KEY_U64 = 14
SLOT_U32 = 15
METRIC_COS = ord("c")
FREE_KEY = -1  # 2**64 - 1, USearch's key for a removed node, read as int64


def _matrix(b: NDArray[np.uint8], source: str) -> tuple[int, int, int, int]:
    """(rows, bytes per row, offset of the head, width of the two dimensions) of a saved USearch index."""
    for w in (4, 8):  # USearch writes 32-bit matrix dimensions unless they do not fit
        if b.size < 2 * w:
            break
        r, c = (int(v) for v in b[: 2 * w].view(np.uint32 if w == 4 else np.uint64))
        at = 2 * w + r * c
        if at + HEAD_BYTES <= b.size and bytes(b[at : at + len(MAGIC)]) == MAGIC:
            return r, c, at, w
    raise IndexFormatError(f"{source}: no USearch head after the vector matrix (truncated or foreign)")


def built(
    rows: NDArray[np.float32],
    ids: NDArray[np.int64],
    dtype: str,
    *,
    connectivity: int,
    expansion_add: int,
    threads: int,
    progress: Callable[[int, int], object] | None = None,
    seed: int = 0,
) -> NDArray[np.uint8]:
    """The bytes of a saved USearch cosine index over `rows` (float32, normalised) keyed by `ids`, stored as
    dtype ("f32", "f16", "i8"), its graph built by duorank's kernel (kernels/hnsw_build.py: FAISS's
    variant of HNSW, on int8 codes, in parallel batches) instead of by USearch. USearch reads it back
    (Index.restore) as if it had built it: head and graph header come from an empty index it saved."""
    from usearch.index import Index

    from duorank import kernels

    n, dim = rows.shape
    m = connectivity
    saved = Index(ndim=dim, metric="cos", dtype=dtype, connectivity=m).save()
    assert saved is not None  # save() without a path returns the bytes
    empty = np.frombuffer(saved, np.uint8)
    _, _, at, width = _matrix(empty, "usearch template")
    head = empty[at : at + HEAD_BYTES].copy()
    m0 = int(empty[at + HEAD_BYTES : at + HEAD_BYTES + GRAPH_HEADER_BYTES].view(np.uint64)[2])
    head[17:33].view(np.uint64)[:] = (n, 0)  # count_present, count_deleted
    codes = np.empty((n, dim), np.int8)
    scales = np.empty(n, np.float32)
    kernels.quantize_rows_i8(np.ascontiguousarray(rows, dtype=np.float32), codes, scales)
    rng = np.random.default_rng(seed)
    levels = np.minimum(np.floor(-np.log(1.0 - rng.random(n)) / np.log(m)), 30).astype(np.int16)
    perm = rng.permutation(n)
    order = perm[np.argsort(-levels[perm], kind="stable")].astype(np.int64)  # highest level first
    up_row = np.zeros(n, np.int64)
    np.cumsum(levels[:-1], dtype=np.int64, out=up_row[1:])
    n_up = int(levels.sum(dtype=np.int64))
    nbr0 = np.zeros((n, m0), np.int32)
    cnt0 = np.zeros(n, np.int32)
    nbr_up = np.zeros((n_up, m), np.int32)
    cnt_up = np.zeros(n_up, np.int32)
    sim0 = np.zeros((n, m0), np.float32)  # each neighbour's similarity, needed only while building
    sim_up = np.zeros((n_up, m), np.float32)
    closed = np.zeros(n + n_up, np.uint8)  # which lists the heuristic closed (see kernels/hnsw_build.py)
    step = max(1, min(n // 20, 200_000))
    done = min(1, n)
    graph = (nbr0, sim0, cnt0, up_row, nbr_up, sim_up, cnt_up)
    while done < n:
        stop = min(n, done + step)
        kernels.hnsw_build(codes, scales, levels, order, done, stop, expansion_add, *graph, closed, threads)
        done = stop
        if progress is not None:
            progress(done, n)
    stored: NDArray[np.generic] = (
        codes if dtype == "i8" else rows.astype(np.float16) if dtype == "f16" else rows
    )
    entry = int(order[0]) if n else 0
    graph_header = np.array([n, m, m0, int(levels[entry]) if n else 2**64 - 1, entry], np.uint64)
    tape_at = 2 * width + n * dim * stored.itemsize + HEAD_BYTES + GRAPH_HEADER_BYTES
    body = tape_at + 2 * n
    out = np.zeros(body + n * (10 + 4 * (1 + m0)) + n_up * 4 * (1 + m), np.uint8)
    dims = np.array([n, dim * stored.itemsize], np.uint32 if width == 4 else np.uint64)
    out[: 2 * width] = dims.view(np.uint8)
    at = 2 * width + n * dim * stored.itemsize
    out[2 * width : at] = np.ascontiguousarray(stored).reshape(-1).view(np.uint8)
    out[at : at + HEAD_BYTES] = head
    out[at + HEAD_BYTES : tape_at] = graph_header.view(np.uint8)
    out[tape_at:body] = levels.view(np.uint8)
    end = kernels.hnsw_tape(ids.astype(np.uint64), levels, nbr0, cnt0, up_row, nbr_up, cnt_up, out, body)
    if end != out.size:
        raise AssertionError(f"USearch tape written to byte {end} of {out.size}")
    return out


def retyped(
    data: NDArray[np.uint8], dim: int, ids: NDArray[np.int64], rows: NDArray[np.float32], dtype: str
) -> NDArray[np.uint8]:
    """The saved USearch index `data` with its stored vectors replaced by `rows` (float32, the row of each
    id in `ids`, which must name every node) held as dtype "f32" or "f16": the same graph, read by USearch
    as an index of that dtype. What lets a graph built on int8 codes serve float rows."""
    scalar, np_type = {"f32": (11, np.float32), "f16": (12, np.float16)}[dtype]
    g = UsearchGraph(data, dim, source="retyped")
    n, _, head, width = _matrix(data, "retyped")
    order = np.argsort(ids, kind="stable")
    at = order[np.searchsorted(ids, g.keys, sorter=order)]
    if n != ids.size or not np.array_equal(ids[at], g.keys):
        raise IndexFormatError("retyped: the ids do not name the graph's nodes one for one")
    stored = np.ascontiguousarray(rows[at], dtype=np_type)
    cols = dim * stored.itemsize
    dims = np.array([n, cols], np.uint32 if width == 4 else np.uint64).view(np.uint8)
    out = np.concatenate([dims, stored.reshape(-1).view(np.uint8), data[head:]])
    out[2 * width + n * cols + 14] = scalar  # the head's scalar kind (after magic and version)
    return out


class UsearchGraph:
    """search(queries, k, ef, slots=None) -> (ids, scores) over a saved USearch cosine index."""

    def __init__(self, data: NDArray[np.uint8], dim: int, *, source: str) -> None:
        from duorank import kernels

        self._kernels = kernels
        self.data = data  # keeps the mapped file or the buffer alive: self.x is a view into it
        b = data
        rows, cols, head, width = _matrix(b, source)
        metric, scalar, key_kind, slot_kind = (int(v) for v in b[head + 13 : head + 17])
        dtype = SCALARS.get(scalar)
        if metric != METRIC_COS or dtype is None or key_kind != KEY_U64 or slot_kind != SLOT_U32:
            raise IndexFormatError(
                f"{source}: USearch kinds (metric, scalar, key, slot) = "
                f"{(metric, scalar, key_kind, slot_kind)}, expected cosine, scalars {sorted(SCALARS)}, "
                "u64 keys and u32 slots"
            )
        itemsize = np.dtype(dtype).itemsize
        if cols != dim * itemsize:
            raise IndexFormatError(f"{source}: {cols} bytes a vector, expected {dim} x {itemsize}")
        core = head + HEAD_BYTES
        if core + GRAPH_HEADER_BYTES > b.size:
            raise IndexFormatError(f"{source}: truncated in the graph header")
        size, m, m0, top, entry = (int(v) for v in b[core : core + GRAPH_HEADER_BYTES].view(np.uint64))
        lv = core + GRAPH_HEADER_BYTES
        if size != rows or lv + 2 * size > b.size or not (0 <= entry < max(size, 1)) or m < 1 or m0 < 1:
            raise IndexFormatError(
                f"{source}: graph header (size {size}, connectivity {m}/{m0}, entry {entry}) does not match "
                f"its {rows} vectors or the file size {b.size}"
            )
        levels = np.ascontiguousarray(b[lv : lv + 2 * size].view(np.int16))
        if size and (levels.min() < 0 or levels.max() > top):
            raise IndexFormatError(f"{source}: node levels outside 0..{top}")
        self.x = b[2 * width : head].view(dtype).reshape(rows, dim)
        self.nbr0 = np.empty((size, m0), np.int32)
        self.cnt0 = np.empty(size, np.int32)
        self.up_row = np.empty(size, np.int64)
        n_up = int(levels.sum(dtype=np.int64))
        self.nbr_up = np.empty((n_up, m), np.int32)
        self.cnt_up = np.empty(n_up, np.int32)
        keys = np.empty(size, np.uint64)
        end = kernels.hnsw_parse(
            np.ascontiguousarray(b),
            lv + 2 * size,
            levels,
            self.nbr0,
            self.cnt0,
            self.up_row,
            self.nbr_up,
            self.cnt_up,
            keys,
        )
        if end < 0 or (size and (self.nbr0.max(initial=0) >= size or self.nbr_up.max(initial=0) >= size)):
            raise IndexFormatError(f"{source}: the node tape is truncated or names slots beyond {size}")
        self.keys = keys.view(np.int64)
        self.live = (self.keys != FREE_KEY).view(np.uint8)
        self.order = np.argsort(self.keys, kind="stable")
        self.entry = entry
        self.top = top
        if dtype is np.int8:  # cosine of the codes: divide by their norm
            norms = np.sqrt(np.einsum("ij,ij->i", self.x, self.x, dtype=np.float32))
            self.scales = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        else:
            self.scales = np.zeros(0, np.float32)
        # what the kernel reads, in its order (kernels/hnsw.py)
        self.arrays = (
            self.x,
            self.scales,
            self.nbr0,
            self.cnt0,
            self.up_row,
            self.nbr_up,
            self.cnt_up,
            self.keys,
        )
        # visit tags, one byte a node (hnswlib: two, FAISS: one): read at random by every walk
        self._scratch: dict[int, tuple[NDArray[np.uint8], NDArray[np.uint8]]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self.live.sum())

    def rows(self, slots: NDArray[np.int64]) -> NDArray[np.float32]:
        """The stored vectors of these slots as float32 (f16 bits decoded, i8 codes times their scale)."""
        x = self.x[slots]
        out = (x.view(np.float16) if x.dtype == np.uint16 else x).astype(np.float32)
        if self.scales.size:
            out *= self.scales[slots, None]
        return out

    def slots_of(self, ids: NDArray[np.int64]) -> NDArray[np.int64]:
        """Slots of the live nodes among ids (unknown and removed ids are dropped)."""
        pos = np.searchsorted(self.keys, ids, sorter=self.order)
        pos = np.minimum(pos, max(self.keys.size - 1, 0))
        slots = self.order[pos] if self.keys.size else np.zeros(0, np.int64)
        hit = (self.keys[slots] == ids) & (ids != FREE_KEY) if self.keys.size else np.zeros(0, bool)
        return slots[hit]

    def search(
        self,
        queries: NDArray[np.float32],
        k: int,
        ef: int,
        *,
        slots: NDArray[np.int64] | None = None,
        threads: int = 1,
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Top-k (ids, cosine scores) per row of float32 queries, best first; (-1, -inf) pads rows where
        fewer than k allowed nodes were reached. ef (raised to k) is the beam width on level 0; `slots` (from
        slots_of) restricts the results to those nodes."""
        nq = queries.shape[0]
        ids = np.full((nq, k), -1, np.int64)
        scores = np.full((nq, k), -np.inf, np.float32)
        if nq == 0 or self.keys.size == 0:
            return ids, scores
        if slots is None:
            mask = self.live
        else:
            mask = np.zeros(self.keys.size, np.uint8)
            mask[slots] = 1
        nt = max(1, min(threads, nq))
        q = np.ascontiguousarray(queries, dtype=np.float32)
        with self._lock:  # the visit tags are per graph, not per call
            seen, tags = self._visits(nt)
            fn = self._kernels.hnsw_search if nt == 1 else self._kernels.hnsw_search_parallel
            fn(q, self.arrays, self.entry, self.top, mask, max(ef, k), seen, tags, ids, scores)
        return ids, scores

    def _visits(self, nt: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        got = self._scratch.get(nt)
        if got is None:
            got = self._scratch[nt] = (np.zeros((nt, self.keys.size), np.uint8), np.zeros(nt, np.uint8))
        return got
