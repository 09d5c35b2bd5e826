"""Everything before the first step: datasets, the seeded train / dev split, the engine's first-stage
lists, mined negatives, distillation pairs; saved to and read from one gzip JSON file."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from .config import TrainConfig

log = logging.getLogger("duorank.models_export.train")


def mine_negatives(
    qrels: Mapping[str, Mapping[str, int]], runs: Sequence[Mapping[str, Sequence[str]]], depth: int
) -> dict[str, list[str]]:
    """Per query, the union (in rank order, first run first) of each run's top `depth` documents, minus
    every document the qrels judge relevant (grade > 0) for that query."""
    out: dict[str, list[str]] = {}
    for qid, judged in qrels.items():
        positives = {d for d, g in judged.items() if g > 0}
        seen: dict[str, None] = {}
        for run in runs:
            for d in list(run.get(qid, ()))[:depth]:
                if d not in positives:
                    seen.setdefault(d)
        out[qid] = list(seen)
    return out


def split_queries(qids: Sequence[str], dev_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded (train, dev) split of query ids; dev gets round(len * dev_fraction), at least 1."""
    order = sorted(qids)
    random.Random(seed).shuffle(order)
    n_dev = max(1, round(len(order) * dev_fraction))
    return sorted(order[n_dev:]), sorted(order[:n_dev])


def first_stage_runs(
    dataset: Any, sources: Sequence[str], depth: int
) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, list[float]]]]:
    """Per source ("dense": the default embedder, exact search; "bm25"; and "hybrid" when both are asked
    for, as the engine's recall="hybrid" runs) each query's top `depth` doc ids, and their scores: the
    engine's own first stage (`duorank.eval.first_stage.FirstStage`)."""
    from duorank.eval.first_stage import FirstStage

    doc_ids = dataset.doc_ids()
    texts = [dataset.corpus[d] for d in doc_ids]
    qids = list(dataset.queries)
    queries = [dataset.queries[q] for q in qids]
    embedder = None
    if "dense" in sources:
        from duorank.models import Embedder

        embedder = Embedder.load("default")
    stage = FirstStage(texts, embedder, bm25="bm25" in sources)
    vectors = embedder.encode(queries, kind="query") if embedder is not None else None
    kinds = [s for s in ("bm25", "dense") if s in sources] + (["hybrid"] if embedder and stage.bm25 else [])
    runs: dict[str, dict[str, list[str]]] = {}
    scores: dict[str, dict[str, list[float]]] = {}
    for source in kinds:
        h = stage.search(source, queries, depth, vectors=vectors)
        runs[source] = {q: [doc_ids[i] for i in row[row >= 0]] for q, row in zip(qids, h.ids)}
        scores[source] = {q: s[ids >= 0].tolist() for q, ids, s in zip(qids, h.ids, h.scores)}
    return runs, scores


@dataclass
class Part:
    """One training dataset: its query split, first-stage runs and mined negatives."""

    ds: Any
    train_q: list[str]
    dev_q: list[str]
    runs: dict[str, dict[str, list[str]]]
    scores: dict[str, dict[str, list[float]]]
    negatives: dict[str, list[str]]


def judged_queries(ds: Any) -> list[str]:
    """The query ids with at least one relevant document, sorted."""
    return sorted(q for q, judged in ds.qrels.items() if any(g > 0 for g in judged.values()))


def prepare_part(ds: Any, cfg: TrainConfig) -> Part:
    qids = judged_queries(ds)
    if cfg.max_queries:
        qids = qids[: cfg.max_queries]
    train_q, dev_q = split_queries(qids, cfg.dev_fraction, cfg.seed)
    runs, scores = first_stage_runs(ds, cfg.sources, max(cfg.negatives, *cfg.depths, cfg.dev_depth))
    negatives = mine_negatives(
        {q: ds.qrels[q] for q in train_q}, [runs[s] for s in cfg.sources], cfg.negatives
    )
    return Part(ds, train_q, dev_q, runs, scores, negatives)


# TrainConfig fields that decide what `prepare_training` computes; a prepared file carries its own
PREPARATION = (
    "sources", "negatives", "depths", "dev_depth", "dev_fraction", "seed", "max_queries", "python_docs",
    "distill",
)  # fmt: skip
FORMAT = "duorank-training-set/1"


@dataclass
class Prepared:
    """Everything training reads besides the base model: per dataset the query split, mined negatives and
    the dev queries' first-stage lists; the distillation pairs. Computing it needs the engine (embedder,
    BM25); training from it needs only torch, so it can be made here and trained on a GPU machine."""

    parts: list[Part]
    distill_train: list[Any]
    distill_dev: list[Any]
    config: dict[str, Any]  # the PREPARATION fields it was made with
    data: list[str]
    split: str


