"""`duorank serve` under load, side by side in one run with infinity and with the in-process library.

Closed loop (wrk, C, one thread: each of C connections sends its next request when the last is answered),
10 s per cell after a 2 s warm-up, at concurrency 1, 8, 32 and 128, for:
- `/v1/embeddings`, one short text per request (SciFact queries, a different one each request), and 32;
- `/v1/rerank`, 1 query x 20 passages (SciFact abstracts);
- `/search` on a 100k-chunk engine folder: dense exact without rerank, and hybrid with the default rerank.
Peers: infinity (`infinity_emb v2`, torch engine, serving the default embedder's own weights, when its
command is given with --infinity) on the embeddings rows; the in-process library: `Embedder.encode` of the
same texts in batches (texts/s) and `Engine.search` one query at a time (p50), the server's overhead.
Then an open loop (plain HTTP/1.1 on asyncio streams + uvloop, requests sent on a fixed schedule whatever
the answers) against a fresh server with --max-queue 256, on the one-text embeddings: 60 s at 2x the
closed loop's best rate (its answered rate is the capacity under this client), 60 s at 80% of that, and a
soak at half of it with the server's resident memory sampled every 5 s.

    python bench/serve_load.py --infinity /path/to/venv/bin/infinity_emb      # ~25 min
    python bench/serve_load.py --seconds 2 --rate-seconds 10 --soak 20        # a smoke run, ~4 min

Needs the [server] extra, wrk (Debian's package) and ../shared/data/scifact. The table prints to stdout
and is saved to bench/results/serve.json. The 100k chunks are SciFact's, repeated; their vectors are
synthetic embedding-like rows (search cost depends on the count, not on the content).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_OMP = os.environ.get("OMP_WAIT_POLICY")
from bench.conftest import chunk_corpus, scifact_texts  # noqa: E402

if _OMP is None:  # bench/conftest.py sets passive OpenMP waiting for FAISS; infinity's torch keeps its own
    os.environ.pop("OMP_WAIT_POLICY", None)
from tests.conftest import SHARED_DATA  # noqa: E402

CONCURRENCY = [1, 8, 32, 128]
THREADS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process on a free loopback port, ready once its /health answers 200."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None, port: int = 0) -> None:
        import httpx

        self.name, self.port = name, port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=self.log, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{name} exited: {self.log.read()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{name} did not become ready in 300 s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def wait_idle(self, timeout: float = 300) -> None:
        """Until duorank's /metrics shows no item queued or running (work a cell left behind, e.g. the
        batch of clients that timed out, must not slow the next cell)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
            busy = sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith(("duorank_queue_items{", "duorank_running_items{"))
            )
            if busy == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} still busy after {timeout} s")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


_LUA = """
local bodies = {%s}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\\nRESULT {"requests": %%d, "us": %%d, "p50": %%d, "p99": %%d, "non2xx": %%d, '
    .. '"socket": %%d, "timeouts": %%d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.status, e.connect + e.read + e.write, e.timeout))
end
"""


