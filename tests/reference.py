"""float64 numpy reference for top-k search: the truth the kernels are checked against."""

from __future__ import annotations

import numpy as np


def topk_reference(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    ids: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64[q, k], scores float64[q, k]): score descending, ties by smaller id, (-1, -inf) padding."""
    n = corpus.shape[0]
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    keep = np.ones(n, bool) if allowed is None else np.isin(ids, allowed)
    s = queries.astype(np.float64) @ corpus.astype(np.float64).T
    out_ids = np.full((queries.shape[0], k), -1, np.int64)
    out_s = np.full((queries.shape[0], k), -np.inf)
    cand = np.flatnonzero(keep)
    for qi in range(queries.shape[0]):
        order = np.lexsort((ids[cand], -s[qi, cand]))[:k]
        out_ids[qi, : order.size] = ids[cand][order]
        out_s[qi, : order.size] = s[qi, cand][order]
    return out_ids, out_s


def normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)
