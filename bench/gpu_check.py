"""The CUDA path, checked and timed on a machine with a GPU: duorank (onnxruntime CUDAExecutionProvider)
against its own CPU path (parity) and against sentence-transformers on the same GPU (speed).

The model is a MiniLM-L6-shaped BERT (384 wide, 6 layers, 12 heads, the MiniLM vocabulary) with seeded
random weights, built here with transformers and exported by duorank's torch-free builder: speed and
numerical parity do not depend on the weights, and a GPU machine may be offline. Never read its scores as
quality. The packaged reranker (int8) is also run on the GPU and compared with its CPU scores. Texts: the
paragraphs of the running interpreter's pydoc topics (mixed lengths, 5 to 256+ tokens). Run:

    python bench/gpu_check.py --out DIR [--texts 2000] [--device cuda]

Needs onnxruntime-gpu with a working CUDA provider, torch with CUDA, transformers, sentence-transformers.
`--device cpu` runs the same script on a CPU (a dry run). Prints a Markdown report and writes
DIR/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.conftest import latency

REPORT: list[str] = []
RESULT: dict[str, Any] = {}


def say(line: str = "") -> None:
    REPORT.append(line)
    print(line, flush=True)


def build_models(root: Path) -> tuple[Path, Path]:
    """A random MiniLM-shaped sentence-transformers embedder and cross-encoder folder (seeded)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    tok_src = Path(__file__).resolve().parents[1] / "engine" / "weights" / "reranker"
    cfg = dict(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    tok_cfg = {"tokenizer_class": "BertTokenizerFast", "do_lower_case": True, "model_max_length": 256}
    out = []
    for kind in ("embedder", "reranker"):
        d = root / f"hf-{kind}"
        d.mkdir(parents=True)
        torch.manual_seed(0)
        if kind == "embedder":
            model: Any = BertModel(BertConfig(**cfg))
        else:
            model = BertForSequenceClassification(BertConfig(**cfg, num_labels=1))
        model.save_pretrained(d, safe_serialization=True)
        shutil.copy(tok_src / "tokenizer.json", d / "tokenizer.json")
        (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
        if kind == "embedder":
            (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
            (d / "1_Pooling").mkdir()
            (d / "1_Pooling" / "config.json").write_text(
                json.dumps({"word_embedding_dimension": 384, "pooling_mode_mean_tokens": True})
            )
            parts = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
            modules = [
                {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{cls}"}
                for i, (path, cls) in enumerate(parts)
            ]
            (d / "modules.json").write_text(json.dumps(modules))
        out.append(d)
    return out[0], out[1]


def timed(fn: Any, repeat: int = 2) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def section(name: str, fn: Any, *args: Any) -> Any:
    """Run one part of the check; a failure is reported (with its traceback) and the rest still runs."""
    import traceback

    try:
        return fn(*args)
    except Exception as e:  # the report says what broke and goes on
        RESULT.setdefault("errors", {})[name] = traceback.format_exc()
        say(f"\n**{name} failed**: {type(e).__name__}: {e}")
        return None


def check_embedder(dev: str, emb_dir: Path, hf_emb: Path, texts: list[str]) -> None:
    from duorank import Embedder

    # 1. the provider really is CUDA, and the default variant on a GPU is fp16
    e16 = Embedder.load(emb_dir, device=dev)
    e32 = Embedder.load(emb_dir, device=dev, variant="fp32")
    cpu = Embedder.load(emb_dir, device="cpu", variant="fp32", threads=4)
    RESULT["providers"] = {"fp16": e16.session.get_providers(), "fp32": e32.session.get_providers()}
    say(f"- session providers: {RESULT['providers']['fp32']}; default variant on {dev}: {e16.variant}")

    # 2. parity with the CPU path
    sample = texts[:300]
    ref = cpu.encode(sample)
    par = {}
    for name, m in (("fp32", e32), ("fp16", e16)):
        for binding in BINDINGS:
            m.io_binding = binding
            v = m.encode(sample)
            cos = (v * ref).sum(1)
            par[f"{name} io_binding={binding}"] = {"min_cosine": float(cos.min()), "mean": float(cos.mean())}
        m.io_binding = None
    RESULT["parity_vs_cpu_fp32"] = par
    say("\n| variant | min cosine vs CPU fp32 | mean |\n|---|---|---|")
    for k, v in par.items():
        say(f"| {k} | {v['min_cosine']:.6f} | {v['mean']:.6f} |")

    # 3. throughput and latency against sentence-transformers on the same device
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(hf_emb), device=dev)
    st_ref = st.encode(sample, batch_size=32, normalize_embeddings=True)
    RESULT["st_vs_duorank_min_cosine"] = float((st_ref * ref).sum(1).min())
    say(f"- sentence-transformers vs duorank CPU fp32, min cosine: {RESULT['st_vs_duorank_min_cosine']:.6f}")
    rows: list[dict[str, Any]] = []
    RESULT["encode"] = rows
    words = " ".join(texts).split()
    long_texts = [" ".join(words[i : i + 200]) for i in range(0, min(len(words), 200 * 1000), 200)]
    peers = [("sentence-transformers fp32", st)]
    if dev == "cuda":
        peers.append(("sentence-transformers fp16", SentenceTransformer(str(hf_emb), device=dev).half()))
    for set_name, batch in (("short", texts), ("long", long_texts)):
        n = len(batch)
        for bt in (1024, 4096, 16384):
            for name, m in (("fp32", e32), ("fp16", e16)):
                m.batch_tokens = bt
                for binding in BINDINGS:
                    m.io_binding = binding
                    s = timed(lambda m=m, batch=batch: m.encode(batch))
                    row = {"texts": set_name, "engine": f"duorank {name}", "batch_tokens": bt}
                    rows.append({**row, "io_binding": binding, "docs_s": n / s})
                m.io_binding = None
        for peer, model in peers:
            for bs in (32, 128):
                s = timed(lambda model=model, bs=bs, batch=batch: model.encode(batch, batch_size=bs))
                rows.append({"texts": set_name, "engine": peer, "batch_size": bs, "docs_s": n / s})
    for set_name, n in (("short", len(texts)), ("long", len(long_texts))):
        mine = [r for r in rows if r["texts"] == set_name]
        best_st = max(r["docs_s"] for r in mine if r["engine"].startswith("sentence"))
        say(f"\nEncode {n} {set_name} texts (docs/s; x = ratio to the best sentence-transformers row):\n")
        say("| engine | batch | io binding | docs/s | x |\n|---|---|---|---|---|")
        for r in mine:
            size = r.get("batch_tokens", r.get("batch_size"))
            unit = "tokens" if "batch_tokens" in r else "texts"
            say(
                f"| {r['engine']} | {size} {unit} | {r.get('io_binding', '-')} | {r['docs_s']:.0f} "
                f"| {r['docs_s'] / best_st:.2f} |"
            )

    lat = {}
    e32.batch_tokens = e16.batch_tokens = 4096
    for name, m in (("duorank fp32", e32), ("duorank fp16", e16)):
        lat[name] = latency(partial(m.encode, [QUERY], kind="query"), 100)
    for peer, model in peers:
        lat[peer] = latency(partial(model.encode, [QUERY]), 100)
    RESULT["query_latency_ms"] = lat
    say("\n| single query | p50 ms | p99 ms |\n|---|---|---|")
    for k, (p50, p99) in lat.items():
        say(f"| {k} | {p50:.2f} | {p99:.2f} |")


def check_reranker(dev: str, rr_dir: Path, hf_rr: Path, texts: list[str]) -> None:
    """Rerank on the device: duorank's random cross-encoder vs CrossEncoder (same weights; CrossEncoder's
    default sigmoid is the manifest's activation), and the packaged trained reranker vs its CPU scores."""
    from sentence_transformers import CrossEncoder

    from duorank import Reranker

    passages = [t for t in texts if len(t) > 200][:100]
    pairs = [(QUERY, p) for p in passages]
    rr: dict[str, Any] = {}
    RESULT["rerank"] = rr
    rcpu = Reranker.load(rr_dir, device="cpu", variant="fp32", threads=4)
    ref_s = rcpu.score(QUERY, passages)
    loaded = {}
    for variant in ("fp32", "fp16"):
        if dev == "cpu" and variant == "fp16":
            continue
        m = loaded[variant] = Reranker.load(rr_dir, device=dev, variant=variant)
        s = m.score(QUERY, passages)
        rr[f"duorank {variant}"] = {
            "max_abs_diff_vs_cpu": float(np.abs(s - ref_s).max()),
            "ms": 1e3 * timed(lambda m=m: m.score(QUERY, passages)),
        }
    ce = CrossEncoder(str(hf_rr), device=dev, max_length=256)
    ce_s = np.asarray(ce.predict(pairs, batch_size=32), dtype=np.float64)
    rr["CrossEncoder fp32"] = {
        "max_abs_diff_vs_cpu": float(np.abs(ce_s - ref_s).max()),
        "ms": 1e3 * timed(lambda: ce.predict(pairs, batch_size=32)),
    }
    if dev == "cuda":
        ce.model.half()
        rr["CrossEncoder fp16 (.half())"] = {
            "max_abs_diff_vs_cpu": float(np.abs(np.asarray(ce.predict(pairs, batch_size=32)) - ref_s).max()),
            "ms": 1e3 * timed(lambda: ce.predict(pairs, batch_size=32)),
        }
    pk = Reranker.load("default", device=dev)
    pk_cpu = Reranker.load("default", device="cpu", threads=4)
    s_dev, s_cpu = pk.score(QUERY, passages), pk_cpu.score(QUERY, passages)
    rr[f"packaged reranker {pk.variant}"] = {
        "max_abs_diff_vs_cpu": float(np.abs(s_dev - s_cpu).max()),
        "ms": 1e3 * timed(lambda: pk.score(QUERY, passages)),
        "providers": pk.session.get_providers(),
        "weights_expanded": pk.dequantized,
        "runs_in": pk.expanded_precision,
    }
    words = " ".join(texts).split()
    many = [(QUERY, " ".join(words[i : i + 150])) for i in range(0, min(len(words), 150 * 1000), 150)]
    RESULT["rerank_many_pairs"] = len(many)
    for variant, m in loaded.items():
        rr[f"duorank {variant}"]["ms_many"] = 1e3 * timed(lambda m=m: m.score(QUERY, [p for _, p in many]))
    ce32 = CrossEncoder(str(hf_rr), device=dev, max_length=256)
    rr["CrossEncoder fp32"]["ms_many"] = 1e3 * timed(lambda: ce32.predict(many, batch_size=32))
    if dev == "cuda":
        rr["CrossEncoder fp16 (.half())"]["ms_many"] = 1e3 * timed(lambda: ce.predict(many, batch_size=128))
    say(f"\nRerank {len(passages)} (query, passage) pairs, passages over 200 characters, max_length 256, and")
    say(f"{len(many)} pairs of 150-word passages (ms_many):\n")
    if pk.dequantized:
        say(f"(packaged int8 reranker on CUDA: weights expanded at load, run in {pk.expanded_precision})\n")
    say("| engine | ms | ms_many | max abs diff vs duorank CPU fp32 (packaged: vs its CPU int8) |")
    say("|---|---|---|---|")
    for k, v in rr.items():
        many_ms = v.get("ms_many", float("nan"))
        say(f"| {k} | {v['ms']:.1f} | {many_ms:.1f} | {v['max_abs_diff_vs_cpu']:.2e} |")


def check_int8(dev: str, emb_dir: Path, texts: list[str]) -> None:
    """A per-token int8 variant (the default's recipe) on the device: on CUDA its weights are expanded at
    load (`expand_for_gpu`: fp16 where the attention fuses) and it runs batched; compared with the same
    folder's int8 and fp32 on the CPU. Random weights: the quality gate is not this check's business, the
    plumbing is."""
    from duorank import Embedder
    from duorank.models_export import add_int8

    int8_dir = add_int8(
        emb_dir, lambda folder: {"passed": True, "note": "random weights"}, out=emb_dir.parent / "emb-int8"
    )
    dev8 = Embedder.load(int8_dir, device=dev, variant="int8")
    dev32 = Embedder.load(int8_dir, device=dev, variant="fp32")
    cpu8 = Embedder.load(int8_dir, device="cpu", variant="int8", threads=4)
    cpu32 = Embedder.load(int8_dir, device="cpu", variant="fp32", threads=4)
    sample = texts[:300]
    got = dev8.encode(sample)
    one_by_one = np.vstack([dev8.encode([t]) for t in sample[:30]])

    def cos(ref: np.ndarray) -> dict[str, float]:
        c = (got * ref).sum(1)
        return {"min_cosine": float(c.min()), "mean_cosine": float(c.mean())}

    out = {
        "providers": dev8.session.get_providers(),
        "weights_expanded": dev8.dequantized,
        "runs_in": dev8.expanded_precision,
        "vs_cpu_int8": cos(cpu8.encode(sample)),
        "vs_cpu_fp32": cos(cpu32.encode(sample)),
        "batch_vs_one_by_one_max_abs_diff": float(np.abs(one_by_one - got[:30]).max()),
        "docs_s": {
            name: len(texts) / timed(lambda m=m: m.encode(texts))
            for name, m in (("int8", dev8), ("fp32", dev32))
        },
    }
    RESULT["int8_per_token"] = out
    say(f"\nPer-token int8 on {dev} (random MiniLM-shaped weights): `{json.dumps(out)}`")


def check_real(dev: str, folder: Path, data: Path, reference: Path) -> None:
    """Real weights (e.g. the default's fp16 folder) on the device: parity with CPU fp32 vectors computed
    elsewhere (`reference`: an npz of texts and vectors), SciFact corpus throughput, query latency, and the
    packaged reranker over real dense candidates."""
    from duorank import Embedder, ExactIndex, Reranker
    from duorank.eval.datasets import load_beir

    emb = Embedder.load(folder, device=dev)
    ref = np.load(reference)
    got = emb.encode([str(t) for t in ref["texts"]])
    c = (got * ref["vectors"]).sum(1)
    ds = load_beir(data, "test")
    corpus = [ds.corpus[d] for d in ds.doc_ids()]
    queries = list(ds.queries.values())
    emb.encode(corpus[:200])  # warm-up
    t = time.perf_counter()
    vecs = emb.encode(corpus)
    ingest = time.perf_counter() - t
    index = ExactIndex(dim=emb.dim)
    index.add(vecs)
    q = emb.encode(queries, kind="query")
    hits = index.search(q, 100)
    rr = Reranker.load("default", device=dev)

    def query() -> None:
        emb.encode([queries[0]], kind="query")

    groups = [(queries[i], [corpus[j] for j in hits.ids[i]]) for i in range(20 if dev == "cuda" else 2)]
    rr.score_groups(groups[:2])  # warm-up
    per_query = [1e3 * timed(lambda g=g: rr.score(*g), 3) for g in groups]
    out = {
        "variant": emb.variant,
        "providers": emb.session.get_providers(),
        "reranker": {"variant": rr.variant, "providers": rr.session.get_providers()},
        "vs_cpu_fp32": {"texts": len(c), "min_cosine": float(c.min()), "mean_cosine": float(c.mean())},
        "scifact_corpus": {"docs": len(corpus), "seconds": ingest, "docs_s": len(corpus) / ingest},
        "query_latency_ms": dict(zip(("p50", "p99"), latency(query, 200 if dev == "cuda" else 20))),
        "queries_batch_s": len(queries) / timed(lambda: emb.encode(queries, kind="query")),
        "rerank_top100_ms_median_of_queries": float(np.median(per_query)),
        "rerank_queries": len(groups),
    }
    RESULT["real"] = out
    say(f"\nReal weights ({folder.name}, {emb.variant}) on {dev}: `{json.dumps(out)}`")


QUERY = "How do I copy a directory tree?"
BINDINGS = (None, "cuda", "cpu")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--sections", default="embedder,reranker,int8", help="comma list of those to run")
    ap.add_argument("--real", type=Path, help="also check this real-weights embedder folder (needs --data)")
    ap.add_argument("--data", type=Path, help="SciFact BEIR folder for --real")
    ap.add_argument("--reference", type=Path, help="npz of texts and CPU fp32 vectors for --real")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sections = set(args.sections.split(","))

    import onnxruntime as ort
    import torch

    import duorank
    from duorank.models_export import export

    dev = args.device
    RESULT["env"] = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "duorank": duorank.__version__,
    }
    say(f"# duorank GPU check ({dev})\n\n`{json.dumps(RESULT['env'])}`\n")
    from pydoc_data import topics

    paragraphs = (p.strip() for t in sorted(topics.topics) for p in topics.topics[t].split("\n\n"))
    texts = [p for p in paragraphs if len(p) > 20][: args.texts]
    RESULT["texts"] = len(texts)
    root = Path(tempfile.mkdtemp(prefix="duorank-gpu-"))
    hf_emb, hf_rr = build_models(root)
    t = time.perf_counter()
    emb_dir = export(hf_emb, root / "emb", kind="embedder", fp16=True)
    rr_dir = export(hf_rr, root / "rr", kind="reranker", fp16=True)
    say(f"export of both random models with fp16 variants and parity gates: {time.perf_counter() - t:.1f} s")
    try:
        if args.real:
            section("real", check_real, dev, args.real, args.data, args.reference)
        if "embedder" in sections:
            section("embedder", check_embedder, dev, emb_dir, hf_emb, texts)
        if "reranker" in sections:
            section("reranker", check_reranker, dev, rr_dir, hf_rr, texts)
        if "int8" in sections:
            section("int8", check_int8, dev, emb_dir, texts)
    finally:
        (args.out / "gpu_check.json").write_text(json.dumps(RESULT, indent=2))
        (args.out / "gpu_check.md").write_text("\n".join(REPORT) + "\n")
        shutil.rmtree(root, ignore_errors=True)
    return 1 if RESULT.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
