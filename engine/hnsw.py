"""Approximate search: an HNSW graph built by USearch behind the same protocol as ExactIndex.

Vectors are L2-normalised here (zero rows stay zero) and searched by cosine, so scores are the
same cosines ExactIndex returns and the two can be compared id for id (`recall_against`). Saved as a
folder: `ann.<generation>.usearch` (USearch's own format, readable from C/C++/Rust/Go) and the manifest
`index.json` last, with the file's size and sha256. `load(mmap=True)` memory-maps the file read-only
(USearch `view`): many processes can serve one copy; adding to a viewed index is an error.

The graph is USearch's format and USearch holds it (inserts of fewer rows than the index holds, removals,
files). An add at least as large as the index is built by duorank instead (`builder="duorank"`, the
default; kernels/hnsw_build.py): FAISS's variant of HNSW, which reaches a recall with a smaller beam than
USearch's graph of the same M, built on int8 codes in parallel batches, then handed to USearch as a file
it reads as its own. Searches walk the graph with duorank's kernel (hnsw_graph.py), which reads USearch's
saved form: on the same graph it returns what USearch's search returns, 2x faster. The search
form is read on the first search after a change (O(n): an in-memory index is saved to a buffer that USearch
then views, so the vectors stay held once); the next add or remove gives USearch a writable copy back.
Searches of one index from several threads are serialised (the walk's visit tags are per index).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import IndexFormatError
from .files import checked_file, read_manifest, write_generation
from .hits import Hits
from .hnsw_graph import UsearchGraph, built, retyped
from .index import Dtype, load_kernels
from .validate import as_ids, as_k, as_vectors

log = logging.getLogger(__name__)

_USEARCH_DTYPE = {Dtype.F32: "f32", Dtype.F16: "f16", Dtype.I8: "i8"}


class HnswIndex:
    """HNSW over USearch: add(vectors, ids), remove(ids), search(queries, k, allowed=None) -> Hits."""

    FORMAT = "duorank-hnsw-index"
    VERSION = 1
    MANIFEST = "index.json"

    def __init__(
        self,
        *,
        dim: int,
        dtype: str | Dtype = "f32",
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
        threads: int = 0,
        builder: str = "duorank",
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        try:
            self.dtype = Dtype(dtype)
        except ValueError:
            raise ValueError(f"dtype {dtype!r}, expected one of {[d.value for d in Dtype]}") from None
        for name, v in (
            ("connectivity", connectivity),
            ("expansion_add", expansion_add),
            ("expansion_search", expansion_search),
        ):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2:
                raise ValueError(f"{name} must be an int >= 2, got {v!r}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0: all cores), got {threads}")
        self.dim = int(dim)
        self.threads = int(threads)
        if builder not in ("duorank", "usearch"):
            raise ValueError(f"builder {builder!r}, expected 'duorank' or 'usearch'")
        self.builder = builder
        self.config = {
            "connectivity": int(connectivity),
            "expansion_add": int(expansion_add),
            "expansion_search": int(expansion_search),
        }
        self._index = self._usearch(self.dtype)
        self._viewed = False
        self._mapped: np.memmap[Any, np.dtype[np.uint8]] | None = None  # the file's bytes when viewed
        self._graph: UsearchGraph | None = None  # the search form, None after each change

    def _usearch(self, dtype: Dtype) -> Any:
        from usearch.index import Index

        c = self.config
        return Index(
            ndim=self.dim,
            metric="cos",
            dtype=_USEARCH_DTYPE[dtype],
            connectivity=c["connectivity"],
            expansion_add=c["expansion_add"],
            expansion_search=c["expansion_search"],
        )

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"HnswIndex(dim={self.dim}, dtype={self.dtype.value!r}, n={len(self)}, {self.config})"

    def __contains__(self, id_: object) -> bool:
        return (
            isinstance(id_, (int, np.integer))
            and not isinstance(id_, bool)
            and bool(self._index.contains(int(id_)))
        )

    def contains(self, ids: ArrayLike) -> NDArray[np.bool_]:
        """For each id, whether the index holds it."""
        arr = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        if not arr.size or not len(self):
            return np.zeros(arr.shape, dtype=np.bool_)
        return np.asarray(self._index.contains(arr.astype(np.uint64)), dtype=np.bool_).reshape(arr.shape)

    @property
    def expansion_search(self) -> int:
        return int(self._index.expansion_search)

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
            raise ValueError(f"expansion_search must be an int >= 2, got {value!r}")
        self._index.expansion_search = int(value)  # type: ignore[misc]  # a setter at run time
        self.config["expansion_search"] = int(value)

    def _writable(self, what: str) -> None:
        if self._viewed:
            raise ValueError(
                f"{what}: this index is memory-mapped read-only; load(path, mmap=False) to modify it"
            )

    def add(
        self, vectors: ArrayLike, ids: ArrayLike | None = None, *, progress: bool | None = None
    ) -> NDArray[np.int64]:
        """Add rows (normalised); ids default to max id + 1 on. Multi-threaded; a bar for large adds."""
        self._writable("add")
        v = as_vectors(vectors, self.dim, "vectors", copy=True)
        start = int(np.max(self._index.keys)) + 1 if len(self) else 0
        new_ids = np.arange(start, start + v.shape[0], dtype=np.int64) if ids is None else as_ids(ids)
        if new_ids.shape[0] != v.shape[0]:
            raise ValueError(f"got {v.shape[0]} vectors but {new_ids.shape[0]} ids")
        if v.shape[0] == 0:
            return new_ids
        if len(self):
            clash = new_ids[np.asarray(self._index.contains(new_ids), dtype=bool)]
            if clash.size:
                raise ValueError(f"ids already in the index: {clash[:10].tolist()} ({clash.size} in all)")
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        np.divide(v, norms, out=v, where=norms > 0)
        if (norms == 0).any():
            log.warning("%d zero vector(s) added (they score 0 against every query)", int((norms == 0).sum()))
        bar = None
        if progress or (progress is None and v.shape[0] >= 50_000):
            from tqdm.auto import tqdm

            # progress=None: a bar only on a terminal (logs and CI get none)
            bar = tqdm(
                total=v.shape[0],
                desc="hnsw add",
                unit="vec",
                leave=False,
                disable=False if progress else None,
            )

        def tick(done: int, total: int) -> bool:
            if bar is not None:
                bar.total = total  # a rebuild counts the rows already held too
                bar.update(done - bar.n)
            return True

        # usearch checks the callback's annotations as types; this module's are strings (future import)
        tick.__annotations__ = {"done": int, "total": int, "return": bool}

        self._thaw()
        try:
            if v.shape[0] >= len(self):
                self._index = self._rebuilt(new_ids, v, tick if bar else None)
            else:
                self._index.add(
                    new_ids.astype(np.uint64), v, threads=self.threads, progress=tick if bar else None
                )
        finally:
            if bar is not None:
                bar.close()
        return new_ids

    def _rebuilt(self, ids: NDArray[np.int64], v: NDArray[np.float32], progress: Any) -> Any:
        """A new graph over the live rows and (ids, v), built by the index's builder and handed to USearch as
        the bytes of its file. Used when an add at least doubles the index, so it never costs more than
        inserting into the old graph; removed rows' waypoints go with the old graph."""
        if len(self):
            keep = np.asarray(self._index.keys, dtype=np.int64)
            old = np.asarray(self._index.get(keep.astype(np.uint64), dtype=np.float32), dtype=np.float32)
            old = old.reshape(keep.size, self.dim)
            if self.dtype is not Dtype.F32:  # decoded f16 / i8 rows: back to unit length
                load_kernels().normalize_rows(old, np.empty(keep.size, np.float32))
            ids = np.concatenate([keep, ids])
            v = np.concatenate([old, v])
        dtype = _USEARCH_DTYPE[self.dtype]
        if self.builder == "usearch":  # USearch builds on int8 codes; the file then gets the rows back
            codes = self._usearch(Dtype.I8)
            codes.add(ids.astype(np.uint64), v, threads=self.threads, progress=progress)
            data = np.frombuffer(codes.save(), dtype=np.uint8)
            del codes
            if self.dtype is not Dtype.I8:
                data = retyped(data, self.dim, ids, v, dtype)
        else:
            c = self.config
            data = built(
                v,
                ids,
                dtype,
                connectivity=c["connectivity"],
                expansion_add=c["expansion_add"],
                threads=self._threads(),
                progress=progress,
            )
        return self._restored(data, view=False)

    def remove(self, ids: ArrayLike) -> None:
        """Remove rows by id; unknown or duplicate ids raise ValueError and remove nothing."""
        self._writable("remove")
        drop = as_ids(ids)
        known = np.asarray(self._index.contains(drop), dtype=bool) if drop.size else np.zeros(0, bool)
        if not known.all():
            missing = drop[~known]
            raise ValueError(f"remove: {missing.size} unknown id(s), first {missing[:10].tolist()}")
        if drop.size:
            self._thaw()
            self._index.remove(drop.astype(np.uint64))

    def search(self, queries: ArrayLike, k: int = 10, *, allowed: ArrayLike | None = None) -> Hits:
        """Approximate top-k by cosine: duorank's walk of the USearch graph (module docstring). With `allowed`
        (ids), the walk returns only allowed nodes, and rows that still come back with fewer than
        min(k, allowed) results, or filters so selective that the walk would read most of the graph, are
        scored exactly over the allowed rows' stored vectors."""
        k = as_k(k)
        q = as_vectors(queries, self.dim, "queries")  # the walk divides by each query's norm itself
        n = q.shape[0]
        if n == 0 or len(self) == 0:
            return Hits(np.full((n, k), -1, dtype=np.int64), np.full((n, k), -np.inf, dtype=np.float32))
        graph = self._searchable()
        ef = max(self.expansion_search, k)
        if allowed is None:
            return Hits(*graph.search(q, k, ef, threads=self._threads()))
        allow = graph.slots_of(np.unique(as_ids(allowed)))
        want = min(k, int(allow.size))
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        if want == 0:
            return Hits(ids, scores)
        todo = np.arange(n)
        if allow.size > max(4 * ef, len(self) // 100):
            ids, scores = graph.search(q, k, ef, slots=allow, threads=self._threads())
            todo = np.flatnonzero((ids >= 0).sum(axis=1) < want)
        if todo.size:
            vecs = graph.rows(allow)
            present = graph.keys[allow]
            unit = q[todo].copy()
            load_kernels().normalize_rows(unit, np.empty(todo.size, np.float32))
            for row, u in zip(todo.tolist(), unit):
                s = vecs @ u
                order = np.lexsort((present, -s))[:k]  # ties: the smaller id first
                ids[row] = -1
                scores[row] = -np.inf
                ids[row, : order.size] = present[order]
                scores[row, : order.size] = s[order]
        return Hits(ids, scores)

    def _threads(self) -> int:
        if self.threads:
            return self.threads
        import numba

        return int(numba.get_num_threads())

    def _searchable(self) -> UsearchGraph:
        """The graph in search form: read once after each change (a mapped file is read in place; an
        in-memory index is saved to a buffer that USearch then views, so the vectors are held once)."""
        if self._graph is None:
            if self._mapped is not None:
                self._graph = UsearchGraph(self._mapped, self.dim, source=str(self._mapped.filename))
            else:
                buf = self._index.save()
                assert buf is not None  # save() without a path returns the bytes
                graph = UsearchGraph(np.frombuffer(buf, dtype=np.uint8), self.dim, source="HnswIndex")
                self._index = self._restored(buf, view=True)
                self._graph = graph
        return self._graph

    def _thaw(self) -> None:
        """Before a change: an index frozen by _searchable gets its own, writable USearch copy back."""
        if self._graph is not None and not self._viewed:
            self._index = self._restored(self._graph.data, view=False)
        self._graph = None

    def _restored(self, data: Any, *, view: bool) -> Any:
        from usearch.index import Index

        index = Index.restore(data, view=view)
        if index is None:
            raise IndexFormatError("USearch could not read back the index it saved")
        index.expansion_add = self.config["expansion_add"]  # type: ignore[misc]
        index.expansion_search = self.config["expansion_search"]  # type: ignore[misc]
        return index

    def recall_against(self, exact: Any, queries: ArrayLike, k: int = 10) -> float:
        """Mean recall@k of this index's results against exact search on the same vectors."""
        truth = exact.search(queries, k)
        got = self.search(queries, k)
        hits = 0
        total = 0
        for t, g in zip(truth.ids, got.ids):
            t = t[t >= 0]
            hits += np.intersect1d(t, g[g >= 0]).size
            total += t.size
        return hits / total if total else 1.0

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the index into folder `path` atomically (the .usearch file first, `index.json` last)."""
        manifest = {
            "format": self.FORMAT,
            "version": self.VERSION,
            "dim": self.dim,
            "dtype": self.dtype.value,
            "count": len(self),
            **self.config,
        }
        write_generation(Path(path), self.MANIFEST, manifest, {}, {"ann": ("usearch", self.write)})

    def write(self, file: Path) -> None:
        """Write the graph to one file in USearch's own format."""
        self._index.save(str(file))

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True, verify: bool = True, threads: int = 0) -> HnswIndex:
        """Open a saved index; mmap=True views the file read-only (shared between processes)."""
        folder = Path(path)
        man = read_manifest(folder, cls.MANIFEST, cls.FORMAT, cls.VERSION)
        return cls.from_manifest(folder, man, man, mmap=mmap, verify=verify, threads=threads)

    @classmethod
    def from_manifest(
        cls,
        folder: Path,
        man: dict[str, Any],
        options: dict[str, Any],
        *,
        mmap: bool,
        verify: bool,
        threads: int = 0,
    ) -> HnswIndex:
        """The index in the file `man` names under key "ann"; `options` holds dim, dtype, count and the
        graph parameters (the index's own manifest, or a collection's)."""
        from usearch.index import Index

        try:
            self = cls(
                dim=int(options["dim"]),
                dtype=str(options["dtype"]),
                connectivity=int(options["connectivity"]),
                expansion_add=int(options["expansion_add"]),
                expansion_search=int(options["expansion_search"]),
                threads=threads,
            )
            count = int(options["count"])
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFormatError(f"{folder}: the manifest has invalid HNSW fields: {e}") from e
        file = checked_file(folder, man, "ann", verify=verify)
        mapped = None
        try:
            # mmap: map the file once and let USearch view that mapping, so both read the same generation
            # even if a writer replaces the file meanwhile (a second open by path could find it gone)
            mapped = np.memmap(file, dtype=np.uint8, mode="r") if mmap else None
        except OSError as e:  # removed by a writer's save since checked_file: the caller may retry
            raise IndexFormatError(f"{file} could not be mapped ({e})") from e
        try:
            source: Any = mapped if mapped is not None else str(file)  # USearch takes any buffer
            index = Index.restore(source, view=mmap)
        except Exception as e:  # usearch raises RuntimeError / ValueError on damaged files
            raise IndexFormatError(f"{file} is not a readable USearch index ({e})") from e
        if index is None or index.ndim != self.dim or len(index) != count:
            got = None if index is None else (index.ndim, len(index))
            raise IndexFormatError(f"{file}: (dim, count) {got}, the manifest says {(self.dim, count)}")
        index.expansion_search = self.config["expansion_search"]  # type: ignore[misc]
        self._index = index
        self._viewed = bool(mmap)
        self._mapped = mapped
        return self
