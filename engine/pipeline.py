"""The engine: recall the top_k candidates (dense, BM25 or hybrid), rerank them, return the top_n.

    engine = Engine.create("kb/", reranker="path/to/reranker", chunk_tokens=200)
    engine.add(texts, ids=ids, metadata=metadata)       # embeds, chunks, writes the collection atomically
    res = engine.search("how do I reset it?", top_k=50, top_n=5)
    res[0][0].text, res[0][0].score, res.timings        # per query: the top_n hits; ms per stage

Batched queries are first-class: `search([q1, ..., q256])` embeds them in one batch, searches them in one
call and reranks every (query, candidate) pair of every query in shared token-budget batches.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .chunking import CHUNK, PARENT, document_chunks
from .collection import Collection, Found, ModelMismatchError
from .errors import DuorankError
from .files import read_manifest
from .index import ExactIndex
from .models import Embedder, Reranker
from .recall import check_recall
from .recall import recall as first_stage
from .rerank import best_first, rerank_lists
from .shards import SHARDS_FILE
from .validate import check_texts

log = logging.getLogger(__name__)

RERANKS = ("cross", "embedding", None)


@dataclass(frozen=True, slots=True)
class Hit:
    """One result: the chunk (or document) found, its final score, and where recall had put it."""

    id: str  # external id (of the chunk: "<parent>#<n>" when a document was split)
    text: str
    score: float  # rerank score (cross-encoder or cosine), or the recall score without rerank
    recall_score: float  # cosine, BM25 or fusion score
    recall_rank: int  # 1-based rank in the recall list
    metadata: dict[str, Any]
    parent: str  # the document's id (equal to id unless the document was chunked)
    # the reranker's own score, before any blending (cross-encoder: its sigmoid output, one scale across
    # queries but not a calibrated probability; rerank="embedding": the cosine); None when this hit was
    # not reranked (rerank=None, or it lay below rerank_depth)
    rerank_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The hit as JSON-ready fields (its metadata dict is shared, not copied)."""
        return {
            "id": self.id,
            "text": self.text,
            "score": self.score,
            "recall_score": self.recall_score,
            "recall_rank": self.recall_rank,
            "metadata": self.metadata,
            "parent": self.parent,
            "rerank_score": self.rerank_score,
        }


@dataclass(frozen=True, slots=True)
class Results:
    """Per query, the top_n hits (best first); timings in milliseconds per stage, for the whole batch."""

    queries: list[str]
    hits: list[list[Hit]]
    timings: dict[str, float]
    recall: str
    rerank: str | None
    strategy: str  # the vector search strategy (see Collection.search) or "bm25"
    truncated: dict[str, int] = field(default_factory=dict)  # queries / (query, text) pairs cut
    rerank_depth: int | None = None  # candidates the cross-encoder read per query (None: no cross rerank)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i: int) -> list[Hit]:
        return self.hits[i]

    def to_dict(self, queries: Sequence[int] | None = None) -> dict[str, Any]:
        """JSON-ready: per query (all, or those at the indices `queries`) its hits, then the batch's
        timings, recall, rerank, strategy, cut counts and the rerank depth used."""
        picked = range(len(self.queries)) if queries is None else queries
        return {
            "queries": [
                {"query": self.queries[i], "hits": [h.to_dict() for h in self.hits[i]]} for i in picked
            ],
            "timings_ms": self.timings,
            "recall": self.recall,
            "rerank": self.rerank,
            "strategy": self.strategy,
            "truncated": self.truncated,
            "rerank_depth": self.rerank_depth,
        }


@dataclass(frozen=True, slots=True)
class IngestReport:
    documents: int
    chunks: int
    truncated: int  # chunks (or documents) cut at the embedder's max_length: their tail is not searchable
    seconds: float

    @property
    def documents_per_s(self) -> float:
        return self.documents / self.seconds if self.seconds > 0 else float("inf")


