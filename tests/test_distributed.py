"""Sharded collections on a real Ray cluster of two nodes on this machine (`ray.cluster_utils.Cluster`:
separate raylets, 2 CPUs each, a small object store, no dashboard), started once for the module: Ray Data
builds the shards, Ray actors serve them, and the answers equal a single collection's."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is absent: pip install 'duorank[distributed]'")

from duorank import Engine  # noqa: E402
from duorank.shard_build import build_shards  # noqa: E402
from duorank.sharded import ShardUnavailableError  # noqa: E402
from duorank.shards import read_shards, shard_of  # noqa: E402

from .conftest import SHARED_DATA  # noqa: E402

SCIFACT = SHARED_DATA / "scifact"


@pytest.fixture(scope="module")
def cluster() -> Any:
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "object_store_memory": 100 << 20, "include_dashboard": False},
    )
    c.add_node(num_cpus=2, object_store_memory=100 << 20)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def _documents(n: int) -> list[dict[str, Any]]:
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact is not at {SCIFACT} (a user's clone has no ../shared)")
    out = []
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == n:
                break
            d = json.loads(line)
            out.append({"id": d["_id"], "text": f"{d['title']} {d['text']}", "metadata": {"n": i}})
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    docs = _documents(160)
    path = tmp_path_factory.mktemp("src") / "docs.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in docs), encoding="utf-8")
    return path, docs


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, corpus: Any) -> Engine:
    _, docs = corpus
    eng = Engine.create(tmp_path_factory.mktemp("one") / "kb", "default", "default")
    eng.add([d["text"] for d in docs], [d["id"] for d in docs], [d["metadata"] for d in docs])
    return eng


@pytest.fixture(scope="module")
def sharded(cluster: Any, corpus: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    src, _ = corpus
    out = tmp_path_factory.mktemp("sharded")
    return build_shards(out, [str(src)], 2, workers=2, batch_size=40)


def test_the_build_spreads_over_both_nodes(sharded: Any, corpus: Any) -> None:
    man = read_shards(sharded.path)
    assert man["shards"] == 2 and sum(sharded.counts) == len(corpus[1]) == man["count"]
    assert len(sharded.nodes) >= 2 and len([p for p in sharded.processes if not p.startswith("build:")]) >= 2
    for d in corpus[1]:  # each document is in the shard its id hashes to
        assert d["id"] in _ids_of(sharded.path, shard_of(d["id"], 2))


def _ids_of(manifest: Path, shard: int) -> set[str]:
    from duorank import Collection

    folder = manifest.parent / read_shards(manifest)["items"][shard]["path"]
    with Collection.open(folder) as c:
        return set(c.store.external_ids(c.ids))


def _open_here(folder: Path) -> list[str]:
    """The files below `folder` this process holds open."""
    out = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


def test_sharded_answers_equal_one_collection(sharded: Any, single: Engine) -> None:
    """Dense top-k equal as (id, score), texts and metadata; the cross-encoder's top_n over equal candidates
    equal too; the shard actors live on both nodes and the driver opens no shard file itself."""
    queries = ["what causes cancer", "vitamin D deficiency", "gene expression in mice"]
    with Engine.open(sharded.path, reranker="default", cpus_per_shard=0.5) as eng:
        where = eng.collection.where()
        assert len({node for node, _ in where}) == 2, where
        a = eng.search(queries, top_k=20, top_n=5, rerank="cross")
        b = single.search(queries, top_k=20, top_n=5, rerank="cross")
        for x, y in zip(a, b):
            assert [h.id for h in x] == [h.id for h in y]
            np.testing.assert_allclose([h.rerank_score for h in x], [h.rerank_score for h in y], atol=1e-5)
        for q in queries:
            one = eng.search(q, top_k=20, top_n=20, rerank=None)[0]
            other = single.search(q, top_k=20, top_n=20, rerank=None)[0]
            assert [h.id for h in one] == [h.id for h in other]
            np.testing.assert_allclose([h.score for h in one], [h.score for h in other], atol=1e-6)
            assert [h.text for h in one] == [h.text for h in other]
            assert [h.metadata for h in one] == [h.metadata for h in other]
        generation = (sharded.path.parent / read_shards(sharded.path)["items"][0]["path"]).parent
        assert not _open_here(generation)


def _shard_rows(manifest: Path) -> list[tuple[list[str], np.ndarray]]:
    """Each shard's external ids (internal order) and vectors, read from its folder."""
    from duorank import Collection

    out = []
    for item in read_shards(manifest)["items"]:
        with Collection.open(manifest.parent / item["path"]) as c:
            out.append((list(c.store.external_ids(c.ids)), np.array(c.vectors)))
    return out


def test_embeddings_equal_one_collection(sharded: Any, single: Engine) -> None:
    one = dict(zip(single.collection.store.external_ids(single.collection.ids), single.collection.vectors))
    for ids, vectors in _shard_rows(sharded.path):
        assert ids == sorted(ids)  # built from its rows sorted by id
        np.testing.assert_allclose(vectors, np.stack([one[i] for i in ids]), atol=1e-6)


