"""Search several indexes as one: each shard returns its top-k, the kernels merge them into one top-k.

A shard is any index with `search(queries, k, allowed=None) -> Hits` (ExactIndex, HnswIndex, or a remote
one behind the same call), holding ids no other shard holds. This is the seam for scaling out.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .hits import Hits
from .validate import as_k

# A merged result over collections numbers documents shard * SHARD_STRIDE + internal id.
SHARD_STRIDE = 1 << 40


def search_shards(
    shards: Sequence[Any],
    queries: ArrayLike,
    k: int = 10,
    *,
    allowed: ArrayLike | None = None,
    where: Mapping[str, Any] | None = None,
    strategy: str = "auto",
) -> Any:
    """The k best (id, score) per query over every shard; ties go to the smaller id, as in one index.

    Shards are indexes holding disjoint ids (returns Hits; an id returned by two shards is a ValueError,
    since merging would double-count it), or collections (returns Found, filtered by `where`, with ids
    numbered shard * SHARD_STRIDE + the shard's internal id, and each document's external id and text;
    `strategy` goes to each Collection.search, so "exact" makes the merge equal one exact search).
    """
    from .collection import Collection

    k = as_k(k)
    if not shards:
        raise ValueError("no shards to search")
    if all(isinstance(s, Collection) for s in shards):
        if allowed is not None:
            raise ValueError("collections filter with where=..., not allowed= (internal ids are per shard)")
        return _search_collections(shards, queries, k, where, strategy)
    if any(isinstance(s, Collection) for s in shards) or where is not None:
        raise ValueError("shards are all collections (where= filters) or all indexes (allowed= filters)")
    if strategy != "auto":
        raise ValueError(f"strategy={strategy!r} applies to collections; indexes search as they are built")
    K = importlib.import_module("duorank.kernels")
    if allowed is None:
        results = [s.search(queries, k) for s in shards]
    else:  # each shard gets the allowed ids it holds (an index refuses ids it does not know)
        allow = np.unique(np.asarray(allowed, dtype=np.int64))
        results = [s.search(queries, k, allowed=allow[_holds(s, allow)]) for s in shards]
    n = results[0].ids.shape[0]
    ids = np.empty((n, k), dtype=np.int64)
    scores = np.empty((n, k), dtype=np.float32)
    K.topk_reset(ids, scores)
    for r in results:
        K.topk_merge(
            np.ascontiguousarray(r.ids), np.ascontiguousarray(r.scores, dtype=np.float32), ids, scores
        )
    K.topk_sort(ids, scores)
    every = np.concatenate([r.ids for r in results], axis=1)
    for q in range(n):
        values, counts = np.unique(every[q][every[q] >= 0], return_counts=True)
        if (counts > 1).any():
            dup = values[counts > 1]
            raise ValueError(f"shards overlap: id(s) {dup[:10].tolist()} come from more than one shard")
    return Hits(ids, scores)


def _search_collections(shards: Sequence[Any], queries: ArrayLike, k: int, where: Any, strategy: str) -> Any:
    from .collection import Found

    K = importlib.import_module("duorank.kernels")
    results = [c.search(queries, k, where=where, strategy=strategy) for c in shards]
    n = results[0].ids.shape[0]
    ids = np.empty((n, k), dtype=np.int64)
    scores = np.empty((n, k), dtype=np.float32)
    K.topk_reset(ids, scores)
    for s, r in enumerate(results):
        K.topk_merge(np.where(r.ids >= 0, r.ids + s * SHARD_STRIDE, -1), r.scores, ids, scores)
    K.topk_sort(ids, scores)
    ext: list[list[str]] = []
    texts: list[list[str]] = []
    meta: list[list[dict[str, Any]]] = []
    for q in range(n):
        ext.append([])
        texts.append([])
        meta.append([])
        for gid in ids[q][ids[q] >= 0].tolist():
            r = results[gid // SHARD_STRIDE]
            j = int(np.flatnonzero(r.ids[q] == gid % SHARD_STRIDE)[0])
            ext[q].append(r.external_ids[q][j])
            texts[q].append(r.texts[q][j])
            meta[q].append(r.metadata[q][j])
    strategy = "+".join(dict.fromkeys(r.strategy for r in results))
    return Found(ids, scores, ext, texts, meta, strategy)


def _holds(shard: Any, ids: np.ndarray) -> np.ndarray:
    if hasattr(shard, "contains"):
        return np.asarray(shard.contains(ids), dtype=bool)
    return np.isin(ids, shard.ids)
