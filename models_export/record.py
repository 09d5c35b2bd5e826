"""What training leaves for the exporter: the record beside a checkpoint trained without export, and the
chosen rerank defaults written into a model's manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from duorank.model_folder import MANIFEST

TRAIN_RECORD = "duorank-train.json"  # beside a checkpoint trained with export_onnx=False


def training_record(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The training record beside a checkpoint trained with export_onnx=False; None where there is none."""
    record = Path(folder) / TRAIN_RECORD
    if not record.is_file():
        return None
    try:
        parent = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{record}: not a readable training record ({e})") from e
    if not isinstance(parent, dict):
        raise ValueError(f"{record}: expected a JSON object, got {type(parent).__name__}")
    return parent


def record_defaults(folder: Path, choice: dict[str, Any], *, provenance: bool = False) -> None:
    """Write the chosen blend weight and depth into the model's manifest (its sha256 list is unaffected):
    overall, and per first stage when the choice was made on one dataset; with `provenance`, the whole
    choice (its grid) too."""
    path = folder / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    # trained on documents cut at max_length: score them the same way by default
    manifest["rerank"] = {"blend": choice["blend"], "depth": choice["depth"], "long_documents": "truncate"}
    if choice.get("scale"):
        manifest["rerank"]["scale"] = choice["scale"]
    if choice.get("max_length"):  # the window length chosen on dev (`choose_defaults(max_lengths=...)`)
        manifest["rerank"]["max_length"] = int(choice["max_length"])
    if len(choice["per_dataset"]) == 1:
        # Chosen on one domain (the user's own labelled queries): a weight and depth per first stage fit
        # that domain. With several dev domains the model is meant for any domain, and one weight is the
        # safer default: the shipped model's per-first-stage weights (dense 0.6 at depth 30) helped on
        # Banking77 but lost 2 nDCG points on a harder Banking77 slice, where the one weight did not.
        manifest["rerank"]["recall"] = {
            k: {"blend": v["blend"], "depth": v["depth"]} for k, v in choice["per_recall"].items()
        }
    if provenance:
        manifest["source"]["dev_choice"] = choice
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
