"""search_shards: the merged top-k of disjoint shards equals one index's top-k."""

from __future__ import annotations

import numpy as np
import pytest

from duorank import ExactIndex, HnswIndex
from duorank.shards import search_shards
from tests.conftest import clustered


def test_disjoint_shards_equal_one_index(rng):
    x = clustered(rng, 3000, 32, clusters=30)
    q = clustered(rng, 50, 32, clusters=30)
    whole = ExactIndex(dim=32)
    whole.add(x)
    parts = []
    for ids in np.array_split(rng.permutation(3000), 3):
        shard = ExactIndex(dim=32)
        shard.add(x[ids], ids)
        parts.append(shard)
    got, truth = search_shards(parts, q, 10), whole.search(q, 10)
    np.testing.assert_array_equal(got.ids, truth.ids)
    np.testing.assert_allclose(got.scores, truth.scores, atol=1e-6)
    allowed = np.arange(0, 3000, 7)
    np.testing.assert_array_equal(
        search_shards(parts, q, 5, allowed=allowed).ids, whole.search(q, 5, allowed=allowed).ids
    )


def test_mixed_shards_k_beyond_size_and_overlap(rng):
    x = clustered(rng, 40, 16, clusters=4)
    a, b = ExactIndex(dim=16), HnswIndex(dim=16)
    a.add(x[:20], np.arange(20))
    b.add(x[20:], np.arange(20, 40))
    got = search_shards([a, b], x[:3], 50)  # k > total
    assert (got.ids[:, :40] >= 0).all() and (got.ids[:, 40:] == -1).all()
    assert sorted(got.ids[0][:40].tolist()) == list(range(40))
    assert got.ids[0, 0] == 0 and (np.diff(got.scores[:, :40], axis=1) <= 1e-6).all()
    few = search_shards([a, b], x[:3], 5, allowed=[1, 25, 30])
    assert sorted(few.ids[0][:3].tolist()) == [1, 25, 30] and (few.ids[:, 3:] == -1).all()
    assert b.contains([25, 3]).tolist() == [True, False]
    c = ExactIndex(dim=16)
    c.add(x[:5], np.arange(5))  # ids 0-4 again
    with pytest.raises(ValueError, match=r"shards overlap: id\(s\) \[0"):
        search_shards([a, c], x[:1], 5)
    with pytest.raises(ValueError, match="no shards"):
        search_shards([], x[:1], 5)


def test_shards_of_different_models_or_dimensions_are_refused(tmp_path, rng):
    """write_shards refuses a set that mixes models or dimensions; read_shards refuses a manifest whose
    shard entry disagrees with the set, or whose shard folder is not the one recorded."""
    import json

    from duorank import Collection, IndexFormatError
    from duorank.shards import SHARDS_FILE, read_shards, write_shards

    for name in ("a", "b"):
        with Collection.create(tmp_path / name, dim=4) as c:
            c.add(
                rng.standard_normal((3, 4)).astype(np.float32),
                ["x", "y", "z"],
                [f"{name}{i}" for i in range(3)],
            )
    items = [{"path": n, "count": 3, "dim": 4, "model": "m1"} for n in ("a", "b")]
    with pytest.raises(ValueError, match="shards of different models or dimensions"):
        write_shards(tmp_path / SHARDS_FILE, [items[0], {**items[1], "model": "m2"}], {})
    with pytest.raises(ValueError, match="shards of different models or dimensions"):
        write_shards(tmp_path / SHARDS_FILE, [items[0], {**items[1], "dim": 8}], {})
    assert not (tmp_path / SHARDS_FILE).exists()
    write_shards(tmp_path / SHARDS_FILE, items, {})
    assert read_shards(tmp_path / SHARDS_FILE)["shards"] == 2
    man = json.loads((tmp_path / SHARDS_FILE).read_text())
    man["items"][1]["dim"] = 8
    (tmp_path / SHARDS_FILE).write_text(json.dumps(man))
    with pytest.raises(IndexFormatError, match=r"shard 1 has model 'm1' dim 8, the set has 'm1' dim 4"):
        read_shards(tmp_path / SHARDS_FILE)
    man["items"][1]["dim"] = 4
    man["items"][1]["manifest_sha256"] = "0" * 64
    (tmp_path / SHARDS_FILE).write_text(json.dumps(man))
    with pytest.raises(IndexFormatError, match=r"shard 1 \(.*b\) is missing or is not the one recorded"):
        read_shards(tmp_path / SHARDS_FILE)
