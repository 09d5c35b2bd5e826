"""A collection: one folder holding the vectors, an optional HNSW graph and the documents, saved atomically.

Files (each readable without duorank: .npy, USearch's own format, SQLite, JSON):

    collection.json          the manifest, written last: format, version, dim, metric, dtype, index kind,
                             model fingerprint, counts, next id, HNSW options, and for every data file its
                             name, size and sha256
    ids.<gen>.npy            int64 (n,) internal ids, ascending
    vectors.<gen>.npy        float32 (n, dim) L2-normalised rows in id order (memory-mappable)
    codes.<gen>.npy          f16/i8 copy that exact search scans (dtype f16/i8 with index="exact"),
    scales.<gen>.npy         with per-row scales for i8
    ann.<gen>.usearch        the HNSW graph (index="hnsw")
    docs.<gen>.sqlite        table documents(id, external_id, text, metadata JSON)
    writer.lock              locked (flock) by the one process that has the collection open for writing
    docs-writer.sqlite       the writer's working copy of the documents (never part of a saved state)

Every save writes a new generation of data files beside the old ones, then the manifest (rename), then
removes the old generation: a crash at any moment leaves the old or the new collection, never a mix.
Readers map one generation's files; they keep that snapshot until they open the collection again.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import weakref
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import analyzers
from .errors import DuorankError, IndexFormatError
from .files import checked_file, read_manifest, write_generation
from .hits import Hits
from .hnsw import HnswIndex
from .index import Dtype, ExactIndex
from .lexical import BM25
from .store import Store
from .validate import as_k, as_vectors

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "exact", "hnsw")


class CollectionLockedError(DuorankError, RuntimeError):
    """Another writer has the collection open (one writer at a time; readers are unlimited)."""


class ModelMismatchError(DuorankError, ValueError):
    """The collection's vectors come from another model (or dimension) than the embedder given."""


Documents = tuple[list[list[str]], list[list[str]], list[list[dict[str, Any]]]]


class Found(Hits):
    """Hits over a collection plus, per query and without the empty slots, the documents' external ids,
    texts and metadata, and the search strategy that ran ("exact", "hnsw", "exact-filtered",
    "hnsw-filtered", "bm25", "no-match").

    `Collection.search` returns it with its documents read; with fetch=False they are read once, when
    first used (`texts`, `external_ids`, `metadata`, or `fetch()`), while the collection is open: a list
    that is only fused with another reads nothing, and `over(hits)` gives the fused list the same
    source."""

    __slots__ = ("_documents", "_source", "strategy")
    strategy: str
    _source: Callable[[NDArray[np.int64]], Documents] | None
    _documents: Documents | None

    def __init__(
        self,
        ids: NDArray[np.int64],
        scores: NDArray[np.float32],
        strategy: str,
        documents: Documents | Callable[[NDArray[np.int64]], Documents],
    ) -> None:
        super().__init__(ids, scores)
        object.__setattr__(self, "strategy", strategy)
        object.__setattr__(self, "_source", documents if callable(documents) else None)
        object.__setattr__(self, "_documents", None if callable(documents) else documents)

    def fetch(self) -> Found:
        """Read the documents now (once); returns self."""
        if self._documents is None:
            assert self._source is not None
            object.__setattr__(self, "_documents", self._source(self.ids))
        return self

    def _fetched(self) -> Documents:
        self.fetch()
        assert self._documents is not None
        return self._documents

    @property
    def external_ids(self) -> list[list[str]]:
        return self._fetched()[0]

    @property
    def texts(self) -> list[list[str]]:
        return self._fetched()[1]

    @property
    def metadata(self) -> list[list[dict[str, Any]]]:
        return self._fetched()[2]

    def over(self, hits: Hits) -> Found:
        """Other hits over the same collection (a fusion of this list with another), documents read from
        the same source when first used."""
        if self._source is None:
            raise ValueError("over(): this Found holds its documents, it has no collection to read from")
        return Found(hits.ids, hits.scores, self.strategy, self._source)

    def __repr__(self) -> str:
        return f"Found(queries={len(self)}, k={self.ids.shape[1]}, strategy={self.strategy!r})"


