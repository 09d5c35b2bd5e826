"""The model folder on disk: its file names, its manifest and how it is checked, and where models live
(docs/format.md, "Model folder"). Both the runtime (`duorank.models`) and the exporter
(`duorank.models_export`) build on this module; it imports neither."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import DuorankError
from .files import load_manifest, sha256_file

MANIFEST = "duorank-model.json"
MANIFEST_FORMAT = 1
VARIANTS = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
KINDS = ("embedder", "reranker")
POOLINGS = ("mean", "cls", "last", "none")
# how `models_export.quantize.to_int8` quantises activations; recorded in the manifest's int8 variant
INT8_ACTIVATIONS = "int8 per token (dynamic)"


class ModelError(DuorankError, ValueError):
    """An unknown model name, or a model folder that is missing files, corrupt, or of the wrong kind."""


def home() -> Path:
    """duorank's cache folder: $DUORANK_HOME, else ~/.cache/duorank."""
    return Path(os.environ.get("DUORANK_HOME") or Path.home() / ".cache" / "duorank").expanduser()


def models_dir() -> Path:
    return home() / "models"


# The models that ship inside the package, by (kind, name): trained here by `duorank models train-reranker`
# (docs/training.md); no download, no torch. The default reranker: 6 layers, int8, 23 MB.
PACKAGED = {("reranker", "default"): Path(__file__).parent / "weights" / "reranker"}


def read_manifest(folder: Path, *, verify: bool = True) -> dict[str, Any]:
    """The folder's manifest, after checking that every file it lists is there (and, with verify, intact)."""
    folder = Path(folder)
    path = folder / MANIFEST
    manifest = load_manifest(
        path, ModelError, f"{folder} is not a duorank model folder: {MANIFEST} is missing"
    )
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ModelError(
            f"{path}: format {manifest.get('format')!r}, this duorank reads format {MANIFEST_FORMAT}"
        )
    if manifest.get("kind") not in KINDS:
        raise ModelError(f"{path}: kind {manifest.get('kind')!r}, expected one of {KINDS}")
    if manifest.get("pooling", "none") not in POOLINGS:
        raise ModelError(f"{path}: pooling {manifest.get('pooling')!r}, expected one of {POOLINGS}")
    for name, entry in manifest.get("files", {}).items():
        f = folder / name
        if not f.is_file():
            raise ModelError(f"{f}: missing (listed in {MANIFEST})")
        if f.stat().st_size != entry["bytes"]:
            raise ModelError(
                f"{f}: {f.stat().st_size} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
            )
        if verify and sha256_file(f) != entry["sha256"]:
            raise ModelError(f"{f}: sha256 does not match the manifest (corrupt or modified file)")
    listed = manifest.get("files", {})
    if "tokenizer.json" not in listed:
        raise ModelError(f"{path}: lists no tokenizer.json")
    if not any(f in listed for f in VARIANTS.values()):
        raise ModelError(f"{path}: lists no model file (one of {sorted(VARIANTS.values())})")
    return dict(manifest)