def test_a_killed_embedding_actor_and_shuffled_input_change_nothing(
    cluster: Any, corpus: Any, sharded: Any, single: Engine, tmp_path: Path
) -> None:
    """SIGKILL one embedding actor mid-job: Ray restarts it and retries its batch; the shards equal a clean
    build's (no chunk lost or doubled). The input is shuffled too: shards are built from rows sorted by id.
    This build's shards are HNSW graphs: their merged recall@10 is within 0.01 of one HNSW collection's."""
    docs = list(corpus[1])
    random.Random(7).shuffle(docs)
    src = tmp_path / "shuffled.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in docs), encoding="utf-8")
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            pids = _processes("MapBatches(Embed)")
            if len(pids) >= 2:
                time.sleep(1.5)  # loaded and embedding
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.1)

    killer = threading.Thread(target=kill_one)
    killer.start()
    again = build_shards(tmp_path / "out", [str(src)], 2, workers=2, batch_size=8, index="hnsw", **HNSW)
    killer.join()
    assert killed, "no embedding actor was seen to kill"
    for (ids_a, v_a), (ids_b, v_b) in zip(_shard_rows(sharded.path), _shard_rows(again.path)):
        assert ids_a == ids_b
        np.testing.assert_allclose(v_a, v_b, atol=1e-6)
    # that build's shards are HNSW: recall@10 against exact search within 0.01 of one HNSW collection's
    from duorank import Collection

    queries = [d["text"][:80] for d in corpus[1][::8]]
    dense = {"top_k": 10, "top_n": 10, "recall": "dense", "rerank": None}
    exact = [[h.id for h in hits] for hits in single.search(queries, **dense)]
    with Engine.open(again.path, cpus_per_shard=0.5) as eng:
        got = [[h.id for h in hits] for hits in eng.search(queries, **dense)]
    one = single.collection
    with Collection.create(tmp_path / "hnsw", dim=one.dim, index="hnsw", **HNSW) as c:
        c.add(one.vectors, ["."] * len(one), one.store.external_ids(one.ids))
        hits = c.search(single.embedder.encode(queries, kind="query"), 10, fetch=False)
        alone = [[str(i) for i in c.store.external_ids(row)] for row in hits.ids]
    assert _recall(got, exact) >= _recall(alone, exact) - 0.01, (_recall(got, exact), _recall(alone, exact))


HNSW = {"connectivity": 4, "expansion_add": 16, "expansion_search": 10}


def _recall(got: list[list[str]], want: list[list[str]]) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]))


def _processes(name: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if name in cmd:
                out.append(int(d.name))
    return sorted(out)


def test_a_killed_build_leaves_the_previous_set(
    cluster: Any, sharded: Any, corpus: Any, tmp_path: Path
) -> None:
    """SIGKILL the driver of a rebuild mid-job: shards.json is still the previous, complete set."""
    out = tmp_path / "kb"
    first = build_shards(out, [str(corpus[0])], 2, workers=1, batch_size=40)
    before = first.path.read_bytes()
    code = (
        "import ray, sys; from duorank.shard_build import build_shards; "
        f"ray.init(address={cluster.address!r}, log_to_driver=False); "
        f"build_shards({str(out)!r}, [{str(corpus[0])!r}], 3, workers=1, batch_size=8)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(out.glob("shards-*"))) < 2:
            time.sleep(0.1)  # the rebuild made its generation folder: it is under way
        time.sleep(2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert first.path.read_bytes() == before
    assert read_shards(first.path)["shards"] == 2
    with Engine.open(first.path, cpus_per_shard=0.5) as eng:
        assert len(eng) == len(corpus[1])


def test_a_gpu_share_the_cluster_lacks_is_refused(cluster: Any, corpus: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"gpus_per_worker 1: the Ray cluster has 0 GPUs"):
        build_shards(tmp_path / "kb", [str(corpus[0])], 2, gpus_per_worker=1)
    assert not list(tmp_path.glob("kb/*"))


def test_a_shard_that_is_gone_or_late_fails_the_search_by_name(sharded: Any) -> None:
    with Engine.open(sharded.path, cpus_per_shard=0.5) as eng:
        eng.collection.deadline_s = 1e-4
        with pytest.raises(ShardUnavailableError, match=r"shard \d .* did not answer within"):
            eng.search("vitamin D", rerank=None)
        eng.collection.deadline_s = 30
        ray.kill(eng.collection.actors[1])
        with pytest.raises(ShardUnavailableError, match=r"shard 1 \(.*shard-0001\) is gone"):
            eng.search("vitamin D", rerank=None)


def test_cli_index_shards_and_serve_them(cluster: Any, corpus: Any, sharded: Any, tmp_path: Path) -> None:
    """`duorank index --shards` builds the same shards as `build_shards`; `duorank serve` over them answers
    /search as the library's sharded engine does."""
    import httpx

    from .serving import Server

    out = tmp_path / "kb"
    argv = [sys.executable, "-m", "duorank.cli", "index", str(out), str(corpus[0]), "--shards", "2"]
    done = subprocess.run(
        [*argv, "--ray", cluster.address, "--workers", "1", "--json"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["chunks"] == len(corpus[1]) and report["per_shard"] == sharded.counts
    server = Server(str(out), "--ray", cluster.address)
    try:
        body = {"query": ["vitamin D deficiency", "gene expression"], "top_k": 10, "top_n": 5, "rerank": None}
        got = httpx.post(f"{server.url}/search", json=body, timeout=60).json()
        assert got["queries"][0]["hits"] and server.proc.poll() is None
        with Engine.open(out, cpus_per_shard=0.5) as eng:
            want = eng.search(body["query"], top_k=10, top_n=5, rerank=None).to_dict()
        for g, w in zip(got["queries"], want["queries"]):
            assert [h["id"] for h in g["hits"]] == [h["id"] for h in w["hits"]]
            np.testing.assert_allclose(
                [h["score"] for h in g["hits"]], [h["score"] for h in w["hits"]], atol=1e-6
            )
    finally:
        code, err = server.stop()
    assert code == 0, err[-3000:]
