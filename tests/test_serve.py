"""`duorank serve` as users run it: a real server process on a loopback port, driven over HTTP by the
clients users use (openai, cohere, httpx); every answer is checked against the library's."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need the [test] extra (httpx, openai, cohere)")
pytest.importorskip("fastapi", reason="the [server] extra is not installed")

from duorank import Engine, Reranker  # noqa: E402

from .serving import Server  # noqa: E402

KEY = "test-key-123"
TEXTS = [
    "Reset your password from the account page: choose Security, then Reset password.",
    "Parcels ship within two working days; tracking numbers arrive by email.",
    "Refunds reach the original payment method within five to ten days.",
    "Two-factor authentication uses an app or a hardware key.",
    "Our offices close on public holidays; support answers by email.",
    "Invoices can be downloaded as PDF from the billing page.",
]


@pytest.fixture(scope="module")
def kb(tmp_path_factory, default_embedder) -> Path:
    folder = tmp_path_factory.mktemp("serve") / "kb"
    with Engine.create(folder, default_embedder, "default") as eng:
        eng.add(TEXTS, [f"d{i}" for i in range(len(TEXTS))], [{"topic": "t" + str(i % 2)} for i in range(6)])
    return folder


@pytest.fixture(scope="module")
def server(kb) -> Iterator[Server]:
    s = Server(str(kb), "--api-key", KEY, "--max-body-mb", "0.05", "--max-documents", "50")
    yield s
    code, err = s.stop()
    assert code == 0, err  # SIGTERM: in-flight work finished, clean exit


def _post(server: Server, path: str, body: object, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60)


def test_openai_client_embeddings_equal_the_library(server, default_embedder):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    want = default_embedder.encode(TEXTS)
    got = client.embeddings.create(model="default", input=TEXTS)  # the client asks for base64
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), want, atol=1e-6)
    assert [d.index for d in got.data] == list(range(len(TEXTS)))
    assert got.usage.prompt_tokens == default_embedder.tokenize(TEXTS).total
    one = client.embeddings.create(model="default", input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, want[0], atol=1e-6)


def test_rerank_in_cohere_and_tei_shapes_equals_the_library(server):
    rr = Reranker.load("default")
    query = "how do I change my password?"
    want = rr.score(query, TEXTS)
    order = np.lexsort((np.arange(len(TEXTS)), -want))
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key=KEY, base_url=server.url)
    got = client.rerank(model="default", query=query, documents=TEXTS, top_n=3)
    assert [r.index for r in got.results] == order[:3].tolist()
    np.testing.assert_allclose([r.relevance_score for r in got.results], want[order[:3]], atol=1e-6)
    tei = _post(server, "/rerank", {"query": query, "texts": TEXTS, "return_text": True}).json()
    assert [r["index"] for r in tei] == order.tolist() and tei[0]["text"] == TEXTS[order[0]]
    jina = _post(
        server,
        "/v1/rerank",
        {"query": query, "documents": [{"text": t} for t in TEXTS], "return_documents": True},
    ).json()
    assert jina["results"][0]["document"]["text"] == TEXTS[order[0]]


def test_timing_headers_and_stage_metrics(server):
    """Every answer says where its time went (ms), and /metrics holds the same split per stage."""
    r = _post(server, "/v1/embeddings", {"input": TEXTS[:3]})
    for h in ("x-queue-time", "x-tokenization-time", "x-inference-time"):
        assert float(r.headers[h]) >= 0, h
    assert int(r.headers["x-batch-size"]) >= 3
    r = _post(server, "/v1/rerank", {"query": "password", "documents": TEXTS})
    assert float(r.headers["x-tokenization-time"]) >= 0 and float(r.headers["x-inference-time"]) > 0
    r = _post(server, "/search", {"query": "password", "top_k": 6, "top_n": 2})
    for h in ("x-queue-time", "x-embed-time", "x-search-time", "x-fetch-time", "x-rerank-time"):
        assert float(r.headers[h]) >= 0, h
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for line in (
        'duorank_stage_seconds_count{batcher="embed",stage="tokenize"}',
        'duorank_stage_seconds_count{batcher="rerank",stage="inference"}',
        'duorank_stage_seconds_count{batcher="search",stage="search"}',
        'duorank_queue_seconds_count{batcher="embed"}',
        'duorank_batch_items_bucket{batcher="search",le="1.0"}',
        'duorank_queue_items{batcher="embed"} 0.0',
        'duorank_running_items{batcher="search"} 0.0',
        'duorank_dropped_items_total{batcher="embed"} 0.0',
    ):
        assert line in text, line


def test_tei_embed_and_search_equal_the_library(server, kb, default_embedder):
    got = _post(server, "/embed", {"inputs": TEXTS[:2]}).json()
    np.testing.assert_allclose(np.array(got), default_embedder.encode(TEXTS[:2]), atol=1e-6)
    body = {
        "query": ["reset password", "when does my parcel ship"],
        "top_k": 6,
        "top_n": 3,
        "recall": "hybrid",
    }
    got = _post(server, "/search", body).json()
    with Engine.open(kb) as eng:
        want = eng.search(body["query"], top_k=6, top_n=3, recall="hybrid").to_dict()
    for g, w in zip(got["queries"], want["queries"]):
        assert [h["id"] for h in g["hits"]] == [h["id"] for h in w["hits"]]
        np.testing.assert_allclose(
            [h["score"] for h in g["hits"]], [h["score"] for h in w["hits"]], atol=1e-5
        )
    assert got["recall"] == "hybrid" and got["rerank"] == "cross"
    filtered = _post(server, "/search", {"query": "password", "where": {"topic": "t1"}, "top_k": 6}).json()
    assert {h["metadata"]["topic"] for h in filtered["queries"][0]["hits"]} == {"t1"}
    # a rerank budget: none fits 0 ms (recall order, depth 0); in an ample one all of top_k fit
    none = _post(server, "/search", {**body, "rerank_budget_ms": 0}).json()
    assert none["rerank_depth"] == 0 and all(
        h["rerank_score"] is None for q in none["queries"] for h in q["hits"]
    )
    ample = _post(server, "/search", {**body, "rerank_budget_ms": 1e6}).json()  # all of top_k fit
    with Engine.open(kb) as eng:
        deep = eng.search(body["query"], top_k=6, top_n=3, recall="hybrid", rerank_depth=6).to_dict()
    assert ample["rerank_depth"] == 6
    for g, w in zip(ample["queries"], deep["queries"]):
        assert [h["id"] for h in g["hits"]] == [h["id"] for h in w["hits"]]
    r = _post(server, "/search", {**body, "rerank_budget_ms": -1})
    assert r.status_code == 422 and r.json()["error"]["param"] == "rerank_budget_ms"


def test_errors_are_4xx_with_a_json_body_naming_the_field(server):
    assert _post(server, "/v1/embeddings", {"input": "x", "model": "m"}, key=None).status_code == 401
    assert _post(server, "/v1/embeddings", {"input": "x", "model": "m"}, key="wrong").status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200  # the only open route
    r = _post(server, "/v1/embeddings", {"input": 5, "model": "m"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "input"
    r = _post(server, "/v1/embeddings", {"input": [], "model": "m"})
    assert r.status_code == 422 and "input" in r.json()["error"]["message"]
    r = _post(server, "/v1/embeddings", {"input": "x", "dimensions": 12})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    r = _post(server, "/search", {"query": "x", "top_k": 3, "top_n": 5})
    assert r.status_code == 400 and "top_n 5 > top_k 3" in r.json()["error"]["message"]
    r = _post(server, "/search", {"query": "x", "where": {"a; DROP": 1}})
    assert r.status_code == 400 and "field name" in r.json()["error"]["message"]
    r = _post(server, "/v1/rerank", {"query": "q", "documents": ["d"] * 51})
    assert r.status_code == 413 and "--max-documents" in r.json()["error"]["message"]
    r = _post(server, "/v1/embeddings", {"input": ["word " * 2000] * 10})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{server.url}/v1/embeddings", content=b"{bad", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 422 and r.json()["error"]["message"] == "the body is not valid JSON"
    r = _post(server, "/documents", {"texts": ["new"]})
    assert r.status_code == 403 and "--writable" in r.json()["error"]["message"]
    r = _post(server, "/embed", {"inputs": "word " * 400})
    assert r.status_code == 413 and "truncate=true" in r.json()["error"]["message"]
    info = httpx.get(f"{server.url}/info", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["embedder"]["dim"] == 384 and info["collection"]["count"] == len(TEXTS)
    metrics = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'duorank_requests_total{route="/v1/embeddings",status="422"}' in metrics


def test_concurrent_clients_get_the_sequential_answers(server):
    """64 concurrent clients: no error, and each answer equals the one it gets alone."""
    queries = [f"{w} question {i}" for i, w in enumerate(["password", "parcel", "refund", "invoice"] * 16)]

    def alone(q: str) -> tuple[list[str], list[float]]:
        hits = _post(server, "/search", {"query": q, "top_k": 6, "top_n": 3, "rerank": None}).json()
        return [h["id"] for h in hits["queries"][0]["hits"]], [h["score"] for h in hits["queries"][0]["hits"]]

    want = {q: alone(q) for q in queries}
    wanted_vec = {q: np.array(_post(server, "/embed", {"inputs": q}).json()[0]) for q in queries}

    async def main() -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120) as client:

            async def one(q: str) -> None:
                s, e = await asyncio.gather(
                    client.post("/search", json={"query": q, "top_k": 6, "top_n": 3, "rerank": None}),
                    client.post("/embed", json={"inputs": q}),
                )
                assert s.status_code == e.status_code == 200
                hits = s.json()["queries"][0]["hits"]
                assert [h["id"] for h in hits] == want[q][0]
                np.testing.assert_allclose([h["score"] for h in hits], want[q][1], atol=1e-5)
                np.testing.assert_allclose(e.json()[0], wanted_vec[q], atol=1e-6)

            await asyncio.gather(*(one(q) for q in queries))

    asyncio.run(main())


def test_a_full_queue_answers_429_with_retry_after():
    """--max-queue 1: concurrent requests beyond what is queued get 429 + Retry-After at once, the others
    their answer; nothing is dropped or answered 5xx."""
    s = Server("--models", "default", "--max-queue", "1", "--max-batch", "1")
    try:

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=s.url, timeout=120) as client:
                texts = [f"text number {i} " * 20 for i in range(48)]
                return list(await asyncio.gather(*(client.post("/embed", json={"inputs": t}) for t in texts)))

        got = asyncio.run(main())
        codes = {r.status_code for r in got}
        assert codes <= {200, 429} and 429 in codes and 200 in codes, codes
        busy = next(r for r in got if r.status_code == 429)
        assert busy.headers["retry-after"] == "1" and busy.json()["error"]["type"] == "rate_limit_error"
    finally:
        code, err = s.stop()
    assert code == 0, err


def _metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))


def test_a_client_that_disconnects_takes_its_queued_work_with_it():
    """Clients that give up while their work is queued behind a long batch: their texts are never
    embedded (the batcher drops them and counts them), and the server keeps answering the others."""
    s = Server("--models", "default", "--max-batch", "1")
    try:
        long = [f"document {i}: " + "words that take a while to embed " * 30 for i in range(150)]

        async def main() -> httpx.Response:
            async with httpx.AsyncClient(base_url=s.url, timeout=120) as patient:
                first = asyncio.ensure_future(patient.post("/embed", json={"inputs": long, "truncate": True}))
                await asyncio.sleep(0.3)  # the long batch runs; what follows queues behind it

                async def impatient(i: int) -> None:
                    async with httpx.AsyncClient(base_url=s.url, timeout=0.3) as c:
                        with pytest.raises(httpx.TimeoutException):
                            await c.post("/embed", json={"inputs": f"short text {i}"})

                await asyncio.gather(*(impatient(i) for i in range(20)))
                return await first

        assert asyncio.run(main()).status_code == 200
        assert _metric(s, 'duorank_dropped_items_total{batcher="embed"}') == 20
        assert _metric(s, 'duorank_batch_items_count{batcher="embed"}') == 1  # the long one alone
        assert _metric(s, 'duorank_requests_total{route="/embed",status="499"}') == 20
        assert httpx.post(f"{s.url}/embed", json={"inputs": "still here"}).status_code == 200
    finally:
        code, err = s.stop()
    assert code == 0, err


def test_sigterm_drains_health_503_while_requests_are_still_answered():
    s = Server("--models", "default", "--drain", "3")
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    health = httpx.get(f"{s.url}/health")
    assert health.status_code == 503 and health.json() == {"status": "draining"}
    assert httpx.post(f"{s.url}/embed", json={"inputs": "one more"}).status_code == 200
    _, err = s.proc.communicate(timeout=60)
    assert s.proc.returncode == 0, err
    assert "draining" in err


def test_writable_server_adds_and_deletes(tmp_path, default_embedder):
    folder = tmp_path / "kb"
    with Engine.create(folder, default_embedder) as eng:
        eng.add(TEXTS[:2], ["a", "b"])
    s = Server(str(folder), "--writable")
    try:
        r = httpx.post(f"{s.url}/documents", json={"texts": [TEXTS[2]], "ids": ["c"]}, timeout=60)
        assert r.status_code == 200 and r.json()["documents"] == 1
        hits = httpx.post(f"{s.url}/search", json={"query": "refund", "top_k": 3, "top_n": 1}).json()
        assert hits["queries"][0]["hits"][0]["id"] == "c"
        r = httpx.request("DELETE", f"{s.url}/documents", json={"ids": ["zz"]})
        assert r.status_code == 400 and "zz" in r.json()["error"]["message"]
        assert httpx.request("DELETE", f"{s.url}/documents", json={"ids": ["c"]}).status_code == 200
    finally:
        code, err = s.stop()
    assert code == 0, err
    with Engine.open(folder, embedder=default_embedder) as eng:
        assert len(eng) == 2  # the server's writes were saved


def test_sigkill_during_ingest_keeps_the_saved_state(tmp_path, default_embedder):
    folder = tmp_path / "kb"
    with Engine.create(folder, default_embedder) as eng:
        eng.add(TEXTS, [f"d{i}" for i in range(len(TEXTS))])
    s = Server(str(folder), "--writable")
    big = [f"document {i}: " + "words that take a while to embed " * 30 for i in range(3000)]

    async def start_ingest() -> None:
        async with httpx.AsyncClient(timeout=1) as client:
            try:
                await client.post(f"{s.url}/documents", json={"texts": big})
            except httpx.HTTPError:
                pass

    asyncio.run(start_ingest())  # the request is in; its client gave up waiting
    time.sleep(1.0)
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.communicate(timeout=30)
    with Engine.open(folder, embedder=default_embedder) as eng:
        assert len(eng) == len(TEXTS)
        assert eng.search("parcels", top_k=3, top_n=1, rerank=None)[0][0].id == "d1"
