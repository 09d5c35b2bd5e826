"""Build a sharded collection with Ray Data (`build_shards`; CLI: `duorank index DIR SOURCE... --shards S`).

The job: Ray Data reads the sources (JSONL, Parquet, .txt/.md files and folders), an actor pool chunks and
embeds them (`map_batches` with a callable class: one Embedder per actor, loaded once, onnxruntime held to
the actor's CPUs), each chunk goes to the shard of its document id (`shard_of`, a stable hash), and one
Ray task per shard builds an ordinary collection folder from that shard's rows sorted by id, on the local
disk of its node (SQLite's locks do not work on network filesystems), then moves it into the output
folder. `shards.json` is written last, by the driver: until it is, the previous set (or none) is what a
reader opens, so a crash at any point never leaves a half-built set that looks complete.

Ray restarts a failed embedding actor and retries its batch (Ray Data's defaults for actor pools), and a
failed build task is retried; each shard is built from all of its rows at once, so a retry neither loses
nor duplicates a chunk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .chunking import PARENT, document_chunks
from .collection import Collection
from .index import limit_kernel_threads
from .shards import SHARDS_FILE, read_shards, shard_of, write_shards

log = logging.getLogger(__name__)

_GEN_PREFIX = "shards-"


@dataclass(frozen=True)
class ShardsReport:
    """What a sharded build made: the manifest's path, documents and chunks in all, chunks per shard,
    the seconds it took, and the distinct Ray nodes and worker processes that embedded and built."""

    path: Path
    documents: int
    chunks: int
    counts: list[int]
    seconds: float
    nodes: list[str]
    processes: list[str]


def _ray() -> Any:
    from duorank.models_export.deps import require

    return require("ray")


def _where() -> str:
    ray = _ray()
    return f"{ray.get_runtime_context().get_node_id()}:{os.getpid()}"


def read_documents(sources: Sequence[str]) -> Any:
    """A Ray Dataset of documents {"id", "text", "metadata" (JSON text)} from the sources `duorank index`
    reads: .jsonl files (one {"id", "text", "metadata"?} object per line; here every object needs its
    "id", since the id routes it), .parquet files (columns id, text, metadata?), a .txt/.md file (its
    name is its id) or a folder of them (ids: paths relative to it). Empty documents are dropped."""
    ray = _ray()
    parts = []
    for source in sources:
        path = Path(source)
        if source.endswith(".jsonl"):
            parts.append(
                ray.data.read_text(str(path.resolve()), drop_empty_lines=True).map_batches(
                    _parse_jsonl,
                    fn_kwargs={"source": source},
                    batch_format="numpy",
                    udf_modifying_row_count=True,
                )
            )
        elif source.endswith(".parquet"):
            parts.append(
                ray.data.read_parquet(str(path.resolve())).map_batches(
                    _from_columns, batch_format="numpy", udf_modifying_row_count=True
                )
            )
        elif path.is_file() or path.is_dir():
            root = path.resolve() if path.is_dir() else path.resolve().parent
            parts.append(
                ray.data.read_binary_files(
                    str(path.resolve()), include_paths=True, file_extensions=["txt", "md"]
                ).map_batches(
                    _from_files,
                    fn_kwargs={"root": str(root)},
                    batch_format="numpy",
                    udf_modifying_row_count=True,
                )
            )
        else:
            raise FileNotFoundError(f"{source}: no such file or folder")
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def _batch(ids: list[str], texts: list[str], metas: list[str]) -> dict[str, np.ndarray]:
    """The documents with text in them (real corpora hold empty ones)."""
    keep = [i for i, t in enumerate(texts) if t.strip()]
    return {
        "id": np.array([ids[i] for i in keep], dtype=object),
        "text": np.array([texts[i] for i in keep], dtype=object),
        "metadata": np.array([metas[i] for i in keep], dtype=object),
    }


def _parse_jsonl(batch: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    ids, texts, metas = [], [], []
    for line in batch["text"]:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: a line is not JSON ({e}): {str(line)[:80]!r}") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise ValueError(f"{source}: expected objects with a string 'text', got {str(line)[:80]!r}")
        if "id" not in obj and "_id" not in obj:
            raise ValueError(f"{source}: every object needs an 'id' (it routes the document to its shard)")
        m = obj.get("metadata") or {}
        if not isinstance(m, dict):
            raise ValueError(f"{source}: 'metadata' of {obj.get('id')!r} must be a JSON object")
        ids.append(str(obj.get("id", obj.get("_id"))))
        texts.append(obj["text"])
        metas.append(json.dumps(m))
    return _batch(ids, texts, metas)


def _from_columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if "id" not in batch or "text" not in batch:
        raise ValueError(f"parquet: expected columns 'id' and 'text', got {sorted(batch)}")
    n = len(batch["id"])
    metas = batch.get("metadata", [None] * n)
    return _batch(
        [str(i) for i in batch["id"]],
        [str(t) for t in batch["text"]],
        [m if isinstance(m, str) else json.dumps(dict(m or {})) for m in metas],
    )


def _from_files(batch: dict[str, np.ndarray], root: str) -> dict[str, np.ndarray]:
    ids = [os.path.relpath(str(p), root) for p in batch["path"]]
    return _batch(ids, [bytes(b).decode("utf-8") for b in batch["bytes"]], ["{}"] * len(ids))


class Embed:
    """Ray Data's callable class: one Embedder per actor (loaded once), onnxruntime held to the actor's
    CPUs; a batch of documents in, their chunks out, each with its vector, shard and the node and process
    that embedded it."""

    def __init__(
        self,
        embedder: str,
        threads: int,
        shards: int,
        chunk_tokens: int | None,
        overlap: int,
        device: str = "cpu",
    ):
        from .models import Embedder

        self.embedder = Embedder.load(embedder, threads=threads, device=device)
        self.shards, self.chunk_tokens, self.overlap = shards, chunk_tokens, overlap
        self.where = _where()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        docs = [str(i) for i in batch["id"]]
        texts, ids, metas = document_chunks(
            [str(t) for t in batch["text"]],
            docs,
            [json.loads(m) for m in batch["metadata"]],
            self.embedder.tokenizer,
            max_tokens=self.chunk_tokens,
            overlap=self.overlap,
        )
        doc_of = [m.get(PARENT, i) for i, m in zip(ids, metas)] if self.chunk_tokens else ids
        vectors = self.embedder.encode(self.embedder.tokenize(texts, kind="document"))
        return {
            "id": np.array(ids, dtype=object),
            "text": np.array(texts, dtype=object),
            "metadata": np.array([json.dumps(m) for m in metas], dtype=object),
            "vector": vectors,
            "shard": np.array([shard_of(d, self.shards) for d in doc_of], dtype=np.int64),
            "embedded_by": np.array([self.where] * len(ids), dtype=object),
        }


def _spread() -> dict[str, Any]:
    return {"scheduling_strategy": "SPREAD"}


def _build_shard(batch: dict[str, np.ndarray], *, shard: int | None, gen: str, spec: dict[str, Any]) -> Any:
    """One shard's collection from all of its rows (sorted by id, so that input order does not matter),
    built on this node's local disk and moved into the generation folder `gen`."""
    limit_kernel_threads(int(spec["threads"]))
    s = int(batch["shard"][0]) if shard is None else shard
    ids = np.array([str(i) for i in batch["id"]], dtype=object)
    order = np.argsort(ids, kind="stable")
    dest = Path(gen) / f"shard-{s:04d}"
    with tempfile.TemporaryDirectory(prefix="duorank-shard-") as tmp:
        folder = Path(tmp) / dest.name
        with Collection.create(
            folder,
            dim=spec["dim"],
            dtype=spec["dtype"],
            index=spec["index"],
            model=spec["model"],
            bm25=spec["bm25"],
            analyzer=spec["analyzer"],
            extra={"engine": spec["engine"]},
            **spec["index_options"],
        ) as coll:
            if len(ids):
                coll.add(
                    np.stack(list(batch["vector"]))[order].astype(np.float32),
                    [str(batch["text"][i]) for i in order],
                    [str(ids[i]) for i in order],
                    [json.loads(batch["metadata"][i]) for i in order],
                )
            coll.save()
        if dest.exists():  # a retried task's earlier, unfinished move
            shutil.rmtree(dest)
        shutil.move(str(folder), str(dest))
    by = sorted({str(w) for w in batch["embedded_by"]}) if len(ids) else []
    return {
        "shard": np.array([s]),
        "count": np.array([len(ids)]),
        "documents": np.array([len({str(m) for m in _documents_of(batch)})]),
        "workers": np.array([json.dumps([*by, "build:" + _where()])], dtype=object),
    }