def wrk(url: str, path: str, bodies: list[Any], connections: int, seconds: float) -> dict[str, float]:
    """requests/s, p50 / p99 ms, failures of `connections` closed-loop clients for `seconds`."""
    lua = _LUA % (", ".join(f"[==[{json.dumps(b)}]==]" for b in bodies), path)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    try:
        argv = ["wrk", "-t1", f"-c{connections}", "--timeout", "30s", "-s", f.name, url]
        subprocess.run([*argv, "-d2s"], capture_output=True, check=True)  # warm-up
        out = subprocess.run(
            [*argv, f"-d{max(1, round(seconds))}s"], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(f.name)
    r = json.loads(out.split("RESULT ", 1)[1])
    return {
        "rps": r["requests"] / (r["us"] / 1e6),
        "p50_ms": r["p50"] / 1e3,
        "p99_ms": r["p99"] / 1e3,
        "failed": r["non2xx"] + r["socket"] + r["timeouts"],
        "non2xx": r["non2xx"],
        "socket_errors": r["socket"],
        "timeouts": r["timeouts"],
    }


async def _open_loop(url: str, bodies: list[Any], rate: float, seconds: float) -> dict[str, Any]:
    """Requests sent on a fixed schedule over keep-alive connections (a new one whenever all are busy):
    plain HTTP/1.1 on asyncio streams, so that the client costs the 2 cores little (httpx here cost
    ~1 ms of CPU a request and queued requests on the client's side at 185/s)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payloads = []
    for b in bodies:
        data = json.dumps(b).encode()
        head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        payloads.append(head.encode() + data)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    codes: list[int] = []
    ok_ms: list[float] = []
    errors: dict[str, int] = {}

    async def exchange(payload: bytes) -> int:
        reused = bool(idle)
        reader, writer = idle.pop() if reused else await asyncio.open_connection(host, port)
        try:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError) as e:
            writer.close()
            if not reused or (isinstance(e, asyncio.IncompleteReadError) and e.partial):
                raise
            # the server closed this keep-alive connection while it sat idle (uvicorn: after 5 s); a
            # client sends the request again on a new one, as HTTP clients do
            return await exchange_new(payload)
        return await finish(reader, writer, head)

    async def exchange_new(payload: bytes) -> int:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(payload)
        return await finish(reader, writer, await reader.readuntil(b"\r\n\r\n"))

    async def finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> int:
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        idle.append((reader, writer))
        return int(head[9:12])

    async def one(i: int) -> None:
        t = time.perf_counter()
        try:
            code = await asyncio.wait_for(exchange(payloads[i % len(payloads)]), 30)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, StopIteration, ValueError) as e:
            code = 0
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        codes.append(code)
        if code == 200:
            ok_ms.append(1e3 * (time.perf_counter() - t))

    n = int(rate * seconds)
    start = time.perf_counter()
    tasks = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    sent_s = time.perf_counter() - start
    await asyncio.gather(*tasks)
    elapsed_s = time.perf_counter() - start
    for _, writer in idle:
        writer.close()
    c = np.array(codes)
    return {
        "offered_rps": rate,
        "sent_rps": n / sent_s,
        "ok": int((c == 200).sum()),
        "ok_rps": int((c == 200).sum()) / elapsed_s,  # answered per second, until the last answer
        "429": int((c == 429).sum()),
        "5xx": int((c >= 500).sum()),
        "failed": int(((c != 200) & (c != 429)).sum()),
        "errors": errors,
        "p50_ms": float(np.percentile(ok_ms, 50)) if ok_ms else None,
        "p99_ms": float(np.percentile(ok_ms, 99)) if ok_ms else None,
    }


def open_loop(url: str, bodies: list[Any], rate: float, seconds: float) -> dict[str, Any]:
    """Requests sent on a fixed schedule (`rate` per second, whatever the answers), with their outcome."""
    return _run(_open_loop(url, bodies, rate, seconds))


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _scifact() -> tuple[list[str], list[str]]:
    got = scifact_texts(SHARED_DATA / "scifact")
    if got is None:
        sys.exit(f"serve_load: SciFact not found at {SHARED_DATA / 'scifact'}")
    return got


def build_kb(folder: Path, abstracts: list[str], n: int) -> None:
    """An engine folder of n chunks (SciFact's, repeated) with synthetic vectors, default models, BM25."""
    from duorank import Engine

    texts, vectors = chunk_corpus(abstracts, n)
    with Engine.create(folder, "default", "default") as eng:
        eng.collection.add(vectors, texts)
        eng.collection.save()


def in_process(kb: Path, texts: list[str]) -> dict[str, float]:
    """The library alone, in this process, with the server's threads: batched encode texts/s at batches of
    256 (the server's --max-batch) and of 32 (the most a batch can hold at c=32 with one text a request)."""
    from duorank import Engine

    out: dict[str, float] = {}
    with Engine.open(kb, threads=THREADS) as eng:
        eng.warmup()
        emb = eng.embedder
        for batch in (256, 32):
            emb.encode(texts[:batch])
            t = time.perf_counter()
            for i in range(0, len(texts), batch):
                emb.encode(texts[i : i + batch])
            out[f"encode_texts_per_s_b{batch}"] = len(texts) / (time.perf_counter() - t)
    return out


def overhead(kb: Path, server: Server, queries: list[str], rounds: int = 3) -> dict[str, Any]:
    """The server's overhead at c=1 on `/search` (dense exact, no rerank): `Engine.search` in this process
    and wrk -c1 against the idle server, on the same 200 queries, alternating `rounds` times (the machine's
    state drifts over minutes; a difference of two figures taken apart measures the drift)."""
    from duorank import Engine

    bodies = [{"query": q, "top_k": 50, "top_n": 5, "rerank": None} for q in queries]
    lib, http = [], []
    with Engine.open(kb, threads=THREADS) as eng:
        eng.warmup()
        for _ in range(rounds):
            ts = []
            for q in queries:
                t = time.perf_counter()
                eng.search(q, top_k=50, top_n=5, rerank=None)
                ts.append(time.perf_counter() - t)
            lib.append(float(np.percentile(ts, 50) * 1e3))
            server.wait_idle()
            http.append(wrk(server.url, "/search", bodies, 1, 5)["p50_ms"])
    return {
        "in_process_p50_ms": lib,
        "server_p50_ms": http,
        "overhead_ms": float(np.median([h - s for h, s in zip(http, lib)])),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--infinity", metavar="CMD", help="infinity_emb's command (a venv of its own)")
    ap.add_argument("--seconds", type=float, default=10, help="seconds per closed-loop cell (default: 10)")
    ap.add_argument("--rate-seconds", type=float, default=60, help="seconds per open-loop rate (default: 60)")
    ap.add_argument(
        "--soak", type=float, default=600, help="soak seconds at half capacity (default: 600; 0: none)"
    )
    ap.add_argument("--chunks", type=int, default=100_000, help="chunks in the collection (default: 100k)")
    ap.add_argument(
        "--capacity",
        type=float,
        metavar="RPS",
        help="skip the closed loop; run the open-loop rates around this capacity (one-text embeddings/s)",
    )
    ap.add_argument("--closed-only", action="store_true", help="the closed loop alone (no rates, no soak)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("serve_load: needs wrk (apt-get install wrk)")
    from duorank import machine

    info = machine.describe()
    print(f"machine: {machine.summary(info)}", flush=True)
    abstracts, queries = _scifact()
    one = [{"input": q, "model": "default"} for q in queries[:500]]
    result: dict[str, Any] = {"machine": info, "rows": []}
    if args.capacity is None:
        closed_loop(args, result, abstracts, queries, one)
        capacity = max(
            r["rps"] for r in result["rows"] if r["workload"] == "embeddings x1" and r["system"] == "duorank"
        )
    else:
        capacity = args.capacity
    if not args.closed_only:
        open_loop_runs(args, result, capacity, one)
    else:
        result["capacity"] = capacity
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


def closed_loop(
    args: argparse.Namespace, result: dict[str, Any], abstracts: list[str], queries: list[str], one: list[Any]
) -> None:
    """Every workload at every concurrency against duorank (and infinity's embeddings), and the library
    in process."""
    from duorank.models_export.builtin import weights_folder

    many = [{"input": queries[i : i + 32], "model": "default"} for i in range(0, 32 * 20, 32)]
    rerank = [
        {"query": queries[i], "documents": abstracts[20 * i : 20 * i + 20], "top_n": 5} for i in range(50)
    ]
    exact = [{"query": q, "top_k": 50, "top_n": 5, "rerank": None} for q in queries[:500]]
    hybrid = [{"query": q, "top_k": 50, "top_n": 5, "recall": "hybrid"} for q in queries[:500]]

    def cell(server: Server, workload: str, path: str, bodies: list[Any], slow: bool = False) -> None:
        """slow: a workload whose batch at c=128 takes many seconds (cross-encoder reranking) runs 4x as
        long, so that each cell holds several batches."""
        seconds, system, url = args.seconds * (4 if slow else 1), server.name, server.url
        for c in CONCURRENCY:
            if system == "duorank":
                server.wait_idle()
            r = {
                "system": system,
                "workload": workload,
                "concurrency": c,
                **wrk(url, path, bodies, c, seconds),
            }
            result["rows"].append(r)
            print(json.dumps(r), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        kb = Path(tmp) / "kb"
        t = time.perf_counter()
        build_kb(kb, abstracts, args.chunks)
        print(f"built {args.chunks} chunks in {time.perf_counter() - t:.0f} s", flush=True)
        result["in_process"] = in_process(kb, queries[:1024])
        print(json.dumps(result["in_process"]), flush=True)
        duo = Server("duorank", [sys.executable, "-m", "duorank.cli", "serve", str(kb), "--port", "{port}"])
        try:
            cell(duo, "embeddings x1", "/v1/embeddings", one)
            cell(duo, "embeddings x32", "/v1/embeddings", many)
            cell(duo, "search exact 100k", "/search", exact)
            result["overhead"] = overhead(kb, duo, queries[:200])
            print(json.dumps(result["overhead"]), flush=True)
            cell(duo, "rerank 1x20", "/v1/rerank", rerank, slow=True)
            cell(duo, "search hybrid+rerank 100k", "/search", hybrid, slow=True)
        finally:
            duo.stop()
    if args.infinity:
        folder = weights_folder("default")[0]
        argv = [args.infinity, "v2", "--model-id", str(folder), "--engine", "torch", "--device", "cpu"]
        inf = Server(
            "infinity", [*argv, "--host", "127.0.0.1", "--port", "{port}"], env={"HF_HUB_OFFLINE": "1"}
        )
        name = "/".join(folder.parts[-2:])  # the model name infinity gives a folder
        try:
            cell(inf, "embeddings x1", "/embeddings", [{**b, "model": name} for b in one])
            cell(inf, "embeddings x32", "/embeddings", [{**b, "model": name} for b in many])
        finally:
            inf.stop()


def open_loop_runs(args: argparse.Namespace, result: dict[str, Any], capacity: float, one: list[Any]) -> None:
    """One-text embeddings against a server of the models alone with --max-queue 256 (the queue bounds
    the wait: 256 items at the measured rate): first at 2x of `capacity` (the closed loop's best), whose
    answered rate is the capacity under this client (it shares the 2 cores with the server and costs more
    CPU per request than wrk); then 80% of that capacity, then the soak at half of it."""
    argv = [sys.executable, "-m", "duorank.cli", "serve", "--models", "default", "--port", "{port}"]
    duo = Server("duorank", [*argv, "--max-queue", "256"])
    result["capacity"] = capacity
    try:
        url = f"{duo.url}/v1/embeddings"
        over = {"share": 2.0, **open_loop(url, one, 2 * capacity, args.rate_seconds)}
        print(json.dumps(over), flush=True)
        capacity = result["open_capacity"] = over["ok_rps"]
        duo.wait_idle()
        under = {"share": 0.8, **open_loop(url, one, 0.8 * capacity, args.rate_seconds)}
        print(json.dumps(under), flush=True)
        result["rates"] = [under, over]
        if args.soak <= 0:
            return
        duo.wait_idle()
        rss: list[tuple[float, float]] = []

        async def sample(stop: asyncio.Event) -> None:
            start = time.perf_counter()
            while not stop.is_set():
                rss.append((time.perf_counter() - start, duo.rss_mb()))
                await asyncio.sleep(5)

        async def soak() -> dict[str, Any]:
            stop = asyncio.Event()
            sampler = asyncio.ensure_future(sample(stop))
            got = await _open_loop(url, one, 0.5 * capacity, args.soak)
            stop.set()
            await sampler
            return got

        r = {"share": 0.5, "seconds": args.soak, **_run(soak())}
        after_1min = [m for s, m in rss if s >= min(60, args.soak / 2)] or [rss[-1][1]]
        r["rss_mb_at_1min"], r["rss_mb_end"] = after_1min[0], rss[-1][1]
        r["rss_growth_pct"] = 100 * (rss[-1][1] / after_1min[0] - 1)
        result["soak"] = r
        print(json.dumps(r), flush=True)
    finally:
        duo.stop()


def table(result: dict[str, Any]) -> str:
    rows, lib = result["rows"], result.get("in_process")
    if not rows or lib is None:
        return "\n".join(_open_lines(result))
    by = {(r["system"], r["workload"], r["concurrency"]): r for r in rows}
    lines = ["| workload | system | " + " | ".join(f"c={c}: req/s, p50 / p99 ms" for c in CONCURRENCY) + " |"]
    lines.append("|---|---|" + "---|" * len(CONCURRENCY))
    for workload in dict.fromkeys(r["workload"] for r in rows):
        for system in ("duorank", "infinity"):
            if (system, workload, 1) not in by:
                continue
            cells = []
            for c in CONCURRENCY:
                r = by[(system, workload, c)]
                failed = f", {r['failed']} failed" if r["failed"] else ""
                cells.append(f"{r['rps']:,.0f}, {r['p50_ms']:.1f} / {r['p99_ms']:.1f}{failed}")
            lines.append(f"| {workload} | {system} | " + " | ".join(cells) + " |")
    out = ["\n".join(lines), ""]
    one32 = by[("duorank", "embeddings x1", 32)]["rps"]
    if ("infinity", "embeddings x1", 32) in by:
        out.append(
            "embeddings x1 at c=32: duorank / infinity = "
            f"{one32 / by[('infinity', 'embeddings x1', 32)]['rps']:.2f}x"
        )
    for batch in (32, 256):
        rate = lib[f"encode_texts_per_s_b{batch}"]
        out.append(
            f"embeddings x1 at c=32: {one32:,.0f} texts/s = {100 * one32 / rate:.0f}% of the "
            f"in-process encode at batch {batch} ({rate:,.0f} texts/s)"
        )
    if "overhead" in result:
        o = result["overhead"]
        pairs = ", ".join(f"{h:.2f} vs {s:.2f}" for h, s in zip(o["server_p50_ms"], o["in_process_p50_ms"]))
        out.append(
            f"search exact 100k at c=1, server vs Engine.search in process, p50 ms by round: {pairs}; "
            f"overhead (median of the rounds' differences) {o['overhead_ms']:.2f} ms"
        )
    s1 = by[("duorank", "search exact 100k", 1)]
    s32 = by[("duorank", "search exact 100k", 32)]
    out.append(f"search exact 100k: c=32 / c=1 queries/s = {s32['rps'] / s1['rps']:.1f}x")
    return "\n".join(out + _open_lines(result))


def _open_lines(result: dict[str, Any]) -> list[str]:
    out = [f"closed-loop capacity (the best one-text embeddings req/s): {result['capacity']:,.0f}"]
    if "open_capacity" in result:
        out.append(f"open-loop capacity (answered/s at 2x the closed loop's): {result['open_capacity']:,.0f}")
    for r in result.get("rates", []):
        base = "the closed loop's" if r["share"] == 2.0 else "the open loop's"
        out.append(
            f"open loop at {r['share']:.0%} of {base} capacity ({r['offered_rps']:,.0f}/s offered, "
            f"{r['sent_rps']:,.0f}/s sent): {r['ok']} ok, {r['429']} 429, {r['5xx']} 5xx, "
            f"{r['failed']} failed; accepted p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} ms"
        )
    if "soak" in result:
        r = result["soak"]
        out.append(
            f"soak {r['seconds']:.0f} s at 50%: {r['ok']} ok, {r['failed']} failed; "
            f"RSS {r['rss_mb_at_1min']:.0f} MB at 1 min -> {r['rss_mb_end']:.0f} MB at the end "
            f"({r['rss_growth_pct']:+.1f}%)"
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
