"""Search several indexes (`search_shards` -> Hits) or collections (`search_collections` -> Found) as one:
each shard returns its top-k, the kernels merge them into one top-k. And the sharded collection's
layout: which shard holds a document (`shard_of`, a stable hash of its id) and the `shards.json` manifest
that names a complete set of shard folders (`read_shards`, `write_shards`).

A shard is any index with `search(queries, k, allowed=None) -> Hits` (ExactIndex, HnswIndex, or a remote
one behind the same call), holding ids no other shard holds. This is the seam for scaling out.
"""

from __future__ import annotations

import hashlib
import importlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .collection import Collection, Found
from .errors import IndexFormatError
from .files import load_manifest, sha256_file, write_json
from .hits import Hits
from .validate import as_k

# A merged result over collections numbers documents shard * SHARD_STRIDE + internal id.
SHARD_STRIDE = 1 << 40

SHARDS_FILE, SHARDS_FORMAT, SHARDS_VERSION = "shards.json", "duorank-shards", 1
SHARD_HASH = "blake2b-64(utf-8 document id) mod shards"


def shard_of(document_id: str, shards: int) -> int:
    """The shard of a document: a stable hash of its id (the same in every process and on every machine,
    unlike Python's `hash()`), so a document's chunks, and a document added again, land in one shard."""
    digest = hashlib.blake2b(document_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def merge_topk(results: Sequence[Hits], k: int) -> Hits:
    """One top-k over shards' top-k lists (shard s's ids become s * SHARD_STRIDE + id; -1 stays empty):
    the best k by score, ties to the smaller merged id (the earlier shard), as one collection orders them."""
    K = importlib.import_module("duorank.kernels")
    n = results[0].ids.shape[0]
    ids = np.empty((n, k), dtype=np.int64)
    scores = np.empty((n, k), dtype=np.float32)
    K.topk_reset(ids, scores)
    for s, r in enumerate(results):
        merged = np.where(r.ids >= 0, r.ids + s * SHARD_STRIDE, -1)
        K.topk_merge(merged, np.require(r.scores, np.float32, ["C", "W"]), ids, scores)  # a copy if read-only
    K.topk_sort(ids, scores)
    return Hits(ids, scores)


def read_shards(path: str | Path) -> dict[str, Any]:
    """The `shards.json` manifest of a sharded collection, checked: its format, one entry per shard, every
    shard folder present with the collection manifest it recorded (sha256), one model and one dim."""
    path = Path(path)
    man = load_manifest(path, IndexFormatError, f"{path} is missing: not a sharded collection")
    if man.get("format") != SHARDS_FORMAT or man.get("version") != SHARDS_VERSION:
        raise IndexFormatError(
            f"{path}: format {man.get('format')!r} version {man.get('version')!r}, expected "
            f"{SHARDS_FORMAT!r} version {SHARDS_VERSION}"
        )
    items = man.get("items")
    if not isinstance(items, list) or len(items) != man.get("shards") or not items:
        raise IndexFormatError(f"{path}: {man.get('shards')!r} shards but {len(items or [])} entries")
    for i, item in enumerate(items):
        folder = path.parent / item["path"]
        manifest = folder / Collection.MANIFEST
        if not manifest.is_file() or sha256_file(manifest) != item["manifest_sha256"]:
            raise IndexFormatError(f"{path}: shard {i} ({folder}) is missing or is not the one recorded")
        if item["model"] != man["model"] or item["dim"] != man["dim"]:
            raise IndexFormatError(
                f"{path}: shard {i} has model {item['model']!r} dim {item['dim']}, the set has "
                f"{man['model']!r} dim {man['dim']}"
            )
    return man


def write_shards(path: Path, items: Sequence[Mapping[str, Any]], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Write `shards.json` (atomically, last: it is what makes a set of shard folders a collection) for
    shard folders given as {"path" (relative to the manifest's folder), "count", "dim", "model"}, in shard
    order. Refuses shards of different models or dimensions."""
    models = {(i["model"], i["dim"]) for i in items}
    if len(models) != 1:
        raise ValueError(f"shards of different models or dimensions: {sorted(models, key=str)}")
    ((model, dim),) = models
    entries = [
        {**dict(i), "manifest_sha256": sha256_file(path.parent / i["path"] / Collection.MANIFEST)}
        for i in items
    ]
    man = {
        "format": SHARDS_FORMAT,
        "version": SHARDS_VERSION,
        "shards": len(entries),
        "hash": SHARD_HASH,
        "model": model,
        "dim": dim,
        "count": sum(int(i["count"]) for i in entries),
        "items": entries,
        "extra": dict(extra),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(path, man)
    return man


def search_shards(
    shards: Sequence[Any], queries: ArrayLike, k: int = 10, *, allowed: ArrayLike | None = None
) -> Hits:
    """The k best (id, score) per query over indexes holding disjoint ids (ExactIndex, HnswIndex, or any
    object with their `search`); ties go to the smaller id, as in one index. An id returned by two shards
    is a ValueError, since merging would double-count it. Collections: `search_collections`."""
    k = as_k(k)
    if not shards:
        raise ValueError("no shards to search")
    if any(isinstance(s, Collection) for s in shards):
        raise TypeError(
            "search_shards takes indexes (ExactIndex, HnswIndex); for collections use "
            "search_collections(collections, queries, k, where=..., strategy=...)"
        )
    K = importlib.import_module("duorank.kernels")
    if allowed is None:
        results = [s.search(queries, k) for s in shards]
    else:  # each shard gets the allowed ids it holds (an index refuses ids it does not know)
        allow = np.unique(np.asarray(allowed, dtype=np.int64))
        results = [s.search(queries, k, allowed=allow[_holds(s, allow)]) for s in shards]
    n = results[0].ids.shape[0]
    ids = np.empty((n, k), dtype=np.int64)
    scores = np.empty((n, k), dtype=np.float32)
    K.topk_reset(ids, scores)
    for r in results:
        K.topk_merge(
            np.ascontiguousarray(r.ids), np.ascontiguousarray(r.scores, dtype=np.float32), ids, scores
        )
    K.topk_sort(ids, scores)
    every = np.concatenate([r.ids for r in results], axis=1)
    for q in range(n):
        values, counts = np.unique(every[q][every[q] >= 0], return_counts=True)
        if (counts > 1).any():
            dup = values[counts > 1]
            raise ValueError(f"shards overlap: id(s) {dup[:10].tolist()} come from more than one shard")
    return Hits(ids, scores)


def search_collections(
    collections: Sequence[Any],
    queries: ArrayLike,
    k: int = 10,
    *,
    where: Mapping[str, Any] | None = None,
    strategy: str = "auto",
) -> Found:
    """The k best documents per query over collections holding different documents, as one search: each
    collection returns its top k (filtered by `where`; `strategy` goes to each Collection.search, so
    "exact" makes the merge equal one exact search over all of them), the kernels merge them. Ids are
    numbered collection * SHARD_STRIDE + its internal id; each hit carries its external id and text."""
    k = as_k(k)
    if not collections:
        raise ValueError("no collections to search")
    if not all(isinstance(c, Collection) for c in collections):
        raise TypeError("search_collections takes collections; for indexes use search_shards")
    results = [c.search(queries, k, where=where, strategy=strategy) for c in collections]
    merged = merge_topk(results, k)
    ids, n = merged.ids, merged.ids.shape[0]
    ext: list[list[str]] = []
    texts: list[list[str]] = []
    meta: list[list[dict[str, Any]]] = []
    for q in range(n):
        ext.append([])
        texts.append([])
        meta.append([])
        for gid in ids[q][ids[q] >= 0].tolist():
            r = results[gid // SHARD_STRIDE]
            j = int(np.flatnonzero(r.ids[q] == gid % SHARD_STRIDE)[0])
            ext[q].append(r.external_ids[q][j])
            texts[q].append(r.texts[q][j])
            meta[q].append(r.metadata[q][j])
    strategy = "+".join(dict.fromkeys(r.strategy for r in results))
    return Found(ids, merged.scores, strategy, (ext, texts, meta))


def _holds(shard: Any, ids: np.ndarray) -> np.ndarray:
    if hasattr(shard, "contains"):
        return np.asarray(shard.contains(ids), dtype=bool)
    return np.isin(ids, shard.ids)
