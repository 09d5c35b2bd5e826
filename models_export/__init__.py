"""Hugging Face model folder (or hub id) -> duorank model folder (ONNX + tokenizer + manifest).

Three backends write the same graph contract (inputs input_ids / attention_mask / token_type_ids; output
`last_hidden_state` for embedders, `logits` for rerankers):
- "numpy": BERT-family weights from model.safetensors, graph built with onnx.helper; no torch at all.
- "torch": `torch.onnx.export` of the transformers model (any architecture transformers loads).
- "optimum": optimum's exporter (any architecture optimum supports).
Every variant is checked against a reference (the PyTorch model when torch is installed, else a float64
numpy forward pass) on fixed awkward texts; a variant outside the gate is never written.
torch / transformers / optimum are imported only here, lazily, with an install hint.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import bert_onnx, hf_config, parity
from .deps import require
from .folder import write_model_folder

log = logging.getLogger("duorank.models_export")

BACKENDS = ("auto", "numpy", "torch", "optimum")
__all__ = ["BACKENDS", "export"]


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def local_source(source: str | os.PathLike[str], revision: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A local folder for SOURCE: the folder itself, or a hub snapshot downloaded for users who are online."""
    p = Path(source).expanduser()
    if p.is_dir():
        return p, {"path": str(p.resolve())}
    if p.exists() or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{source}: not a model folder")
    hub = require("huggingface_hub", "huggingface_hub")
    try:
        snap = Path(hub.snapshot_download(repo_id=str(source), revision=revision))
    except Exception as e:  # offline, unknown repo, no permission: all say the same to the user
        raise FileNotFoundError(
            f"{source!r} is neither a local folder nor a downloadable hub model ({type(e).__name__}: {e})"
        ) from e
    return snap, {"hub_id": str(source), "revision": snap.name}


