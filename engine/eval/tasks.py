"""Embedding quality beyond retrieval: STS correlation, clustering, classification and bitext mining
(MTEB-style).

Each takes vectors (or pairs of vectors) plus gold labels and returns a dict of metric -> value in
percent, as MTEB reports them. scipy / scikit-learn do the statistics (the `[eval]` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f'{module} is needed for this evaluation: pip install "duorank[eval]"') from e


def _vectors(x: ArrayLike, name: str) -> NDArray[np.float64]:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (n, d) array, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds NaN or inf")
    return v


def sts(a: ArrayLike, b: ArrayLike, gold: ArrayLike) -> dict[str, float]:
    """Pearson and Spearman (x100) between the cosine of each (a[i], b[i]) pair and the gold score."""
    stats = _require("scipy.stats")
    x, y = _vectors(a, "a"), _vectors(b, "b")
    g = np.asarray(gold, dtype=np.float64)
    if x.shape != y.shape or g.shape != (x.shape[0],):
        raise ValueError(f"a {x.shape}, b {y.shape} and gold {g.shape} must describe the same pairs")
    cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
    return {
        "pearson": 100 * float(stats.pearsonr(cos, g).statistic),
        "spearman": 100 * float(stats.spearmanr(cos, g).statistic),
    }


def purity(labels: Sequence[Any], clusters: Sequence[Any]) -> float:
    """Share of items whose cluster's majority label is their own label."""
    metrics = _require("sklearn.metrics.cluster")
    table = metrics.contingency_matrix(labels, clusters)
    return float(table.max(axis=0).sum() / table.sum())


def clustering(
    vectors: ArrayLike, labels: Sequence[Any], *, seeds: Sequence[int] = (0, 1, 2)
) -> dict[str, float]:
    """k-means with k = number of true classes; NMI, ARI, V-measure, purity (x100), mean over seeds."""
    cluster = _require("sklearn.cluster")
    metrics = _require("sklearn.metrics")
    v = _vectors(vectors, "vectors")
    labels = list(labels)
    if len(labels) != v.shape[0]:
        raise ValueError(f"{len(labels)} labels for {v.shape[0]} vectors")
    k = len(set(labels))
    if k < 2:
        raise ValueError("clustering needs at least 2 classes")
    rows = []
    for seed in seeds:
        pred = cluster.KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(v)
        rows.append(
            {
                "nmi": metrics.normalized_mutual_info_score(labels, pred),
                "ari": metrics.adjusted_rand_score(labels, pred),
                "v_measure": metrics.v_measure_score(labels, pred),
                "purity": purity(labels, pred),
            }
        )
    return {m: 100 * float(np.mean([r[m] for r in rows])) for m in rows[0]}


def training_samples(
    labels: Sequence[Any] | NDArray[Any],
    samples_per_label: int | None = 8,
    *,
    experiments: int = 10,
    seed: int = 42,
) -> list[NDArray[np.int64]]:
    """The train rows each classification experiment fits on: per experiment, the first
    `samples_per_label` rows of each label in a seeded random order (None: one experiment, every row)."""
    y = np.asarray(list(labels))
    if samples_per_label is None:
        return [np.arange(len(y), dtype=np.int64)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(experiments):
        seen: dict[Any, int] = {}
        keep = []
        for i in rng.permutation(len(y)):
            if seen.get(y[i], 0) < samples_per_label:
                seen[y[i]] = seen.get(y[i], 0) + 1
                keep.append(i)
        out.append(np.array(keep, dtype=np.int64))
    return out


def classification(
    train: ArrayLike,
    train_labels: Sequence[Any],
    test: ArrayLike,
    test_labels: Sequence[Any],
    *,
    samples_per_label: int | None = 8,
    experiments: int = 10,
    seed: int = 42,
) -> dict[str, float]:
    """Logistic regression on frozen embeddings, MTEB's protocol: accuracy and macro-F1 (x100).

    Each of `experiments` runs trains on at most `samples_per_label` random train items per label (MTEB:
    8 per label, 10 runs, max_iter 100) and scores the whole test split; the means are returned.
    `samples_per_label=None` trains once on the whole train split.
    """
    linear = _require("sklearn.linear_model")
    metrics = _require("sklearn.metrics")
    x, t = _vectors(train, "train"), _vectors(test, "test")
    y, yt = np.asarray(list(train_labels)), np.asarray(list(test_labels))
    if len(y) != x.shape[0] or len(yt) != t.shape[0]:
        raise ValueError("one label per train and per test vector")
    rows = []
    for pick in training_samples(y, samples_per_label, experiments=experiments, seed=seed):
        clf = linear.LogisticRegression(max_iter=100, random_state=seed)
        clf.fit(x[pick], y[pick])
        pred = clf.predict(t)
        rows.append((metrics.accuracy_score(yt, pred), metrics.f1_score(yt, pred, average="macro")))
    return {
        "accuracy": 100 * float(np.mean([r[0] for r in rows])),
        "macro_f1": 100 * float(np.mean([r[1] for r in rows])),
    }


def bitext_mining(source: ArrayLike, target: ArrayLike) -> dict[str, float]:
    """MTEB's BitextMining: source i's translation is target i; each source takes its nearest target by
    cosine. Accuracy and MTEB's weighted precision / recall / F1 over the gold targets (x100)."""
    metrics = _require("sklearn.metrics")
    s, t = _vectors(source, "source"), _vectors(target, "target")
    if s.shape != t.shape:
        raise ValueError(f"source {s.shape} and target {t.shape} must hold the same pairs")
    s /= np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    gold = np.arange(s.shape[0])
    pred = np.concatenate([(s[i : i + 1024] @ t.T).argmax(axis=1) for i in range(0, len(s), 1024)])
    kw = {"average": "weighted", "zero_division": 0, "labels": gold}
    return {
        "accuracy": 100 * float((pred == gold).mean()),
        "precision": 100 * float(metrics.precision_score(gold, pred, **kw)),
        "recall": 100 * float(metrics.recall_score(gold, pred, **kw)),
        "f1": 100 * float(metrics.f1_score(gold, pred, **kw)),
    }
