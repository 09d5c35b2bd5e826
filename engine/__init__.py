"""duorank: performance-first retrieval for RAG (recall with embeddings, rerank with cross-encoders).

`import duorank` is cheap: Numba and onnxruntime load on first use.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .collection import Collection, CollectionLockedError, Found, ModelMismatchError
from .errors import DuorankError, IndexFormatError
from .hits import Hits
from .hnsw import HnswIndex
from .index import Dtype, ExactIndex
from .model_folder import ModelError
from .models import DeviceError, Embedder, PairTokens, Reranker, Scored, Tokens
from .pipeline import Engine, Hit, IngestReport, Results
from .shard_build import ShardsReport, build_shards
from .sharded import ShardedCollection, ShardUnavailableError
from .shards import search_collections, search_shards

try:
    __version__ = version("duorank")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Collection",
    "CollectionLockedError",
    "DeviceError",
    "Dtype",
    "DuorankError",
    "Embedder",
    "Engine",
    "ExactIndex",
    "Found",
    "Hit",
    "Hits",
    "HnswIndex",
    "IndexFormatError",
    "IngestReport",
    "ModelError",
    "ModelMismatchError",
    "PairTokens",
    "Reranker",
    "Results",
    "Scored",
    "ShardUnavailableError",
    "ShardedCollection",
    "ShardsReport",
    "Tokens",
    "__version__",
    "build_shards",
    "search_collections",
    "search_shards",
]
