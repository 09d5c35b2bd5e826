"""Sentence pairs scored by the embedder (the teacher), for reranker training that keeps graded similarity.

A cross-encoder trained only on relevance (a claim against the abstracts that support it) forgets how
similar two ordinary sentences are: the shipped one reaches Spearman 64 on STS Benchmark where the
all-MiniLM-L6-v2 embedder it starts from reaches 82, so blending it in costs similarity tasks a little.
Distillation mixes in pairs of sentences from the training corpora with the embedder's cosine as the
target (training loss: 1 - Pearson correlation of the cross-encoder's logits with the cosines over a
batch), so the cross-encoder learns the embedder's notion of similarity next to relevance.

Pairs: anchors are sentences drawn from the corpora (and training queries); each gets candidates from its
exact nearest neighbours at graded ranks (1, 2, 4, ... 64: very to loosely similar) and one random
sentence, so the targets span the whole range of similarity. A seeded tenth of the anchors is the dev set.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

log = logging.getLogger("duorank.models_export.distill")

RANKS = (1, 2, 4, 8, 16, 32, 64)  # neighbour ranks (1 = nearest other sentence); plus one random
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
_MIN_WORDS, _MAX_WORDS = 5, 40


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    teacher: float  # the embedder's cosine of a and b


def sentences(texts: Sequence[str]) -> list[str]:
    """Distinct sentences of `texts` with 5-40 words, in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        for s in _SENTENCE.split(" ".join(text.split())):
            if _MIN_WORDS <= len(s.split()) <= _MAX_WORDS:
                seen.setdefault(s)
    return list(seen)


def teacher_pairs(
    texts: Sequence[str], pairs: int, *, seed: int = 0, embedder: Any = None
) -> tuple[list[Pair], list[Pair]]:
    """(train, dev) pairs: about `pairs` in all, 8 per anchor, from the sentences of `texts`, scored by
    `embedder` (default: the default embedder). Anchors are split 9:1 into train and dev."""
    if pairs < 8:
        raise ValueError(f"distill pairs {pairs}: expected >= 8 (8 per anchor sentence)")
    pool = sentences(texts)
    anchors = pairs // (len(RANKS) + 1)
    rng = random.Random(seed)
    rng.shuffle(pool)
    pool = pool[: max(20 * anchors, 4 * max(RANKS))]  # enough for graded neighbours, bounded cost
    if len(pool) <= max(RANKS) + 1:
        raise ValueError(f"{len(pool)} usable sentences: need more than {max(RANKS) + 1} for distillation")
    from duorank import ExactIndex
    from duorank.models import Embedder

    emb = embedder if embedder is not None else Embedder.load("default")
    log.info("distillation: embedding %d sentences for %d anchors", len(pool), anchors)
    vecs = emb.encode(pool, kind="document", progress=True)
    index = ExactIndex(dim=vecs.shape[1])
    index.add(vecs)
    chosen = rng.sample(range(len(pool)), min(anchors, len(pool)))
    hits = index.search(vecs[chosen], max(RANKS) + 1)
    out: list[list[Pair]] = []
    for a, row in zip(chosen, hits.ids):
        others = [int(i) for i in row if i != a]
        picks = [others[r - 1] for r in RANKS]
        while (j := rng.randrange(len(pool))) == a or j in picks:
            pass
        picks.append(j)
        out.append([Pair(pool[a], pool[b], float(vecs[a] @ vecs[b])) for b in picks])
    n_dev = max(1, len(out) // 10)
    dev, train = out[:n_dev], out[n_dev:]
    return [p for g in train for p in g], [p for g in dev for p in g]


def correlations(student: ArrayLike, teacher: ArrayLike) -> dict[str, float]:
    """Pearson and Spearman correlation of two score lists (no ties assumed broken: ranks by order)."""
    s = np.asarray(student, dtype=np.float64)
    t = np.asarray(teacher, dtype=np.float64)
    rank = lambda x: np.argsort(np.argsort(x)).astype(np.float64)  # noqa: E731
    return {
        "pearson": float(np.corrcoef(s, t)[0, 1]),
        "spearman": float(np.corrcoef(rank(s), rank(t))[0, 1]),
    }
