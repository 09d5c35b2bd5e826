"""Move a Hugging Face checkpoint to and from a GPU machine whose transfers are capped (the `device` tool:
64 MiB per call, files of at most 16 MiB back).

    python bench/gpu_train.py pack SRC_FOLDER DST_DIR    # fp16 weights + the other files, tar.gz parts
    python bench/gpu_train.py unpack SRC_DIR DST_FOLDER  # back to a folder with fp32 model.safetensors

fp16 keeps all-MiniLM-L6-v2's weights to a relative 5e-4 (fp32 would not fit: 91 MB). Used to train the
reranker on a GPU (docs/training.md, "Training on a GPU"): the base model goes there packed, the trained
checkpoint comes back packed.
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import numpy as np

PART = 15 * 2**20


def pack(src: Path, dst: Path) -> list[Path]:
    from safetensors.numpy import load_file, save

    dst.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(src.iterdir()):
            if f.is_dir() or f.name.startswith("."):
                continue
            if f.name == "model.safetensors":
                weights = load_file(f)
                data = save({k: _cast(v, np.float32, np.float16) for k, v in weights.items()})
                info = tarfile.TarInfo("model.fp16.safetensors")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.add(f, arcname=f.name)
    blob = buf.getvalue()
    out = []
    for i in range(0, len(blob), PART):
        path = dst / f"ckpt.part{i // PART:02d}"
        path.write_bytes(blob[i : i + PART])
        out.append(path)
    return out


def unpack(src: Path, dst: Path) -> Path:
    from safetensors.numpy import load, save_file

    blob = b"".join(p.read_bytes() for p in sorted(src.glob("ckpt.part*")))
    dst.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m)
            assert data is not None and "/" not in m.name, m.name
            raw = data.read()
            if m.name == "model.fp16.safetensors":
                full = {k: _cast(v, np.float16, np.float32) for k, v in load(raw).items()}
                save_file(full, str(dst / "model.safetensors"), metadata={"format": "pt"})
            else:
                (dst / m.name).write_bytes(raw)
    return dst


def _cast(a: np.ndarray, src: type, dst: type) -> np.ndarray:
    return a.astype(dst) if a.dtype == src else a


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("pack", "unpack"))
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    args = p.parse_args()
    if args.action == "pack":
        for path in pack(args.src, args.dst):
            print(path, path.stat().st_size)
    else:
        print(unpack(args.src, args.dst))


if __name__ == "__main__":
    main()
