"""Boundary checks shared by the indexes: convert once, or raise an error that names the value."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray


def as_vectors(x: ArrayLike, dim: int, name: str = "vectors", *, copy: bool = False) -> NDArray[np.float32]:
    """A C-contiguous float32 (n, dim) view of x, or a private copy (copy=True or conversion needed).

    A 1-D x of length dim is one row.
    """
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim == 1 and arr.shape[0] == dim:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}), got {arr.shape}")
    out = (
        np.array(arr, dtype=np.float32, order="C", copy=True)
        if copy
        else np.ascontiguousarray(arr, np.float32)
    )
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"{name} has non-finite values (NaN or inf) in {rows.size} row(s), first rows {rows[:5].tolist()}"
        )
    return out


def as_ids(ids: ArrayLike, name: str = "ids") -> NDArray[np.int64]:
    """A 1-D int64 array of ids >= 0 with no duplicates."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    out = arr.astype(np.int64, copy=False)
    if out.size and out.min() < 0:
        raise ValueError(f"{name} must be >= 0 (-1 marks empty result slots), got {int(out.min())}")
    uniq, counts = np.unique(out, return_counts=True)
    if uniq.size != out.size:
        raise ValueError(f"{name} has duplicates: {uniq[counts > 1][:10].tolist()}")
    return out


def as_k(k: object) -> int:
    """k as a positive int."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def check_texts(texts: Sequence[str], name: str = "texts", *, allow_empty: bool = False) -> list[str]:
    """texts as a list of str; a single str (a common slip), a non-str item, or (unless allowed) no text at
    all raises an error naming the value."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of str, got a single {type(texts).__name__} (wrap it in a list)"
        )
    out = list(texts)
    if not out and not allow_empty:
        raise ValueError(f"{name} is empty; pass at least one text")
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] is {type(t).__name__}, expected str")
    return out
