"""A sharded collection served by Ray actors: `ShardedCollection`, what `Engine.open(".../shards.json")`
searches.

One actor per shard holds its collection folder open read-only (spread over the cluster's nodes). A
search sends the query vectors (embedded once, by the engine) or query texts (BM25) to every shard at
once; each shard returns internal ids and scores only; the kernels merge them into one top-k (ids become
shard * SHARD_STRIDE + internal id, as in `search_collections`); the documents of the merged list alone
are then read from the shards that hold them. The engine fuses, reranks and cuts to top_n as over one
collection.

BM25 runs in each shard with that shard's own statistics (document frequencies, count, mean length): a
document's BM25 score differs slightly from the one a single collection gives (docs/scaling.md measures
what that costs on SciFact). Dense search is exact per shard, so the merged dense top-k equals one
collection's.

A shard that does not answer within `deadline_s`, or whose actor died, fails the search with
`ShardUnavailableError` naming it: never a silently partial answer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .collection import Documents, Found
from .errors import DuorankError
from .hits import Hits
from .index import limit_kernel_threads
from .shards import SHARD_STRIDE, merge_topk, read_shards
from .validate import as_k

log = logging.getLogger(__name__)


class ShardUnavailableError(DuorankError, RuntimeError):
    """A shard did not answer within its deadline, or its actor is gone."""


class ShardServer:
    """What one Ray actor runs: a shard's collection folder, open read-only."""

    def __init__(self, folder: str, threads: int, verify: bool) -> None:
        from .collection import Collection

        limit_kernel_threads(threads)
        self.collection = Collection.open(folder, "r", verify=verify, threads=threads)

    def where(self) -> tuple[str, int]:
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def count(self) -> int:
        return len(self.collection)

    def search(
        self, queries: Any, k: int, where: Mapping[str, Any] | None, strategy: str
    ) -> tuple[NDArray[np.int64], NDArray[np.float32], str]:
        found = self.collection.search(queries, k, where=where, strategy=strategy, fetch=False)
        return found.ids, found.scores, found.strategy

    def documents(self, ids: NDArray[np.int64]) -> dict[int, tuple[str, str, dict[str, Any]]]:
        """External id, text and metadata of each internal id."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        docs = self.collection.documents(Hits(ids[None, :], np.zeros((1, ids.size), np.float32))).fetch()
        return {
            int(i): (e, t, m)
            for i, e, t, m in zip(ids.tolist(), docs.external_ids[0], docs.texts[0], docs.metadata[0])
        }

    def vectors_of(self, ids: NDArray[np.int64]) -> NDArray[np.float32]:
        return self.collection.vectors_of(ids)


class ShardedCollection:
    """A read-only collection whose documents live in Ray actors, one per shard, with the search surface
    of `Collection` that `Engine` uses (`search`, `vectors_of`, `dim`, `manifest`, `stats`)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        address: str | None = None,
        deadline_s: float = 30.0,
        cpus_per_shard: float = 1.0,
        threads: int = 1,
        verify: bool = True,
    ) -> None:
        from duorank.models_export.deps import require

        ray = require("ray")
        self.path = Path(path)
        self.shards = read_shards(self.path)
        if not deadline_s > 0:
            raise ValueError(f"deadline_s {deadline_s!r}: expected seconds > 0")
        self.deadline_s = float(deadline_s)
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        self._ray = ray
        extra = self.shards.get("extra", {})
        self.manifest = {
            "dim": self.shards["dim"],
            "model": self.shards["model"],
            "bm25": extra.get("bm25"),
            "extra": {"engine": extra.get("engine", {})},
        }
        self.folders = [str((self.path.parent / i["path"]).resolve()) for i in self.shards["items"]]
        actor: Any = ray.remote(num_cpus=cpus_per_shard, scheduling_strategy="SPREAD", max_restarts=0)
        server = actor(ShardServer)
        self.actors: list[Any] = [server.remote(f, threads, verify) for f in self.folders]
        self._counts = self._gather([a.count.remote() for a in self.actors], "open")

    # ------------------------------------------------------------------ Collection's surface
    @property
    def dim(self) -> int:
        return int(self.shards["dim"])

    @property
    def model(self) -> str | None:
        return str(self.shards["model"])

    def __len__(self) -> int:
        return int(sum(self._counts))

    def __repr__(self) -> str:
        return f"ShardedCollection({str(self.path)!r}, shards={len(self.actors)}, count={len(self)})"

    def __enter__(self) -> ShardedCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []

    def stats(self) -> dict[str, Any]:
        return {
            "count": len(self),
            "dim": self.dim,
            "shards": len(self.folders),
            "per_shard": list(self._counts),
            "model": self.model,
            "path": str(self.path),
        }

    def where(self) -> list[tuple[str, int]]:
        """The (Ray node id, process id) of each shard's actor."""
        return self._gather([a.where.remote() for a in self.actors], "where")

    def search(
        self,
        queries: ArrayLike | str | Sequence[str],
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        strategy: str = "auto",
        fetch: bool = True,
    ) -> Found:
        """As `Collection.search`, over every shard: vectors by cosine, texts by BM25 (each shard's own
        statistics), filters applied in each shard."""
        k = as_k(k)
        if isinstance(queries, str):
            queries = [queries]
        if not (isinstance(queries, list) and queries and isinstance(queries[0], str)):
            queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        got = self._gather([a.search.remote(queries, k, where, strategy) for a in self.actors], "search")
        merged = merge_topk([Hits(i, s) for i, s, _ in got], k)
        ran = "+".join(dict.fromkeys(r for _, _, r in got))
        found = Found(merged.ids, merged.scores, ran, self._read_documents)
        return found.fetch() if fetch else found

    def vectors_of(self, ids: ArrayLike) -> NDArray[np.float32]:
        arr = np.asarray(ids, dtype=np.int64)
        out = np.zeros((*arr.shape, self.dim), np.float32)
        shard, local = arr // SHARD_STRIDE, arr % SHARD_STRIDE
        asked = [(s, (arr >= 0) & (shard == s)) for s in range(len(self.actors))]
        asked = [(s, m) for s, m in asked if m.any()]
        refs = [self.actors[s].vectors_of.remote(local[m]) for s, m in asked]
        for (_, m), rows in zip(asked, self._gather(refs, "vectors_of", [s for s, _ in asked])):
            out[m] = rows
        return out

    def _read_documents(self, ids: NDArray[np.int64]) -> Documents:
        """The documents of merged ids, each read from its shard (one call per shard holding some)."""
        valid = ids[ids >= 0]
        shard = valid // SHARD_STRIDE
        held = sorted(set(shard.tolist()))
        refs = [self.actors[s].documents.remote(valid[shard == s] % SHARD_STRIDE) for s in held]
        rows: dict[int, tuple[str, str, dict[str, Any]]] = {}
        for s, docs in zip(held, self._gather(refs, "documents", held)):
            rows.update({s * SHARD_STRIDE + i: d for i, d in docs.items()})
        ext, texts, meta = [], [], []
        for row in ids:
            docs_ = [rows[i] for i in row[row >= 0].tolist()]
            ext.append([d[0] for d in docs_])
            texts.append([d[1] for d in docs_])
            meta.append([d[2] for d in docs_])
        return ext, texts, meta

    # ------------------------------------------------------------------ writes
    def add(self, *args: Any, **kwargs: Any) -> None:
        raise DuorankError(f"{self.path} is a sharded collection, read-only here: rebuild it (--shards)")

    delete = save = add

    # ------------------------------------------------------------------ the one way to wait
    def _gather(self, refs: list[Any], what: str, shards: Sequence[int] | None = None) -> list[Any]:
        """Every answer, or ShardUnavailableError naming the shards that did not answer in time."""
        ray = self._ray
        shards = list(range(len(refs))) if shards is None else list(shards)
        ready, late = ray.wait(refs, num_returns=len(refs), timeout=self.deadline_s)
        if late:
            names = [self._name(shards[refs.index(r)]) for r in late]
            for r in late:
                try:
                    ray.cancel(r)
                except Exception:  # an actor task that cannot be cancelled finishes unread
                    pass
            raise ShardUnavailableError(
                f"{what}: {', '.join(names)} did not answer within {self.deadline_s:g} s"
            )
        out = []
        for s, r in zip(shards, refs):
            try:
                out.append(ray.get(r))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                raise ShardUnavailableError(f"{what}: {self._name(s)} is gone ({type(e).__name__})") from e
        return out

    def _name(self, shard: int) -> str:
        return f"shard {shard} ({self.folders[shard]})"
