"""The fixed result type of every search."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class Hits:
    """Top-k per query: always 2-D, best first; empty slots are id -1 with score -inf."""

    ids: NDArray[np.int64]  # (n_queries, k)
    scores: NDArray[np.float32]  # (n_queries, k), descending; ties by smaller id

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __iter__(self) -> Iterator[tuple[NDArray[np.int64], NDArray[np.float32]]]:
        """Per query (ids, scores) without the empty slots."""
        for i in range(len(self)):
            yield self.query(i)

    def query(self, i: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Query i's (ids, scores) without the empty slots."""
        keep = self.ids[i] >= 0
        return self.ids[i][keep], self.scores[i][keep]
