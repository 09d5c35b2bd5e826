"""Crash-safe files: write beside, fsync, rename; a manifest names the generation of data files in use."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import IndexFormatError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_generation(
    folder: Path,
    manifest_name: str,
    manifest: dict[str, Any],
    arrays: Mapping[str, NDArray[Any]],
    blobs: Mapping[str, tuple[str, Callable[[Path], None]]] | None = None,
) -> None:
    """Write arrays as `<key>.<generation>.npy` (and each blob, key -> (suffix, writer(path)), as
    `<key>.<generation>.<suffix>`), then the manifest (their names, sizes and sha256) last.

    Each step writes a temporary file, fsyncs it and renames it, so a crash at any moment leaves the previous
    manifest and the files it names untouched. Files of older generations are removed after the switch.
    """
    folder.mkdir(parents=True, exist_ok=True)
    gen = uuid.uuid4().hex[:12]
    files: dict[str, dict[str, Any]] = {}

    def save_npy(arr: NDArray[Any]) -> Callable[[Path], None]:
        def write(path: Path) -> None:
            with open(path, "wb") as f:
                np.save(f, np.ascontiguousarray(arr), allow_pickle=False)

        return write

    writers = {key: ("npy", save_npy(arr)) for key, arr in arrays.items()}
    writers.update(blobs or {})
    for key, (suffix, write) in writers.items():
        name = f"{key}.{gen}.{suffix}"
        tmp = folder / (name + ".tmp")
        write(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        tmp.rename(folder / name)
        files[key] = {
            "file": name,
            "bytes": (folder / name).stat().st_size,
            "sha256": sha256_file(folder / name),
        }
    fsync_dir(folder)
    write_json(folder / manifest_name, {**manifest, "files": files})
    keep = {v["file"] for v in files.values()} | {manifest_name}
    for p in folder.iterdir():
        if p.name not in keep and p.name.split(".")[0] in writers:
            p.unlink(missing_ok=True)


def write_json(path: Path, obj: Mapping[str, Any]) -> None:
    """Replace the JSON file `path` atomically: written beside, fsynced, renamed, the folder fsynced (a
    crash leaves the old file or the new one, whole)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def checked_file(folder: Path, manifest: dict[str, Any], key: str, *, verify: bool) -> Path:
    """The path the manifest names for key, after checking presence, size and (if verify) sha256."""
    try:
        entry = manifest["files"][key]
        path = folder / entry["file"]
        size, digest = int(entry["bytes"]), str(entry["sha256"])
    except (KeyError, TypeError, ValueError) as e:
        raise IndexFormatError(f"{folder} manifest lacks a valid entry for {key!r}") from e
    try:  # a file removed under us (a writer's save replacing this generation) is missing too
        actual = path.stat().st_size
        if actual != size:
            raise IndexFormatError(
                f"{path} has {actual} bytes, the manifest says {size}: truncated or replaced"
            )
        if verify and sha256_file(path) != digest:
            raise IndexFormatError(f"{path} fails its sha256 check: the file is corrupt")
    except FileNotFoundError:
        raise IndexFormatError(f"{path} is missing (named by the manifest for {key!r})") from None
    return path


def load_manifest(path: Path, error: type[Exception], missing: str) -> dict[str, Any]:
    """The JSON object of the manifest file `path`, for every kind of duorank folder; `error(missing)` when
    there is no such file, `error` naming the file when it is not a JSON object."""
    if not path.is_file():
        raise error(missing)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e}): the manifest is corrupt") from e
    if not isinstance(manifest, dict):
        raise error(f"{path} holds {type(manifest).__name__}, not a JSON object: the manifest is corrupt")
    return manifest


def read_manifest(folder: Path, manifest_name: str, fmt: str, version: int) -> dict[str, Any]:
    """The manifest of a collection or index folder, after checking its format name and version."""
    path = folder / manifest_name
    missing = f"{path} is missing: not a saved {fmt} (expected a folder written by save())"
    manifest = load_manifest(path, IndexFormatError, missing)
    if manifest.get("format") != fmt:
        raise IndexFormatError(f"{path} is not a {fmt} manifest (format={manifest.get('format')!r})")
    if manifest.get("version") != version:
        raise IndexFormatError(
            f"{path} has format version {manifest.get('version')!r}; this duorank reads {version}"
        )
    return manifest


def load_array(folder: Path, manifest: dict[str, Any], key: str, *, mmap: bool, verify: bool) -> NDArray[Any]:
    """Load the array the manifest names for key, checking presence, size and (if verify) sha256.

    mmap maps the file copy-on-write: the file is never written, and the kernels (whose signatures take
    writeable arrays) accept the mapping.
    """
    path = checked_file(folder, manifest, key, verify=verify)
    try:
        return np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise IndexFormatError(f"{path} is not a readable .npy file ({e})") from e
