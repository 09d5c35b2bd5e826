"""Numba kernels: pure functions over C-contiguous arrays with preallocated outputs; no validation here.

Importing this module loads (or compiles, first time) every kernel; the engine imports it lazily.
"""

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
