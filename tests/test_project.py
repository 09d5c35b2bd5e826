"""The project's promises about itself: README set-up commands are what CI runs; the CLI starts light."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import duorank

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_commands_verbatim():
    """.ci/run reads the Set up box out of README.md (so the two cannot drift apart), runs each line in its
    own shell and fails on its exit status, in a fresh virtual environment with an empty model cache."""
    readme = (ROOT / "README.md").read_text()
    box = re.search(r"## Set up\n\n```bash\n(.*?)```", readme, re.S)
    assert box is not None, "README.md lost its Set up box"
    commands = [line for line in box.group(1).splitlines() if line.strip()]
    assert commands[0].startswith('pip install ".[models]"') and "duorank demo" in commands[0]
    assert commands[1].startswith('pip install -e ".[test]"') and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    extract = re.search(r"mapfile -t commands < <\((awk .*? README\.md)\)", ci)
    assert extract is not None, ".ci/run no longer reads README.md's Set up box"
    read = subprocess.run(["bash", "-c", extract.group(1)], cwd=ROOT, capture_output=True, text=True)
    assert read.stdout.splitlines() == commands
    for promise in ('python3 -m venv "$work/venv"', 'export DUORANK_HOME="$work/', "pip check", "pip freeze"):
        assert promise in ci, promise
    assert "--system-site-packages" not in ci


def _fails_in_ci_shell(line: str) -> bool:
    """Whether .ci/run's way of running a README line reports a failure of its first half."""
    return subprocess.run(["bash", "-o", "pipefail", "-c", line], capture_output=True).returncode != 0


def test_a_failed_install_fails_ci():
    """`set -e` ignores a failure inside `a && b`: .ci/run must see the status of the whole line."""
    assert _fails_in_ci_shell("false && true")
    assert 'if ! bash -o pipefail -c "$command"' in (ROOT / ".ci" / "run").read_text()


def test_the_readme_python_quick_start_runs(tmp_path, monkeypatch, default_embedder, capsys):
    """The README's first Python box is a program: it runs as written, and finds the password text."""
    readme = (ROOT / "README.md").read_text()
    box = re.search(r"```python\n(.*?)```", readme, re.S)
    assert box is not None, "README.md lost its Python quick start"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(box.group(1), "README.md", "exec"), namespace)
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("pw "), first
    assert (tmp_path / "kb" / "collection.json").is_file()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duorank.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_help_and_version_without_numba():
    probe = "import sys, duorank, duorank.cli; duorank.cli.build_parser(); print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"
    res = run_cli("--help")
    assert res.returncode == 0 and "usage: duorank" in res.stdout
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"duorank {duorank.__version__}"
    res = run_cli("--no-such-flag")
    assert res.returncode == 2 and "unrecognized arguments" in res.stderr


