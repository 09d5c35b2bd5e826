"""Row L2 normalisation in place."""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit("void(f4[:, ::1], f4[::1])", cache=True, nogil=True)
def normalize_rows(x, norms):  # type: ignore[no-untyped-def]
    """x[r] /= ||x[r]||_2 in place (norm accumulated in float64); norms[r] = ||x[r]||; zero rows stay zero."""
    for r in range(x.shape[0]):
        acc = 0.0
        for i in range(x.shape[1]):
            v = np.float64(x[r, i])
            acc += v * v
        nrm = np.sqrt(acc)
        norms[r] = nrm
        if nrm > 0.0:
            inv = 1.0 / nrm
            for i in range(x.shape[1]):
                x[r, i] = np.float32(x[r, i] * inv)
