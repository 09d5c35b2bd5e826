"""Symmetric int8 quantisation with one scale per row."""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit("void(f4[:, ::1], i1[:, ::1], f4[::1])", cache=True, nogil=True)
def quantize_rows_i8(x, codes, scales):  # type: ignore[no-untyped-def]
    """codes[r] = round(x[r] / scales[r]) with scales[r] = max|x[r]| / 127, so x[r] ~ codes[r] * scales[r]."""
    for r in range(x.shape[0]):
        m = np.float32(0.0)
        for i in range(x.shape[1]):
            m = max(m, abs(x[r, i]))
        scale = m / np.float32(127.0)
        scales[r] = scale
        inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
        for i in range(x.shape[1]):
            codes[r, i] = np.int8(min(127.0, max(-127.0, np.rint(x[r, i] * inv))))