def _kernel_probe(
    home: Path,
    *,
    before: str = "pass",
    module: str = "duorank.kernels",
    after: str = "pass",
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """A new process, DUORANK_HOME=home and no NUMBA_CACHE_DIR, that runs `before`, imports the kernels as
    `module`, calls one kernel, then runs `after` (which prints what the test reads)."""
    code = (
        f"{before}; import numpy as np, {module} as K; "
        f"K.normalize_rows(np.ones((2, 4), np.float32), np.empty(2, np.float32)); {after}"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "NUMBA_CACHE_DIR"}
    env["DUORANK_HOME"] = str(home)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    return out


def test_numba_cache_goes_to_duorank_home_not_site_packages(tmp_path):
    """An installed duorank must not write into its own package folder: leftover cache files there make
    `duorank` a namespace package that shadows the next (e.g. editable) install."""
    out = _kernel_probe(tmp_path, before="import os", after="print(os.environ['NUMBA_CACHE_DIR'])")
    assert out.stdout.strip() == str(tmp_path / "numba" / "duorank.kernels")
    assert list((tmp_path / "numba").rglob("*.nbi")), "no kernel was cached under DUORANK_HOME/numba"


def test_numba_cache_goes_to_duorank_home_when_numba_came_first(tmp_path):
    """bm25s imports numba, so a process that builds BM25 first has numba's config read before duorank sets
    NUMBA_CACHE_DIR; the kernels must still cache under DUORANK_HOME (a cache in the installed package's
    __pycache__ outlives `pip uninstall` and turns the next install into a namespace package)."""
    import duorank.kernels

    package = Path(duorank.kernels.__file__).parent / "__pycache__"
    cached = set(package.glob("*.nbi")) if package.is_dir() else set()
    out = _kernel_probe(tmp_path, before="import numba", after="print(numba.config.CACHE_DIR)")
    assert out.stdout.strip() == str(tmp_path / "numba" / "duorank.kernels")
    assert {p.name.split("-")[0] for p in (tmp_path / "numba").rglob("*.nbi")} >= {
        "dot.dot_gather",
        "normalize.normalize_rows",
        "topk.topk_push_dot",
    }
    assert (set(package.glob("*.nbi")) if package.is_dir() else set()) == cached


def test_numba_cache_survives_a_top_level_kernels_import(tmp_path):
    """From a source checkout the kernels are also importable as a top-level `kernels`; Numba records that
    module name in the cache entries it writes. Such entries once made every later `duorank.kernels`
    import fail ("No module named 'kernels'") in processes where the checkout is not on sys.path."""
    _kernel_probe(tmp_path, module="kernels", cwd=ROOT)
    then = _kernel_probe(tmp_path, before="import sys", after="print('kernels' in sys.modules)", cwd=tmp_path)
    assert then.stdout.strip() == "False"
    assert {p.name for p in (tmp_path / "numba").iterdir()} == {"kernels", "duorank.kernels"}


def test_constraints_satisfy_the_requirements():
    """constraints.txt (the versions the suite last passed with) pins versions every requirement of
    pyproject.toml admits, so `pip install -c constraints.txt ".[models]"` resolves."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(name)] = version.strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"]]
    for extra in ("models", "eval", "test"):
        requirements += project["optional-dependencies"][extra]
    checked = 0
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "duorank" or (req.marker is not None and not req.marker.evaluate()):
            continue
        assert name in pins, f"constraints.txt lacks {req.name} (refresh: bash .ci/run --write-constraints)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} vs {text}"
        checked += 1
    assert checked >= 15


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _reach_ins(path: Path) -> list[str]:
    """Where a module of the package uses another module's private name: `from .x import _y`, a private
    module, or `obj._y` on an object it holds (`self._index._rows`) or a name (`other._y`), unless the
    enclosing class itself assigns `self._y` (a method of Store reading another Store's `_db`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []

    def visit(node: ast.AST, own: set[str]) -> None:
        if isinstance(node, ast.ClassDef):
            own = {
                t.attr
                for n in ast.walk(node)
                for t in getattr(n, "targets", [getattr(n, "target", None)])
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
            }
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("duorank")):
            parts = (node.module or "").split(".")
            names = [a.name for a in node.names]
            if any(_private(p) for p in parts) or any(_private(n) for n in names):
                found.append(
                    f"{path}:{node.lineno}: from {'.' * node.level}{node.module or ''} import {names}"
                )
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            held = isinstance(node.value, ast.Attribute) and isinstance(base, ast.Name) and base.id == "self"
            other = isinstance(node.value, ast.Name) and node.value.id not in ("self", "cls")
            if held or (other and node.attr not in own):
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
        for child in ast.iter_child_nodes(node):
            visit(child, own)

    visit(tree, set())
    return found


def test_no_module_reaches_into_another_private_name():
    """Modules talk through public names only (each one's private names may change without notice)."""
    found = [
        hit
        for room in ("engine", "kernels", "models_export")
        for f in sorted((ROOT / room).rglob("*.py"))
        for hit in _reach_ins(f)
    ]
    assert not found, "\n".join(found)


PACKAGES = {"engine": "duorank", "kernels": "duorank.kernels", "models_export": "duorank.models_export"}


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at module level or inside a function: both are edges)."""
    files: dict[str, tuple[Path, bool]] = {}
    for folder, package in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = [p for p in f.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            files[".".join([package, *parts])] = (f, f.name == "__init__.py")
    graph: dict[str, set[str]] = {}
    for module, (f, is_package) in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")[: len(module.split(".")) + is_package - node.level]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                targets = [
                    f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names
                ]
            deps |= {t for t in targets if t in files and t != module}
        graph[module] = deps
    return graph


def _circles(graph: dict[str, set[str]]) -> list[str]:
    """Each module from which following imports leads back to it, with one such path."""

    def path_back(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    return [" -> ".join(p) for m in sorted(graph) if (p := path_back(m))]


def test_no_import_circle():
    """The rooms form layers: following imports from any module never leads back to it (the runtime and
    the exporter share the model-folder format module; only the exporter imports the runtime)."""
    graph = _import_graph()
    assert "duorank.model_folder" in graph["duorank.models_export.builtin"]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        "a -> b -> c -> a",
        "b -> c -> a -> b",
        "c -> a -> b -> c",
    ]
    circles = _circles(graph)
    assert not circles, "\n".join(circles)


# docs/architecture.md, "The rooms, in layers": a module imports from its own layer or earlier ones
LAYERS = [
    {"errors", "hits", "validate", "files", "machine", "batching", "chunking", "analyzers"},
    {"kernels"},
    {"index", "hnsw_graph", "hnsw", "store", "lexical", "rerank", "collection", "recall", "shards"},
    {"model_folder", "onnx_graphs"},
    {"models_export", "models_export.bert_onnx", "models_export.hf_config", "models_export.reference"}
    | {"models_export.parity", "models_export.quantize", "models_export.folder", "models_export.record"}
    | {"models_export.builtin", "models_export.deps", "models_export.e5s1"},
    {"models", "models.registry", "models.runtime", "models.embedder", "models.reranker"},
    {"pipeline", "sharded", "shard_build", ""},  # "": the package itself, which gathers the public API
    {"eval", "demo"},
    {"models_export.train", "models_export.gate", "models_export.distill", "models_export.pseudo"}
    | {f"models_export.train.{m}" for m in ("config", "prepare", "loop", "choose", "teacher")},
    {"serve", "serve.batcher", "serve.metrics", "serve.app"},
    {"cli", "cli.__main__"}
    | {f"cli.{m}" for m in ("options", "models", "evaluate", "engine", "serve", "datasets")},
]


def _layer(module: str) -> int:
    name = module.removeprefix("duorank").removeprefix(".")
    for i, layer in enumerate(LAYERS):
        if name in layer or (name.split(".")[0] in ("kernels", "eval") and name.split(".")[0] in layer):
            return i
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def test_imports_follow_the_layers():
    graph = _import_graph()
    upward = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_architecture_names_the_whole_public_api():
    """`duorank.__all__` is the public API, and docs/architecture.md names every part of it."""
    import duorank

    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [n for n in duorank.__all__ if n != "__version__" and f"`{n}" not in doc and f" {n}" not in doc]
    assert not missing, f"docs/architecture.md does not name {missing}"
    assert all(hasattr(duorank, n) for n in duorank.__all__)
