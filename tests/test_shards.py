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
