"""Collections: round trips, filters against brute force, corruption, SIGKILL during save, live readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from duorank import (
    Collection,
    CollectionLockedError,
    DuorankError,
    ExactIndex,
    IndexFormatError,
    ModelMismatchError,
)
from duorank.shards import SHARD_STRIDE, search_collections, search_shards
from duorank.store import FilterError

from .conftest import embedding_like

DIM = 32

# Documents whose vector and text follow from their external id, so any reader can check what it sees.
DOC = textwrap.dedent(
    """
    import numpy as np

    def vec(i, dim):
        v = np.random.default_rng(int(i)).standard_normal(dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def batch(start, n, dim):
        ids = [str(i) for i in range(start, start + n)]
        return np.stack([vec(i, dim) for i in ids]), [f"doc {i}" for i in ids], ids
    """
)
_ns: dict = {}
exec(DOC, _ns)
batch = _ns["batch"]


def brute_force(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = (q.astype(np.float64) @ vectors.astype(np.float64).T)[0]
    order = np.lexsort((ids, -s))[:k]
    return ids[order], s[order]


def consistent(path: Path, **kw) -> int:
    """Open the collection and check every document against its id; returns the count."""
    c = Collection.open(path, **kw)
    try:
        n = len(c)
        ext = c.store.external_ids(c.ids)
        assert sorted(int(e) for e in ext) == list(range(n)), "documents are not a prefix of those written"
        v, texts, _ = batch(0, n, c.dim)
        order = np.argsort([int(e) for e in ext])
        np.testing.assert_allclose(c.vectors[order], v, atol=1e-6)
        stored = c.store.get(c.ids)
        assert [stored[i] for i in order] == texts
        if n:
            found = c.search(v[:3], 5, strategy="exact")
            for q in range(3):
                assert found.external_ids[q][0] == str(q)
                assert found.texts[q][0] == f"doc {q}"
        return n
    finally:
        c.close()


@pytest.mark.parametrize(
    ("index", "dtype"), [("exact", "f32"), ("exact", "i8"), ("hnsw", "f32"), ("hnsw", "f16")]
)
def test_round_trip_and_read_only_view(tmp_path, rng, index, dtype):
    v, texts, ids = batch(0, 300, DIM)
    meta = [{"n": i, "even": i % 2 == 0} for i in range(300)]
    with Collection.create(tmp_path / "c", dim=DIM, index=index, dtype=dtype) as c:
        internal = c.add(v, texts, ids, meta)
        assert internal.tolist() == list(range(300))
        q = rng.standard_normal((5, DIM)).astype(np.float32)
        before = c.search(q, 7)
        assert before.strategy == ("hnsw" if index == "hnsw" else "exact")
        assert c.dirty
    r = Collection.open(tmp_path / "c")
    after = r.search(q, 7)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)
    assert after.external_ids == before.external_ids and after.texts == before.texts
    assert after.metadata[0][0] == meta[int(after.ids[0, 0])]
    assert r.stats()["count"] == 300 and r.stats()["index"] == index
    with pytest.raises(ValueError, match="read-only"):
        r.add(v[:1], ["x"], ["new"])
    with pytest.raises(ValueError, match="read-only"):
        r.save()
    assert not r.vectors.flags.writeable
    r.close()


def test_exact_collection_matches_brute_force_with_deletes(tmp_path, rng):
    v, texts, ids = batch(0, 500, DIM)
    c = Collection.create(tmp_path / "c", dim=DIM)
    c.add(v, texts, ids)
    c.delete([str(i) for i in range(0, 500, 3)])
    c.save()
    c.close()
    c = Collection.open(tmp_path / "c", "a")
    more_v, more_t, more_i = batch(500, 50, DIM)
    new = c.add(more_v, more_t, more_i)
    assert new[0] == 500  # internal ids never reuse a deleted document's
    q = rng.standard_normal((1, DIM)).astype(np.float32)
    q /= np.linalg.norm(q)
    want_ids, want_scores = brute_force(c.vectors, c.ids, q, 10)
    got = c.search(q, 10)
    np.testing.assert_array_equal(got.ids[0], want_ids)
    np.testing.assert_allclose(got.scores[0], want_scores, atol=1e-5)
    assert got.external_ids[0] == [str(i) for i in want_ids]
    c.close()


def test_bad_input_changes_nothing(tmp_path):
    v, texts, ids = batch(0, 20, DIM)
    c = Collection.create(tmp_path / "c", dim=DIM, index="hnsw")
    c.add(v, texts, ids)
    bad = [
        (lambda: c.add(v[:2], texts[:2], ["0", "new"]), ValueError, "already in the store"),
        (lambda: c.add(v[:2], texts[:2], ["a", "a"]), ValueError, "duplicate"),
        (lambda: c.add(v[:2], texts[:1], ["a", "b"]), ValueError, "one text per vector"),
        (lambda: c.add(np.full((1, DIM), np.nan), ["t"], ["a"]), ValueError, "non-finite"),
        (lambda: c.add(v[:1, :5], ["t"], ["a"]), ValueError, r"shape \(n, 32\)"),
        (lambda: c.add(v[:1], ["   "], ["a"]), ValueError, "empty"),
        (lambda: c.add(v[:1], [b"bytes"], ["a"]), TypeError, "expected str"),
        (lambda: c.add(v[:1], ["t"], ["a"], [{"x": object()}]), TypeError, "JSON"),
        (lambda: c.delete(["0", "nope"]), ValueError, "unknown ids"),
        (lambda: c.delete(["1", "1"]), ValueError, "repeated"),
        (lambda: c.search(v[:1], 0), ValueError, "k must be >= 1"),
        (lambda: c.search(v[:1], 3, where={"a; DROP": 1}), FilterError, "field name"),
        (lambda: c.search(v[:1], 3, strategy="fast"), ValueError, "strategy"),
    ]
    for call, err, match in bad:
        with pytest.raises(err, match=match):
            call()
        assert len(c) == 20 and len(c.store) == 20 and c.ids.tolist() == list(range(20))
    c.close()
    with pytest.raises(FileExistsError, match="already holds a collection"):
        Collection.create(tmp_path / "c", dim=DIM)
    with pytest.raises(IndexFormatError, match="not a duorank collection"):
        Collection.open(tmp_path / "nothing")
    with pytest.raises(ValueError, match="metric"):
        Collection.create(tmp_path / "d", dim=DIM, metric="l2")
    with pytest.raises(ValueError, match="index"):
        Collection.create(tmp_path / "d", dim=DIM, index="ivf")
    with pytest.raises(ValueError, match="mode"):
        Collection.open(tmp_path / "c", "w")


def test_one_writer_many_readers_and_model_check(tmp_path):
    c = Collection.create(tmp_path / "c", dim=DIM, model="mini:abc")
    with pytest.raises(CollectionLockedError, match="one writer at a time"):
        Collection.open(tmp_path / "c", "a")
    readers = [Collection.open(tmp_path / "c") for _ in range(3)]
    c.close()
    Collection.open(tmp_path / "c", "a").close()  # the lock went with close()
    with pytest.raises(ModelMismatchError, match="built with model 'mini:abc'"):
        Collection.open(tmp_path / "c", model="other:def")
    Collection.open(tmp_path / "c", model="mini:abc").close()
    for r in readers:
        r.close()


def test_a_dropped_writer_gives_its_lock_back(tmp_path):
    """A writable collection that goes out of scope unclosed releases the writer's lock when it is collected,
    so the same process, or a writer subprocess it starts, can open the folder for writing; while it lives,
    the error says the holder is this process."""
    import gc
    import subprocess
    import sys

    c = Collection.create(tmp_path / "c", dim=DIM)
    with pytest.raises(CollectionLockedError, match=r"open for writing by this process \(another Collection"):
        Collection.open(tmp_path / "c", "a")
    del c
    gc.collect()
    assert not (tmp_path / "c" / Collection.WORKING).exists()  # nor its working copy of the documents
    writer = Collection.open(tmp_path / "c", "a")
    writer.add(np.eye(2, DIM, dtype=np.float32), ["a", "b"])
    writer.save()
    del writer
    gc.collect()
    code = (
        "import sys, numpy as np; from duorank import Collection\n"
        f"with Collection.open({str(tmp_path / 'c')!r}, 'a') as c:\n"
        f"    c.add(np.eye(1, {DIM}, 2, dtype=np.float32), ['c'])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with Collection.open(tmp_path / "c") as c:
        assert len(c) == 3


def test_embedder_fingerprint_and_dimension(tmp_path, default_embedder):
    c = Collection.create(tmp_path / "c", dim=default_embedder.dim, model=default_embedder)
    c.close()
    assert Collection.open(tmp_path / "c", embedder=default_embedder).model == default_embedder.fingerprint
    with pytest.raises(ModelMismatchError, match="built with model"):
        Collection.open(tmp_path / "c", model="other:0")
    Collection.create(tmp_path / "d", dim=DIM).close()
    with pytest.raises(ModelMismatchError, match="32-d vectors"):
        Collection.open(tmp_path / "d", embedder=default_embedder)


def test_context_manager_saves_or_keeps(tmp_path):
    v, texts, ids = batch(0, 10, DIM)
    with Collection.create(tmp_path / "c", dim=DIM) as c:
        c.add(v[:5], texts[:5], ids[:5])
    with pytest.raises(KeyboardInterrupt), Collection.open(tmp_path / "c", "a") as c:
        c.add(v[5:], texts[5:], ids[5:])
        raise KeyboardInterrupt
    assert consistent(tmp_path / "c") == 5


@pytest.mark.parametrize("name", ["collection.json", "ids", "vectors", "codes", "scales", "ann", "docs"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damage_is_a_precise_error(tmp_path, name, damage):
    v, texts, ids = batch(0, 200, DIM)
    exact = Collection.create(tmp_path / "e", dim=DIM, dtype="i8")
    hnsw = Collection.create(tmp_path / "h", dim=DIM, index="hnsw")
    for c in (exact, hnsw):
        c.add(v, texts, ids)
        c.save()
        c.close()
    folder = tmp_path / ("h" if name == "ann" else "e")
    man = json.loads((folder / "collection.json").read_text())
    path = folder / (name if name.endswith(".json") else man["files"][name]["file"])
    data = bytearray(path.read_bytes())
    if damage == "flip":
        i = data.index(b'"dim"') + 2 if name.endswith(".json") else len(data) // 2
        data[i] ^= 0x20
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) - 7]))
    else:
        path.unlink()
    with pytest.raises(IndexFormatError) as err:
        Collection.open(folder)
    expected = {
        "flip": "sha256|not valid JSON|invalid fields",
        "truncate": "bytes, the manifest says|not valid JSON",
        "delete": "missing|not a duorank collection",
    }[damage]
    assert err.match(expected)
    assert str(folder) in str(err.value)


def test_format_version_is_checked(tmp_path):
    Collection.create(tmp_path / "c", dim=DIM).close()
    man = json.loads((tmp_path / "c" / "collection.json").read_text())
    man["version"] = 99
    (tmp_path / "c" / "collection.json").write_text(json.dumps(man))
    with pytest.raises(IndexFormatError, match="format version 99"):
        Collection.open(tmp_path / "c")


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    """20k clustered rows, field r = a permutation of 0..999 repeated: `r < t` selects t/1000 of them."""
    rng = np.random.default_rng(7)
    n = 20_000
    both = embedding_like(rng, n + 50, 64, 200)
    v, q = both[:n], both[n:]
    r = rng.permutation(n) % 1000
    folder = tmp_path_factory.mktemp("filtered") / "c"
    c = Collection.create(folder, dim=64, index="hnsw")
    c.add(v, [f"doc {i}" for i in range(n)], metadata=[{"r": int(x), "tag": f"t{x % 7}"} for x in r])
    c.save()
    c.close()
    return Collection.open(folder), v, r, q


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 0.5])
def test_filters_exact_equal_brute_force_and_hnsw_recall(filtered, fraction):
    c, v, r, q = filtered
    where = {"r": {"lt": int(fraction * 1000)}}
    allowed = np.flatnonzero(r < fraction * 1000)
    k = 10
    exact = c.search(q, k, where=where, strategy="exact")
    assert exact.strategy == "exact-filtered"
    truth = (q.astype(np.float64) @ v[allowed].astype(np.float64).T).argsort(axis=1)[:, ::-1][:, :k]
    hits = 0
    for i in range(len(q)):
        want = allowed[truth[i]]
        assert set(exact.ids[i].tolist()) == set(want.tolist())  # equal up to the order of exact ties
        assert all(int(t.split()[1]) in allowed for t in exact.texts[i])
    approx = c.search(q, k, where=where, strategy="hnsw")
    assert approx.strategy == "hnsw-filtered"
    for i in range(len(q)):
        got = approx.ids[i]
        assert (got >= 0).sum() == min(k, allowed.size), "fewer than k results though k allowed exist"
        assert np.isin(got[got >= 0], allowed).all()
        hits += np.intersect1d(got, exact.ids[i]).size
    assert hits / (len(q) * min(k, allowed.size)) >= 0.95
    auto = c.search(q, k, where=where)
    assert auto.strategy == ("exact-filtered" if allowed.size <= c.EXACT_MAX_ALLOWED else "hnsw-filtered")


def test_filter_values_are_inert(filtered):
    c, v, r, q = filtered
    for attack in ["t1' OR '1'='1", 't1"); DROP TABLE documents; --', "%", "t1' --"]:
        found = c.search(q[:1], 5, where={"tag": attack})
        assert found.strategy == "no-match" and (found.ids == -1).all()
        found = c.search(q[:1], 5, where={"tag": {"in": [attack, "t1"]}})
        assert all(m["tag"] == "t1" for m in found.metadata[0])
    assert len(c.store) == 20_000
    both = c.search(q[:2], 5, where={"or": [{"tag": "t1"}, {"r": {"gte": 990}}]})
    assert all(m["tag"] == "t1" or m["r"] >= 990 for row in both.metadata for m in row)


def test_shards_of_collections_equal_one_collection(tmp_path, rng):
    v, texts, ids = batch(0, 600, DIM)
    meta = [{"m": i % 5} for i in range(600)]
    whole = Collection.create(tmp_path / "whole", dim=DIM)
    whole.add(v, texts, ids, meta)
    parts = []
    for s, rows in enumerate(np.array_split(np.arange(600), 3)):
        p = Collection.create(tmp_path / f"s{s}", dim=DIM, index="hnsw" if s == 1 else "exact")
        p.add(v[rows], [texts[i] for i in rows], [ids[i] for i in rows], [meta[i] for i in rows])
        parts.append(p)
    q = rng.standard_normal((4, DIM)).astype(np.float32)
    for where in (None, {"m": 2}):
        one = whole.search(q, 20, where=where, strategy="exact")
        merged = search_collections(parts, q, 20, where=where, strategy="exact")
        assert merged.external_ids == one.external_ids
        assert merged.texts == one.texts
        np.testing.assert_allclose(merged.scores, one.scores, atol=1e-6)
        assert (merged.ids // SHARD_STRIDE < 3).all()
        # shard 1 searches its HNSW graph: near, not equal
        approx = search_collections(parts, q, 20, where=where)
        found = sum(len(set(a) & set(b)) for a, b in zip(approx.external_ids, one.external_ids))
        assert found >= 0.95 * sum(len(b) for b in one.external_ids)
    with pytest.raises(TypeError, match="for collections use search_collections"):
        search_shards(parts, q, 5, allowed=[1])
    with pytest.raises(
        TypeError, match="search_collections takes collections; for indexes use search_shards"
    ):
        search_collections([parts[0], ExactIndex(dim=DIM)], q, 5)
    with pytest.raises(ValueError, match="no collections"):
        search_collections([], q, 5)


CHILD = DOC + textwrap.dedent(
    """
    import sys
    from duorank import Collection
    c = Collection.open(sys.argv[1], "a")
    while True:
        v, texts, ids = batch(len(c), 20, c.dim)
        c.add(v, texts, ids)
        c.save()
        print(len(c), flush=True)
    """
)


@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_sigkill_during_save_leaves_old_or_new(tmp_path, index):
    folder = tmp_path / "c"
    v, texts, ids = batch(0, 40, DIM)
    with Collection.create(folder, dim=DIM, index=index) as c:
        c.add(v, texts, ids)
    rng = np.random.default_rng(11)
    seen_mid_save = 0
    for _trial in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        first = child.stdout.readline()  # imports done, one save completed
        assert first.strip(), child.stderr.read() if child.stderr else ""
        time.sleep(float(rng.uniform(0, 0.3)))
        child.send_signal(signal.SIGKILL)
        rest = child.communicate()[0].split()
        child.wait()
        completed = int(rest[-1]) if rest else int(first)
        n = consistent(folder)
        assert n in (completed, completed + 20), f"saw {n} documents; the last completed save had {completed}"
        seen_mid_save += n == completed + 20 or any(p.name.endswith(".tmp") for p in folder.iterdir())
        # a writer can take over at once: SIGKILL released the lock, and leftovers are ignored or removed
        c = Collection.open(folder, "a")
        c.close()
    assert seen_mid_save >= 1


READER = DOC + textwrap.dedent(
    """
    import sys, time, os
    import numpy as np
    from duorank import Collection
    folder, stop = sys.argv[1], sys.argv[2]
    sizes, loops = set(), 0
    while not os.path.exists(stop) or loops == 0:
        c = Collection.open(folder)
        n = len(c)
        assert n % 20 == 0 and len(c.store) == n, n
        v, texts, ids = batch(0, n, c.dim)
        found = c.search(v[-2:], 3)
        assert found.external_ids[0][0] == ids[-2] and found.texts[1][0] == texts[-1], found
        assert abs(float(found.scores[1][0]) - 1.0) < 1e-4
        c.close()
        sizes.add(n)
        loops += 1
        if loops == 1:  # warm (kernels compiled or loaded from the cache): the writer may start
            open(f"{stop}.ready.{os.getpid()}", "w").close()
    print(loops, sorted(sizes))
    """
)


def test_readers_see_whole_snapshots_while_a_writer_saves(tmp_path):
    folder = tmp_path / "c"
    stop = tmp_path / "stop"
    with Collection.create(folder, dim=DIM, index="hnsw") as c:
        c.add(*batch(0, 20, DIM))
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(folder), str(stop)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    deadline = time.monotonic() + 120  # a cold Numba cache compiles the search kernels in each reader
    while len(list(tmp_path.glob("stop.ready.*"))) < len(readers) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # readers running
    with Collection.open(folder, "a") as c:
        for _ in range(10):
            c.add(*batch(len(c), 20, DIM))
            c.save()
            time.sleep(0.1)
    stop.touch()
    seen = set()
    for p in readers:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        loops, sizes = out.split(maxsplit=1)
        seen |= set(json.loads(sizes))
        assert int(loops) >= 1
    assert len(seen) >= 2, f"readers saw only sizes {seen}"
    assert consistent(folder) == 220
    assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]


def test_one_search_for_vectors_and_texts(tmp_path, rng):
    """Collection.search: query vectors by cosine, query texts (a string is one) by BM25, one result type;
    fetch=False defers reading the documents, which a delete in between makes a clear error."""
    texts = [f"alpha{i % 7} beta{i % 5} gamma{i}" for i in range(60)]
    v = embedding_like(rng, 60, DIM, 4)
    c = Collection.create(tmp_path / "c", dim=DIM, bm25=True)
    c.add(v, texts, [str(i) for i in range(60)], [{"n": i % 3} for i in range(60)])
    by_text = c.search(["alpha3 beta1", "gamma17"], 5)
    want = c.bm25().search(["alpha3 beta1", "gamma17"], 5)
    np.testing.assert_array_equal(by_text.ids, want.ids)
    assert by_text.strategy == "bm25" and by_text.texts[1][0] == texts[17]
    one = c.search("gamma17", 5)
    np.testing.assert_array_equal(one.ids, by_text.ids[1:])
    filtered = c.search(["gamma17"], 5, where={"n": 0})
    assert all(int(e) % 3 == 0 for e in filtered.external_ids[0])
    assert c.search(["gamma17"], 5, where={"n": 9}).strategy == "no-match"
    with pytest.raises(ValueError, match="strategy 'exact': query texts are searched by BM25"):
        c.search("gamma17", 5, strategy="exact")
    lazy = c.search(v[:1], 3, fetch=False)
    assert lazy.texts[0] == c.search(v[:1], 3).texts[0]
    later = c.search(v[:1], 3, fetch=False)
    c.delete([str(int(later.ids[0][0]))])  # external id i is internal id i here
    with pytest.raises(DuorankError, match="deleted after the search that found them"):
        later.fetch()
    c.close()
