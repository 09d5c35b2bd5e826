"""Model names: the built-in ones, the folders in the cache, and how a name or path becomes a folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from duorank.model_folder import MANIFEST, PACKAGED, ModelError, models_dir, read_manifest


def known_names() -> list[str]:
    """Built-in names plus the model folders in the cache (`duorank models export ... --name`)."""
    from duorank.models_export.builtin import BUILTIN

    cached = (
        sorted(p.name for p in models_dir().glob("*") if (p / MANIFEST).is_file())
        if models_dir().is_dir()
        else []
    )
    return sorted(set(BUILTIN) | {name for _, name in PACKAGED} | set(cached))


def list_models() -> list[dict[str, Any]]:
    """Built-in names (built or not) and the model folders in the cache, for `duorank models list`."""
    from duorank.models_export.builtin import BUILTIN

    rows: list[dict[str, Any]] = []
    seen = set()
    for name, spec in sorted(BUILTIN.items()):
        folder = models_dir() / spec["folder"]
        seen.add(folder.name)
        rows.append({"name": name, "kind": spec["kind"], "model": spec["model"], **_describe(folder)})
    for (kind, name), folder in PACKAGED.items():
        if (folder / MANIFEST).is_file():
            rows.append({"name": name, "kind": kind, "model": "packaged", **_describe(folder)})
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
    if (kind, name) in PACKAGED:
        if (PACKAGED[kind, name] / MANIFEST).is_file():
            return PACKAGED[kind, name]
        raise ModelError(
            f"the {name} {kind} is missing from this installation ({PACKAGED[kind, name]}); reinstall "
            "duorank, or pass a reranker folder made by `duorank models train-reranker` or "
            "`duorank models export`"
        )
    if name in BUILTIN:
        if BUILTIN[name]["kind"] != kind:
            raise ModelError(
                f"model {name!r} is {with_article(BUILTIN[name]['kind'])}, not {with_article(kind)}"
            )
        return ensure(name)
    raise ModelError(f"unknown model {name!r}; known names: {known_names()}, or pass a model folder path")


def with_article(kind: str) -> str:
    """'an embedder', 'a reranker'."""
    return ("an " if kind[0] in "aeiou" else "a ") + kind
