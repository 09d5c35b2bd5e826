"""Numba kernels: pure functions over C-contiguous arrays with preallocated outputs; no validation here.

Importing this module loads (or compiles, first time) every kernel; the engine imports it lazily.

Thread pool: Numba's. If Numba picks its OpenMP layer, OpenMP's default active spin-wait would keep a
core busy after each parallel kernel and starve BLAS or the next call on small machines (docs/search.md,
"Thread pool"), so OMP_WAIT_POLICY defaults to PASSIVE here unless the caller set it (it takes effect only
if OpenMP was not loaded yet by another library). Numba's compiled-kernel cache goes to
$DUORANK_HOME/numba/<this package's import name> unless NUMBA_CACHE_DIR is set (if another library imported
Numba first, its config is reloaded so that the setting still applies).

The import name is part of the path because Numba keys its cache by source file, yet records the module
name inside each entry and re-imports that module to load it: in a source checkout these files are also
importable as a top-level `kernels`, and one process doing that used to leave entries that made every later
`duorank.kernels` import fail with "No module named 'kernels'" (or, from the checkout, load a second copy).
"""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Compiled kernels are cached in $DUORANK_HOME/numba (default ~/.cache/duorank/numba), not in __pycache__
# beside the installed sources: site-packages stays as pip wrote it, and an uninstall leaves nothing behind
# (a leftover duorank/kernels/__pycache__ would become a namespace package shadowing a later install).
os.environ.setdefault(
    "NUMBA_CACHE_DIR",
    os.path.join(
        os.environ.get("DUORANK_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "duorank"),
        "numba",
        __name__,
    ),
)
if "numba" in sys.modules:
    # imported first by another library (bm25s does): its config was read without the line above, and a
    # kernel's cache location is fixed when its module is imported, so without this reload the kernels
    # would cache in __pycache__ beside the installed sources
    from numba.core import config as _numba_config

    _numba_config.reload_config()

from .dot import decode_rows, dot_gather
from .hnsw import hnsw_parse, hnsw_search, hnsw_search_parallel, hnsw_tape
from .hnsw_build import hnsw_build
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
    "hnsw_build",
    "hnsw_parse",
    "hnsw_search",
    "hnsw_search_parallel",
    "hnsw_tape",
    "normalize_rows",
    "quantize_rows_i8",
    "topk_merge",
    "topk_push_dot",
    "topk_push_scores",
    "topk_reset",
    "topk_sort",
]
