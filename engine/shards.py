"""Search several indexes (`search_shards` -> Hits) or collections (`search_collections` -> Found) as one:
each shard returns its top-k, the kernels merge them into one top-k.

A shard is any index with `search(queries, k, allowed=None) -> Hits` (ExactIndex, HnswIndex, or a remote
one behind the same call), holding ids no other shard holds. This is the seam for scaling out.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .collection import Collection, Found
from .hits import Hits
from .validate import as_k

# A merged result over collections numbers documents shard * SHARD_STRIDE + internal id.
SHARD_STRIDE = 1 << 40


def search_shards(
    shards: Sequence[Any], queries: ArrayLike, k: int = 10, *, allowed: ArrayLike | None = None
) -> Hits:
    """The k best (id, score) per query over indexes holding disjoint ids (ExactIndex, HnswIndex, or any
    object with their `search`); ties go to the smaller id, as in one index. An id returned by two shards
    is a ValueError, since merging would double-count it. Collections: `search_collections`."""
    k = as_k(k)
    if not shards:
        raise ValueError("no shards to search")
    if any(isinstance(s, Collection) for s in shards):
        raise TypeError(
            "search_shards takes indexes (ExactIndex, HnswIndex); for collections use "
            "search_collections(collections, queries, k, where=..., strategy=...)"
        )
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


def search_collections(
    collections: Sequence[Any],
    queries: ArrayLike,
    k: int = 10,
    *,
    where: Mapping[str, Any] | None = None,
    strategy: str = "auto",
) -> Found:
    """The k best documents per query over collections holding different documents, as one search: each
    collection returns its top k (filtered by `where`; `strategy` goes to each Collection.search, so
    "exact" makes the merge equal one exact search over all of them), the kernels merge them. Ids are
    numbered collection * SHARD_STRIDE + its internal id; each hit carries its external id and text."""
    k = as_k(k)
    if not collections:
        raise ValueError("no collections to search")
    if not all(isinstance(c, Collection) for c in collections):
        raise TypeError("search_collections takes collections; for indexes use search_shards")
    shards = list(collections)
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
    return Found(ids, scores, strategy, (ext, texts, meta))


def _holds(shard: Any, ids: np.ndarray) -> np.ndarray:
    if hasattr(shard, "contains"):
        return np.asarray(shard.contains(ids), dtype=bool)
    return np.isin(ids, shard.ids)
