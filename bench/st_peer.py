"""The sentence-transformers peer of bench/test_models.py, run in a process of its own.

bench/conftest.py makes OpenMP wait passively (FAISS's best setting on 2 cores), and OpenMP reads that
once, when it loads. PyTorch uses OpenMP too, so in the bench's process it would run with passive waiting,
which is not its default. Here it runs with its own default: the environment minus OMP_WAIT_POLICY.

    python -m bench.st_peer encode MODEL_FOLDER TEXTS_JSON THREADS QUERY
    python -m bench.st_peer rerank MODEL_FOLDER TEXTS_JSON THREADS QUERY

prints one JSON object: docs_s (encode) or pairs_s (rerank), and q_p50_ms / q_p99_ms for encode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def measure(what: str, folder: str, texts: list[str], threads: int, query: str) -> dict[str, float]:
    import sentence_transformers as st
    import torch

    # only now: bench.conftest sets OMP_WAIT_POLICY when imported, and PyTorch's OpenMP, loaded above, has
    # read its policy already
    from bench.conftest import latency

    torch.set_num_threads(threads)
    if what == "encode":
        model = st.SentenceTransformer(folder, device="cpu")
        model.encode(texts[:16], batch_size=32)
        t = time.perf_counter()
        model.encode(texts, batch_size=32)
        rate = len(texts) / (time.perf_counter() - t)
        p50, p99 = latency(lambda: model.encode([query]))
        return {"docs_s": rate, "q_p50_ms": p50, "q_p99_ms": p99}
    ce = st.CrossEncoder(folder, device="cpu", max_length=256)
    pairs = [(query, p) for p in texts]
    ce.predict(pairs[:4])
    t = time.perf_counter()
    ce.predict(pairs, batch_size=32)
    rate = len(pairs) / (time.perf_counter() - t)
    return {"pairs_s": rate, "ms_100": 100 / rate * 1e3}


def run(what: str, folder: Path, texts: list[str], threads: int, query: str, tmp: Path) -> dict[str, Any]:
    """measure() in a child process with PyTorch's own OpenMP waiting policy."""
    data = tmp / f"st_peer_{what}.json"
    data.write_text(json.dumps(texts), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    cmd = [sys.executable, "-m", "bench.st_peer", what, str(folder), str(data), str(threads), query]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    what, folder, data, threads, query = sys.argv[1:6]
    texts = json.loads(Path(data).read_text(encoding="utf-8"))
    print(json.dumps(measure(what, folder, texts, int(threads), query)))
