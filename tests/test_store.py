"""The SQLite document store and the metadata filter language."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from duorank.store import FilterError, Store, compile_filter

DOCS = [
    ("a", "Cats purr.", {"lang": "en", "year": 2019, "tags": "pets", "ok": True}),
    ("b", "Hunde bellen.", {"lang": "de", "year": 2021, "tags": "pets", "ok": False}),
    ("c", "Iron rusts.", {"lang": "en", "year": 2023, "tags": "chem", "nested": {"score": 0.5}}),
    ("d", "Sin metadatos.", None),
]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "docs.sqlite")
    s.add([d[1] for d in DOCS], [d[0] for d in DOCS], [d[2] for d in DOCS])
    yield s
    s.close()


def test_add_get_in_order(store):
    assert len(store) == 4
    assert store.get([2, 0, 2]) == ["Iron rusts.", "Cats purr.", "Iron rusts."]
    assert store.external_ids([3, 1]) == ["d", "b"]
    assert store.metadata([3])[0] == {}
    assert store.internal_ids(["c", "a"]).tolist() == [2, 0]
    new = store.add(["More text."], [17])  # int ids are stored as text
    assert new.tolist() == [4] and store.internal_ids(["17"]).tolist() == [4]


@pytest.mark.parametrize(
    ("where", "expect"),
    [
        ({"lang": "en"}, [0, 2]),
        ({"year": {"gte": 2020, "lt": 2024}}, [1, 2]),
        ({"tags": {"in": ["chem", "none"]}}, [2]),
        ({"lang": "en", "year": {"gt": 2020}}, [2]),
        ({"or": [{"lang": "de"}, {"year": {"lte": 2019}}]}, [0, 1]),
        ({"not": {"lang": "en"}}, [1]),  # SQL NOT: a missing field is neither equal nor unequal
        ({"ok": True}, [0]),
        ({"nested.score": {"gt": 0.1}}, [2]),
        ({"lang": None}, [3]),
        ({"lang": {"ne": "en"}}, [1]),
    ],
)
def test_filters(store, where, expect):
    assert store.where(where).tolist() == expect


def test_filter_sql_is_parameterised():
    sql, params = compile_filter({"lang": "en'; DROP TABLE documents; --", "year": {"in": [1, 2]}})
    assert "DROP" not in sql and "en'" not in sql
    assert params == ["$.lang", "en'; DROP TABLE documents; --", "$.year", 1, 2]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({}, "non-empty dict"),
        ({"lang; DROP": "x"}, "letters, digits and _"),
        ({"year": {"between": [1, 2]}}, "unknown operator 'between'"),
        ({"year": {"gt": "2020"}}, "'gt' takes a number"),
        ({"tags": {"in": []}}, "'in' takes a non-empty list"),
        ({"or": []}, "'or' takes a non-empty list"),
        ({"lang": ["en"]}, "must be a string, number, bool or None"),
    ],
)
def test_bad_filters(store, where, message):
    with pytest.raises(FilterError, match=message):
        store.where(where)


def test_bad_input_loses_nothing(store):
    with pytest.raises(ValueError, match=r"ids already in the store: \['a'\]"):
        store.add(["x", "y"], ["new", "a"])
    with pytest.raises(ValueError, match=r"duplicate ids in this batch: \['z'\]"):
        store.add(["x", "y"], ["z", "z"])
    with pytest.raises(ValueError, match=r"texts\[0\] \(id 'e'\) is empty"):
        store.add(["  "], ["e"])
    with pytest.raises(TypeError, match=r"texts\[0\] is int"):
        store.add([5], ["e"])
    with pytest.raises(TypeError, match=r"metadata\[0\] is not JSON-serialisable"):
        store.add(["x"], ["e"], [{"v": float("nan")}])
    with pytest.raises(ValueError, match=r"unknown document ids: \[99\]"):
        store.get([0, 99])
    with pytest.raises(ValueError, match=r"unknown ids: \['zz'\]"):
        store.internal_ids(["zz"])
    with pytest.raises(ValueError, match=r"unknown document ids: \[42\]"):
        store.delete([0, 42])
    assert len(store) == 4  # nothing was added or deleted by the failed calls
    store.delete([0])
    assert len(store) == 3 and store.where({"lang": "en"}).tolist() == [2]


def test_read_only_and_concurrent_readers(store, tmp_path):
    ro = Store(tmp_path / "docs.sqlite", mode="r")
    assert ro.get([1]) == ["Hunde bellen."]
    with pytest.raises(ValueError, match="open read-only"):
        ro.add(["x"], ["x"])
    results = []

    def read() -> None:
        results.append(ro.get([0, 1, 2]))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [["Cats purr.", "Hunde bellen.", "Iron rusts."]] * 4
    ro.close()
    with pytest.raises(FileNotFoundError, match="no document store here"):
        Store(tmp_path / "none.sqlite", mode="r")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="not a duorank document store"):
        Store(tmp_path / "junk.sqlite")
    with pytest.raises(ValueError, match="mode 'w'"):
        Store(tmp_path / "x.sqlite", mode="w")


def test_file_is_plain_sqlite_in_wal_mode(store):
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = db.execute("SELECT id, external_id FROM documents ORDER BY id").fetchall()
    assert rows == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    db.close()


def test_many_documents_in_one_transaction(tmp_path):
    s = Store(tmp_path / "big.sqlite")
    n = 20_000
    ids = s.add([f"text {i}" for i in range(n)], [f"e{i}" for i in range(n)], [{"i": i} for i in range(n)])
    assert ids.tolist() == list(range(n))
    assert s.where({"i": {"gte": n - 3}}).tolist() == [n - 3, n - 2, n - 1]
    assert s.get(np.array([n - 1, 0])) == [f"text {n - 1}", "text 0"]
    s.close()
