"""Choosing the blend weight and rerank depth on the dev queries, as `Engine.search` blends, and
recording them."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..record import record_defaults
from .config import TrainConfig
from .prepare import Part, load_datasets, prepare_part

log = logging.getLogger("duorank.models_export.train")

BLEND_GRID = tuple(round(0.1 * i, 1) for i in range(11))
TOLERANCE = 0.0025  # mean dev nDCG@10 a shallower rerank depth may give up (a quarter of a point)


def choose_blend(
    score: Callable[[list[tuple[str, str]]], np.ndarray],
    parts: Sequence[Part],
    cfg: TrainConfig,
    *,
    adaptive: bool = False,
) -> dict[str, Any]:
    """The (first-stage source, depth, blend weight) for the manifest, chosen on the dev queries.

    Rule: the best mean dev nDCG@10 over datasets among the choices that lose on no dev dataset against
    the same first stage alone (blend 0.0); a reranker that helps one domain and hurts another gets a lower
    weight rather than a default that hurts users outside its training domain. With `adaptive` (scores
    in [0, 1]), each weight is applied as the engine applies a recorded one: scaled per list by
    `adaptive_weight`; the choice then records `scale: "adaptive"`.
    """
    from duorank.eval.metrics import evaluate
    from duorank.rerank import best_first, rerank_head

    deepest = max(cfg.depths)
    scored = []  # per part: {(q, d): reranker score} over every source's top `deepest`
    for part in parts:
        keys = sorted(
            {(q, d) for run in part.runs.values() for q in part.dev_q for d in run.get(q, ())[:deepest]}
        )
        values = score([(part.ds.queries[q], part.ds.corpus[d]) for q, d in keys])
        scored.append(dict(zip(keys, np.asarray(values).tolist())))
    table: list[dict[str, Any]] = []
    for source in parts[0].runs:
        for depth in cfg.depths:
            for a in BLEND_GRID:
                per = {}
                for part, rerank in zip(parts, scored):
                    result: dict[str, dict[str, float]] = {}
                    for q in part.dev_q:
                        docs = part.runs[source].get(q, [])[:depth]
                        if not docs:
                            continue
                        first = np.asarray(part.scores[source][q][: len(docs)], dtype=np.float64)
                        head = np.array([rerank[q, d] for d in docs])
                        mixed = rerank_head(first, head, a, adaptive=adaptive)  # as Engine.search blends
                        # as ranks: trec_eval would break score ties by doc id, the engine keeps the list's
                        # order (RRF ties abound), and only then is weight 0 the first stage at every depth
                        order = best_first(mixed)
                        result[q] = {docs[i]: float(len(docs) - r) for r, i in enumerate(order.tolist())}
                    qrels = {q: part.ds.qrels[q] for q in part.dev_q}
                    per[part.ds.name] = float(evaluate(qrels, result, ["ndcg@10"]).mean["ndcg@10"])
                mean = float(np.mean(list(per.values())))
                table.append(
                    {"source": source, "depth": depth, "blend": a, "dev_ndcg@10": mean, "per_dataset": per}
                )
    return {**choose_from_grid(table), **({"scale": "adaptive"} if adaptive else {})}


def choose_from_grid(table: list[dict[str, Any]], *, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The rule over a dev grid (rows: source, depth, blend, dev_ndcg@10, per_dataset), overall and for
    each first stage: among the choices that lose on no dev dataset against the same first stage alone
    (blend 0.0), the shallowest whose mean dev nDCG@10 is within `tolerance` of the best one (rerank cost
    grows with depth; a few hundredths of a point on ~100 dev queries is noise), then the best of that
    depth."""
    alone = {(r["source"], r["depth"]): r["per_dataset"] for r in table if r["blend"] == 0.0}
    safe = [
        r
        for r in table
        if all(v >= alone[r["source"], r["depth"]][k] - 1e-9 for k, v in r["per_dataset"].items())
    ]

    def pick(rows: list[dict[str, Any]]) -> dict[str, Any]:
        top = max(r["dev_ndcg@10"] for r in rows)
        depth = min(r["depth"] for r in rows if r["dev_ndcg@10"] >= top - tolerance)
        return max((r for r in rows if r["depth"] == depth), key=lambda r: r["dev_ndcg@10"])

    best = pick(safe)
    # the engine reranks whichever first stage the user recalls with: a choice for each, by the same rule
    per_recall = {}
    for source in dict.fromkeys(r["source"] for r in table):  # blend 0.0 is safe: each source has one
        chosen = pick([r for r in safe if r["source"] == source])
        per_recall[source] = {k: chosen[k] for k in ("depth", "blend", "dev_ndcg@10")}
    return {
        **best,
        "per_recall": per_recall,
        "rule": "among choices losing on no dev dataset vs the first stage alone, the shallowest within "
        f"{tolerance} mean dev nDCG@10 of the best, then the best at that depth",
        "best_unconstrained": max(table, key=lambda r: r["dev_ndcg@10"]),
        "grid": table,
    }


