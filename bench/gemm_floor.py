"""How fast can a model folder's graph go on this CPU? Its weight GEMMs alone, beside the whole graph.

Every MatMul (fp32) or MatMulIntegerToFloat (per-token int8) with a constant weight is copied into a
graph that holds nothing else, fed activations of the right width for one query of --tokens tokens, and
timed in an onnxruntime session made as the runtime makes its own (one intra-op thread by default,
passive waiting). The whole graph
is timed the same way. No graph can run faster than its GEMMs, so the first column is a floor for the
single-query latency that `Embedder.encode([query], kind="query")` can reach on this machine with this model.
The three are timed in turns (interleaved rounds) because this shared machine's speed drifts by a
quarter within minutes; each figure is the median over rounds of a round's p50.

    python -m bench.gemm_floor [FOLDER] [--variant fp32|int8] [--tokens 14] [--threads 1] [--rounds 5]

FOLDER: a duorank model folder (default: the default embedder). Prints a table to stdout.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.conftest import latency


def gemms_only(path: Path) -> tuple[Any, dict[str, tuple[int, str]], float, int]:
    """(graph of the weight GEMMs alone, its inputs -> (width, dtype), GFLOP per token, weight bytes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    consts = {t.name: t for t in model.graph.initializer}
    nodes: list[Any] = []
    inputs: dict[str, Any] = {}
    outputs: list[Any] = []
    keep: list[Any] = []
    flop, size = 0.0, 0
    for n in model.graph.node:
        integer = n.op_type == "MatMulIntegerToFloat"
        if not (n.op_type == "MatMul" or integer) or n.input[1] not in consts:
            continue
        w = numpy_helper.to_array(consts[n.input[1]])
        if w.ndim != 2:
            continue
        k, m = w.shape
        flop += 2.0 * k * m / 1e9
        size += w.nbytes
        name = f"x{k}_{'u8' if integer else 'f32'}"
        inputs[name] = (k, "uint8" if integer else "float32")
        out = f"y{len(nodes)}"
        ins = [name, *n.input[1:]]
        keep += [i for i in n.input[1:] if i in consts]
        nodes.append(helper.make_node(n.op_type, ins, [out], domain=n.domain))
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    dtype = {"uint8": TensorProto.UINT8, "float32": TensorProto.FLOAT}
    graph = helper.make_graph(
        nodes,
        "gemms",
        [helper.make_tensor_value_info(i, dtype[d], [None, k]) for i, (k, d) in inputs.items()],
        outputs,
        [consts[i] for i in dict.fromkeys(keep)],
    )
    opsets = [helper.make_opsetid(o.domain, o.version) for o in model.opset_import]
    return helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version), inputs, flop, size


def rounds(fns: dict[str, Callable[[], Any]], n_rounds: int, calls: int) -> dict[str, float]:
    """Median over rounds of each round's p50 ms (`bench.conftest.latency`); the functions take turns, so
    a noisy minute of this shared machine hits them all alike."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(n_rounds):
        for k, fn in fns.items():
            out[k].append(latency(fn, calls)[0])
    return {k: float(np.median(v)) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    from duorank.batching import pad
    from duorank.model_folder import VARIANTS
    from duorank.models import Embedder, open_session, resolve

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default="default")
    p.add_argument("--variant", default="fp32", choices=["fp32", "int8"])
    p.add_argument("--tokens", type=int, default=14, help="tokens of the query, special tokens included")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of both sessions")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--runs", type=int, default=100, help="calls per round (default: %(default)s)")
    a = p.parse_args(argv)
    folder = resolve(a.folder, "embedder")
    path = folder / VARIANTS[a.variant]
    rng = np.random.default_rng(0)
    graph, inputs, gflop, size = gemms_only(path)
    feeds = {
        i: (
            rng.integers(0, 256, (a.tokens, k)) if d == "uint8" else rng.standard_normal((a.tokens, k))
        ).astype(d)
        for i, (k, d) in inputs.items()
    }
    with tempfile.TemporaryDirectory() as tmp:  # the runtime's own session options (`models.open_session`)
        (Path(tmp) / "gemms.onnx").write_bytes(graph.SerializeToString())
        gemm = open_session(Path(tmp) / "gemms.onnx", "cpu", a.threads)
    emb = Embedder.load(folder, variant=a.variant, threads=a.threads)
    text = " ".join(["word"] * (a.tokens - 2))
    enc = emb.tokenizer.encode(text)
    assert len(enc.ids) == a.tokens
    graph_feeds = pad([enc], np.array([0]), emb._inputs)  # what `encode` feeds for one text
    ms = rounds(
        {
            "gemms": lambda: gemm.run(None, feeds),
            "graph": lambda: emb.session.run(None, graph_feeds),
            "encode": lambda: emb.encode([text], kind="query"),
        },
        a.rounds,
        a.runs,
    )
    gemm_ms = ms["gemms"]
    work = gflop * a.tokens
    print(f"| {folder.name} {a.variant}, {a.tokens}-token query, {a.threads} thread(s) | p50 ms |")
    print("|---|---|")
    what = f"{len(graph.graph.node)}, {work:.2f} GFLOP, {size / 1e6:.1f} MB of weights"
    print(f"| weight GEMMs alone: {what} | {gemm_ms:.2f} |")
    print(f"| the whole graph (`session.run`) | {ms['graph']:.2f} |")
    print(
        f"| `Embedder.encode([query], kind='query')` (tokenise, run, pool, normalise) | {ms['encode']:.2f} |"
    )
    print(
        f"\nGEMMs: {work / gemm_ms * 1e3:.0f} G(FL)OP/s, weights streamed at {size / gemm_ms / 1e6:.1f} GB/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
