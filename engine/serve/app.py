"""The HTTP service: the engine's stages behind the shapes their clients already speak (OpenAI embeddings,
Cohere / Jina / TEI rerank, TEI embed) and duorank's own search, on FastAPI.

Inference and search never run on the event loop: each stage has a `Batcher` (one queue, one worker
thread) that merges the work of concurrent requests into one call of the library (texts into one
token-budget embedding batch, rerank pairs into one `score_groups`, queries of equal settings into one
`Engine.search`). onnxruntime and the Numba kernels release the GIL, so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from .batcher import Batcher, Done, Full
from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("duorank.serve")


@dataclass(frozen=True)
class Limits:
    """What one server accepts: body bytes, inputs per request, items queued per stage."""

    max_body_bytes: int = 8 << 20
    max_inputs: int = 2048  # texts per embedding request (OpenAI's limit)
    max_documents: int = 1000  # documents per rerank request (TEI's default is 32; this is a flag)
    max_queue: int = 4096  # items waiting per stage; beyond it 429
    max_batch: int = 256  # items one batch takes


class ApiError(Exception):
    """An error answered with `status` and the OpenAI error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")


_TYPES = {"str", "int", "float", "bool", "list", "dict", "function-after", "Document"}


def error_body(message: str, kind: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


# ---------------------------------------------------------------------- request shapes
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EmbeddingsRequest(_Body):
    input: str | list[str] = Field(description="a text or a list of texts")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    input_type: Literal["query", "document"] = Field("document", description="the side (a model prefix)")


class Document(_Body):
    text: str


class RerankRequest(_Body):
    query: str
    documents: list[str | Document] | None = Field(None, description="Cohere / Jina shape")
    texts: list[str] | None = Field(None, description="TEI shape (the answer is a bare list)")
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    return_text: bool = False  # TEI
    raw_scores: bool = False  # TEI: accepted; the score is the reranker's own either way
    model: str | None = None


class EmbedRequest(_Body):  # TEI
    inputs: str | list[str]
    normalize: bool = True
    truncate: bool = False


class SearchRequest(_Body):
    query: str | list[str]
    top_k: int = Field(50, ge=1)
    top_n: int = Field(5, ge=1)
    recall: Literal["dense", "bm25", "hybrid"] = "dense"
    rerank: Literal["auto", "cross", "embedding"] | None = "auto"
    where: dict[str, Any] | None = None
    group: bool = False
    fusion: Literal["rrf", "weighted"] = "rrf"
    rerank_depth: int | None = Field(None, ge=1)
    rerank_blend: float | None = Field(None, ge=0.0, le=1.0)
    rerank_budget_ms: float | None = Field(None, ge=0.0)


class DocumentsRequest(_Body):
    texts: list[str]
    ids: list[str] | None = None
    metadata: list[dict[str, Any] | None] | None = None


class DeleteRequest(_Body):
    ids: list[str]


# ---------------------------------------------------------------------- the service
class Service:
    """The models (and engine) a server holds, with one batcher per stage."""

    def __init__(
        self,
        *,
        engine: Any = None,
        embedder: Any = None,
        reranker: Any = None,
        writable: bool = False,
        limits: Limits = Limits(),
    ) -> None:
        self.engine = engine
        self.embedder = engine.embedder if engine is not None else embedder
        self.reranker = engine.reranker if engine is not None else reranker
        if self.embedder is None:
            raise ValueError("a server needs an engine folder or an embedder")
        self.writable, self.limits = writable, limits
        self.ready = False  # warm: /health answers 200
        self.draining = False  # stopping: /health answers 503 while in-flight work finishes
        self.state = threading.Lock()  # a write and a search batch never overlap
        self.metrics = Metrics()
        kw = {"max_batch": limits.max_batch, "max_items": limits.max_queue}
        self.embeds = Batcher("embed", self._embed, on_batch=self.metrics.on_batch("embed"), **kw)
        self.reranks = Batcher(
            "rerank",
            self._rerank,
            max_batch=max(limits.max_batch, limits.max_documents),
            max_items=max(limits.max_queue, limits.max_documents),
            on_batch=self.metrics.on_batch("rerank"),
        )
        self.searches = (
            Batcher("search", self._search, on_batch=self.metrics.on_batch("search"), **kw)
            if engine is not None
            else None
        )
        for b in (self.embeds, self.reranks, self.searches):
            if b is not None:
                self.metrics.batcher(b)

    def warmup(self) -> dict[str, float]:
        t = time.perf_counter()
        if self.engine is not None:
            self.engine.warmup()
        else:
            self.embedder.encode(["warm-up"])
            if self.reranker is not None:
                self.reranker.score("warm-up", ["warm-up"])
        self.ready = True
        return {"ms": 1e3 * (time.perf_counter() - t)}

    def close(self) -> None:
        self.ready = False
        for b in (self.embeds, self.reranks, self.searches):
            if b is not None:
                b.close()
        if self.engine is not None:
            self.engine.close()

    # the batches (worker threads): each returns its results and the seconds of each stage
    def _embed(self, key: Hashable, texts: list[str]) -> tuple[list[Any], dict[str, float]]:
        kind, normalize = key if isinstance(key, tuple) else ("document", True)
        t0 = time.perf_counter()
        tokens = self.embedder.tokenize(texts, kind=kind)
        t1 = time.perf_counter()
        vecs = self.embedder.encode(tokens, normalize=normalize)
        stages = {"tokenize": t1 - t0, "inference": time.perf_counter() - t1}
        return list(zip(vecs, tokens.lengths.tolist(), tokens.truncated.tolist())), stages

    def _rerank(self, key: Hashable, items: list[tuple[str, str]]) -> tuple[list[float], dict[str, float]]:
        groups: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(items):
            groups.setdefault(q, []).append(i)
        t0 = time.perf_counter()
        pairs = self.reranker.tokenize([(q, [items[i][1] for i in idx]) for q, idx in groups.items()])
        t1 = time.perf_counter()
        scored = self.reranker.score_groups(pairs)
        stages = {"tokenize": t1 - t0, "inference": time.perf_counter() - t1}
        out = [0.0] * len(items)
        for idx, s in zip(groups.values(), scored):
            for i, v in zip(idx, s.scores.tolist()):
                out[i] = float(v)
        return out, stages

    def _search(self, key: Hashable, queries: list[str]) -> tuple[list[Any], dict[str, float]]:
        params = json.loads(key)  # type: ignore[arg-type]
        with self.state:
            res = self.engine.search(queries, **params)
        stages = {k: v / 1e3 for k, v in res.timings.items() if k != "total"}
        return [(res, i) for i in range(len(queries))], stages

    def info(self) -> dict[str, Any]:
        from duorank.machine import versions

        def model(m: Any) -> dict[str, Any] | None:
            if m is None:
                return None
            return {
                "name": m.name,
                "variant": m.variant,
                "device": m.device,
                "max_length": m.max_length,
                "path": str(m.folder),
            }

        out: dict[str, Any] = {
            "embedder": {**(model(self.embedder) or {}), "dim": self.embedder.dim},
            "reranker": model(self.reranker),
            "limits": asdict(self.limits),
            "writable": self.writable,
            "versions": versions(("duorank", "numpy", "numba", "onnxruntime", "onnxruntime-gpu", "fastapi")),
        }
        if self.engine is not None:
            out["collection"] = {k: v for k, v in self.engine.collection.stats().items() if k != "bytes"}
        return out


async def _wait(batcher: Batcher, key: Hashable, items: Sequence[Any], request: Request) -> Done:
    """Queue the items and wait for their batch. A client that disconnects before its batch starts takes
    its queued work with it (the batcher drops it; 499 is logged, nobody reads it)."""
    try:
        future = batcher.submit(key, items)
    except Full as e:
        raise ApiError(429, f"busy: {e}; retry shortly", kind="rate_limit_error") from e
    wrapped = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((wrapped, gone), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        future.cancel()
        raise
    finally:
        gone.cancel()
    if not wrapped.done():
        future.cancel()
        raise ApiError(499, "the client closed the connection before its answer")
    try:
        return wrapped.result()
    except ValueError as e:  # the library's precise error for a bad value
        raise ApiError(400, str(e)) from e


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read: the next ASGI message is
    the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


_HEADERS = {"tokenize": "x-tokenization-time", "inference": "x-inference-time"}


class Json(Response):
    """A JSON answer written by orjson (numpy arrays as lists, ~10x json's speed on float vectors)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _answer(content: Any, done: Done) -> Json:
    """`content` as JSON with the timing headers (ms): the queue wait, each stage of the batch the
    request ran in, and that batch's size."""
    headers = {"x-queue-time": f"{done.queue_s * 1e3:.3f}", "x-batch-size": str(done.batch)}
    for stage, seconds in done.stages.items():
        headers[_HEADERS.get(stage, f"x-{stage}-time")] = f"{seconds * 1e3:.3f}"
    return Json(content, headers=headers)


def _texts(value: str | list[str], name: str, limit: int) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise ApiError(422, f"{name}: expected a string or a non-empty list of strings", name)
    if len(texts) > limit:
        raise ApiError(413, f"{name}: {len(texts)} texts, at most {limit} per request", name)
    return texts


def create_app(service: Service) -> FastAPI:
    """The FastAPI application over `service` (its OpenAPI document at /openapi.json, /docs)."""
    from contextlib import asynccontextmanager

    from starlette.concurrency import run_in_threadpool

    metrics = service.metrics
    items = metrics.items

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        took = await run_in_threadpool(service.warmup)
        log.warning("ready (warm-up %.0f ms)", took["ms"])
        yield
        service.ready = False
        await run_in_threadpool(service.close)

    app = FastAPI(title="duorank", version=_version(), lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return JSONResponse(error_body(e.message, e.kind, e.param), e.status, headers=headers)

    @app.exception_handler(Exception)
    async def failed(request: Request, e: Exception) -> JSONResponse:  # a bug, not the caller's input
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error: {type(e).__name__}", "server_error", None), 500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body("the body is not valid JSON", "invalid_request_error", None), 422)
        # the field's path, without pydantic's names of the union member it tried ("str", "list[str]")
        path = [str(p) for p in first.get("loc", ()) if p != "body"]
        path = [p for p in path if not (p[:1].isalpha() and (p in _TYPES or "[" in p))] or path
        param = ".".join(path) or None
        msg = f"{param or 'body'}: {first.get('msg', 'invalid')}"
        return JSONResponse(error_body(msg, "invalid_request_error", param), 422)

    app.add_middleware(Measured, metrics=metrics)

    async def embed(request: Request, texts: list[str], kind: str, normalize: bool = True) -> Done:
        items.labels("embed").inc(len(texts))
        return await _wait(service.embeds, (kind, normalize), texts, request)

    @app.post("/v1/embeddings", response_model=None)
    @app.post("/embeddings", include_in_schema=False, response_model=None)
    async def embeddings(body: EmbeddingsRequest, request: Request) -> Response:
        """OpenAI's embeddings: base64 is the raw little-endian float32 bytes of each vector."""
        texts = _texts(body.input, "input", service.limits.max_inputs)
        if body.dimensions is not None and body.dimensions != service.embedder.dim:
            raise ApiError(
                400, f"dimensions {body.dimensions}: this model gives {service.embedder.dim}", "dimensions"
            )
        done = await embed(request, texts, body.input_type)
        data = []
        b64 = body.encoding_format == "base64"
        for i, (v, _, _) in enumerate(done.results):
            vec: Any = base64.b64encode(v.astype("<f4").tobytes()).decode() if b64 else v
            data.append({"object": "embedding", "embedding": vec, "index": i})
        tokens = sum(n for _, n, _ in done.results)
        content = {
            "object": "list",
            "data": data,
            "model": service.embedder.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return _answer(content, done)

    @app.post("/embed", response_model=None)
    async def tei_embed(body: EmbedRequest, request: Request) -> Response:
        """TEI's embed: a list of vectors; truncate=false refuses texts longer than the model reads (413)."""
        texts = _texts(body.inputs, "inputs", service.limits.max_inputs)
        done = await embed(request, texts, "document", body.normalize)
        cut = [i for i, (_, _, t) in enumerate(done.results) if t]
        if cut and not body.truncate:
            raise ApiError(
                413,
                f"inputs {cut[:10]} are longer than {service.embedder.max_length} tokens; "
                "send truncate=true to embed their first tokens",
                "inputs",
            )
        return _answer([v for v, _, _ in done.results], done)

    @app.post("/v1/rerank", response_model=None)
    @app.post("/v2/rerank", include_in_schema=False, response_model=None)
    @app.post("/rerank", include_in_schema=False, response_model=None)
    async def rerank(body: RerankRequest, request: Request) -> Response:
        """Cohere / Jina rerank (`documents`), or TEI's (`texts`: a bare list of {index, score, text?}).
        Best first; `relevance_score` is the reranker's own score."""
        if service.reranker is None:
            raise ApiError(404, "this server has no reranker (start it with --models EMBEDDER,RERANKER)")
        tei = body.texts is not None
        if tei == (body.documents is not None):
            raise ApiError(422, "give `documents` (Cohere / Jina) or `texts` (TEI), not both", "documents")
        docs = body.texts if tei else [d if isinstance(d, str) else d.text for d in body.documents or []]
        assert docs is not None
        if not docs:
            raise ApiError(422, "documents: expected a non-empty list", "documents")
        if len(docs) > service.limits.max_documents:
            raise ApiError(
                413,
                f"documents: {len(docs)}, at most {service.limits.max_documents} per request "
                "(--max-documents)",
                "documents",
            )
        items.labels("rerank").inc(len(docs))
        done = await _wait(service.reranks, "pairs", [(body.query, d) for d in docs], request)
        scores = np.asarray(done.results)
        order = np.lexsort((np.arange(len(docs)), -scores))[: body.top_n or len(docs)]
        if tei:
            tei_results = [
                {
                    "index": int(i),
                    "score": float(scores[i]),
                    **({"text": docs[i]} if body.return_text else {}),
                }
                for i in order
            ]
            return _answer(tei_results, done)
        results = [
            {
                "index": int(i),
                "relevance_score": float(scores[i]),
                **({"document": {"text": docs[i]}} if body.return_documents else {}),
            }
            for i in order
        ]
        content = {
            "id": f"rerank-{time.time_ns()}",
            "results": results,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
            "usage": {"documents": len(docs)},
        }
        return _answer(content, done)

    @app.post("/search", response_model=None)
    async def search(body: SearchRequest, request: Request) -> Response:
        """duorank's search with the Engine's defaults; the answer is `Results.to_dict()`. Queries of
        concurrent requests with equal settings run as one batch (its timings are the batch's)."""
        if service.searches is None:
            raise ApiError(404, "this server has no collection (start it with `duorank serve DIR`)")
        queries = _texts(body.query, "query", service.limits.max_inputs)
        params = body.model_dump(exclude={"query"})
        key = json.dumps(params, sort_keys=True)
        items.labels("search").inc(len(queries))
        done = await _wait(service.searches, key, queries, request)
        res = done.results[0][0]
        return _answer(res.to_dict([i for _, i in done.results]), done)

    def _writable() -> Any:
        if service.engine is None:
            raise ApiError(404, "this server has no collection")
        if not service.writable:
            raise ApiError(403, "this server is read-only: start it with --writable to add or delete")
        return service.engine

    @app.post("/documents")
    async def add_documents(body: DocumentsRequest) -> dict[str, Any]:
        """Add documents (only with --writable): chunk, embed, save; a search sees the state before or
        after, never a mix."""
        eng = _writable()

        def add() -> Any:
            with service.state:
                return eng.add(body.texts, body.ids, body.metadata, progress=False)

        try:
            report = await run_in_threadpool(add)
        except ValueError as e:
            raise ApiError(400, str(e), "texts") from e
        return {**asdict(report), "documents_per_s": report.documents_per_s}

    @app.delete("/documents")
    async def delete_documents(body: DeleteRequest) -> dict[str, Any]:
        eng = _writable()

        def delete() -> None:
            with service.state:
                eng.delete(body.ids)

        try:
            await run_in_threadpool(delete)
        except ValueError as e:
            raise ApiError(400, str(e), "ids") from e
        return {"deleted": len(body.ids)}

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 once warm; 503 while starting or draining (a load balancer stops sending work here)."""
        if service.ready and not service.draining:
            return JSONResponse({"status": "ok"}, 200)
        return JSONResponse({"status": "draining" if service.draining else "starting"}, 503)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    return app


def _version() -> str:
    from duorank import __version__

    return __version__


class Measured:
    """ASGI middleware: every answer counted by route and status, with its latency (pure ASGI: no
    per-request task or body copy, unlike an `@app.middleware("http")` function)."""

    def __init__(self, app: Any, *, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t, status = time.perf_counter(), 500

        async def sent(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.request(route, status, time.perf_counter() - t)


class Guard:
    """ASGI middleware in front of everything: the API key (constant-time; every route but /health) and
    the body-size cap (413 from Content-Length, or while a chunked body streams in); bodies are JSON
    whatever their Content-Type says."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.key, self.cap = app, api_key, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.key is not None and scope["path"] != "/health":
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.key}".encode()):
                return await _reply(
                    send, 401, "a valid API key is needed: Authorization: Bearer KEY", "authentication_error"
                )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.cap:
            return await _reply(send, 413, f"the body is {int(length)} bytes, at most {self.cap}")
        if scope["method"] in ("POST", "DELETE") and not headers.get(b"content-type", b"").startswith(
            b"application/json"
        ):  # every body here is JSON: `curl -d` (form-encoded by default) works as users expect
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope["headers"].append((b"content-type", b"application/json"))
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.cap:
                raise _TooLarge
            return message

        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await _reply(send, 413, f"the body is over {self.cap} bytes")


class _TooLarge(Exception):
    pass


async def _reply(send: Any, status: int, message: str, kind: str = "invalid_request_error") -> None:
    body = json.dumps(error_body(message, kind, None)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