def choose_defaults(
    folder: str | os.PathLike[str],
    data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    split: str = "train",
    config: TrainConfig | None = None,
    max_lengths: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Choose (again) the blend weight and depth of a reranker folder on the dev queries of `data` (the
    same seeded split as training with `config`), score with its ONNX graph, and record them in its
    manifest. Returns the choice. Use it to tune a trained reranker for your own labelled queries.

    `max_lengths` (for instance 128, 192, 256): the choice is made at each of these window lengths, and
    the shortest whose best dev nDCG@10 is within TOLERANCE of the best length's is recorded with its
    choice (`rerank.max_length`, which `Reranker.load` then uses): a shorter window costs less per pair.
    The curve (length, dev nDCG@10, the choice, ms a window here) is recorded too. Without it, the
    length the model records (else its own) is kept."""
    from duorank.models import Reranker

    cfg = config or TrainConfig()
    if split == "test":
        raise ValueError("the test split is never used to choose: give 'train' (or your own split)")
    parts = [prepare_part(ds, cfg) for ds in load_datasets(data, split, cfg)]
    if not max_lengths:
        rr = Reranker.load(folder, long_documents="truncate")
        choice = choose_blend(pair_scorer(rr), parts, cfg, adaptive=sigmoid_head(rr))
        choice["max_length"] = rr.max_length
        record_defaults(Path(folder), choice, provenance=True)
        return choice
    by_length, curve = {}, []
    for n in sorted({int(x) for x in max_lengths}):
        rr = Reranker.load(folder, long_documents="truncate", max_length=n)
        c = choose_blend(pair_scorer(rr), parts, cfg, adaptive=sigmoid_head(rr))
        cost = rr.measure_cost(lengths=(n,))
        by_length[n] = c
        curve.append(
            {
                "max_length": n,
                "dev_ndcg@10": c["dev_ndcg@10"],
                **{k: c[k] for k in ("source", "depth", "blend")},
                "ms_per_window": round(cost.ms_per_window[0], 3),
            }
        )
        log.info("max_length %d: %s", n, curve[-1])
    top = max(r["dev_ndcg@10"] for r in curve)
    n = min(r["max_length"] for r in curve if r["dev_ndcg@10"] >= top - TOLERANCE)
    choice = {**by_length[n], "max_length": n, "max_length_curve": curve}
    record_defaults(Path(folder), choice, provenance=True)
    return choice


def sigmoid_head(rr: Any) -> bool:
    """Whether a duorank Reranker's scores lie in [0, 1] (a sigmoid head), so its blend weight is chosen
    and applied on the adaptive scale."""
    return bool(rr.manifest.get("activation") == "sigmoid")


def pair_scorer(rr: Any) -> Callable[[list[tuple[str, str]]], np.ndarray]:
    """(query, text) pairs -> a duorank Reranker's scores, the pairs of each query scored as one group."""

    def score(pairs: list[tuple[str, str]]) -> np.ndarray:
        groups: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(pairs):
            groups.setdefault(q, []).append(i)
        out = np.empty(len(pairs), np.float64)
        got = [
            s.scores for s in rr.score_groups([(q, [pairs[i][1] for i in idx]) for q, idx in groups.items()])
        ]
        for idx, s in zip(groups.values(), got):
            out[idx] = s
        return out

    return score
