"""The document store: SQLite (standard library), one table, WAL mode, and a small metadata filter language.

Table `documents(id INTEGER PRIMARY KEY, external_id TEXT UNIQUE, text TEXT, metadata TEXT)`: `id` is the
int64 the vector indexes use, `external_id` the caller's, `metadata` a JSON object. Any SQLite client can
read it. Filters are compiled to parameterised SQL over `json_extract`; values and JSON paths are always
bound parameters, never formatted into the SQL text.

Filter language (a dict; several keys in one dict mean AND):
    {"lang": "en"}                         equality
    {"year": {"gte": 2020, "lt": 2024}}    ranges: gt, gte, lt, lte; also eq, ne
    {"tag": {"in": ["a", "b"]}}            membership
    {"and": [f1, f2]}, {"or": [f1, f2]}, {"not": f}
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .validate import as_ids

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_OPS = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    external_id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
"""


class FilterError(ValueError):
    """A metadata filter that does not follow the filter language (the message says where)."""


def compile_filter(where: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """SQL condition and its parameters for a filter (see the module docstring)."""
    if not isinstance(where, Mapping) or not where:
        raise FilterError(f"a filter is a non-empty dict, got {where!r}")
    parts, params = [], []
    for key, value in where.items():
        if key in ("and", "or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise FilterError(f"{key!r} takes a non-empty list of filters, got {value!r}")
            subs = [compile_filter(v) for v in value]
            parts.append("(" + f" {key.upper()} ".join(s for s, _ in subs) + ")")
            params += [p for _, ps in subs for p in ps]
        elif key == "not":
            sql, ps = compile_filter(value)
            parts.append(f"(NOT {sql})")
            params += ps
        else:
            sql, ps = _field(key, value)
            parts.append(sql)
            params += ps
    return "(" + " AND ".join(parts) + ")", params


def _scalar(field: str, v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)  # JSON true/false come back from json_extract as 1/0
    if v is None or isinstance(v, (int, float, str)):
        return v
    raise FilterError(f"field {field!r}: value {v!r} must be a string, number, bool or None")


def _field(field: str, cond: Any) -> tuple[str, list[Any]]:
    if not _FIELD.match(field):
        raise FilterError(f"field name {field!r}: letters, digits and _ (dots for nested objects) only")
    path = "$." + field
    col = "json_extract(metadata, ?)"
    if not isinstance(cond, Mapping):
        if cond is None:
            return f"({col} IS NULL)", [path]
        return f"({col} = ?)", [path, _scalar(field, cond)]
    if not cond:
        raise FilterError(f"field {field!r}: empty condition")
    parts, params = [], []
    for op, v in cond.items():
        if op == "in":
            if not isinstance(v, (list, tuple)) or not v:
                raise FilterError(f"field {field!r}: 'in' takes a non-empty list, got {v!r}")
            parts.append(f"{col} IN ({', '.join('?' * len(v))})")
            params += [path, *(_scalar(field, x) for x in v)]
        elif op in _OPS:
            if op in ("gt", "gte", "lt", "lte") and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise FilterError(f"field {field!r}: {op!r} takes a number, got {v!r}")
            parts.append(f"{col} {_OPS[op]} ?")
            params += [path, _scalar(field, v)]
        else:
            raise FilterError(f"field {field!r}: unknown operator {op!r}; known: in, {', '.join(_OPS)}")
    return "(" + " AND ".join(parts) + ")", params


class Store:
    """Documents by internal id: add, get (in the order asked), delete, filter by metadata."""

    def __init__(self, path: str | Path, *, mode: str = "a", immutable: bool = False) -> None:
        """mode "r" opens read-only; immutable=True (with "r") promises nobody writes the file while it is
        open, so SQLite skips locking: the way to serve a frozen snapshot file."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode {mode!r}, expected 'r' (read-only) or 'a' (read and append)")
        self.path = Path(path)
        self.mode = mode
        if mode == "r":
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: no document store here")
            uri = self.path.resolve().as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            if mode == "a":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
            self._db.execute("SELECT id, external_id, text, metadata FROM documents LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise ValueError(f"{self.path}: not a duorank document store ({e})") from e

    def close(self) -> None:
        self._db.close()

    def snapshot(self, path: str | Path) -> None:
        """Write a compact, consistent copy of the whole store to a new file `path` (VACUUM INTO)."""
        self._db.execute("VACUUM INTO ?", (str(path),))

    @classmethod
    def copy(cls, source: str | Path, path: str | Path) -> Store:
        """A writable store at `path` holding a copy of the store file `source` (SQLite's backup API)."""
        src = Store(source, mode="r", immutable=True)
        dst = cls(path, mode="a")
        try:
            src._db.backup(dst._db)
        finally:
            src.close()
        dst._db.execute("PRAGMA journal_mode=WAL")
        return dst

    def max_id(self) -> int:
        """The largest internal id ever stored in this file's live rows (-1 when empty)."""
        return int(self._db.execute("SELECT COALESCE(MAX(id), -1) FROM documents").fetchone()[0])

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def add(
        self,
        texts: Sequence[str],
        external_ids: Sequence[str],
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        ids: ArrayLike | None = None,
    ) -> NDArray[np.int64]:
        """Insert documents in one transaction and return their internal ids: `ids` if given (new ones),
        else max id + 1 on."""
        if self.mode == "r":
            raise ValueError(f"{self.path} is open read-only (mode='r')")
        texts, external_ids = (
            list(texts),
            [str(e) if isinstance(e, (int, np.integer)) else e for e in external_ids],
        )
        n = len(texts)
        if len(external_ids) != n or (metadata is not None and len(metadata) != n):
            raise ValueError(
                f"{n} texts, {len(external_ids)} ids and {n if metadata is None else len(metadata)} "
                "metadata entries: one of each per document"
            )
        for i, (t, e) in enumerate(zip(texts, external_ids)):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
            if not t.strip():
                raise ValueError(f"texts[{i}] (id {e!r}) is empty")
            if not isinstance(e, str) or not e:
                raise TypeError(f"ids[{i}] is {e!r}, expected a non-empty str or int")
        dup = (
            sorted({e for e in external_ids if external_ids.count(e) > 1})
            if len(set(external_ids)) != n
            else []
        )
        if dup:
            raise ValueError(f"duplicate ids in this batch: {dup[:10]}")
        metas = []
        for i, m in enumerate(metadata or [None] * n):
            if m is not None and not isinstance(m, Mapping):
                raise TypeError(f"metadata[{i}] is {type(m).__name__}, expected a dict or None")
            try:
                metas.append(json.dumps(dict(m or {}), ensure_ascii=False, allow_nan=False))
            except (TypeError, ValueError) as err:
                raise TypeError(f"metadata[{i}] is not JSON-serialisable: {err}") from None
        existing = self._existing(external_ids)
        if existing:
            raise ValueError(f"ids already in the store: {existing[:10]} ({len(existing)} in all)")
        if ids is None:
            start = self.max_id() + 1
            new_ids = np.arange(start, start + n, dtype=np.int64)
        else:
            new_ids = as_ids(ids)
            if new_ids.shape[0] != n:
                raise ValueError(f"{n} texts but {new_ids.shape[0]} internal ids")
        try:
            with self._db:  # one transaction: all rows or none
                self._db.executemany(
                    "INSERT INTO documents (id, external_id, text, metadata) VALUES (?, ?, ?, ?)",
                    zip(new_ids.tolist(), external_ids, texts, metas),
                )
        except sqlite3.IntegrityError as e:
            raise ValueError(f"internal ids already in the store ({e})") from None
        return new_ids

    def _existing(self, external_ids: Sequence[str]) -> list[str]:
        found: list[str] = []
        for i in range(0, len(external_ids), 500):
            chunk = external_ids[i : i + 500]
            rows = self._db.execute(
                f"SELECT external_id FROM documents WHERE external_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            found += [r[0] for r in rows]
        return sorted(found)

    def _rows(self, ids: ArrayLike, columns: str) -> list[tuple[Any, ...]]:
        wanted = _id_list(ids)
        got: dict[int, tuple[Any, ...]] = {}
        unique = sorted(set(wanted))
        for i in range(0, len(unique), 500):
            chunk = unique[i : i + 500]
            for row in self._db.execute(
                f"SELECT id, {columns} FROM documents WHERE id IN ({', '.join('?' * len(chunk))})", chunk
            ):
                got[row[0]] = row[1:]
        missing = [i for i in unique if i not in got]
        if missing:
            raise ValueError(f"unknown document ids: {missing[:10]} ({len(missing)} in all)")
        return [got[i] for i in wanted]

    def documents(self, ids: ArrayLike) -> list[tuple[str, str, dict[str, Any]]]:
        """(external id, text, metadata) of internal ids, in the order asked; unknown ids raise ValueError."""
        return [(e, t, json.loads(m)) for e, t, m in self._rows(ids, "external_id, text, metadata")]

    def get(self, ids: ArrayLike) -> list[str]:
        """Texts of internal ids, in the order asked (repeats allowed); unknown ids raise ValueError."""
        return [r[0] for r in self._rows(ids, "text")]

    def external_ids(self, ids: ArrayLike) -> list[str]:
        return [r[0] for r in self._rows(ids, "external_id")]

    def metadata(self, ids: ArrayLike) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._rows(ids, "metadata")]

    def internal_ids(self, external_ids: Sequence[str]) -> NDArray[np.int64]:
        """Internal ids of external ids, in order; unknown ones raise ValueError."""
        ext = [str(e) for e in external_ids]
        found: dict[str, int] = {}
        for i in range(0, len(ext), 500):
            chunk = ext[i : i + 500]
            for e, i_ in self._db.execute(
                f"SELECT external_id, id FROM documents WHERE external_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ):
                found[e] = i_
        missing = [e for e in ext if e not in found]
        if missing:
            raise ValueError(f"unknown ids: {missing[:10]} ({len(missing)} in all)")
        return np.array([found[e] for e in ext], dtype=np.int64)

    def delete(self, ids: ArrayLike) -> None:
        """Delete by internal id, in one transaction; unknown ids raise ValueError and delete nothing."""
        if self.mode == "r":
            raise ValueError(f"{self.path} is open read-only (mode='r')")
        self._rows(ids, "id")  # raises on unknown ids
        with self._db:
            self._db.executemany("DELETE FROM documents WHERE id = ?", [(i,) for i in as_ids(ids).tolist()])

    def texts(self) -> tuple[NDArray[np.int64], list[str]]:
        """Every (internal id, text), ascending by id."""
        rows = self._db.execute("SELECT id, text FROM documents ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]

    def where(self, where: Mapping[str, Any]) -> NDArray[np.int64]:
        """Internal ids (ascending) of the documents whose metadata matches the filter."""
        sql, params = compile_filter(where)
        rows = self._db.execute(f"SELECT id FROM documents WHERE {sql} ORDER BY id", params).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)


def _id_list(ids: ArrayLike) -> list[int]:
    """Internal ids as a list of ints (repeats allowed: `get` returns what was asked, in order)."""
    arr = np.atleast_1d(np.asarray(ids))
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    return [int(i) for i in arr.tolist()]