class Collection:
    """Vectors + documents in one folder. `create` / `open`, then add, delete, search, save."""

    FORMAT = "duorank-collection"
    VERSION = 1
    MANIFEST = "collection.json"
    LOCK = "writer.lock"
    WORKING = "docs-writer.sqlite"
    # With a filter on an HNSW collection, exact search over the allowed rows when they are at most this
    # many, or at most this fraction of the collection; HNSW with post-filtering otherwise.
    EXACT_MAX_ALLOWED = 50_000
    EXACT_MAX_FRACTION = 0.05
    FILTER_CACHE = 64

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        *,
        mode: str,
        lock: int | None,
        vectors: ExactIndex,
        ann: HnswIndex | None,
        store: Store,
    ) -> None:
        """Use Collection.create or Collection.open."""
        self.path = folder
        self.mode = mode
        self.manifest = manifest
        self._vectors = vectors
        self._ann = ann
        self._store = store
        self._next_id = int(manifest["next_id"])
        self._dirty = False
        self._filters: OrderedDict[str, NDArray[np.int64]] = OrderedDict()
        self._bm25: BM25 | None = None
        self._bm25_file: Any = None  # open handle on this generation's BM25 file (read on first use)
        self._bm25_stale = False
        # last, so that a failure above leaves the lock to the caller: a writer dropped without close() (out
        # of scope, garbage collected) still gives its lock back
        self._release = (
            weakref.finalize(self, _give_up_writing, lock, folder / self.WORKING)
            if lock is not None
            else None
        )

    # ------------------------------------------------------------------ create / open / close
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        dim: int,
        metric: str = "cos",
        dtype: str = "f32",
        index: str = "exact",
        model: Any = None,
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
        threads: int = 0,
        bm25: bool | Mapping[str, Any] = False,
        analyzer: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Collection:
        """A new, empty collection at `path` (saved at once), open for writing.

        bm25: keep a BM25 index of the texts too (True, or BM25 options such as {"language": "english"}),
        rebuilt on save() after adds or deletes. analyzer: how BM25 splits texts into terms (see
        duorank.analyzers: "cjk", the default, reads Chinese, Japanese and Korean text as character
        bigrams; "standard"; "jieba"), recorded and used for queries too. extra: JSON-able settings kept
        in the manifest (the Engine records its models and chunking there).

        dtype: what the index scans (f32, f16, i8); the float32 vectors are always kept. model: an Embedder
        or its fingerprint string, checked when the collection is opened with an embedder.
        """
        folder = Path(path)
        if (folder / cls.MANIFEST).exists():
            raise FileExistsError(
                f"{folder} already holds a collection: Collection.open({str(folder)!r}, 'a')"
            )
        if metric != "cos":
            raise ValueError(f"metric {metric!r}: collections search by cosine ('cos') only")
        if index not in ("exact", "hnsw"):
            raise ValueError(f"index {index!r}, expected 'exact' or 'hnsw'")
        store_dtype = Dtype.parse(dtype)
        vectors = ExactIndex(dim=dim, dtype=store_dtype if index == "exact" else Dtype.F32)
        ann = None
        hnsw: dict[str, Any] = {
            "connectivity": connectivity,
            "expansion_add": expansion_add,
            "expansion_search": expansion_search,
        }
        if index == "hnsw":
            ann = HnswIndex(dim=dim, dtype=store_dtype, threads=threads, **hnsw)
        folder.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(folder / cls.LOCK)
        try:
            manifest = {
                "format": cls.FORMAT,
                "version": cls.VERSION,
                "dim": int(dim),
                "metric": metric,
                "dtype": store_dtype.value,
                "index": index,
                "model": _fingerprint(model),
                "count": 0,
                "next_id": 0,
                "hnsw": hnsw if index == "hnsw" else None,
                "bm25": _bm25_options(bm25, analyzer),
                "extra": dict(extra or {}),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            store = _fresh_store(folder / cls.WORKING)
            self = cls(folder, manifest, mode="a", lock=lock, vectors=vectors, ann=ann, store=store)
        except BaseException:
            _release_lock(lock)
            raise
        self._dirty = True
        self.save()
        return self

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        mode: str = "r",
        *,
        embedder: Any = None,
        model: str | None = None,
        verify: bool = True,
        threads: int = 0,
    ) -> Collection:
        """Open a saved collection: mode "r" maps a read-only snapshot (any number of readers, in any
        process); mode "a" loads it into memory for add/delete/save and takes the writer's lock.

        embedder (or model, its fingerprint): refuse a collection built with another model or dimension.
        verify: check every file's sha256 (reads every byte; sizes, shapes and counts are always checked).
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode {mode!r}, expected 'r' (read-only snapshot) or 'a' (add, delete, save)")
        folder = Path(path)
        if not (folder / cls.MANIFEST).is_file():
            what = "no such folder" if not folder.exists() else f"no {cls.MANIFEST}"
            raise IndexFormatError(f"{folder} is not a duorank collection ({what}); create it first")
        lock = _take_lock(folder / cls.LOCK) if mode == "a" else None
        try:
            for attempt in range(10):
                raw = (folder / cls.MANIFEST).read_bytes()
                try:
                    self = cls._open_generation(folder, mode, lock, verify=verify, threads=threads)
                    break
                except IndexFormatError:
                    # A writer may have switched generations (and removed the files we were reading)
                    # between our reading the manifest and opening its files: read the new one.
                    if mode == "a" or attempt == 9 or (folder / cls.MANIFEST).read_bytes() == raw:
                        raise
                    log.debug("%s changed while opening; retrying", folder)
        except BaseException:
            if lock is not None:
                _release_lock(lock)
            raise
        try:
            self._check_model(embedder, model)
        except BaseException:
            self.close()
            raise
        return self

    @classmethod
    def _open_generation(
        cls, folder: Path, mode: str, lock: int | None, *, verify: bool, threads: int
    ) -> Collection:
        man = read_manifest(folder, cls.MANIFEST, cls.FORMAT, cls.VERSION)
        if isinstance(man.get("bm25"), dict):  # made before analyzers: words only, and kept so on rebuild
            man["bm25"].setdefault("analyzer", "standard")
        try:
            dim, count, next_id = int(man["dim"]), int(man["count"]), int(man["next_id"])
            dtype, index = Dtype.parse(man["dtype"]), str(man["index"])
            if man["metric"] != "cos" or index not in ("exact", "hnsw") or count < 0 or next_id < count:
                raise ValueError(
                    f"metric {man['metric']!r}, index {index!r}, count {count}, next_id {next_id}"
                )
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFormatError(f"{folder / cls.MANIFEST} has invalid fields: {e}") from e
        mmap = mode == "r"
        vectors = ExactIndex(dim=dim, dtype=dtype if index == "exact" else Dtype.F32)
        vectors.read_arrays(folder, man, count, mmap=mmap, verify=verify)
        ann = None
        if index == "hnsw":
            options = {**(man.get("hnsw") or {}), "dim": dim, "dtype": dtype.value, "count": count}
            ann = HnswIndex.from_manifest(folder, man, options, mmap=mmap, verify=verify, threads=threads)
        docs = checked_file(folder, man, "docs", verify=verify)
        try:
            if mmap:
                store = Store(docs, mode="r", immutable=True)
            else:
                _remove_working(folder / cls.WORKING)
                store = Store.copy(docs, folder / cls.WORKING)
            n_docs = len(store)
        except (ValueError, OSError, sqlite3.Error) as e:  # e.g. the file vanished: a writer moved on
            raise IndexFormatError(f"{docs} is not a readable document store ({e})") from e
        if n_docs != count:
            store.close()
            raise IndexFormatError(f"{docs} holds {n_docs} documents, the manifest says {count}")
        self = cls(folder, man, mode=mode, lock=lock, vectors=vectors, ann=ann, store=store)
        if man.get("bm25") is not None and count:
            try:
                self._bm25_file = open(checked_file(folder, man, "bm25", verify=verify), "rb")
            except BaseException:
                store.close()
                raise
        return self

    def _check_model(self, embedder: Any, model: str | None) -> None:
        if embedder is not None and int(embedder.dim) != self.dim:
            raise ModelMismatchError(
                f"{self.path} holds {self.dim}-d vectors; "
                f"the embedder {embedder.name!r} makes {embedder.dim}-d"
            )
        want = _fingerprint(embedder) if embedder is not None else model
        have = self.manifest.get("model")
        if want is not None and have is not None and want != have:
            raise ModelMismatchError(
                f"{self.path} was built with model {have!r}, not {want!r}: its vectors live in another "
                "space; re-index with this model or load the one it was built with"
            )

    def close(self) -> None:
        """Release the files (and a writer's lock). Unsaved changes are discarded, with a warning."""
        if self._dirty and self.mode == "a":
            log.warning("%s closed with unsaved changes (discarded): call save() first", self.path)
        self._store.close()
        if self._bm25_file is not None:
            self._bm25_file.close()
        if self._release is not None:
            self._release()  # once: removes the working copy, releases the lock
        self._dirty = False

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        """A writer's block that ends normally saves; one that ends by an exception keeps the saved state."""
        try:
            if exc_type is None and self._dirty and self.mode == "a":
                self.save()
        finally:
            if exc_type is not None:
                self._dirty = False  # discarded on purpose: no warning
            self.close()

    # ------------------------------------------------------------------ contents
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def index(self) -> str:
        return str(self.manifest["index"])

    @property
    def model(self) -> str | None:
        return self.manifest.get("model")

    @property
    def store(self) -> Store:
        """The document store (read it; change documents through the collection)."""
        return self._store

    def __len__(self) -> int:
        return len(self._vectors)

    def __repr__(self) -> str:
        return f"Collection({str(self.path)!r}, mode={self.mode!r}, n={len(self)}, index={self.index!r})"

    @property
    def vectors(self) -> NDArray[np.float32]:
        """The float32 rows in internal-id order (read-only view)."""
        return self._vectors.vectors

    @property
    def ids(self) -> NDArray[np.int64]:
        """Internal ids, ascending."""
        return self._vectors.ids

    def _writable(self, what: str) -> None:
        if self.mode != "a" or self._release is None or not self._release.alive:
            raise ValueError(
                f"{what}: {self.path} is open read-only; Collection.open(path, 'a') to change it"
            )

    def add(
        self,
        vectors: ArrayLike,
        texts: Sequence[str],
        ids: Sequence[str | int] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> NDArray[np.int64]:
        """Add documents (vectors in the collection's space, their texts, external ids, metadata); returns
        their internal ids. Nothing is added if anything is wrong. Call save() to persist."""
        self._writable("add")
        v = as_vectors(vectors, self.dim, "vectors")
        texts = list(texts)
        if len(texts) != v.shape[0]:
            raise ValueError(f"{v.shape[0]} vectors but {len(texts)} texts: one text per vector")
        new = np.arange(self._next_id, self._next_id + v.shape[0], dtype=np.int64)
        external: list[Any] = [str(i) for i in new] if ids is None else list(ids)
        self._store.add(texts, external, metadata, ids=new)
        try:
            self._vectors.add(v, new)
            if self._ann is not None:
                self._ann.add(v, new)
        except BaseException:  # all or nothing, Ctrl-C included
            if self._ann is not None:
                held = new[self._ann.contains(new)]
                if held.size:
                    self._ann.remove(held)
            held = new[np.isin(new, self._vectors.ids)]
            if held.size:
                self._vectors.remove(held)
            self._store.delete(new)
            raise
        self._next_id += v.shape[0]
        self._changed()
        return new

    def delete(self, ids: Sequence[str | int]) -> None:
        """Delete documents by external id; unknown or repeated ids raise ValueError and delete nothing."""
        self._writable("delete")
        external = [str(i) for i in ids]
        if len(set(external)) != len(external):
            counts = Counter(external)
            raise ValueError(f"delete: repeated ids {sorted(e for e, n in counts.items() if n > 1)[:10]}")
        internal = self._store.internal_ids(external)
        if not internal.size:
            return
        self._vectors.remove(internal)
        if self._ann is not None:
            self._ann.remove(internal)
        self._store.delete(internal)
        self._changed()

    def _changed(self) -> None:
        self._dirty = True
        self._filters.clear()
        self._bm25_stale = self.manifest.get("bm25") is not None

    # ------------------------------------------------------------------ search
    def allowed(self, where: Mapping[str, Any]) -> NDArray[np.int64]:
        """Internal ids whose metadata match the filter (cached per filter until the next change)."""
        key = json.dumps(where, sort_keys=True, default=repr)
        hit = self._filters.get(key)
        if hit is None:
            hit = self._store.where(where)
            self._filters[key] = hit
            if len(self._filters) > self.FILTER_CACHE:
                self._filters.popitem(last=False)
        else:
            self._filters.move_to_end(key)
        return hit

    def plan(
        self, where: Mapping[str, Any] | None, strategy: str = "auto"
    ) -> tuple[str, NDArray[np.int64] | None]:
        """The strategy a search with this filter runs, and the allowed internal ids (None: all)."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r}, expected one of {STRATEGIES}")
        if strategy == "hnsw" and self._ann is None:
            raise ValueError(f"strategy 'hnsw': {self.path} has an exact index (created with index='exact')")
        if where is None:
            return ("hnsw" if self._ann is not None and strategy != "exact" else "exact"), None
        allow = self.allowed(where)
        if not allow.size:
            return "no-match", allow
        few = allow.size <= self.EXACT_MAX_ALLOWED or allow.size <= self.EXACT_MAX_FRACTION * len(self)
        if self._ann is None or strategy == "exact" or (strategy == "auto" and few):
            return "exact-filtered", allow
        return "hnsw-filtered", allow

    def search(
        self,
        queries: ArrayLike | str | Sequence[str],
        k: int = 10,
        *,
        where: Mapping[str, Any] | None = None,
        strategy: str = "auto",
        fetch: bool = True,
    ) -> Found:
        """Top-k documents per query: by cosine for query vectors (one row or (n, dim)), by BM25 for query
        texts (a string or a list of strings; the collection must be created with bm25=True). `where`
        filters by metadata (see duorank.store).

        For vectors, strategy "auto" picks from the filter's selectivity: exact over the allowed rows when
        they are few, HNSW with oversampling and post-filtering otherwise (widened until k allowed
        documents are found whenever k exist); "exact" / "hnsw" force one. BM25 scores only the allowed
        documents. `Found.strategy` says which ran ("bm25" for texts; "no-match" when the filter matches
        nothing). fetch=False: the documents are read when first used (`Found.fetch()`), so that lists
        which are fused first read only the fused list's documents (what `Engine.search` does).
        """
        k = as_k(k)
        texts = _query_texts(queries)
        if texts is not None:
            if strategy != "auto":
                raise ValueError(f"strategy {strategy!r}: query texts are searched by BM25 (strategy 'auto')")
            allow = None if where is None else self.allowed(where)
            index = self.bm25()
            if (allow is not None and not allow.size) or index is None:
                found = self.documents(_empty(len(texts), k), "no-match" if index is not None else "bm25")
            else:
                found = self.documents(index.search(texts, k, allowed=allow), "bm25")
            return found.fetch() if fetch else found
        q = as_vectors(queries, self.dim, "queries")
        ran, allow = self.plan(where, strategy)
        if ran == "no-match":
            hits = _empty(q.shape[0], k)
        elif ran.startswith("hnsw"):
            hits = self._ann_search(q, k, allow)
        else:
            hits = self._vectors.search(q, k, allowed=allow)
        found = self.documents(hits, ran)
        return found.fetch() if fetch else found

    def vectors_of(self, ids: ArrayLike) -> NDArray[np.float32]:
        """The float32 rows of internal ids (any shape; -1 gives a zero row); unknown ids raise ValueError."""
        arr = np.asarray(ids, dtype=np.int64)
        out = np.zeros((*arr.shape, self.dim), np.float32)
        known = arr >= 0
        if known.any():
            out[known] = self._vectors.vectors[self._vectors.rows_of(arr[known], "vectors_of")]
        return out

    @property
    def next_id(self) -> int:
        """The internal id the next added document gets (ids are never reused)."""
        return self._next_id

    def bm25(self) -> BM25 | None:
        """The BM25 index of the texts (None when empty); ValueError if the collection has none."""
        if self.manifest.get("bm25") is None:
            raise ValueError(f"{self.path} has no BM25 index: create the collection with bm25=True")
        if self._bm25 is None or self._bm25_stale:
            if self._bm25_stale:
                self._rebuild_bm25()
            elif self._bm25_file is not None:
                try:
                    self._bm25 = BM25.read(self._bm25_file)
                except (ValueError, OSError, KeyError, zipfile.BadZipFile) as e:
                    raise IndexFormatError(f"{self.path}: the BM25 file is not readable ({e})") from e
        return self._bm25

    def _rebuild_bm25(self) -> None:
        ids, texts = self._store.texts()
        options = self.manifest.get("bm25") or {}
        t0 = time.perf_counter()
        self._bm25 = BM25.build(texts, ids, **options) if ids.size else None
        self._bm25_stale = False
        log.info("BM25 index of %d texts built in %.2f s", ids.size, time.perf_counter() - t0)

    def _ann_search(self, q: NDArray[np.float32], k: int, allow: NDArray[np.int64] | None) -> Hits:
        """HNSW search; over an f16/i8 graph, oversample and rescore with the float32 rows (as ExactIndex
        does), so compact storage costs speed, not the exact cosine scores and order."""
        assert self._ann is not None
        oversample = ExactIndex.OVERSAMPLE.get(self._ann.dtype, 1)
        if oversample == 1:
            return self._ann.search(q, k, allowed=allow)
        cand = self._ann.search(q, k * oversample, allowed=allow)
        valid = cand.ids >= 0
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        scores = np.einsum("qkd,qd->qk", self.vectors_of(cand.ids), qn, dtype=np.float32)
        scores[~valid] = -np.inf
        order = np.lexsort((np.where(valid, cand.ids, np.iinfo(np.int64).max), -scores), axis=1)[:, :k]
        return Hits(
            np.ascontiguousarray(np.take_along_axis(cand.ids, order, 1)),
            np.ascontiguousarray(np.take_along_axis(scores, order, 1)),
        )

    def documents(self, hits: Hits, strategy: str = "") -> Found:
        """Hits over this collection's internal ids with their documents (external ids, texts, metadata),
        read from the store when first used (`Found.fetch()`)."""
        return Found(hits.ids, hits.scores, strategy, self._read_documents)

    def _read_documents(self, ids: NDArray[np.int64]) -> Documents:
        unique = np.unique(ids[ids >= 0])
        try:
            rows = dict(zip(unique.tolist(), self._store.documents(unique))) if unique.size else {}
        except ValueError as e:  # ids the store no longer holds
            raise DuorankError(
                f"{self.path}: {e}: deleted after the search that found them; search again"
            ) from e
        ext, texts, meta = [], [], []
        for row in ids:
            docs = [rows[i] for i in row[row >= 0].tolist()]
            ext.append([d[0] for d in docs])
            texts.append([d[1] for d in docs])
            meta.append([d[2] for d in docs])
        return ext, texts, meta

    # ------------------------------------------------------------------ persistence
    def save(self) -> None:
        """Write the current state as a new generation, manifest last (atomic; see the module docstring)."""
        self._writable("save")
        manifest = {k: v for k, v in self.manifest.items() if k != "files"}
        manifest.update(count=len(self), next_id=self._next_id)
        if self._ann is not None:
            manifest["hnsw"] = dict(self._ann.config)
        blobs: dict[str, Any] = {"docs": ("sqlite", self._store.snapshot)}
        if self._ann is not None:
            blobs["ann"] = ("usearch", self._ann.write)
        if manifest.get("bm25") is not None and len(self):
            index = self.bm25()
            assert index is not None
            blobs["bm25"] = ("zip", index.write)
        t0 = time.perf_counter()
        write_generation(self.path, self.MANIFEST, manifest, self._vectors.arrays(), blobs)
        self.manifest = read_manifest(self.path, self.MANIFEST, self.FORMAT, self.VERSION)
        self._dirty = False
        log.info("saved %s: %d documents in %.2f s", self.path, len(self), time.perf_counter() - t0)

    @property
    def dirty(self) -> bool:
        """Whether there are changes save() has not written yet."""
        return self._dirty

    def stats(self) -> dict[str, Any]:
        """What is in the collection and on disk: counts, shape, model, index options, file sizes."""
        files = {k: int(v["bytes"]) for k, v in self.manifest.get("files", {}).items()}
        return {
            "path": str(self.path),
            "mode": self.mode,
            "count": len(self),
            "dim": self.dim,
            "metric": self.manifest["metric"],
            "dtype": self.manifest["dtype"],
            "index": self.index,
            "hnsw": self._ann.config if self._ann is not None else None,
            "model": self.model,
            "created": self.manifest.get("created"),
            "unsaved_changes": self._dirty,
            "bytes": files,
            "total_bytes": sum(files.values()),
        }


def _query_texts(queries: Any) -> list[str] | None:
    """The query texts, or None when the queries are vectors."""
    if isinstance(queries, str):
        return [queries]
    if isinstance(queries, Sequence) and len(queries) and all(isinstance(q, str) for q in queries):
        return list(queries)
    return None


def _empty(n: int, k: int) -> Hits:
    return Hits(np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32))


def _bm25_options(bm25: bool | Mapping[str, Any], analyzer: str | None) -> dict[str, Any] | None:
    if bm25 is False or bm25 is None:
        if analyzer is not None:
            raise ValueError(f"analyzer {analyzer!r} without BM25: create the collection with bm25=True")
        return None
    options = {} if bm25 is True else dict(bm25)
    if analyzer is not None:
        options["analyzer"] = analyzers.check(analyzer)
    options.setdefault("analyzer", analyzers.DEFAULT)
    BM25(**options)  # unknown options or languages fail now, not at the first save
    return options


def _fingerprint(model: Any) -> str | None:
    if model is None or isinstance(model, str):
        return model
    fp = getattr(model, "fingerprint", None)
    if not isinstance(fp, str):
        raise TypeError(f"model must be an Embedder or its fingerprint string, got {type(model).__name__}")
    return fp


def _remove_working(path: Path) -> None:
    """Remove a working store (and its -wal/-shm) left by a writer that died."""
    for p in path.parent.glob(path.name + "*"):
        p.unlink()


def _fresh_store(path: Path) -> Store:
    _remove_working(path)
    return Store(path, mode="a")


def _take_lock(path: Path) -> int:
    """An exclusive, non-blocking lock on `path` (released when the process dies, however it dies)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        where = (
            "by this process (another Collection or Engine object: close() it, or use it)"
            if holder == str(os.getpid())
            else f"elsewhere (pid {holder})"
        )
        raise CollectionLockedError(
            f"{path.parent} is open for writing {where}; one writer at a time: close it first, or open the "
            "collection read-only (mode='r')"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _give_up_writing(lock: int, working: Path) -> None:
    """What a writer leaves when it closes, or when it is garbage collected unclosed: no working copy of
    the documents, no lock."""
    _remove_working(working)
    _release_lock(lock)


def _release_lock(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
