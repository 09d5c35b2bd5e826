"""Dot products of float32 queries with stored rows (f32, f16 bits or int8 codes times a per-row scale)."""

from __future__ import annotations

import numba as nb
import numpy as np

from ._convert import as_f32

# Reassociation lets LLVM vectorise the reduction; no flag assumes finite values (-inf is a sentinel here).
FASTMATH = {"reassoc", "contract"}


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def row_dot(q, x, r, scales):  # type: ignore[no-untyped-def]
    """sum_i q[i] * x[r, i], times scales[r] when scales is non-empty (int8 codes)."""
    s = np.float32(0.0)
    for i in range(q.shape[0]):
        s += q[i] * as_f32(x[r, i])
    if scales.shape[0] > 0:
        s *= scales[r]
    return s


@nb.njit(cache=True, nogil=True)
def _dot_gather(queries, x, scales, rows, out):  # type: ignore[no-untyped-def]
    for q in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            r = rows[q, j]
            out[q, j] = row_dot(queries[q], x, r, scales) if r >= 0 else -np.inf


_GATHER = "void(f4[:, ::1], {x}, f4[::1], i8[:, ::1], f4[:, ::1])"


@nb.njit([_GATHER.format(x=x) for x in ("f4[:, ::1]", "u2[:, ::1]", "i1[:, ::1]")], cache=True, nogil=True)
def dot_gather(queries, corpus, scales, rows, out):  # type: ignore[no-untyped-def]
    """out[q, j] = <queries[q], corpus[rows[q, j]]> (times scales[row] if non-empty); -inf where rows < 0."""
    for q in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            r = rows[q, j]
            out[q, j] = row_dot(queries[q], corpus, r, scales) if r >= 0 else -np.inf
