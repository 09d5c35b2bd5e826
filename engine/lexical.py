"""Lexical recall (BM25 via bm25s + PyStemmer) and rank fusion (reciprocal rank, weighted scores).

BM25 uses bm25s's Lucene variant (k1 1.5, b 0.75) over the terms of an analyzer (`duorank.analyzers`:
words, and CJK text as character bigrams by default) with English stopwords removed and the Snowball
stemmer; on BEIR SciFact it gives nDCG@10 68.63. Results are `Hits` like every other
recall source, so fusion works on any mix of them. Documents with no query term get no slot (-1, -inf).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import analyzers
from .hits import Hits
from .validate import as_ids, as_k


def _bm25s() -> Any:
    os.environ.setdefault("DISABLE_TQDM", "1")  # bm25s's own bars; duorank shows its own
    try:
        import bm25s
        import Stemmer
    except ImportError as e:
        raise ImportError(
            "BM25 needs bm25s and PyStemmer (duorank's dependencies): pip install bm25s PyStemmer"
        ) from e
    # bm25s sets its logger to DEBUG when imported (each index build then reaches the app's log);
    # set after the import, or the import undoes it
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s, Stemmer


class BM25:
    """A BM25 index over a fixed set of texts (rebuild to change it: SciFact's 5k docs take ~1 s)."""

    def __init__(
        self,
        *,
        language: str = "english",
        stopwords: str | None = "en",
        k1: float = 1.5,
        b: float = 0.75,
        analyzer: str = analyzers.DEFAULT,
    ) -> None:
        bm25s, Stemmer = _bm25s()
        try:
            stemmer = Stemmer.Stemmer(language) if language else None
        except KeyError:
            raise ValueError(f"language {language!r}: expected one of {Stemmer.algorithms()}") from None
        split = analyzers.splitter(analyzer)
        self._tok = bm25s.tokenization.Tokenizer(stemmer=stemmer, stopwords=stopwords, splitter=split)
        self._index = bm25s.BM25(k1=k1, b=b)
        self._ids = np.empty(0, dtype=np.int64)
        self.config = {
            "language": language,
            "stopwords": stopwords,
            "k1": k1,
            "b": b,
            "analyzer": analyzer,
            "method": "lucene",
        }

    @classmethod
    def build(cls, texts: Sequence[str], ids: ArrayLike | None = None, **options: Any) -> BM25:
        self = cls(**options)
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of str")
        if len(texts) == 0:
            raise ValueError("texts is empty: a BM25 index needs at least one document")
        self._ids = np.arange(len(texts), dtype=np.int64) if ids is None else as_ids(ids)
        if len(self._ids) != len(texts):
            raise ValueError(f"{len(self._ids)} ids for {len(texts)} texts")
        tokens = self._tok.tokenize(list(texts), update_vocab=True, return_as="ids", show_progress=False)
        self._index.index(tokens, show_progress=False)
        return self

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> NDArray[np.int64]:
        return self._ids.copy()

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the index to one file: an uncompressed zip of bm25s's own files (numpy arrays and JSON),
        the tokenizer's vocabulary, the ids and the options."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            # indexed from token ids, so bm25s's vocabulary has int keys, which its JSON writer refuses
            vocab = self._index.vocab_dict
            self._index.vocab_dict = {str(key): v for key, v in vocab.items()}
            try:
                self._index.save(folder, show_progress=False)
            finally:
                self._index.vocab_dict = vocab
            self._tok.save_vocab(folder)
            np.save(folder / "ids.npy", self._ids, allow_pickle=False)
            (folder / "duorank-bm25.json").write_text(json.dumps(self.config))
            with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
                for f in sorted(folder.iterdir()):
                    z.write(f, f.name)

    @classmethod
    def read(cls, file: Any) -> BM25:
        """Read what write() wrote (a path or an open binary file)."""
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(file) as z:
            z.extractall(tmp)
            folder = Path(tmp)
            options = json.loads((folder / "duorank-bm25.json").read_text())
            options.pop("method", None)
            options.setdefault("analyzer", "standard")  # written before analyzers: words only
            self = cls(**options)
            bm25s, _ = _bm25s()
            self._index = bm25s.BM25.load(folder, show_progress=False)
            self._index.vocab_dict = {int(key): v for key, v in self._index.vocab_dict.items()}
            self._tok.load_vocab(folder)
            self._ids = np.load(folder / "ids.npy", allow_pickle=False)
        if self._ids.ndim != 1 or self._ids.shape[0] != self._index.scores["num_docs"]:
            raise ValueError(
                f"BM25 file: {self._ids.shape} ids for {self._index.scores['num_docs']} documents"
            )
        return self

    def search(self, queries: Sequence[str], k: int, *, allowed: ArrayLike | None = None) -> Hits:
        """Top-k documents per query by BM25 score, (n_queries, k); -1 / -inf where fewer match.

        allowed: only these ids (exact: the other documents' scores are masked out, not post-filtered)."""
        k = as_k(k)
        if isinstance(queries, str):
            raise TypeError("queries must be a list of str (wrap one query in a list)")
        if not len(self._ids):
            raise ValueError("the index is empty: build it first")
        n = len(queries)
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        if n == 0:
            return Hits(ids, scores)
        mask = None
        if allowed is not None:
            mask = np.isin(self._ids, as_ids(allowed, "allowed")).astype(np.float32)
        tokens = self._tok.tokenize(list(queries), update_vocab=False, return_as="ids", show_progress=False)
        kk = min(k, len(self._ids))
        docs, s = self._index.retrieve(tokens, k=kk, show_progress=False, n_threads=1, weight_mask=mask)
        hit = s > 0
        ids[:, :kk] = np.where(hit, self._ids[docs], -1)
        scores[:, :kk] = np.where(hit, s, -np.inf)
        for q in range(n):  # equal scores: the smaller id first, as every duorank search does
            order = np.lexsort((np.where(ids[q] >= 0, ids[q], np.iinfo(np.int64).max), -scores[q]))
            ids[q], scores[q] = ids[q][order], scores[q][order]
        return Hits(ids, scores)


def rrf(runs: Sequence[Hits], k: int, *, c: int = 60, weights: Sequence[float] | None = None) -> Hits:
    """Reciprocal rank fusion: score(d) = sum over runs of w / (c + rank of d in that run), rank from 1."""
    w = _weights(runs, weights)
    return _fuse(runs, k, lambda h: 1.0 / (c + np.arange(1, h.ids.shape[1] + 1, dtype=np.float64)), w)


def weighted(
    runs: Sequence[Hits], k: int, *, weights: Sequence[float] | None = None, normalize: str = "minmax"
) -> Hits:
    """Weighted sum of per-query normalised scores (min-max or z-score); a missing document adds 0."""
    if normalize not in ("minmax", "zscore"):
        raise ValueError(f"normalize {normalize!r}, expected 'minmax' or 'zscore'")
    return _fuse(runs, k, None, _weights(runs, weights), normalize)


def _weights(runs: Sequence[Hits], weights: Sequence[float] | None) -> NDArray[np.float64]:
    if not runs:
        raise ValueError("no runs to fuse")
    n = runs[0].ids.shape[0]
    if any(h.ids.shape[0] != n for h in runs):
        raise ValueError(f"runs cover different numbers of queries: {[h.ids.shape[0] for h in runs]}")
    w = np.ones(len(runs)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(runs),) or not np.isfinite(w).all():
        raise ValueError(f"weights must be {len(runs)} finite numbers, got {weights!r}")
    return w


def normalise(s: NDArray[np.float64], how: str) -> NDArray[np.float64]:
    """One list's scores min-max scaled to [0, 1] ("minmax") or z-scored ("zscore"); constant lists give
    1 (minmax) or 0 (zscore)."""
    if s.size == 0:
        return s
    if how == "minmax":
        span = s.max() - s.min()
        return (s - s.min()) / span if span > 0 else np.ones_like(s)
    sd = s.std()
    return (s - s.mean()) / sd if sd > 0 else np.zeros_like(s)


def _fuse(runs: Sequence[Hits], k: int, rank_score: Any, w: NDArray[np.float64], how: str = "") -> Hits:
    k = as_k(k)
    n = runs[0].ids.shape[0]
    ids = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    for q in range(n):
        total: dict[int, float] = {}
        for h, weight in zip(runs, w):
            row, valid = h.ids[q], h.ids[q] >= 0
            contrib = (
                rank_score(h)[valid] if rank_score else normalise(h.scores[q][valid].astype(np.float64), how)
            )
            for d, v in zip(row[valid].tolist(), contrib.tolist()):
                total[d] = total.get(d, 0.0) + weight * v
        if not total:
            continue
        docs = np.fromiter(total, dtype=np.int64, count=len(total))
        vals = np.fromiter(total.values(), dtype=np.float64, count=len(total))
        order = np.lexsort((docs, -vals))[:k]  # score desc, ties to the smaller id
        ids[q, : len(order)] = docs[order]
        scores[q, : len(order)] = vals[order]
    return Hits(ids, scores)
