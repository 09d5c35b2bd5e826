"""trec_eval ranks of judged documents, read straight out of Python dicts through CPython's C API.

A run {doc_id: score} holds its scores as Python objects; reading 10 million of them through the
interpreter (`np.fromiter`) costs about 40 ns each, more than every metric together. This kernel walks
the dicts itself with the stable C API functions CPython exports (`PyDict_Next`, `PyDict_GetItem`,
`PyFloat_AsDouble`, `PyObject_RichCompareBool`, linked by name as Numba links its own C-API calls), at
about 10 ns a score, and ranks only the judged documents.

Contract: the caller holds the GIL (the kernel is never nogil), passes `id()` of real `dict` objects and keeps
them alive; scores are numbers whose `__float__` runs no Python code that mutates
the run (float, int, numpy scalars), keys compare without mutating it (str). No validation beyond that:
a score that is not a number, a bool, a non-finite score or keys that do not compare stop the kernel with
a negative status and the caller finds and names the bad value.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import types
from numba.core.types import ExternalFunction

_P = types.intp
_dict_next = ExternalFunction("PyDict_Next", types.int32(_P, _P, _P, _P))
_dict_get = ExternalFunction("PyDict_GetItem", _P(_P, _P))
_as_double = ExternalFunction("PyFloat_AsDouble", types.float64(_P))
_err_occurred = ExternalFunction("PyErr_Occurred", _P())
_err_clear = ExternalFunction("PyErr_Clear", types.void())
_greater = ExternalFunction("PyObject_RichCompareBool", types.int32(_P, _P, types.int32))
_PY_GT = 4

BAD_SCORE = -1  # a score that is not a finite number, or a bool
BAD_KEYS = -2  # two document ids of one query that do not compare with >


@nb.njit(
    "i8(intp[::1], intp[::1], intp[::1], i8[::1], i8[::1], f8[::1], intp[::1])",
    cache=True,
)
def judged_ranks(runs, qrels, bools, ranks, n_ret, scores, keys):  # type: ignore[no-untyped-def]
    """For query q, run dict `runs[q]` and qrels dict `qrels[q]`: ranks[j] = the 0-based trec_eval rank
    (score descending, equal scores by document id descending) of the j-th judged document in the qrels'
    iteration order, all queries' judged documents flat, or -1 when the run lacks it; n_ret[q] = the
    run's length. `bools` are the addresses of the bool singletons (True, False, numpy's), refused as
    scores. `scores`/`keys` are scratch at least as long as the longest run.

    Returns 0, or BAD_SCORE / BAD_KEYS with the failing query in n_ret[0] (the error indicator cleared).
    """
    st = np.zeros(3, dtype=np.intp)  # PyDict_Next's position, key, value
    pos = st.ctypes.data
    w = st.itemsize
    j = 0
    for q in range(runs.shape[0]):
        n = 0
        st[0] = 0
        while _dict_next(runs[q], pos, pos + w, pos + 2 * w):
            v = st[2]
            s = _as_double(v)
            if s == -1.0 and _err_occurred() != 0:
                _err_clear()
                n_ret[0] = q
                return BAD_SCORE
            if not np.isfinite(s) or v == bools[0] or v == bools[1] or v == bools[2] or v == bools[3]:
                n_ret[0] = q
                return BAD_SCORE
            scores[n] = s
            keys[n] = st[1]
            n += 1
        n_ret[q] = n
        st[0] = 0
        while _dict_next(qrels[q], pos, pos + w, pos + 2 * w):
            doc = st[1]
            v = _dict_get(runs[q], doc)
            if v == 0:
                ranks[j] = -1
            else:
                s = _as_double(v)
                above = 0
                for i in range(n):
                    if scores[i] > s:
                        above += 1
                    elif scores[i] == s:
                        c = _greater(keys[i], doc, _PY_GT)
                        if c < 0:
                            _err_clear()
                            n_ret[0] = q
                            return BAD_KEYS
                        above += c
                ranks[j] = above
            j += 1
    return 0
