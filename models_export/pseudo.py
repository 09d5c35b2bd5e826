"""Pseudo-labelled queries from text every machine has: the installed Python's documentation.

Each item of the `duorank demo` corpus gives one (query, passage) pair: a language-reference topic's
heading is the query for the topic's body; a docstring's summary line is the query for the rest of the
docstring (the summary removed, so the pair is not a copy). Mixed into reranker training, they keep a
model trained on one field (SciFact) from learning only that field.
"""

from __future__ import annotations

import random
import re

from duorank.eval.datasets import Dataset

_MIN_QUERY_WORDS, _MAX_QUERY_WORDS, _MIN_PASSAGE_WORDS = 3, 24, 20


def python_docs_dataset(queries: int, *, seed: int = 0) -> Dataset:
    """A BEIR-style dataset: the whole Python-docs corpus, `queries` seeded pseudo-queries, one relevant
    passage each (grade 1)."""
    if queries < 1:
        raise ValueError(f"queries {queries}: expected >= 1")
    from duorank.demo import corpus

    texts, ids, meta = corpus()
    passages: dict[str, str] = {}
    candidates: list[tuple[str, str]] = []
    for text, doc_id, m in zip(texts, ids, meta):
        query, passage = _split(text, m["kind"])
        passages[doc_id] = passage
        words = len(query.split())
        if _MIN_QUERY_WORDS <= words <= _MAX_QUERY_WORDS and len(passage.split()) >= _MIN_PASSAGE_WORDS:
            candidates.append((doc_id, query))
    random.Random(seed).shuffle(candidates)
    chosen = sorted(candidates[:queries])
    return Dataset(
        name="python-docs",
        corpus=passages,
        titles={},
        queries={f"pq:{d}": q for d, q in chosen},
        qrels={f"pq:{d}": {d: 1} for d, _ in chosen},
        split="train",
    )


def _split(text: str, kind: str) -> tuple[str, str]:
    """(pseudo-query, passage without it) of one corpus item."""
    if kind == "topic":  # "Heading\n*******\n\nbody"
        head, _, body = text.partition("\n")
        return head.strip(), re.sub(r"^[*=~-]+\s*", "", body.lstrip()).strip()
    name, _, doc = text.partition(": ")
    summary, _, rest = doc.partition("\n\n")
    return " ".join(summary.split()), f"{name}: {rest.strip()}"
