"""`duorank serve`: the engine as an HTTP service (the `[server]` extra: FastAPI, uvicorn, prometheus-client).

Rooms: `batcher` (merging the work of concurrent requests, bounded queues), `metrics` (Prometheus), `app`
(routes, shapes, limits, the API key). `serve(...)` loads the models, builds the app and runs uvicorn until
SIGTERM / Ctrl-C: /health turns 503 at once, the server keeps answering for `drain_s` seconds (a load
balancer's time to notice), then stops accepting and finishes in-flight requests within `grace_s`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

log = logging.getLogger("duorank.serve")


def serve(
    folder: str | os.PathLike[str] | None = None,
    *,
    models: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    writable: bool = False,
    limits: Any = None,
    threads: int | None = None,
    spin: bool = False,
    grace_s: float = 30.0,
    drain_s: float = 0.0,
    ray_address: str | None = None,
) -> None:
    """Serve an engine folder (with the models it records), or `models` ("EMBEDDER[,RERANKER]") alone."""
    from duorank.models_export.deps import require

    require("uvicorn", "server")
    import uvicorn

    from .app import Guard, Limits, Service, create_app

    options: dict[str, Any] = {"spin": spin} if threads is None else {"threads": threads, "spin": spin}
    if (folder is None) == (models is None):
        raise ValueError("serve: give an engine folder DIR or --models EMBEDDER[,RERANKER], one of them")
    if folder is not None:
        from duorank import Engine

        sharded = {"address": ray_address} if ray_address else {}
        service = Service(
            engine=Engine.open(folder, "a" if writable else "r", **options, **sharded),
            writable=writable,
            limits=limits or Limits(),
        )
    else:
        from duorank import Embedder, Reranker

        names = [m.strip() for m in str(models).split(",") if m.strip()]
        if not 1 <= len(names) <= 2:
            raise ValueError(f"--models {models!r}: expected EMBEDDER or EMBEDDER,RERANKER")
        service = Service(
            embedder=Embedder.load(names[0], **options),
            reranker=Reranker.load(names[1], **options) if len(names) == 2 else None,
            limits=limits or Limits(),
        )
    app = Guard(create_app(service), api_key=api_key, max_body_bytes=service.limits.max_body_bytes)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning("listening on %s without an API key: anyone who reaches it can use it", host)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=max(1, int(grace_s)),
        access_log=False,
    )

    class Server(uvicorn.Server):  # type: ignore[misc]
        def handle_exit(self, sig: int, frame: Any) -> None:
            again, service.draining = service.draining, True  # /health answers 503 from now on
            if again or drain_s <= 0:  # a second signal stops at once
                return super().handle_exit(sig, frame)
            log.warning("draining: /health answers 503; stopping in %.1f s", drain_s)
            threading.Timer(drain_s, super().handle_exit, (sig, frame)).start()

    # uvicorn drains on SIGTERM (no new connections, in-flight requests finish), then raises the signal
    # again under the handler it found: this one, so that a drained server exits 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    Server(config).run()
    log.warning("stopped")
