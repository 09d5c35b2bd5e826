"""What embedders and rerankers share: the onnxruntime session (providers, threads, waiting), the tokenizer,
the variant chosen for the device, and token-budget batches.

One loaded model serves concurrent calls from many threads: the tokenizer and the onnxruntime session are
both safe to share, and no call changes the object.
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
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from duorank import batching
from duorank.errors import DuorankError
from duorank.model_folder import INT8_ACTIVATIONS, VARIANTS, ModelError

from .registry import with_article

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


def open_session(
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


M = TypeVar("M", bound="OnnxModel")


class OnnxModel:
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
            raise ModelError(f"{folder} holds {with_article(manifest['kind'])}; load it with {other}.load")
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
        self.session = open_session(
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
        other.session = open_session(graph, self.device, self.threads, spin=self.spin)
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
