"""Search several indexes as one: each shard returns its top-k, the kernels merge them into one top-k.

A shard is any index with `search(queries, k, allowed=None) -> Hits` (ExactIndex, HnswIndex, or a remote
one behind the same call), holding ids no other shard holds. This is the seam for scaling out.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .hits import Hits
from .validate import as_k


def search_shards(
    shards: Sequence[Any], queries: ArrayLike, k: int = 10, *, allowed: ArrayLike | None = None
) -> Hits:
    """The k best (id, score) per query over every shard; ties go to the smaller id, as in one index.

    An id returned by two shards means the shards overlap: ValueError, since merging would double-count it.
    """
    k = as_k(k)
    if not shards:
        raise ValueError("no shards to search")
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


def _holds(shard: Any, ids: np.ndarray) -> np.ndarray:
    if hasattr(shard, "contains"):
        return np.asarray(shard.contains(ids), dtype=bool)
    return np.isin(ids, shard.ids)
