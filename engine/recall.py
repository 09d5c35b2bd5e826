"""The first stage: each query's top-k candidates by dense search, BM25, or both fused ("hybrid").

`recall` is the one implementation: `Engine.search` calls it over a collection, `duorank eval` and
training's candidate lists over a labelled corpus (`duorank.eval.first_stage`), so the lists they measure
are the lists a user's search reranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .collection import Found
from .hits import Hits
from .lexical import rrf, weighted

RECALLS = ("dense", "bm25", "hybrid")
FUSIONS = ("rrf", "weighted")

H = TypeVar("H", bound=Hits)


def check_recall(recall: str, fusion: str = "rrf") -> None:
    """ValueError naming the value unless `recall` and `fusion` are known."""
    if recall not in RECALLS:
        raise ValueError(f"recall {recall!r}, expected one of {RECALLS}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion {fusion!r}, expected one of {FUSIONS}")


def recall(
    how: str,
    k: int,
    *,
    dense: Callable[[int], H] | None = None,
    lexical: Callable[[int], H] | None = None,
    fusion: str = "rrf",
) -> H:
    """The top-k candidates of recall `how` from two sources over the same documents: `dense(k)` and
    `lexical(k)` return each source's top k (Hits, or Found over a collection). "hybrid" fuses both lists
    by reciprocal rank (fusion="rrf", c = 60) or by min-max normalised scores ("weighted"); ties go to the
    smaller id. Over a collection the fused list is a Found whose documents are read when first used."""
    check_recall(how, fusion)
    if how in ("dense", "hybrid") and dense is None:
        raise ValueError(f"recall {how!r} needs a dense source")
    if how in ("bm25", "hybrid") and lexical is None:
        raise ValueError(f"recall {how!r} needs a lexical (BM25) source")
    if how == "dense":
        assert dense is not None
        return dense(k)
    if how == "bm25":
        assert lexical is not None
        return lexical(k)
    assert dense is not None and lexical is not None
    parts = [dense(k), lexical(k)]
    fused = (rrf if fusion == "rrf" else weighted)(parts, k)
    first = parts[0]
    if isinstance(first, Found):  # over a collection: the fused list reads its documents once, when used
        return first.over(fused)  # type: ignore[return-value]
    return fused  # type: ignore[return-value]
