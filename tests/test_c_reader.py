"""docs/format.md is an interface: a C program (libc + libsqlite3, tests/c/topk.c) reads a collection the
test builds and returns what Collection.search returns."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from duorank.collection import Collection
from tests.conftest import unit_rows

SOURCE = Path(__file__).parent / "c" / "topk.c"


@pytest.fixture(scope="module")
def topk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (`cc`) on this machine: install gcc to run the C reader test")
    probe = subprocess.run(
        [cc, "-E", "-x", "c", "-"], input="#include <sqlite3.h>\n", capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip("no SQLite headers (sqlite3.h): install libsqlite3-dev to run the C reader test")
    exe = tmp_path_factory.mktemp("c") / "topk"
    cmd = [
        cc,
        "-std=c99",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-o",
        str(exe),
        str(SOURCE),
        "-lsqlite3",
        "-lm",
    ]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return exe


def _unescape(s: str) -> str:
    return s.replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\")


def _run(exe: Path, folder: Path, queries: np.ndarray, k: int = 10) -> list[list[tuple[str, float, str]]]:
    qfile = folder.parent / "queries.f32"
    queries.astype("<f4").tofile(qfile)
    out = subprocess.run([str(exe), str(folder), str(qfile), str(k)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    per_query: list[list[tuple[str, float, str]]] = [[] for _ in range(len(queries))]
    for line in out.stdout.splitlines():
        qi, rank, ext, score, text = line.split("\t")
        assert int(rank) == len(per_query[int(qi)]) + 1
        per_query[int(qi)].append((_unescape(ext), float(score), _unescape(text)))
    return per_query


@pytest.mark.parametrize("dtype", ["f32", "i8"])
def test_c_reader_equals_collection_search(topk, tmp_path, dtype):
    rng = np.random.default_rng(1338)
    n, dim = 600, 48
    folder = tmp_path / "kb"
    texts = [
        f"document {i}: naïve café, 检索 {i}\tand a tab" + ("\nsecond line" if i % 7 == 0 else "")
        for i in range(n)
    ]
    with Collection.create(folder, dim=dim, dtype=dtype, bm25=True) as c:
        c.add(rng.standard_normal((n, dim)).astype(np.float32) * 3, texts, ids=[f"doc-{i}" for i in range(n)])
    with Collection.open(folder, "a") as c:  # gaps in the internal ids: rows and ids are not the same
        c.delete([f"doc-{i}" for i in range(0, n, 5)])
    queries = np.vstack([unit_rows(rng, 5, dim) * 2.5, np.zeros((1, dim), np.float32)])
    with Collection.open(folder) as c:
        expected = c.search(queries, 10)
        ours = _run(topk, folder, queries)
        c_ids = [[e for e, _, _ in hits] for hits in ours]
        assert c_ids[:5] == expected.external_ids[:5]
        for qi in range(5):
            np.testing.assert_allclose([s for _, s, _ in ours[qi]], expected.scores[qi], atol=1e-5)
            assert [t for _, _, t in ours[qi]] == expected.texts[qi]
        # a zero query scores every row 0: both rank by smaller internal id
        assert c_ids[5] == expected.external_ids[5] and all(s == 0 for _, s, _ in ours[5])
        assert len(c) == n - n // 5


def test_c_reader_refuses_a_damaged_collection(topk, tmp_path):
    rng = np.random.default_rng(7)
    folder = tmp_path / "kb"
    with Collection.create(folder, dim=8) as c:
        c.add(unit_rows(rng, 20, 8), [f"t{i}" for i in range(20)])
    manifest = folder / "collection.json"
    manifest.write_text(manifest.read_text().replace('"count": 20', '"count": 21'))
    qfile = tmp_path / "q.f32"
    unit_rows(rng, 1, 8).astype("<f4").tofile(qfile)
    out = subprocess.run([str(topk), str(folder), str(qfile)], capture_output=True, text=True)
    assert out.returncode == 1 and "shape differs from the manifest" in out.stderr
