"""Vector indexes. `ExactIndex`: exact cosine search over float32, float16 or int8 rows (Numba kernels)."""

from __future__ import annotations

import importlib
import logging
import threading
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import IndexFormatError
from .files import load_array, read_manifest, write_generation
from .hits import Hits
from .validate import as_ids, as_k, as_vectors

log = logging.getLogger(__name__)

_NO_SCALES = np.empty(0, np.float32)
_NO_MASK = np.empty(0, np.bool_)
# One search at a time uses the kernels' thread pool (Numba's workqueue layer is not re-entrant).
_KERNEL_LOCK = threading.Lock()


class Dtype(str, Enum):
    """Storage of the searched copy of the vectors; float32 originals are kept for rescoring."""

    F32 = "f32"
    F16 = "f16"
    I8 = "i8"

    @classmethod
    def parse(cls, value: object) -> Dtype:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"dtype must be one of {[d.value for d in cls]}, got {value!r}") from None


class Index(Protocol):
    """What every index offers."""

    dim: int

    def add(self, vectors: ArrayLike, ids: ArrayLike | None = None) -> NDArray[np.int64]: ...
    def remove(self, ids: ArrayLike) -> None: ...
    def search(self, queries: ArrayLike, k: int = 10, *, allowed: ArrayLike | None = None) -> Hits: ...
    def __len__(self) -> int: ...
    def save(self, path: str | Path) -> None: ...


def _threads() -> int:
    import numba

    return int(numba.get_num_threads())


def limit_kernel_threads(n: int) -> None:
    """Run this process's Numba kernels on n threads (at most the pool's size): a Ray actor or task holds
    this many CPUs, and Numba does not read Ray's share."""
    import numba

    numba.set_num_threads(max(1, min(int(n), int(numba.config.NUMBA_NUM_THREADS))))  # type: ignore[attr-defined]


def load_kernels() -> Any:
    # lazy: importing numba costs ~0.3 s, `import duorank` must not pay it
    return importlib.import_module("duorank.kernels")


