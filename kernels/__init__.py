"""Numba kernels: pure functions over C-contiguous arrays with preallocated outputs; no validation here.

Importing this module loads (or compiles, first time) every kernel; the engine imports it lazily.

Thread pool: Numba's. If Numba picks its OpenMP layer, OpenMP's default active spin-wait would keep a
core busy after each parallel kernel and starve BLAS or the next call on small machines (PERF.md), so
OMP_WAIT_POLICY defaults to PASSIVE here unless the caller set it (it takes effect only if OpenMP was
not loaded yet by another library).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .dot import decode_rows, dot_gather
from .normalize import normalize_rows
from .quantize import quantize_rows_i8
from .topk import (
    topk_merge,
    topk_push_dot,
    topk_push_scores,
    topk_reset,
    topk_sort,
)

__all__ = [
    "decode_rows",
    "dot_gather",
    "normalize_rows",
    "quantize_rows_i8",
    "topk_merge",
    "topk_push_dot",
    "topk_push_scores",
    "topk_reset",
    "topk_sort",
]
