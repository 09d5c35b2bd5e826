"""The first stage over a labelled corpus, as `Engine.search` runs it over a collection: exact dense search
over the corpus vectors (cached per model and corpus) and BM25 over the texts, chosen and fused by
`duorank.recall.recall`. The evaluation runner and training's candidate lists both use it."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from duorank.hits import Hits
from duorank.index import ExactIndex
from duorank.lexical import BM25
from duorank.recall import recall

log = logging.getLogger("duorank.eval")


def corpus_vectors(embedder: Any, texts: Sequence[str], *, cache: bool = True) -> NDArray[np.float32]:
    """Document vectors, cached under $DUORANK_HOME/cache by model file checksum + variant + texts."""
    from duorank.model_folder import VARIANTS, home

    h = hashlib.sha256()
    h.update(embedder.manifest["files"][VARIANTS[embedder.variant]]["sha256"].encode())
    h.update(embedder.variant.encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    path = home() / "cache" / "embeddings" / f"{h.hexdigest()[:32]}.npy"
    if cache and path.is_file():
        arr = np.load(path)
        if arr.shape == (len(texts), embedder.dim):
            log.info("corpus vectors from cache %s", path)
            return arr
    # a progress bar when stderr is a terminal (2,000 texts and more)
    vecs = embedder.encode(list(texts), kind="document")
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vecs)
        tmp.replace(path)
    return vecs


class FirstStage:
    """Dense (given an embedder) and BM25 (bm25=True; `analyzer`: duorank.analyzers' name, default its
    default) recall over `texts`; ids are positions in `texts`, as a collection's internal ids are the
    order documents were added in."""

    def __init__(
        self,
        texts: Sequence[str],
        embedder: Any = None,
        *,
        bm25: bool = True,
        analyzer: str | None = None,
        cache: bool = True,
    ) -> None:
        self.texts = list(texts)
        self.embedder = embedder
        options = {"analyzer": analyzer} if analyzer else {}
        self.bm25 = BM25.build(self.texts, **options) if bm25 else None
        self.vectors: NDArray[np.float32] | None = None
        self.index: ExactIndex | None = None
        if embedder is not None:
            t0 = time.perf_counter()
            self.vectors = corpus_vectors(embedder, self.texts, cache=cache)
            log.info("corpus: %d docs embedded in %.1f s", len(self.texts), time.perf_counter() - t0)
            self.index = ExactIndex(dim=embedder.dim)
            self.index.add(self.vectors, np.arange(len(self.texts)))
            self.index.search(self.vectors[:1], 1)  # load the kernels before anything is timed

    def search(
        self,
        how: str,
        queries: Sequence[str],
        k: int,
        *,
        vectors: NDArray[np.float32] | None = None,
        fusion: str = "rrf",
    ) -> Hits:
        """Recall `how` ("dense", "bm25", "hybrid") top k per query; `vectors`: the queries' embeddings
        (made here with kind="query" when not given)."""
        qs = list(queries)

        def dense(n: int) -> Hits:
            if self.index is None:
                raise ValueError(f"recall {how!r} needs an embedder: FirstStage(texts, embedder)")
            v = self.embedder.encode(qs, kind="query") if vectors is None else vectors
            return self.index.search(v, n)

        def lexical(n: int) -> Hits:
            if self.bm25 is None:
                raise ValueError(f"recall {how!r} needs BM25: FirstStage(texts, bm25=True)")
            return self.bm25.search(qs, n)

        return recall(how, k, dense=dense, lexical=lexical, fusion=fusion)