class ExactIndex:
    """Exact cosine (normalised dot product) search with Numba kernels.

    Rows are L2-normalised on add and kept sorted by id, so equal scores rank the smaller id first.
    dtype f16/i8 stores a compact copy that is scanned; results are rescored against the float32 rows
    (oversampled candidates) unless search(..., rescore=False).
    """

    FORMAT = "duorank-exact-index"
    VERSION = 1
    MANIFEST = "index.json"
    # Candidates scanned per requested result before float32 rescoring.
    OVERSAMPLE: ClassVar[dict[Dtype, int]] = {Dtype.F16: 2, Dtype.I8: 4}
    # From this many queries on, rows are scored with BLAS in blocks (bench/test_exact_search.py).
    BLAS_MIN_QUERIES = 64
    BLAS_BLOCK_ROWS = 16384
    # A filter allowing fewer than 1/GATHER_MAX_FRACTION of the rows scores only the allowed rows.
    GATHER_MAX_FRACTION = 16

    def __init__(self, *, dim: int, dtype: str | Dtype = "f32", normalize: bool = True) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = int(dim)
        self.dtype = Dtype.parse(dtype)
        self.normalize = bool(normalize)
        self._ids: NDArray[np.int64] = np.empty(0, np.int64)
        self._vectors: NDArray[np.float32] = np.empty((0, self.dim), np.float32)
        self._codes: NDArray[Any] = self._encode(self._vectors)[0]
        self._scales: NDArray[np.float32] = _NO_SCALES

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self) -> str:
        return f"ExactIndex(dim={self.dim}, dtype={self.dtype.value!r}, n={len(self)})"

    @property
    def ids(self) -> NDArray[np.int64]:
        """The ids held, ascending (a copy)."""
        return self._ids.copy()

    @property
    def vectors(self) -> NDArray[np.float32]:
        """The float32 rows in id order (read-only view)."""
        v = self._vectors.view()
        v.flags.writeable = False
        return v

    def __contains__(self, id_: object) -> bool:
        if isinstance(id_, bool) or not isinstance(id_, (int, np.integer)):
            return False
        i = np.searchsorted(self._ids, id_)
        return bool(i < len(self) and self._ids[i] == id_)

    def rows_of(self, ids: NDArray[np.int64], what: str) -> NDArray[np.int64]:
        rows = np.searchsorted(self._ids, ids)
        found = rows < len(self)
        found[found] = self._ids[rows[found]] == ids[found]
        if not found.all():
            missing = ids[~found]
            raise ValueError(f"{what}: {missing.size} unknown id(s), first {missing[:10].tolist()}")
        return rows.astype(np.int64)

    def _encode(self, v: NDArray[np.float32]) -> tuple[NDArray[Any], NDArray[np.float32]]:
        if self.dtype is Dtype.F32:
            return v, _NO_SCALES
        if self.dtype is Dtype.F16:
            return v.astype(np.float16).view(np.uint16), _NO_SCALES
        codes = np.empty(v.shape, np.int8)
        scales = np.empty(v.shape[0], np.float32)
        load_kernels().quantize_rows_i8(v, codes, scales)
        return codes, scales

    def add(self, vectors: ArrayLike, ids: ArrayLike | None = None) -> NDArray[np.int64]:
        """Add rows (normalised if the index normalises); ids default to max id + 1 on. Returns the ids."""
        v = as_vectors(vectors, self.dim, "vectors", copy=self.normalize)
        start = int(self._ids[-1]) + 1 if len(self) else 0
        new_ids = np.arange(start, start + v.shape[0], dtype=np.int64) if ids is None else as_ids(ids)
        if new_ids.shape[0] != v.shape[0]:
            raise ValueError(f"got {v.shape[0]} vectors but {new_ids.shape[0]} ids")
        if v.shape[0] == 0:
            return new_ids
        clash = np.intersect1d(new_ids, self._ids)
        if clash.size:
            raise ValueError(f"ids already in the index: {clash[:10].tolist()} ({clash.size} in all)")
        if self.normalize:
            norms = np.empty(v.shape[0], np.float32)
            load_kernels().normalize_rows(v, norms)
            zero = np.flatnonzero(norms == 0)
            if zero.size:
                log.warning(
                    "%d zero vector(s) added (they score 0 against every query), ids %s",
                    zero.size,
                    new_ids[zero][:10].tolist(),
                )
        codes, scales = self._encode(v)
        ids_all = np.concatenate([self._ids, new_ids])
        appended = (not len(self) or new_ids[0] > self._ids[-1]) and bool(np.all(np.diff(new_ids) > 0))
        order = None if appended else np.argsort(ids_all, kind="stable")
        self._ids = ids_all if order is None else ids_all[order]
        self._vectors = self._concat(self._vectors, v, order)
        if self.dtype is not Dtype.F32:
            self._codes = self._concat(self._codes, codes, order)
        else:
            self._codes = self._vectors
        if self.dtype is Dtype.I8:
            self._scales = self._concat(self._scales, scales, order)
        return new_ids

    @staticmethod
    def _concat(old: NDArray[Any], new: NDArray[Any], order: NDArray[np.int64] | None) -> NDArray[Any]:
        both = np.concatenate([old, new])
        return both if order is None else np.ascontiguousarray(both[order])

    def remove(self, ids: ArrayLike) -> None:
        """Remove rows by id; unknown or duplicate ids raise ValueError and remove nothing."""
        drop = self.rows_of(as_ids(ids), "remove")
        keep = np.ones(len(self), np.bool_)
        keep[drop] = False
        self._ids = self._ids[keep]
        self._vectors = np.ascontiguousarray(self._vectors[keep])
        self._codes = self._vectors if self.dtype is Dtype.F32 else np.ascontiguousarray(self._codes[keep])
        if self.dtype is Dtype.I8:
            self._scales = np.ascontiguousarray(self._scales[keep])

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: ArrayLike,
        k: int = 10,
        *,
        allowed: ArrayLike | None = None,
        rescore: bool = True,
    ) -> Hits:
        """Top-k rows by cosine for each query row (a 1-D query is one row); only `allowed` ids if given.

        rescore (f16/i8 only): scan k x OVERSAMPLE candidates in the compact copy, then score them exactly
        in float32. With rescore=False the scores are the compact copy's approximations.
        """
        q = as_vectors(queries, self.dim, "queries", copy=self.normalize)
        k = as_k(k)
        if self.normalize:
            load_kernels().normalize_rows(q, np.empty(q.shape[0], np.float32))
        mask = _NO_MASK
        if allowed is not None:
            mask = np.zeros(len(self), np.bool_)
            mask[self.rows_of(as_ids(allowed, "allowed"), "allowed")] = True
        n_out = min(k, len(self))
        rows = np.full((q.shape[0], n_out), -1, np.int64)
        scores = np.full((q.shape[0], n_out), -np.inf, np.float32)
        if n_out and q.shape[0]:
            with _KERNEL_LOCK:
                self._search_rows(q, mask, rows, scores, rescore=rescore)
        ids = np.where(rows >= 0, self._ids[np.maximum(rows, 0)] if len(self) else -1, -1)
        if n_out < k:
            ids = np.pad(ids, ((0, 0), (0, k - n_out)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - n_out)), constant_values=-np.inf)
        return Hits(ids=np.ascontiguousarray(ids, np.int64), scores=np.ascontiguousarray(scores, np.float32))

    def _search_rows(
        self,
        q: NDArray[np.float32],
        mask: NDArray[np.bool_],
        rows: NDArray[np.int64],
        scores: NDArray[np.float32],
        *,
        rescore: bool,
    ) -> None:
        K = load_kernels()
        k = rows.shape[1]
        exact = self.dtype is Dtype.F32 or not rescore
        m = k if exact else min(len(self), k * self.OVERSAMPLE[self.dtype])
        cand_rows = rows if exact else np.full((q.shape[0], m), -1, np.int64)
        cand_scores = scores if exact else np.full((q.shape[0], m), -np.inf, np.float32)
        if mask.size and np.count_nonzero(mask) * self.GATHER_MAX_FRACTION < len(self):
            # Few allowed rows: score just those rows instead of scanning the corpus.
            allowed_rows = np.tile(np.flatnonzero(mask), (q.shape[0], 1))
            allowed_scores = np.empty(allowed_rows.shape, np.float32)
            K.dot_gather(q, self._codes, self._scales, allowed_rows, allowed_scores)
            K.topk_merge(allowed_rows, allowed_scores, cand_rows, cand_scores)
        elif q.shape[0] >= self.BLAS_MIN_QUERIES:
            # Many queries: compute-bound, so BLAS scores row blocks (decoded to float32 if compact).
            compact = self.dtype is not Dtype.F32
            block = np.empty((min(self.BLAS_BLOCK_ROWS, len(self)) if compact else 0, self.dim), np.float32)
            for i0 in range(0, len(self), self.BLAS_BLOCK_ROWS):
                n_blk = min(self.BLAS_BLOCK_ROWS, len(self) - i0)
                if not compact:
                    rows_f32 = self._vectors[i0 : i0 + n_blk]
                else:
                    rows_f32 = block[:n_blk]
                    K.decode_rows(self._codes, self._scales, i0, rows_f32)
                sub_mask = mask[i0 : i0 + n_blk] if mask.size else mask
                K.topk_push_scores(q @ rows_f32.T, i0, sub_mask, cand_rows, cand_scores)
        else:
            K.topk_push_dot(q, self._codes, self._scales, 0, mask, cand_rows, cand_scores, _threads())
        if not exact:
            exact_scores = np.empty_like(cand_scores)
            K.dot_gather(q, self._vectors, _NO_SCALES, cand_rows, exact_scores)
            K.topk_merge(cand_rows, exact_scores, rows, scores)
        K.topk_sort(rows, scores)

    # ------------------------------------------------------------------ persistence
    def arrays(self) -> dict[str, NDArray[Any]]:
        """The arrays save() writes, by file key (a collection stores them in its own generation)."""
        arrays: dict[str, NDArray[Any]] = {"ids": self._ids, "vectors": self._vectors}
        if self.dtype is Dtype.F16:
            arrays["codes"] = self._codes.view(np.float16)
        elif self.dtype is Dtype.I8:
            arrays["codes"] = self._codes
            arrays["scales"] = self._scales
        return arrays

    def save(self, path: str | Path) -> None:
        """Write the index into folder `path` atomically (data files first, manifest `index.json` last)."""
        manifest = {
            "format": self.FORMAT,
            "version": self.VERSION,
            "dim": self.dim,
            "dtype": self.dtype.value,
            "normalize": self.normalize,
            "count": len(self),
        }
        write_generation(Path(path), self.MANIFEST, manifest, self.arrays())

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True, verify: bool = True) -> ExactIndex:
        """Open a saved index; mmap=True maps the arrays read-only (adds/removes then copy into memory).

        verify=True checks every file's sha256 (reads every byte once); sizes and shapes are always checked.
        """
        folder = Path(path)
        man = read_manifest(folder, cls.MANIFEST, cls.FORMAT, cls.VERSION)
        try:
            index = cls(dim=int(man["dim"]), dtype=str(man["dtype"]), normalize=bool(man["normalize"]))
            count = int(man["count"])
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFormatError(f"{folder / cls.MANIFEST} has invalid fields: {e}") from e
        index.read_arrays(folder, man, count, mmap=mmap, verify=verify)
        return index

    def read_arrays(self, folder: Path, man: dict[str, Any], count: int, *, mmap: bool, verify: bool) -> None:
        """Fill this (empty) index from the files `man` names, checking sizes, shapes and order."""
        ids = load_array(folder, man, "ids", mmap=False, verify=verify)
        vectors = load_array(folder, man, "vectors", mmap=mmap, verify=verify)
        expect = {"ids": (ids, (count,), np.int64), "vectors": (vectors, (count, self.dim), np.float32)}
        codes: NDArray[Any] = vectors
        if self.dtype is Dtype.F16:
            codes = load_array(folder, man, "codes", mmap=mmap, verify=verify)
            expect["codes"] = (codes, (count, self.dim), np.float16)
            codes = codes.view(np.uint16)
        elif self.dtype is Dtype.I8:
            codes = load_array(folder, man, "codes", mmap=mmap, verify=verify)
            scales = load_array(folder, man, "scales", mmap=False, verify=verify)
            expect["codes"] = (codes, (count, self.dim), np.int8)
            expect["scales"] = (scales, (count,), np.float32)
            self._scales = scales
        for key, (arr, shape, dtype) in expect.items():
            if arr.shape != shape or arr.dtype != dtype or not arr.flags.c_contiguous:
                raise IndexFormatError(
                    f"{folder}: {key} is {arr.dtype}{arr.shape}, expected {np.dtype(dtype)}{shape}"
                )
        if count > 1 and not (np.diff(ids) > 0).all():
            raise IndexFormatError(f"{folder}: ids are not strictly ascending: the index is corrupt")
        self._ids, self._vectors, self._codes = ids, vectors, codes