def export(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    kind: str | None = None,
    backend: str = "auto",
    fp16: bool = False,
    int8: bool = False,
    optimize: bool = False,
    name: str | None = None,
    revision: str | None = None,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
    int8_check: Any = None,
) -> Path:
    """Export SOURCE to a duorank model folder at OUT and return OUT.

    kind: "embedder" or "reranker" (default: read from config.json). fp16 / int8 add variants; optimize runs
    onnxruntime's transformer optimizer on the fp32 graph and keeps it only when it stays within the gate.
    int8_check: a callable(folder) -> dict run on the finished int8 folder for the retrieval part of the
    int8 gate (see `gate.retrieval_check`); without it the int8 variant is refused.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}, expected one of {BACKENDS}")
    t0 = time.perf_counter()
    folder, source_meta = local_source(source, revision)
    from .record import training_record

    from_training = False
    if provenance is None:  # the record beside a checkpoint of train_reranker(export_onnx=False)
        provenance = training_record(folder)
        from_training = provenance is not None
    kind = kind or hf_config.detect_kind(folder)
    if kind not in ("embedder", "reranker"):
        raise ValueError(f"kind {kind!r}, expected 'embedder' or 'reranker'")
    meta = hf_config.describe(folder, kind)
    if backend == "auto":
        numpy_ok = meta.get("model_type") in bert_onnx.MODEL_TYPES
        numpy_ok = numpy_ok and (folder / "model.safetensors").is_file()
        backend = "numpy" if numpy_ok else ("optimum" if _version("optimum-onnx") else "torch")
    model, facts = _BUILDERS[backend](folder, kind)
    tokenizer = hf_config.fixed_tokenizer(folder, meta["max_length"])

    reference, ref_name = _reference(folder, kind, meta, tokenizer)
    onnx_mod = require("onnx", "onnx")
    variants: dict[str, Any] = {}
    models: dict[str, Any] = {}

    def gate(variant: str, m: Any) -> bool:
        got = _onnx_outputs(m.SerializeToString(), kind, meta, tokenizer)
        fig = parity.figures(kind, got, reference)
        ok = parity.passes(kind, variant, fig)
        log.info("%s %s vs %s: %s -> %s", kind, variant, ref_name, fig, "pass" if ok else "FAIL")
        if ok:
            variants[variant] = {"file": _FILES[variant], "parity": {"reference": ref_name, **fig}}
            if variant == "int8":
                from .quantize import INT8_RECIPE

                variants[variant].update(INT8_RECIPE)
            models[variant] = m
        return ok

    if not gate("fp32", model):
        raise parity.ParityError(
            f"{backend} export of {source} fails the fp32 gate against {ref_name}; nothing written"
        )
    if optimize:
        from duorank.onnx_graphs import optimize as run_optimizer

        opt = run_optimizer(model, facts)
        fp32 = (models["fp32"], variants["fp32"])
        if gate("fp32", opt):
            variants["fp32"]["optimized"] = True
        else:
            log.warning("optimized graph fails the gate; keeping the plain fp32 graph")
            models["fp32"], variants["fp32"] = fp32
    if fp16:
        from .quantize import to_fp16

        if not gate("fp16", to_fp16(models["fp32"], facts)):
            raise parity.ParityError(f"fp16 variant of {source} fails the gate")
    if int8:
        if int8_check is None:
            raise ValueError(
                "int8 needs a quality check (int8_check=gate.retrieval_check(data_dir)); none given"
            )
        from .quantize import to_int8

        # from the unfused graph: the optimizer's fused Attention would keep its Q/K/V weights in fp32
        if not gate("int8", to_int8(model, facts)):
            raise parity.ParityError(f"int8 variant of {source} fails the cosine gate")

    manifest: dict[str, Any] = {
        "name": name or Path(out).name,
        **{k: v for k, v in meta.items() if k != "model_type"},
        **facts,
        "inputs": list(_INPUTS),
        "source": {**source_meta, **(provenance or {})},
        "exporter": {
            "backend": backend,
            "duorank": _version("duorank"),
            "onnx": onnx_mod.__version__,
            "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
            "opset": 17,
            **(
                {"torch": _version("torch"), "transformers": _version("transformers")}
                if backend != "numpy"
                else {}
            ),
            **({"optimum-onnx": _version("optimum-onnx")} if backend == "optimum" else {}),
            "seconds": round(time.perf_counter() - t0, 2),
        },
        "variants": variants,
    }
    files: dict[str, bytes | Path] = {v["file"]: models[k].SerializeToString() for k, v in variants.items()}
    files["tokenizer.json"] = tokenizer.to_str(pretty=False).encode("utf-8")
    if int8 and int8_check is not None:
        # The retrieval half of the int8 gate runs on the finished folder, before it replaces anything.
        Path(out).expanduser().parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=Path(out).expanduser().parent) as tmp:
            trial = write_model_folder(Path(tmp) / "trial", files, manifest)
            check = int8_check(trial)
        variants["int8"]["retrieval"] = check
        if not check.get("passed"):
            raise parity.ParityError(f"int8 variant of {source} fails the retrieval gate: {check}")
    written = write_model_folder(Path(out).expanduser(), files, manifest, overwrite=overwrite)
    if from_training and kind == "reranker" and provenance and "dev_choice" in provenance:
        from .record import record_defaults

        record_defaults(written, provenance["dev_choice"])  # the blend and depth chosen in training
    return written


def add_int8(
    folder: str | os.PathLike[str],
    int8_check: Any,
    *,
    out: str | os.PathLike[str] | None = None,
    keep: tuple[str, ...] = ("fp32", "fp16", "int8"),
    overwrite: bool = False,
) -> Path:
    """Add the int8 variant to an exported model folder, quantised from its fp32 graph, through the gate.

    Parity is measured against the folder's fp32 graph on the edge set (that graph met its PyTorch
    reference at export), then `int8_check` (e.g. `gate.retrieval_check(data)`) runs on the finished
    folder. out: write there instead of in place; keep: the variants it keeps (("int8",): the smallest
    folder, e.g. to ship); overwrite: replace an existing `out`. Nothing is written when a check fails.
    """
    from tokenizers import Tokenizer

    from duorank.model_folder import read_manifest

    from .quantize import INT8_RECIPE, to_int8

    onnx_mod = require("onnx", "onnx")
    folder = Path(folder)
    manifest = read_manifest(folder)
    kind, variants = manifest["kind"], dict(manifest["variants"])
    if "fp32" not in variants:
        raise ValueError(f"{folder} has no fp32 graph to quantise (variants {sorted(variants)})")
    if not set(keep) <= set(_FILES) or "int8" not in keep:
        raise ValueError(f"keep {keep!r}: expected variants among {list(_FILES)}, int8 among them")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    fp32 = onnx_mod.load(str(folder / _FILES["fp32"]))
    ref = _onnx_outputs(fp32.SerializeToString(), kind, manifest, tokenizer)
    int8 = to_int8(fp32, {}).SerializeToString()
    fig = parity.figures(kind, _onnx_outputs(int8, kind, manifest, tokenizer), ref)
    ok = parity.passes(kind, "int8", fig)
    log.info("%s int8 vs its fp32 graph: %s -> %s", kind, fig, "pass" if ok else "FAIL")
    if not ok:
        raise parity.ParityError(f"int8 variant of {folder} fails the gate against its fp32 graph: {fig}")
    variants["int8"] = {"file": _FILES["int8"], "parity": {"reference": "fp32 graph", **fig}, **INT8_RECIPE}
    files: dict[str, bytes | Path] = {
        v["file"]: folder / v["file"] for k, v in variants.items() if k != "int8"
    }
    files[_FILES["int8"]] = int8
    files["tokenizer.json"] = folder / "tokenizer.json"
    meta = {k: v for k, v in manifest.items() if k not in ("files", "format", "variants")}
    target = Path(out).expanduser() if out is not None else folder
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        trial = write_model_folder(Path(tmp) / "trial", files, {**meta, "variants": variants})
        check = int8_check(trial)
        variants["int8"]["retrieval"] = check
        if not check.get("passed"):
            raise parity.ParityError(f"int8 variant of {folder} fails the quality check: {check}")
        kept = {k: v for k, v in variants.items() if k in keep}
        files = {v["file"]: trial / v["file"] for v in kept.values()} | {
            "tokenizer.json": trial / "tokenizer.json"
        }
        return write_model_folder(
            target, files, {**meta, "variants": kept}, overwrite=overwrite or out is None
        )


_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def _build_numpy(folder: Path, kind: str) -> tuple[Any, dict[str, Any]]:
    return bert_onnx.build(folder, kind=kind)


def _hf_model(folder: Path, kind: str) -> Any:
    require("torch")
    transformers = require("transformers")
    cls = transformers.AutoModel if kind == "embedder" else transformers.AutoModelForSequenceClassification
    model = cls.from_pretrained(str(folder), attn_implementation="eager")
    return model.eval()


def _facts(model: Any, kind: str) -> dict[str, Any]:
    cfg = model.config
    facts: dict[str, Any] = {
        "architecture": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "num_attention_heads": cfg.num_attention_heads,
    }
    if kind == "embedder":
        facts.update(output="last_hidden_state", dim=cfg.hidden_size)
    else:
        facts.update(output="logits", num_labels=cfg.num_labels, dim=cfg.num_labels)
    return facts


def _build_torch(folder: Path, kind: str) -> tuple[Any, dict[str, Any]]:
    torch = require("torch")
    onnx = require("onnx")
    model = _hf_model(folder, kind)
    out_name = "last_hidden_state" if kind == "embedder" else "logits"

    class Wrapper(torch.nn.Module):  # type: ignore[name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out[0]

    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 7592, 2088, 2088, 102]], dtype=torch.long)
    mask = (ids != 0).long()
    axes = {n: {0: "batch", 1: "sequence"} for n in _INPUTS}
    axes[out_name] = {0: "batch", 1: "sequence"} if kind == "embedder" else {0: "batch"}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            Wrapper(model),
            (ids, mask, torch.zeros_like(ids)),
            str(path),
            input_names=list(_INPUTS),
            output_names=[out_name],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
        proto = onnx.load(str(path))
    return proto, _facts(model, kind)


def _build_optimum(folder: Path, kind: str) -> tuple[Any, dict[str, Any]]:
    exporters = require("optimum.exporters.onnx", "optimum-onnx")
    onnx = require("onnx")
    task = "feature-extraction" if kind == "embedder" else "text-classification"
    with tempfile.TemporaryDirectory() as tmp:
        exporters.main_export(
            str(folder),
            output=tmp,
            task=task,
            library_name="transformers",
            opset=17,
            do_validation=False,
            device="cpu",
        )
        proto = onnx.load(str(Path(tmp) / "model.onnx"))
    names = {i.name for i in proto.graph.input}
    if not names <= set(_INPUTS):
        raise ValueError(f"optimum export of {folder} has inputs {sorted(names)}; duorank feeds {_INPUTS}")
    return proto, _facts(_hf_model(folder, kind), kind)


_BUILDERS = {"numpy": _build_numpy, "torch": _build_torch, "optimum": _build_optimum}


def _pool(h: NDArray[Any], n: int, pooling: str) -> NDArray[Any]:
    if pooling == "cls":
        return h[0]
    if pooling == "last":
        return h[n - 1]
    return h[:n].mean(axis=0)


def _inputs(kind: str, tokenizer: Any) -> list[Any]:
    if kind == "embedder":
        return tokenizer.encode_batch(parity.EDGE_TEXTS)
    return tokenizer.encode_batch(parity.EDGE_PAIRS)


def _onnx_outputs(model_bytes: bytes, kind: str, meta: dict[str, Any], tokenizer: Any) -> NDArray[np.float64]:
    """The model's outputs on the edge set, one unpadded sequence at a time (pooled for embedders)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    rows = []
    for e in _inputs(kind, tokenizer):
        feeds = {
            "input_ids": np.array([e.ids]),
            "attention_mask": np.array([e.attention_mask]),
            "token_type_ids": np.array([e.type_ids]),
        }
        h = np.asarray(sess.run(None, {k: v for k, v in feeds.items() if k in names})[0][0], np.float64)
        rows.append(_pool(h, len(e.ids), meta["pooling"]) if kind == "embedder" else h)
    return np.array(rows)


def _reference(
    folder: Path, kind: str, meta: dict[str, Any], tokenizer: Any
) -> tuple[NDArray[np.float64], str]:
    """The reference outputs on the edge set: PyTorch when installed, else the float64 numpy forward pass."""
    try:
        torch = require("torch")
        model = _hf_model(folder, kind)
    except ImportError:
        torch = None
    if torch is None:
        from . import reference

        cfg, w = bert_onnx.read_config(folder), bert_onnx.load_weights(folder)
        rows = []
        for e in _inputs(kind, tokenizer):
            h = reference.forward(cfg, w, np.array(e.ids), np.array(e.type_ids), kind)
            rows.append(_pool(h, len(e.ids), meta["pooling"]) if kind == "embedder" else h)
        return np.array(rows), "numpy-float64"
    rows = []
    with torch.no_grad():
        for e in _inputs(kind, tokenizer):
            ids = torch.tensor([e.ids])
            out = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.tensor([e.type_ids])
            )
            h = out[0][0].double().numpy()
            rows.append(_pool(h, len(e.ids), meta["pooling"]) if kind == "embedder" else h)
    return np.array(rows), f"torch-{torch.__version__}"
