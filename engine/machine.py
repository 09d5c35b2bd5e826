"""What the machine that produced a timing can do: speed figures mean little without it.

The same code runs 1.6x or 2.7x faster than sentence-transformers in int8 depending on whether the CPU
has VNNI (an 8-bit dot product instruction): onnxruntime's integer GEMMs are about twice as fast with
it. `describe()` reads the CPU's model and instruction sets (Linux: /proc/cpuinfo; elsewhere what the
platform module says) and the versions of the runtimes that do the work.
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# widest first: the first whose flags are all present names the machine's vector instruction set
_ISAS = (
    ("AVX-512 + VNNI + BF16", {"avx512f", "avx512_vnni", "avx512_bf16"}),
    ("AVX-512 + VNNI", {"avx512f", "avx512_vnni"}),
    ("AVX-512", {"avx512f"}),
    ("AVX2 + VNNI", {"avx2", "avx_vnni"}),
    ("AVX2", {"avx2"}),
    ("NEON", {"asimd"}),
)
_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "numpy", "numba", "usearch")


def versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    """{package: installed version, or None where it is not installed}."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def isa(flags: set[str]) -> str:
    """The widest vector instruction set of `flags` (the names /proc/cpuinfo uses), or "baseline"."""
    return next((name for name, need in _ISAS if need <= flags), "baseline")


def _cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, flags) of /proc/cpuinfo's first processor."""
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def describe(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """{cpu, cores, isa, vnni, python, <package>: version} for the packages installed."""
    model, flags = _cpuinfo(cpuinfo.read_text(errors="replace")) if cpuinfo.is_file() else ("", set())
    out: dict[str, Any] = {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": isa(flags) if flags else platform.machine(),
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
        "python": platform.python_version(),
    }
    out.update({name: v for name, v in versions(_PACKAGES).items() if v is not None})
    return out


def summary(info: dict[str, Any] | None = None) -> str:
    """One line: 'AMD EPYC, 2 cores, AVX-512 + VNNI + BF16; onnxruntime 1.31.1, numpy 2.4.6, ...'."""
    d = describe() if info is None else info
    versions = ", ".join(f"{p} {d[p]}" for p in _PACKAGES if p in d)
    return f"{d['cpu']}, {d['cores']} cores, {d['isa']}; Python {d['python']}, {versions}"