def prepare_training(
    data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    split: str = "train",
    config: TrainConfig | None = None,
) -> Prepared:
    """Split, first-stage lists, negatives (and `config.distill` teacher-scored pairs) of the BEIR
    dataset(s) `data` plus `config.python_docs` Python-docs pseudo-queries."""
    cfg = config or TrainConfig()
    if split == "test":
        raise ValueError("the test split is never training data: train on 'train' (or your own split)")
    sources = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    parts = [prepare_part(ds, cfg) for ds in load_datasets(data, split, cfg)]
    distill_train: list[Any] = []
    distill_dev: list[Any] = []
    if cfg.distill:
        from ..distill import teacher_pairs

        texts = [t for p in parts for t in p.ds.corpus.values()]
        texts += [p.ds.queries[q] for p in parts for q in p.train_q]
        distill_train, distill_dev = teacher_pairs(texts, cfg.distill, seed=cfg.seed)
    return Prepared(
        parts,
        distill_train,
        distill_dev,
        {k: getattr(cfg, k) for k in PREPARATION},
        [str(Path(d).resolve()) for d in sources],
        split,
    )


def save_prepared(prep: Prepared, path: str | os.PathLike[str]) -> Path:
    """Write `prep` as gzip JSON (atomically: temp file + rename). Only the documents training reads are
    kept: positives and negatives of the training queries, the dev queries' candidates."""
    import gzip
    import json

    parts = []
    for p in prep.parts:
        dev = set(p.dev_q)
        runs = {s: {q: r for q, r in run.items() if q in dev} for s, run in p.runs.items()}
        scores = {s: {q: v for q, v in sc.items() if q in dev} for s, sc in p.scores.items()}
        queries = [*p.train_q, *p.dev_q]
        needed = {d for q in p.train_q for d, g in p.ds.qrels[q].items() if g > 0}
        needed |= {d for q in p.train_q for d in p.negatives.get(q, ())}
        needed |= {d for run in runs.values() for r in run.values() for d in r}
        parts.append(
            {
                "name": p.ds.name,
                "corpus": {d: t for d, t in p.ds.corpus.items() if d in needed},
                "queries": {q: p.ds.queries[q] for q in queries},
                "qrels": {q: p.ds.qrels[q] for q in queries},
                "train_q": p.train_q,
                "dev_q": p.dev_q,
                "runs": runs,
                "scores": scores,
                "negatives": {q: p.negatives[q] for q in p.train_q if q in p.negatives},
            }
        )
    doc = {
        "format": FORMAT,
        "split": prep.split,
        "data": prep.data,
        "config": prep.config,  # tuples are written as JSON arrays; load_prepared turns them back
        "parts": parts,
        "distill": {
            "train": [[x.a, x.b, x.teacher] for x in prep.distill_train],
            "dev": [[x.a, x.b, x.teacher] for x in prep.distill_dev],
        },
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        json.dump(doc, f)
    tmp.replace(path)
    return path


def load_prepared(path: str | os.PathLike[str]) -> Prepared:
    """Read a file of `save_prepared`; a foreign, damaged or test-split file raises ValueError."""
    import gzip
    import json

    from duorank.eval.datasets import Dataset

    from ..distill import Pair

    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        if doc["split"] == "test":
            raise ValueError("it was made from the test split, which is never training data")
        parts = [
            Part(
                Dataset(p["name"], p["corpus"], {}, p["queries"], p["qrels"], doc["split"]),
                p["train_q"],
                p["dev_q"],
                p["runs"],
                p["scores"],
                p["negatives"],
            )
            for p in doc["parts"]
        ]
        pairs = {k: [Pair(a, b, float(t)) for a, b, t in v] for k, v in doc["distill"].items()}
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in doc["config"].items()}
        if set(config) != set(PREPARATION):
            raise ValueError(f"config fields {sorted(config)}, expected {sorted(PREPARATION)}")
    except (OSError, EOFError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a usable prepared training set ({FORMAT}): {e}") from e
    return Prepared(parts, pairs["train"], pairs["dev"], config, doc["data"], doc["split"])


def is_prepared(data: Any) -> TypeGuard[str | os.PathLike[str]]:
    """Whether `data` names a prepared training set (a .json.gz file) rather than BEIR data."""
    return isinstance(data, (str, os.PathLike)) and str(data).endswith(".json.gz")


def load_datasets(data: Any, split: str, cfg: TrainConfig) -> list[Any]:
    from duorank.eval.datasets import load_beir

    sources = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not sources:
        raise ValueError("no training data: give at least one BEIR folder")
    datasets = [load_beir(d, split) for d in sources]
    if cfg.python_docs:
        from ..pseudo import python_docs_dataset

        datasets.append(python_docs_dataset(cfg.python_docs, seed=cfg.seed))
    return datasets
