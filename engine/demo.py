"""`duorank demo`: a knowledge base built from text every machine has, the installed Python's documentation.

The corpus: the `pydoc_data` topics (the language reference sections `help()` shows) and the docstrings of
the standard library's public modules, classes, functions and methods, read from the source files with
`ast` (nothing is imported, so no module runs). Built once into $DUORANK_HOME/demo-<python version>.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from .model_folder import home

log = logging.getLogger(__name__)

QUESTIONS = [
    "How do I read a file line by line?",
    "How can I run a shell command and capture its output?",
    "What happens when an exception is raised inside a with statement?",
    "How do I parse command line arguments?",
]
# Modules whose import or docs are not library material (or open windows, browsers, GUIs).
_SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip", "test"}
_MIN_CHARS = 40


def folder() -> Path:
    v = sys.version_info
    return home() / f"demo-py{v.major}.{v.minor}"


def corpus(max_documents: int | None = None) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(texts, ids, metadata) of the Python documentation on this machine, in a fixed order."""
    texts: list[str] = []
    ids: list[str] = []
    meta: list[dict[str, Any]] = []
    topics: dict[str, str] = {}
    try:
        from pydoc_data import topics as pydoc_topics

        topics = dict(pydoc_topics.topics)
    except ImportError:  # some distributions strip it
        log.warning("pydoc_data is missing from this Python: the demo has docstrings only")
    for name in sorted(topics):
        texts.append(topics[name].strip())
        ids.append(f"topic:{name}")
        meta.append({"kind": "topic", "name": name})
    for module in sorted(getattr(sys, "stdlib_module_names", ())):
        if module.startswith("_") or module in _SKIP:
            continue
        for qualname, kind, doc in _docstrings(module):
            texts.append(f"{qualname}: {doc}")
            ids.append(f"py:{qualname}")
            meta.append({"kind": kind, "module": module, "name": qualname})
    if max_documents is not None:
        texts, ids, meta = texts[:max_documents], ids[:max_documents], meta[:max_documents]
    return texts, ids, meta


def _docstrings(module: str) -> list[tuple[str, str, str]]:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []  # built-in or compiled: no source to read
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    out = []
    doc = ast.get_docstring(tree)
    if doc and len(doc) >= _MIN_CHARS:
        out.append((module, "module", doc))
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name[0] == "_":
            continue
        doc = ast.get_docstring(node)
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        if doc and len(doc) >= _MIN_CHARS:
            out.append((f"{module}.{node.name}", kind, doc))
        if isinstance(node, ast.ClassDef):
            for m in node.body:
                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and m.name[0] != "_":
                    doc = ast.get_docstring(m)
                    if doc and len(doc) >= _MIN_CHARS:
                        out.append((f"{module}.{node.name}.{m.name}", "method", doc))
    return out