class Engine:
    """An embedder, an optional reranker and a collection, wired together."""

    def __init__(self, collection: Collection, embedder: Embedder, reranker: Reranker | None = None) -> None:
        if collection.dim != embedder.dim:
            raise DuorankError(f"collection dim {collection.dim} != embedder dim {embedder.dim}")
        self.collection = collection
        self.embedder = embedder
        self.reranker = reranker
        settings = collection.manifest.get("extra", {}).get("engine", {})
        self.chunk_tokens: int | None = settings.get("chunk_tokens")
        self.chunk_overlap: int = int(settings.get("chunk_overlap", 0))

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        embedder: str | os.PathLike[str] | Embedder = "default",
        reranker: str | os.PathLike[str] | Reranker | None = None,
        *,
        index: str = "exact",
        dtype: str = "f32",
        bm25: bool = True,
        analyzer: str | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int = 32,
        **index_options: Any,
    ) -> Engine:
        """A new engine folder (a collection) open for adding. chunk_tokens: split documents longer than
        this many tokens into overlapping chunks (None: one vector per document, cut at max_length).
        analyzer: BM25's ("cjk", the default: CJK text as character bigrams; "standard"; "jieba"; see
        duorank.analyzers)."""
        emb = embedder if isinstance(embedder, Embedder) else Embedder.load(embedder)
        rr = reranker if reranker is None or isinstance(reranker, Reranker) else Reranker.load(reranker)
        if chunk_tokens is not None:
            room = emb.max_length - 2
            if not 1 <= chunk_tokens <= room:
                raise ValueError(
                    f"chunk_tokens {chunk_tokens}: expected 1..{room} (the embedder reads {room})"
                )
            if not 0 <= chunk_overlap < chunk_tokens:
                raise ValueError(f"chunk_overlap {chunk_overlap}: expected 0..{chunk_tokens - 1}")
        settings = {
            "embedder": _source(embedder, emb),
            "reranker": None if rr is None else _source(reranker, rr),
            "chunk_tokens": chunk_tokens,
            "chunk_overlap": chunk_overlap if chunk_tokens else 0,
        }
        coll = Collection.create(
            path,
            dim=emb.dim,
            dtype=dtype,
            index=index,
            model=emb,
            bm25=bm25,
            analyzer=analyzer,
            extra={"engine": settings},
            **index_options,
        )
        return cls(coll, emb, rr)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        mode: str = "r",
        *,
        embedder: str | os.PathLike[str] | Embedder | None = None,
        reranker: str | os.PathLike[str] | Reranker | None = None,
        verify: bool = True,
        **model_options: Any,
    ) -> Engine:
        """Open an engine folder. Each model is the one recorded when the folder was made (None, the
        default) or the one given: a name, a model folder, or a loaded Embedder / Reranker. An engine
        without a recorded reranker has none unless one is given; to skip the reranker of one that has
        one, search with rerank=None. A different embedder than the collection's is refused.

        A sharded collection (a folder holding `shards.json`, made by `duorank index --shards`, or that
        file) opens a `ShardedCollection`: one Ray actor per shard (model_options `address`, `deadline_s`,
        `cpus_per_shard` go to it); read-only."""
        folder = Path(path)
        if (folder / SHARDS_FILE).is_file():
            folder = folder / SHARDS_FILE
        if folder.is_file() and folder.suffix == ".json":
            if mode != "r":
                raise ValueError(f"{folder}: a sharded collection opens read-only (mode 'r'), not {mode!r}")
            return cls._open_sharded(folder, embedder, reranker, verify, model_options)
        try:
            settings = read_manifest(folder, Collection.MANIFEST, Collection.FORMAT, Collection.VERSION)
        except DuorankError:
            Collection.open(folder)  # raises the precise error (missing folder, damaged manifest...)
            raise
        recorded = settings.get("extra", {}).get("engine", {})
        source = embedder if embedder is not None else recorded.get("embedder") or "default"
        emb = source if isinstance(source, Embedder) else Embedder.load(source, **model_options)
        given = reranker if reranker is not None else recorded.get("reranker")
        rr = given if isinstance(given, Reranker) or given is None else Reranker.load(given, **model_options)
        coll = Collection.open(folder, mode, embedder=emb, verify=verify)
        return cls(coll, emb, rr)

    @classmethod
    def _open_sharded(
        cls, path: Path, embedder: Any, reranker: Any, verify: bool, options: dict[str, Any]
    ) -> Engine:
        from .sharded import ShardedCollection

        ray_options = {k: options.pop(k) for k in ("address", "deadline_s", "cpus_per_shard") if k in options}
        coll = ShardedCollection(path, verify=verify, **ray_options)
        try:
            recorded = coll.manifest["extra"]["engine"]
            source = embedder if embedder is not None else recorded.get("embedder") or "default"
            emb = source if isinstance(source, Embedder) else Embedder.load(source, **options)
            if emb.fingerprint != coll.model:
                raise ModelMismatchError(
                    f"{path} was built with {coll.model!r}; the embedder given is {emb.fingerprint!r}"
                )
            given = reranker if reranker is not None else recorded.get("reranker")
            rr = given if isinstance(given, Reranker) or given is None else Reranker.load(given, **options)
        except BaseException:
            coll.close()
            raise
        return cls(coll, emb, rr)  # type: ignore[arg-type]

    def close(self) -> None:
        self.collection.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.collection)

    def warmup(self, query: str = "how does this work?") -> dict[str, float]:
        """Pay a new process's one-off costs before the first real query instead of during it: one query
        through every stage this engine serves (its embedding; dense search, for one query and for a
        batch large enough for the batched path; BM25 when the collection keeps an index; fetching; the
        cross-encoder over one candidate). In a new process Numba loads its cached kernels on first use
        and BM25 reads its index: 0.7-1.2 s of the demo collection's first search on 2 cores. Reads
        only. With a reranker, it measures its cost model too (`Reranker.measure_cost`, for
        `rerank_budget_ms`). Returns the warm-up's own timings in ms, per stage and in total."""
        t_start = time.perf_counter()
        if not len(self):  # nothing to search: the models only
            t = time.perf_counter()
            self.embedder.encode([query], kind="query")
            timings = {"embed": _ms(t), "search": 0.0, "fetch": 0.0, "rerank": 0.0}
            t = time.perf_counter()
            if self.reranker is not None:
                self.reranker.score(query, [query])
                timings["rerank"] = _ms(t)
            return {**timings, "total": _ms(t_start)}
        recall = "hybrid" if self.collection.manifest.get("bm25") is not None else "dense"
        timings = self.search(query, top_k=1, top_n=1, recall=recall).timings
        qv = self.embedder.encode([query], kind="query")
        t = time.perf_counter()
        self.collection.search(np.repeat(qv, ExactIndex.BLAS_MIN_QUERIES, axis=0), 1)
        timings["search"] += _ms(t)
        if self.reranker is not None:  # the cost model a rerank budget reads, measured on this machine
            t = time.perf_counter()
            self.reranker.measure_cost()
            timings["rerank"] += _ms(t)
        return {**timings, "total": _ms(t_start)}

    def __repr__(self) -> str:
        return f"Engine({self.collection!r}, embedder={self.embedder.name!r}, reranker={self.reranker!r})"

    # ------------------------------------------------------------------ ingest
    def add(
        self,
        texts: Sequence[str],
        ids: Sequence[str | int] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        progress: bool | None = None,
        save: bool = True,
    ) -> IngestReport:
        """Chunk (if the engine chunks), embed in token-budget batches and add; then save the collection.

        All or nothing: a bad input, an error or Ctrl-C leaves the saved collection as it was.
        """
        t0 = time.perf_counter()
        texts = check_texts(texts)
        n = len(texts)
        parents = (
            [str(self.collection.next_id + i) for i in range(n)] if ids is None else [str(i) for i in ids]
        )
        if len(parents) != n or (metadata is not None and len(metadata) != n):
            raise ValueError(
                f"{n} texts, {len(parents)} ids, {n if metadata is None else len(metadata)} metadata"
            )
        metas = [dict(m or {}) for m in (metadata or [None] * n)]
        for i, m in enumerate(metas):
            if PARENT in m or CHUNK in m:
                raise ValueError(f"metadata[{i}] uses the reserved keys {PARENT!r} / {CHUNK!r}")
        chunk_text, chunk_ids, chunk_meta = document_chunks(
            texts,
            parents,
            metas,
            self.embedder.tokenizer,
            max_tokens=self.chunk_tokens or None,
            overlap=self.chunk_overlap,
        )
        if n:
            tokens = self.embedder.tokenize(chunk_text, kind="document")
            vectors = self.embedder.encode(tokens, progress=progress)
            self.collection.add(vectors, chunk_text, chunk_ids, chunk_meta)
            truncated = tokens.n_truncated
        else:
            truncated = 0
        if save:
            self.collection.save()
        report = IngestReport(n, len(chunk_text), truncated, time.perf_counter() - t0)
        log.info(
            "added %d documents (%d chunks, %d cut at %d tokens) in %.1f s",
            n,
            len(chunk_text),
            truncated,
            self.embedder.max_length,
            report.seconds,
        )
        return report

    def delete(self, ids: Sequence[str | int]) -> None:
        """Delete documents (with all their chunks) by id, then save. An unknown id raises ValueError and
        deletes nothing."""
        wanted = [str(i) for i in ids]
        if self.chunk_tokens:
            internal = self.collection.allowed({PARENT: {"in": wanted}}) if wanted else np.empty(0, np.int64)
            found = {m[PARENT] for m in self.collection.store.metadata(internal)}
            missing = [i for i in wanted if i not in found]
            if missing:
                raise ValueError(f"unknown ids: {missing[:10]} ({len(missing)} in all)")
            self.collection.delete(self.collection.store.external_ids(internal))
        else:
            self.collection.delete(wanted)
        self.collection.save()

    def save(self) -> None:
        self.collection.save()

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: str | Sequence[str],
        top_k: int = 50,
        top_n: int = 5,
        *,
        where: Mapping[str, Any] | None = None,
        recall: str = "dense",
        rerank: str | None = "auto",
        group: bool = False,
        fusion: str = "rrf",
        rerank_blend: float | None = None,
        rerank_depth: int | None = None,
        rerank_budget_ms: float | None = None,
    ) -> Results:
        """Recall top_k candidates per query, rerank them, return the top_n.

        recall: "dense" (vectors), "bm25" or "hybrid" (both, fused by reciprocal rank, or fusion="weighted"
        for min-max normalised scores). rerank: "cross" (the reranker), "embedding" (cosine with the
        query), None (recall order), "auto" (cross when the engine has a reranker). group: one hit per
        document (its best chunk), so top_n counts documents. rerank_blend: weight a of the cross-encoder
        in a * z(rerank) + (1 - a) * z(recall), scores z-normalised per query (default: the weight the
        reranker records for this recall, Reranker.defaults(recall); 1.0 unless it was trained with a blend).
        rerank_depth: how many of the top_k candidates the cross-encoder reads (default: the depth recorded
        for this recall but at least top_n, else all top_k); the rest follow in recall order, below every
        reranked one.
        rerank_budget_ms: the cross-encoder's time for this call, in ms: the depth is the deepest (up to
        rerank_depth if given, else top_k) whose cost fits, predicted from the candidates' token lengths
        by the cost model the reranker measured on this machine (`Reranker.measure_cost`, refreshed by
        `warmup()`; measured on first use otherwise), scaled by how far recent reranks ran past it
        (`Reranker.cost_scale`); `Results.rerank_depth` says the depth used (0: none fitted, recall
        order). None: no budget (the depth as above).
        """
        t_start = time.perf_counter()
        qs = [queries] if isinstance(queries, str) else list(queries)
        if not qs:
            raise ValueError("no queries")
        check_texts(qs, "queries")
        blank = [i for i, q in enumerate(qs) if not q.strip()]
        if blank:
            raise ValueError(f"queries {blank[:10]} are empty: a query needs words")
        counts = (("top_k", top_k, ""), ("top_n", top_n, ""), ("rerank_depth", rerank_depth, " or None"))
        for name, v, or_none in counts:
            bad = isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
            if bad and not (or_none and v is None):
                raise ValueError(f"{name} {v!r}, expected an int >= 1{or_none}")
        if top_n > top_k:
            raise ValueError(f"top_n {top_n} > top_k {top_k}: rerank keeps top_n of the top_k candidates")
        check_recall(recall, fusion)
        if rerank == "auto":
            rerank = "cross" if self.reranker is not None else None
        if rerank not in RERANKS:
            raise ValueError(f"rerank {rerank!r}, expected one of {RERANKS} or 'auto'")
        if rerank == "cross" and self.reranker is None:
            raise ValueError(
                "rerank='cross' needs a reranker: Engine.open(path, reranker=...) (CLI: --reranker default) "
                "or rerank=None"
            )
        budget = rerank_budget_ms
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0
        ):
            raise ValueError(f"rerank_budget_ms {budget!r}: expected a number of milliseconds >= 0, or None")
        if rerank_blend is not None and not 0.0 <= float(rerank_blend) <= 1.0:
            raise ValueError(f"rerank_blend {rerank_blend!r}: expected 0 <= a <= 1 (1: the reranker alone)")
        timings = {"embed": 0.0, "search": 0.0, "fetch": 0.0, "rerank": 0.0}
        truncated = {"queries": 0, "pairs": 0}

        qv = np.empty((0, self.embedder.dim), np.float32)
        if recall != "bm25" or rerank == "embedding":
            t = time.perf_counter()
            tokens = self.embedder.tokenize(qs, kind="query")
            qv, truncated["queries"] = self.embedder.encode(tokens), tokens.n_truncated
            timings["embed"] = _ms(t)

        t = time.perf_counter()
        found = first_stage(
            recall,
            top_k,
            dense=lambda k: self.collection.search(qv, k, where=where, fetch=False),
            lexical=lambda k: self.collection.search(qs, k, where=where, fetch=False),
            fusion=fusion,
        )
        timings["search"] = _ms(t)

        t = time.perf_counter()
        found.fetch()  # the candidates' documents (one read of the store, fused lists included)
        timings["fetch"] = _ms(t)

        t = time.perf_counter()
        final = [row[found.ids[i] >= 0].astype(np.float64) for i, row in enumerate(found.scores)]
        own: list[Any] = [()] * len(qs)  # per query, the reranker's scores of its list's head
        depth_used: int | None = None
        if rerank == "cross":
            assert self.reranker is not None
            done = rerank_lists(
                self.reranker,
                qs,
                found.texts,
                final,
                recall=recall,
                top_n=top_n,
                top_k=top_k,
                depth=rerank_depth,
                weight=rerank_blend,
                budget_ms=rerank_budget_ms,
            )
            final, own, truncated["pairs"] = done.final, done.own, done.truncated
            depth_used = done.depth
        elif rerank == "embedding":
            vecs = self.collection.vectors_of(found.ids)
            cos = np.einsum("qkd,qd->qk", vecs, qv)
            final = own = [cos[i][found.ids[i] >= 0].astype(np.float64) for i in range(len(qs))]
        if rerank is not None:
            timings["rerank"] = _ms(t)

        out = [_top(found, i, final[i], own[i], top_n, group) for i in range(len(qs))]
        timings["total"] = _ms(t_start)
        return Results(qs, out, timings, recall, rerank, found.strategy, truncated, depth_used)


def _top(found: Found, q: int, final: NDArray[np.float64], own: Any, top_n: int, group: bool) -> list[Hit]:
    order = best_first(final)
    out: list[Hit] = []
    seen: set[str] = set()
    for j in order.tolist():
        meta = dict(found.metadata[q][j])
        parent = str(meta.pop(PARENT, found.external_ids[q][j]))
        meta.pop(CHUNK, None)
        if group:
            if parent in seen:
                continue
            seen.add(parent)
        out.append(
            Hit(
                id=found.external_ids[q][j],
                text=found.texts[q][j],
                score=float(final[j]),
                recall_score=float(found.scores[q][j]),
                recall_rank=j + 1,
                metadata=meta,
                parent=parent,
                rerank_score=float(own[j]) if j < len(own) else None,
            )
        )
        if len(out) == top_n:
            break
    return out


def _ms(t: float) -> float:
    return 1e3 * (time.perf_counter() - t)


def _source(given: Any, model: Any) -> str:
    """What to record so Engine.open can load the model again: the name or path given, else its folder."""
    if isinstance(given, (str, os.PathLike)):
        s = str(given)
        return s if not Path(s).exists() else str(Path(s).resolve())
    return str(model.folder)
