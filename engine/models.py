"""The model runtime: ONNX embedders and cross-encoder rerankers (onnxruntime, tokenizers, numpy; no torch).

A model is a folder (docs/format.md): `model.onnx` (+ `model.fp16.onnx`, `model.int8.onnx`), `tokenizer.json`
and `duorank-model.json`. `Embedder.load("default")` builds the default folder once from an installed weights
package (see `duorank.models_export.builtin`). One loaded model serves concurrent calls from many threads:
the tokenizer and the onnxruntime session are both safe to share, and no call changes the object.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from . import batching
from .errors import DuorankError
from .model_folder import (
    INT8_ACTIVATIONS,
    MANIFEST,
    PACKAGED,
    VARIANTS,
    ModelError,
    models_dir,
    read_manifest,
)
from .validate import check_texts

log = logging.getLogger("duorank.models")

# Padded tokens per run: small batches keep the attention scores in cache on a CPU (512 beat 2,048 by 13%
# and 8,192 by 36% on this 2-core machine, all-MiniLM-L6-v2, mixed SciFact texts); GPUs want big ones.
DEFAULT_BATCH_TOKENS = {"cpu": 512, "cuda": 4096}  # measured: bench/gpu_check.py, docs/models.md, "On a GPU"
# Padded lengths are rounded up to this multiple: a CUDA session pays about 50 ms the first time it meets
# an input shape (bench/gpu_shapes.py, docs/models.md, "On a GPU with the real models"); a CPU session pays
# only for the padding.
DEFAULT_PAD_MULTIPLE = {"cpu": 1, "cuda": 32}
# Measured on this 2-core machine: 2 intra-op threads gave 1.7x the docs/s of 1 (passive waiting).
DEFAULT_THREADS = max(1, min(4, os.cpu_count() or 1))


class DeviceError(DuorankError, RuntimeError):
    """The requested device cannot run the model (e.g. CUDA asked for, but its provider does not load)."""


def known_names() -> list[str]:
    """Built-in names plus the model folders in the cache (`duorank models export ... --name`)."""
    from duorank.models_export.builtin import BUILTIN

    cached = (
        sorted(p.name for p in models_dir().glob("*") if (p / MANIFEST).is_file())
        if models_dir().is_dir()
        else []
    )
    return sorted(set(BUILTIN) | set(cached))


def list_models() -> list[dict[str, Any]]:
    """Built-in names (built or not) and the model folders in the cache, for `duorank models list`."""
    from duorank.models_export.builtin import BUILTIN

    rows: list[dict[str, Any]] = []
    seen = set()
    for name, spec in sorted(BUILTIN.items()):
        folder = models_dir() / spec["folder"]
        seen.add(folder.name)
        rows.append({"name": name, "kind": spec["kind"], "model": spec["model"], **_describe(folder)})
    for kind, folder in PACKAGED.items():
        if (folder / MANIFEST).is_file():
            rows.append({"name": "default", "kind": kind, "model": "packaged", **_describe(folder)})
    if models_dir().is_dir():
        for folder in sorted(models_dir().iterdir()):
            if folder.name not in seen and (folder / MANIFEST).is_file():
                row = _describe(folder)
                rows.append({"name": folder.name, "kind": row.get("kind", "?"), **row})
    return rows


def _describe(folder: Path) -> dict[str, Any]:
    if not (folder / MANIFEST).is_file():
        return {}
    try:
        m = read_manifest(folder, verify=False)
    except ModelError as e:
        return {"path": str(folder), "error": str(e)}
    variants: dict[str, Any] = m.get("variants", {})
    first: dict[str, Any] = variants.get("fp32") or next(iter(variants.values()), {})
    fp32 = first.get("parity", {})
    par = (
        f"{fp32['min_cosine']:.7f}"
        if "min_cosine" in fp32
        else (f"{fp32['max_abs_diff']:.1e}" if fp32 else "")
    )
    return {
        "kind": m["kind"],
        "dim": m.get("dim"),
        "variants": sorted(m.get("variants", {})),
        "bytes": sum(f["bytes"] for f in m["files"].values()),
        "parity": par,
        "path": str(folder),
    }


def resolve(name_or_path: str | os.PathLike[str], kind: str) -> Path:
    """The model folder for a path or a name (built-in names are built into the cache on first use)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    name = str(name_or_path)
    if p.exists() or os.sep in name or name.startswith("."):
        raise ModelError(f"{name!r} is not a model folder (expected a folder holding {MANIFEST})")
    from duorank.models_export.builtin import BUILTIN, ensure

    cached = models_dir() / name
    if (cached / MANIFEST).is_file():
        return cached
    if name == "default" and kind in PACKAGED:
        if (PACKAGED[kind] / MANIFEST).is_file():
            return PACKAGED[kind]
        raise ModelError(
            f"the default {kind} is missing from this installation ({PACKAGED[kind]}); reinstall duorank, "
            "or pass a reranker folder made by `duorank models train-reranker` or `duorank models export`"
        )
    if name in BUILTIN:
        if BUILTIN[name]["kind"] != kind:
            raise ModelError(f"model {name!r} is {_a(BUILTIN[name]['kind'])}, not {_a(kind)}")
        return ensure(name)
    raise ModelError(f"unknown model {name!r}; known names: {known_names()}, or pass a model folder path")


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _session(
    path: Path | bytes,
    device: str,
    threads: int | None,
    *,
    spin: bool = False,
    graph: Callable[[], bytes] | None = None,
) -> Any:
    """An onnxruntime session of `path` (a file, or a serialised graph), or on CUDA of the graph that
    `graph()` builds (called once the CUDA provider is known to be there).

    spin=False: the pool's threads sleep between the graph's nodes (passive waiting), so concurrent work
    (another call, a search in another thread) keeps the cores. spin=True: they spin between nodes while a
    call runs and stop when it returns (`session.force_spinning_stop`), so nothing is taken from the work
    that follows; faster for one caller at a time, slower when calls overlap (docs/models.md, "Spinning")."""
    import onnxruntime as ort

    if not isinstance(spin, bool):
        raise TypeError(f"spin {spin!r}, expected True or False")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = DEFAULT_THREADS if threads is None else int(threads)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.add_session_config_entry("session.force_spinning_stop", "1")
    so.log_severity_level = 3
    if device == "cpu":
        return ort.InferenceSession(_source(path), so, providers=["CPUExecutionProvider"])
    if device != "cuda":
        raise ValueError(f"device {device!r}, expected 'cpu' or 'cuda'")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise DeviceError(f"device='cuda' but onnxruntime offers only {available}; install onnxruntime-gpu")
    _preload_cuda_libraries(ort)
    source: Any = _source(path) if graph is None else graph()
    sess = ort.InferenceSession(source, so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        # onnxruntime-gpu falls back to CPU silently when the CUDA / cuDNN libraries do not load.
        raise DeviceError(
            "device='cuda' but the CUDA provider did not load "
            "(CUDA 12/13 and cuDNN 9 runtime libraries missing?); "
            f"session providers: {sess.get_providers()}"
        )
    return sess


def _source(path: Path | bytes) -> str | bytes:
    """What onnxruntime opens: a file's path, or a serialised graph."""
    return path if isinstance(path, bytes) else str(path)


@functools.cache
def _preload_cuda_libraries(ort: Any) -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages before the first CUDA session.

    onnxruntime-gpu's CUDA provider finds those libraries only when something loaded them first (`import
    torch` does); otherwise the provider fails to load and onnxruntime falls back to the CPU. Its
    `preload_dlls` (1.21+) loads them and prints what it cannot find: that goes to the debug log, not to
    stdout, which the CLI keeps for data.
    """
    if not hasattr(ort, "preload_dlls"):
        return
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            ort.preload_dlls()
    except Exception as e:  # best effort: the provider check below gives the error that matters
        log.debug("onnxruntime.preload_dlls failed: %s", e)
    if said.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", said.getvalue().strip())


M = TypeVar("M", bound="_Model")


class _Model:
    """What embedders and rerankers share: the folder, its manifest, the tokenizer and the session."""

    kind = ""

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        *,
        device: str,
        variant: str | None,
        threads: int | None,
        batch_tokens: int | None,
        spin: bool = False,
    ) -> None:
        from tokenizers import Tokenizer

        if manifest["kind"] != self.kind:
            other = "Reranker" if manifest["kind"] == "reranker" else "Embedder"
            raise ModelError(f"{folder} holds {_a(manifest['kind'])}; load it with {other}.load")
        if variant is None:  # fp16 on a GPU when the folder has it, else fp32, else what it has
            have = [v for v, f in VARIANTS.items() if f in manifest["files"]]
            fp16 = device == "cuda" and "fp16" in have
            variant = "fp16" if fp16 else ("fp32" if "fp32" in have else have[0])
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r}, expected one of {list(VARIANTS)}")
        if VARIANTS[variant] not in manifest["files"]:
            have = [v for v, f in VARIANTS.items() if f in manifest["files"]]
            raise ModelError(f"{folder} has no {variant} variant; it has {have} (export with --{variant})")
        if batch_tokens is None:
            batch_tokens = DEFAULT_BATCH_TOKENS["cuda" if device == "cuda" else "cpu"]
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens {batch_tokens}, expected >= 1")
        self.folder = folder
        self.manifest = manifest
        self.device = device
        self.variant = variant
        self.batch_tokens = int(batch_tokens)
        self.pad_multiple = DEFAULT_PAD_MULTIPLE["cuda" if device == "cuda" else "cpu"]
        self.max_length = int(manifest["max_length"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        # int8 on CUDA: onnxruntime would run the dynamic quantisation on the CPU, one text per call (65x
        # slower than fp16 on an H200), so the weights are expanded at load (int8 rounding kept) and run in
        # fp16 where the attention fuses (`onnx_graphs.expand_for_gpu`), else in fp32
        self.dequantized = device == "cuda" and variant == "int8"
        # int8 folders of the older recipe quantise activations with one scale per tensor, i.e. per batch: a
        # text's result would depend on its neighbours and their padding (reranker scores moved by up to 0.06
        # here), so they run one text per call. Per-token int8 (`INT8_ACTIVATIONS`) is batch-independent.
        recipe = manifest["variants"].get(variant, {}).get("activations")
        self.per_tensor_int8 = variant == "int8" and not self.dequantized and recipe != INT8_ACTIVATIONS
        path = folder / VARIANTS[variant]
        # the precision the expanded int8 graph runs in on CUDA (fp16 where the attention fuses)
        self.expanded_precision: str | None = None

        def expanded() -> bytes:
            from duorank.models_export.deps import require
            from duorank.onnx_graphs import expand_for_gpu

            onnx = require("onnx", "onnx")
            model, self.expanded_precision = expand_for_gpu(onnx.load(str(path)), manifest)
            log.info("%s int8 on CUDA: weights expanded, runs in %s", folder.name, self.expanded_precision)
            return model.SerializeToString()  # type: ignore[no-any-return]

        self.spin = spin
        self.threads = threads
        self.session = _session(
            path, device, threads, spin=spin, graph=expanded if self.dequantized else None
        )
        self._inputs = [i.name for i in self.session.get_inputs()]
        unknown = set(self._inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise ModelError(f"{folder / VARIANTS[variant]}: unexpected graph inputs {sorted(unknown)}")
        self._output = manifest["output"]
        # CUDA only: None runs `session.run`; "cuda" / "cpu" run through onnxruntime's IO binding with the
        # output allocated on that device (bench/gpu_check.py measures the three)
        self.io_binding: str | None = None

    def with_graph(self: M, graph: bytes) -> M:
        """This model (its folder, tokenizer, settings and device) running another ONNX graph of the same
        weights, batched as fp32 runs: the seam to check a rewrite of the graph, such as the int8 graph
        expanded for GPUs (`onnx_graphs.expand_for_gpu`), without the hardware it is meant for."""
        other = copy.copy(self)
        other.session = _session(graph, self.device, self.threads, spin=self.spin)
        other.per_tensor_int8 = False
        other._inputs = [i.name for i in other.session.get_inputs()]
        return other

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.folder.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, variant={self.variant!r}, device={self.device!r})"

    @property
    def fingerprint(self) -> str:
        """Names the model's vector space: `name:digest` of its source weights (or fp32 graph), pooling and
        prefixes. Variants (fp16, int8) and devices share it; a collection records it."""
        m = self.manifest
        weights = (m.get("source") or {}).get("weights_sha256") or m["files"][VARIANTS["fp32"]]["sha256"]
        space = {"weights": weights, "pooling": m.get("pooling"), "prefixes": m.get("prefixes") or {}}
        digest = hashlib.sha256(json.dumps(space, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.name}:{digest}"

    def _run(self, feeds: dict[str, NDArray[np.int64]]) -> NDArray[np.float32]:
        if self.device != "cuda" or self.io_binding is None:
            return np.asarray(self.session.run([self._output], feeds)[0], dtype=np.float32)
        # IO binding: inputs copied to the GPU by onnxruntime, the output allocated on `io_binding`'s device
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(self._output, self.io_binding)
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def _batches(self, encodings: Sequence[Any], progress: bool | None, desc: str) -> Any:
        """(rows, padded inputs) per batch; padding happens one batch at a time, as the batch is reached."""
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        multiple, cap = self.pad_multiple, self.max_length
        max_batch = 1 if self.per_tensor_int8 else 512
        plan: Any = batching.plan(lengths, self.batch_tokens, max_batch, multiple, cap)
        if progress or (progress is None and len(encodings) >= 2000):
            from tqdm.auto import tqdm

            plan = tqdm(plan, desc=desc, unit="batch", leave=False, disable=False if progress else None)
        return ((rows, batching.pad(encodings, rows, self._inputs, multiple, cap)) for rows in plan)


@dataclass(frozen=True, slots=True)
class Encoded:
    """Vectors plus what the tokenizer did: which inputs were cut at max_length and their token counts."""

    vectors: NDArray[np.float32]  # (n, dim)
    truncated: NDArray[np.bool_]  # (n,)
    tokens: NDArray[np.int64]  # (n,) tokens fed to the model, special tokens included

    @property
    def n_truncated(self) -> int:
        return int(self.truncated.sum())


class Embedder(_Model):
    """A bi-encoder: texts -> float32 (n, dim) vectors, L2-normalised unless asked otherwise."""

    kind = "embedder"

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike[str] = "default",
        *,
        device: str = "cpu",
        variant: str | None = None,
        threads: int | None = None,
        batch_tokens: int | None = None,
        spin: bool = False,
        verify: bool = True,
    ) -> Embedder:
        """spin=True: onnxruntime's threads spin between nodes while a call runs (faster for one caller at a
        time, slower when calls overlap; docs/models.md, "Spinning")."""
        folder = resolve(name_or_path, cls.kind)
        return cls(
            folder,
            read_manifest(folder, verify=verify),
            device=device,
            variant=variant,
            threads=threads,
            batch_tokens=batch_tokens,
            spin=spin,
        )

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        kind: str = "document",
        normalize: bool = True,
        progress: bool | None = None,
    ) -> NDArray[np.float32]:
        """Vectors of `texts` in their order, float32 (n, dim); a single string gives one row, (1, dim), as
        sentence-transformers and fastembed users expect. kind "query" or "document" picks the model's
        prefix for that side (`encode_query`, `encode_document`). Logs a warning when some were cut at
        max_length."""
        return self.encode_detailed(texts, kind=kind, normalize=normalize, progress=progress).vectors

    def encode_query(
        self, texts: str | Sequence[str], *, progress: bool | None = None
    ) -> NDArray[np.float32]:
        """`encode(texts, kind="query")`: the model's query prefix, if it has one."""
        return self.encode(texts, kind="query", progress=progress)

    def encode_document(
        self, texts: str | Sequence[str], *, progress: bool | None = None
    ) -> NDArray[np.float32]:
        """`encode(texts, kind="document")`: the model's document prefix, if it has one."""
        return self.encode(texts, kind="document", progress=progress)

    def encode_detailed(
        self,
        texts: str | Sequence[str],
        *,
        kind: str = "document",
        normalize: bool = True,
        progress: bool | None = None,
    ) -> Encoded:
        """`encode` with what the tokenizer did: which texts were cut at max_length, tokens per text."""
        texts = check_texts([texts] if isinstance(texts, str) else texts)
        if kind not in ("query", "document"):
            raise ValueError(f"kind {kind!r}, expected 'query' or 'document'")
        prefix = self.manifest.get("prefixes", {}).get(kind, "")
        if prefix:
            texts = [prefix + t for t in texts]
        encodings = self.tokenizer.encode_batch(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        pooling = self.manifest["pooling"]
        for rows, feeds in self._batches(encodings, progress, "embedding"):
            h = self._run(feeds)
            mask = feeds["attention_mask"] if "attention_mask" in feeds else (feeds["input_ids"] != 0)
            out[rows] = _pool(h, mask, pooling)
        if normalize and self.manifest.get("normalize", True):
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        truncated = np.fromiter(
            (len(e.overflowing) > 0 for e in encodings), dtype=np.bool_, count=len(encodings)
        )
        tokens = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        if truncated.any():
            log.warning(
                "%d of %d texts were cut at %d tokens", int(truncated.sum()), len(texts), self.max_length
            )
        return Encoded(out, truncated, tokens)


def _pool(h: NDArray[np.float32], mask: NDArray[np.int64], pooling: str) -> NDArray[np.float32]:
    if h.ndim == 2 or pooling == "none":
        return h
    if pooling == "cls":
        return h[:, 0]
    if pooling == "last":
        return h[np.arange(len(h)), mask.sum(axis=1) - 1]
    m = mask.astype(np.float32)[:, :, None]
    return (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


@dataclass(frozen=True, slots=True)
class Scored:
    """Rerank scores plus how long inputs were handled: windows per pair and pairs cut (query or document)."""

    scores: NDArray[np.float32]  # (n,)
    windows: NDArray[np.int64]  # (n,) windows scored per pair (1 when the pair fits max_length)
    truncated: NDArray[np.bool_]  # (n,) text lost: the query was cut, or the document in "truncate" mode

    @property
    def n_truncated(self) -> int:
        return int(self.truncated.sum())


RECALLS = ("dense", "bm25", "hybrid")  # the first stages a reranker's recorded defaults can be for


@dataclass(frozen=True, slots=True)
class RerankDefaults:
    """A reranker's blend weight (1.0: the reranker alone) and rerank depth (None: all of top_k);
    `adaptive`: the weight is scaled per list by `duorank.rerank.adaptive_weight` (recorded as
    `rerank.scale = "adaptive"` by a choice made that way)."""

    blend: float
    depth: int | None
    adaptive: bool = False


class Reranker(_Model):
    """A cross-encoder: (query, text) pairs -> relevance scores (float32, higher is more relevant).

    Documents longer than max_length are scored in overlapping windows (`long_documents="windows"`, the
    default; `stride` tokens of overlap, max_length // 8 unless given) and the pair's score is the max over
    windows (or `aggregate="mean_top2"`); `long_documents="truncate"` scores only the first window and
    counts the pair as cut.
    """

    kind = "reranker"

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        *,
        long_documents: str,
        stride: int | None,
        aggregate: str,
        max_query_tokens: int | None,
        **kw: Any,
    ) -> None:
        super().__init__(folder, manifest, **kw)
        if long_documents not in ("windows", "truncate"):
            raise ValueError(f"long_documents {long_documents!r}, expected 'windows' or 'truncate'")
        if aggregate not in ("max", "mean_top2"):
            raise ValueError(f"aggregate {aggregate!r}, expected 'max' or 'mean_top2'")
        self.max_query_tokens = int(max_query_tokens or self.max_length // 2)
        if not 1 <= self.max_query_tokens <= self.max_length - 8:
            raise ValueError(f"max_query_tokens {self.max_query_tokens}: expected 1..{self.max_length - 8}")
        stride = self.max_length // 8 if stride is None else stride
        if not 0 <= stride < self.max_length - self.max_query_tokens - 3:
            raise ValueError(f"stride {stride}: expected 0..{self.max_length - self.max_query_tokens - 4}")
        self.long_documents, self.stride, self.aggregate = long_documents, int(stride), aggregate
        self._pair_tok = type(self.tokenizer).from_str(self.tokenizer.to_str())
        self._pair_tok.enable_truncation(self.max_length, stride=self.stride, strategy="only_second")
        self._query_tok = type(self.tokenizer).from_str(self.tokenizer.to_str())
        self._query_tok.no_truncation()
        self._activation = manifest.get("activation", "identity")

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike[str] = "default",
        *,
        device: str = "cpu",
        variant: str | None = None,
        threads: int | None = None,
        batch_tokens: int | None = None,
        long_documents: str | None = None,
        stride: int | None = None,
        aggregate: str = "max",
        max_query_tokens: int | None = None,
        spin: bool = False,
        verify: bool = True,
    ) -> Reranker:
        """long_documents: None takes the model's recorded choice (a reranker trained on truncated
        documents records "truncate"), else "windows". spin: as `Embedder.load`."""
        folder = resolve(name_or_path, cls.kind)
        manifest = read_manifest(folder, verify=verify)
        if long_documents is None:
            long_documents = str((manifest.get("rerank") or {}).get("long_documents", "windows"))
        return cls(
            folder,
            manifest,
            device=device,
            variant=variant,
            threads=threads,
            batch_tokens=batch_tokens,
            long_documents=long_documents,
            stride=stride,
            aggregate=aggregate,
            max_query_tokens=max_query_tokens,
            spin=spin,
        )

    @property
    def blend(self) -> float:
        """Weight of this reranker's score when blended with the first stage's (1.0: the reranker alone);
        a trained model records the weight chosen on its dev set."""
        return self.defaults().blend

    @property
    def depth(self) -> int | None:
        """The rerank depth (top_k) chosen on the dev set at training, when recorded."""
        return self.defaults().depth

    def defaults(self, recall: str | None = None) -> RerankDefaults:
        """The blend weight and depth chosen on dev for reranking the first stage `recall` ("dense", "bm25",
        "hybrid"); the overall choice when None or when the manifest records none for that first stage."""
        rec = self.manifest.get("rerank") or {}
        if recall is not None and recall not in RECALLS:
            raise ValueError(f"recall {recall!r}: expected one of {', '.join(RECALLS)} or None")
        own = (rec.get("recall") or {}).get(recall) or rec
        depth = own.get("depth")
        adaptive = rec.get("scale") == "adaptive"
        return RerankDefaults(float(own.get("blend", 1.0)), None if depth is None else int(depth), adaptive)

    def score(self, query: str, texts: Sequence[str], *, progress: bool | None = None) -> NDArray[np.float32]:
        """The reranker's score of each (query, text) pair, float32 (n,), in the order of `texts` (for a
        sigmoid head, in [0, 1]: one scale across queries, not a calibrated probability)."""
        check_texts(texts)
        return self.score_groups([(query, texts)], progress=progress)[0].scores

    def score_groups(
        self, groups: Sequence[tuple[str, Sequence[str]]], *, progress: bool | None = None
    ) -> list[Scored]:
        """The batched form: per (query, texts) group its `Scored` (scores, windows per pair, pairs cut), all
        pairs of all groups batched together by token budget."""
        if isinstance(groups, (str, bytes)) or not len(groups):
            raise ValueError("groups must be a non-empty list of (query, texts) pairs")
        queries, docs = [], []
        for g, item in enumerate(groups):
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError(f"groups[{g}] must be a (query, texts) pair, got {type(item).__name__}")
            q, texts = item
            if not isinstance(q, str):
                raise TypeError(f"groups[{g}] query is {type(q).__name__}, expected str")
            queries.append(q)
            docs.append(check_texts(texts, f"groups[{g}] texts", allow_empty=True))
        cut_queries, q_cut = self._cap_queries(queries)
        pairs = [(cut_queries[g], d) for g, texts in enumerate(docs) for d in texts]
        encodings = self._pair_tok.encode_batch(pairs)
        windows: list[Any] = []
        owner: list[int] = []
        n_windows = np.ones(len(pairs), dtype=np.int64)
        for p, e in enumerate(encodings):
            windows.append(e)
            owner.append(p)
            if e.overflowing and self.long_documents == "windows":
                windows.extend(e.overflowing)
                owner.extend([p] * len(e.overflowing))
                n_windows[p] += len(e.overflowing)
        raw = np.empty(len(windows), dtype=np.float32)
        for rows, feeds in self._batches(windows, progress, "reranking"):
            raw[rows] = self._activate(self._run(feeds))
        pair_scores = _aggregate(raw, np.asarray(owner, dtype=np.int64), len(pairs), self.aggregate)
        group_of_pair = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
        doc_cut = np.fromiter(
            (bool(e.overflowing) and self.long_documents == "truncate" for e in encodings),
            np.bool_,
            len(encodings),
        )
        truncated = doc_cut | q_cut[group_of_pair]
        if truncated.any():
            log.warning(
                "%d of %d (query, text) pairs were cut at %d tokens",
                int(truncated.sum()),
                len(pairs),
                self.max_length,
            )
        out, start = [], 0
        for d in docs:
            sl = slice(start, start + len(d))
            out.append(Scored(pair_scores[sl], n_windows[sl], truncated[sl]))
            start += len(d)
        return out

    def _cap_queries(self, queries: list[str]) -> tuple[list[str], NDArray[np.bool_]]:
        """Queries cut to max_query_tokens (at a token boundary), so every window keeps room for the text."""
        encs = self._query_tok.encode_batch(queries, add_special_tokens=False)
        out, cut = [], np.zeros(len(queries), dtype=np.bool_)
        for i, (q, e) in enumerate(zip(queries, encs)):
            if len(e.ids) > self.max_query_tokens:
                out.append(q[: e.offsets[self.max_query_tokens - 1][1]])
                cut[i] = True
            else:
                out.append(q)
        return out, cut

    def _activate(self, logits: NDArray[np.float32]) -> NDArray[np.float32]:
        if logits.ndim == 2 and logits.shape[1] > 1:  # several labels: probability of the last ("relevant")
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            return (z[:, -1] / z.sum(axis=1)).astype(np.float32)
        x = logits.reshape(len(logits))
        if self._activation == "sigmoid":
            return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
        return x


def _aggregate(raw: NDArray[np.float32], owner: NDArray[np.int64], n: int, how: str) -> NDArray[np.float32]:
    if len(raw) == n:
        return raw
    best = np.full(n, -np.inf, dtype=np.float32)
    np.maximum.at(best, owner, raw)
    if how == "max":
        return best
    # mean of the two best windows (a single window counts alone)
    order = np.lexsort((-raw, owner))
    out = best.copy()
    first = np.searchsorted(owner[order], np.arange(n))
    counts = np.bincount(owner, minlength=n)
    two = counts >= 2
    out[two] = (raw[order][first[two]] + raw[order][first[two] + 1]) / 2
    return out
