"""Write a duorank model folder atomically: build it beside the target, fsync, then rename into place."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from duorank.files import fsync_dir, sha256_file
from duorank.model_folder import MANIFEST, MANIFEST_FORMAT


def write_model_folder(
    out: Path, files: dict[str, bytes | Path], manifest: dict[str, Any], *, overwrite: bool = False
) -> Path:
    """Write `files` (name -> bytes or a file to copy) and `duorank-model.json` (with their sha256) to `out`.

    Nothing appears at `out` until every file is complete: a crash leaves the previous folder (or none).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        sums = {}
        for name, content in sorted(files.items()):
            target = tmp / name
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
            with open(target, "rb+") as f:
                os.fsync(f.fileno())
            sums[name] = {"bytes": target.stat().st_size, "sha256": sha256_file(target)}
        doc = {**manifest, "format": MANIFEST_FORMAT, "files": sums}
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        fsync_dir(tmp)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
        tmp.rename(out)
        fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
