"""Optional heavy dependencies, imported on first use with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

_EXTRA = {
    "onnx": "models",
    "safetensors": "models",
    "torch": "export",
    "transformers": "export",
    "optimum": "export",
    "sentence_transformers": "export",
    "fastapi": "server",
    "uvicorn": "server",
    "prometheus_client": "server",
    "orjson": "server",
    "ray": "distributed",
}


def require(module: str, package: str | None = None) -> ModuleType:
    """Import `module`, or raise ImportError saying which pip package / duorank extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = _EXTRA.get(top)
        hint = f'pip install "duorank[{extra}]"' if extra else f"pip install {package or top}"
        raise ImportError(f"{module} is needed here but is not installed: {hint}") from e
