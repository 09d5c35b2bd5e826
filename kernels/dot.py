"""Dot products of float32 queries with stored rows (f32, f16 bits or int8 codes times a per-row scale)."""

from __future__ import annotations

import numba as nb
import numpy as np

from .convert import as_f32

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


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def row_dot4(q, x, a, b, c, d, scales):  # type: ignore[no-untyped-def]
    """row_dot of q with rows a, b, c, d in one pass: four rows' loads in flight at once."""
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    for i in range(q.shape[0]):
        v = q[i]
        s0 += v * as_f32(x[a, i])
        s1 += v * as_f32(x[b, i])
        s2 += v * as_f32(x[c, i])
        s3 += v * as_f32(x[d, i])
    if scales.shape[0] > 0:
        s0 *= scales[a]
        s1 *= scales[b]
        s2 *= scales[c]
        s3 *= scales[d]
    return s0, s1, s2, s3


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH)
def dot_4q(queries, q, x, r):  # type: ignore[no-untyped-def]
    """Dots of queries q..q+3 with row r: each loaded row element feeds four FMAs (~2x one at a time)."""
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    for i in range(x.shape[1]):
        v = as_f32(x[r, i])
        s0 += queries[q, i] * v
        s1 += queries[q + 1, i] * v
        s2 += queries[q + 2, i] * v
        s3 += queries[q + 3, i] * v
    return s0, s1, s2, s3


_GATHER = "void(f4[:, ::1], {x}, f4[::1], i8[:, ::1], f4[:, ::1])"
_DECODE = "void({x}, f4[::1], i8, f4[:, ::1])"


@nb.njit([_DECODE.format(x=x) for x in ("u2[:, ::1]", "i1[:, ::1]")], cache=True, nogil=True)
def decode_rows(codes, scales, row0, out):  # type: ignore[no-untyped-def]
    """out[j] = float32(codes[row0 + j]) (times scales[row0 + j] if non-empty): a block for BLAS scoring."""
    has_scales = scales.shape[0] > 0
    for j in range(out.shape[0]):
        r = row0 + j
        c = scales[r] if has_scales else np.float32(1.0)
        for i in range(out.shape[1]):
            out[j, i] = as_f32(codes[r, i]) * c


@nb.njit([_GATHER.format(x=x) for x in ("f4[:, ::1]", "u2[:, ::1]", "i1[:, ::1]")], cache=True, nogil=True)
def dot_gather(queries, corpus, scales, rows, out):  # type: ignore[no-untyped-def]
    """out[q, j] = <queries[q], corpus[rows[q, j]]> (times scales[row] if non-empty); -inf where rows < 0."""
    for q in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            r = rows[q, j]
            out[q, j] = row_dot(queries[q], corpus, r, scales) if r >= 0 else -np.inf