def _documents_of(batch: dict[str, np.ndarray]) -> list[str]:
    out = []
    for i, m in zip(batch["id"], batch["metadata"]):
        out.append(json.loads(m).get(PARENT, str(i)))
    return out


def _embedded(
    ds: Any,
    embedder: str,
    shards: int,
    chunk_tokens: int | None,
    overlap: int,
    workers: int,
    cpus: int,
    gpus: float,
    batch_size: int,
) -> Any:
    """The documents' chunks with their vectors and shards: an actor pool of `workers` Embed actors
    (on CUDA where `gpus` > 0: Ray gives each actor that share of a GPU)."""
    return ds.map_batches(
        Embed,
        fn_constructor_kwargs={
            "embedder": embedder,
            "threads": cpus,
            "shards": shards,
            "chunk_tokens": chunk_tokens,
            "overlap": overlap,
            "device": "cuda" if gpus else "cpu",
        },
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=workers,
        num_cpus=cpus,
        num_gpus=gpus,
        udf_modifying_row_count=chunk_tokens is not None,
        ray_remote_args_fn=_spread,  # one actor per node first, not all on the driver's
    )


def build_shards(
    out: str | os.PathLike[str],
    sources: Sequence[str] | Any,
    shards: int,
    *,
    embedder: str = "default",
    reranker: str | None = None,
    index: str = "exact",
    dtype: str = "f32",
    bm25: bool = True,
    analyzer: str | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int = 32,
    address: str | None = None,
    workers: int = 2,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 0,
    batch_size: int = 256,
    **index_options: Any,
) -> ShardsReport:
    """Embed the documents of `sources` (paths, or a Ray Dataset of {"id", "text", "metadata" (JSON)})
    on a Ray cluster (`address`; None: the one this process is connected to, else Ray's own choice:
    RAY_ADDRESS, a cluster running on this machine, or a new local one) and
    build `shards` collections under the folder `out`, then `out/shards.json`. `workers` embedding
    actors of `cpus_per_worker` CPUs each (onnxruntime's threads), and `gpus_per_worker` of a GPU each
    where > 0 (the actors then run the model on CUDA: onnxruntime-gpu), `batch_size` documents per batch.
    Open the result with `Engine.open(out / "shards.json")`. A build into a folder that holds a set
    replaces it only when the new set is complete (the old folders are removed after the switch)."""
    from .models import Embedder

    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards {shards!r}: expected an int >= 1")
    for name, v in (("workers", workers), ("cpus_per_worker", cpus_per_worker), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} {v!r}: expected an int >= 1")
    gpus = gpus_per_worker
    if isinstance(gpus, bool) or not isinstance(gpus, int | float) or gpus < 0:
        raise ValueError(f"gpus_per_worker {gpus_per_worker!r}: expected a number >= 0")
    ray = _ray()
    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    if gpus_per_worker:
        have_gpus = ray.cluster_resources().get("GPU", 0)
        if have_gpus < gpus_per_worker:  # Ray would wait for a GPU that never comes
            raise ValueError(f"gpus_per_worker {gpus_per_worker!r}: the Ray cluster has {have_gpus:g} GPUs")
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    emb = Embedder.load(embedder)  # its dim and fingerprint (the actors load their own)
    gen = root / f"{_GEN_PREFIX}{uuid.uuid4().hex[:12]}"
    gen.mkdir()
    spec = {
        "dim": emb.dim,
        "model": emb.fingerprint,
        "dtype": dtype,
        "index": index,
        "bm25": bm25,
        "analyzer": analyzer,
        "index_options": index_options,
        "threads": cpus_per_worker,
        "engine": {
            "embedder": embedder,
            "reranker": reranker,
            "chunk_tokens": chunk_tokens,
            "chunk_overlap": chunk_overlap if chunk_tokens else 0,
        },
    }
    try:
        ds = sources if hasattr(sources, "map_batches") else read_documents(list(sources))
        with warnings.catch_warnings():
            # Ray 2.60 deprecates ray_remote_args_fn with no other way to spread an actor pool's actors
            warnings.filterwarnings("ignore", "`ray_remote_args_fn` is deprecated")
            embedded = _embedded(
                ds,
                embedder,
                shards,
                chunk_tokens,
                chunk_overlap,
                workers,
                cpus_per_worker,
                float(gpus_per_worker),
                batch_size,
            )
        built = (
            embedded.groupby("shard", num_partitions=shards)
            .map_groups(
                _build_shard,
                fn_kwargs={"shard": None, "gen": str(gen), "spec": spec},
                batch_format="numpy",
                num_cpus=cpus_per_worker,
            )
            .take_all()
        )
        have = {int(r["shard"]) for r in built}
        empty = [s for s in range(shards) if s not in have]
        if empty:  # shards no document hashed to: empty collections, built by Ray tasks too
            task = ray.remote(num_cpus=cpus_per_worker)(_build_shard)
            rows = {"id": np.array([], dtype=object), "shard": np.array([], dtype=np.int64)}
            for r in ray.get([task.remote(rows, shard=s, gen=str(gen), spec=spec) for s in empty]):
                built.append({k: v[0] for k, v in r.items()})
        built.sort(key=lambda r: int(r["shard"]))
        items: list[dict[str, Any]] = [
            {
                "path": f"{gen.name}/shard-{int(r['shard']):04d}",
                "count": int(r["count"]),
                "documents": int(r["documents"]),
                "dim": emb.dim,
                "model": emb.fingerprint,
            }
            for r in built
        ]
        extra = {"engine": spec["engine"], "bm25": {} if bm25 else None}
        write_shards(root / SHARDS_FILE, items, extra)
    except BaseException:
        shutil.rmtree(gen, ignore_errors=True)
        raise
    for old in root.glob(_GEN_PREFIX + "*"):  # earlier sets: no longer named by shards.json
        if old != gen:
            shutil.rmtree(old, ignore_errors=True)
    read_shards(root / SHARDS_FILE)
    workers_seen = sorted({w for r in built for w in json.loads(str(r["workers"]))})
    report = ShardsReport(
        path=root / SHARDS_FILE,
        documents=sum(int(i["documents"]) for i in items),
        chunks=sum(int(i["count"]) for i in items),
        counts=[int(i["count"]) for i in items],
        seconds=time.perf_counter() - t0,
        nodes=sorted({w.removeprefix("build:").split(":")[0] for w in workers_seen}),
        processes=workers_seen,
    )
    log.info(
        "built %d shards (%d chunks of %d documents) in %.1f s on %d nodes",
        shards,
        report.chunks,
        report.documents,
        report.seconds,
        len(report.nodes),
    )
    return report
