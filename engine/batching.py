"""Token-budget batching: tokenise once, sort by length, cut batches so rows x padded length <= budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray


def width(longest: int, multiple: int = 1, cap: int | None = None) -> int:
    """The padded length of a batch whose longest row has `longest` tokens: rounded up to `multiple`
    (fewer distinct shapes, which a GPU session pays for the first time it meets each), never past
    `cap` (the model's max_length) unless the row itself is longer."""
    w = -(-max(int(longest), 1) // multiple) * multiple
    return w if cap is None else max(min(w, cap), int(longest))


def plan(
    lengths: NDArray[np.int64], budget: int, max_batch: int = 512, multiple: int = 1, cap: int | None = None
) -> list[NDArray[np.int64]]:
    """Batches of positions into `lengths`, longest first, each with len(batch) * padded length <= budget.

    A sequence longer than the budget gets a batch of its own. Order inside a batch is by length, so each
    batch pads to its own longest sequence (rounded up to `multiple`, see `width`) and wastes little.
    """
    if budget < 1 or max_batch < 1 or multiple < 1:
        raise ValueError(f"budget {budget}, max_batch {max_batch} and multiple {multiple} must be >= 1")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches = []
    start = 0
    n = len(order)
    while start < n:
        padded = width(int(lengths[order[start]]), multiple, cap)
        size = min(max(budget // padded, 1), max_batch, n - start)
        batches.append(order[start : start + size])
        start += size
    return batches


def pad(
    encodings: Sequence[Any],
    rows: NDArray[np.int64],
    names: Sequence[str],
    multiple: int = 1,
    cap: int | None = None,
) -> dict[str, NDArray[np.int64]]:
    """Right-padded int64 input arrays (ids, attention mask, token types) for the chosen encodings, as
    wide as `width` of their longest."""
    w = width(max(len(encodings[i].ids) for i in rows), multiple, cap)
    ids = np.zeros((len(rows), w), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for r, i in enumerate(rows):
        e = encodings[i]
        n = len(e.ids)
        ids[r, :n] = e.ids
        mask[r, :n] = e.attention_mask
        types[r, :n] = e.type_ids
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: arrays[name] for name in names}
