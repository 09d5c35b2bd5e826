"""The benchmark runner: every recall / rerank configuration on one labelled dataset, in one go.

`retrieval(dataset, embedder, reranker=...)` runs BM25, dense, hybrid (RRF), BM25 reranked by the
embedder (MTEB style) and, given a cross-encoder, dense and hybrid reranked by it; each system gets the
metrics (per query), latency per stage (p50/p99 over single queries) and throughput, and every system is
compared with dense for significance. The lists are those `Engine.search` returns: its first stage
(`duorank.recall`, via `first_stage.FirstStage`) and its rerank (`duorank.rerank.rerank_lists`, with the
reranker's recorded depth and blend), scored in the order returned (first-stage ties to the document added
first, as in a collection; not trec_eval's tie-break by document id). `sts`, `classification` and
`clustering` cover the other tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from duorank.hits import Hits

from . import tasks
from .datasets import Dataset, load_labelled, load_stsb
from .first_stage import FirstStage
from .metrics import EvalResult, evaluate, pairwise_accuracy, run_from_hits
from .significance import Comparison, compare

log = logging.getLogger("duorank.eval")

SYSTEMS = ("bm25", "dense", "hybrid", "bm25+embedding", "dense+cross", "hybrid+cross")
STAGES = ("embed", "search", "fetch", "rerank")


def retrieval_metrics(top_k: int, top_n: int) -> list[str]:
    n, k = top_n, top_k
    return [
        f"ndcg@{n}",
        f"mrr@{n}",
        f"map@{k}",
        f"recall@{n}",
        f"recall@{k}",
        f"precision@{n}",
        f"hit_rate@{n}",
    ]


@dataclass
class SystemResult:
    name: str
    result: EvalResult
    run: dict[str, dict[str, float]]
    latency_ms: dict[str, dict[str, float]]  # stage -> {"p50", "p99"}; "total" included
    queries_per_s: float  # batched throughput over every query (corpus work excluded)
    curve: dict[str, float] = field(default_factory=dict)  # ndcg@k for the plot
    pairwise_accuracy: float | None = None  # (relevant, non-relevant) candidate pairs in the right order


@dataclass
class RetrievalReport:
    dataset: str
    split: str
    config: dict[str, Any]
    systems: list[SystemResult]
    comparisons: list[Comparison]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "config": self.config,
            "systems": [
                {
                    "name": s.name,
                    "mean": s.result.mean,
                    "per_query": s.result.per_query,
                    "missing": s.result.missing,
                    "latency_ms": s.latency_ms,
                    "queries_per_s": s.queries_per_s,
                    "ndcg_curve": s.curve,
                    "pairwise_accuracy": s.pairwise_accuracy,
                }
                for s in self.systems
            ],
            "significance": [c.__dict__ for c in self.comparisons],
        }

    def to_markdown(self) -> str:
        from .report import markdown

        return markdown(self)


class _Timer:
    """Milliseconds per stage, summed per query (a hybrid search times two searches as one stage)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = [{}]

    def next_query(self) -> None:
        self.rows.append({})

    def __call__(self, stage: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        row = self.rows[-1]
        row[stage] = row.get(stage, 0.0) + (time.perf_counter() - t) * 1e3
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        rows = [r for r in self.rows if r]
        if not rows:
            return {}
        out = {}
        for stage in [s for s in STAGES if any(s in r for r in rows)]:
            v = np.array([r.get(stage, 0.0) for r in rows])
            out[stage] = {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
        total = np.array([sum(r.values()) for r in rows])
        out["total"] = {"p50": float(np.percentile(total, 50)), "p99": float(np.percentile(total, 99))}
        return out


def retrieval(
    dataset: Dataset,
    embedder: Any = None,
    *,
    reranker: Any = None,
    top_k: int = 100,
    top_n: int = 10,
    systems: Sequence[str] | None = None,
    latency_queries: int = 50,
    seed: int = 0,
    cache: bool = True,
    analyzer: str | None = None,
    challenger: tuple[str, Any] | None = None,
) -> RetrievalReport:
    """Run every configuration on `dataset` and return the report (see the module docstring); `analyzer`:
    BM25's (duorank.analyzers; default: the default of new collections).

    `challenger` = (label, a second reranker), for instance ("fast", Reranker.load("fast")), beside
    `reranker`: adds `dense+LABEL` and `hybrid+LABEL` (at its own recorded defaults), `hybrid+LABEL@depth`
    (at the depth `reranker` reads on hybrid: equal depth) and `hybrid+LABEL@latency` (one query at a
    time under a rerank budget of `reranker`'s measured p50 rerank time on hybrid: equal latency). The
    reranked systems are also compared with hybrid alone."""
    from duorank.rerank import rerank_lists

    if top_n > top_k:
        raise ValueError(f"top_n {top_n} > top_k {top_k}: rerank keeps at most the top_k candidates")
    wanted = list(systems) if systems else [s for s in SYSTEMS if ("cross" not in s or reranker is not None)]
    unknown = [s for s in wanted if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}; known: {list(SYSTEMS)}")
    needs_dense = any(s.startswith(("dense", "hybrid")) or s == "bm25+embedding" for s in wanted)
    if needs_dense and embedder is None:
        raise ValueError(f"systems {wanted} need an embedder")
    if any("cross" in s for s in wanted) and reranker is None:
        raise ValueError("the +cross systems need a reranker")
    if challenger is not None:
        label = challenger[0]
        if reranker is None or "hybrid+cross" not in wanted:
            raise ValueError("a challenger reranker is compared with `reranker` on hybrid+cross: give both")
        if not label or any(c in label for c in "+@ "):
            raise ValueError(f"challenger label {label!r}: expected a non-empty name without '+', '@', ' '")
        wanted += [f"dense+{label}", f"hybrid+{label}", f"hybrid+{label}@depth", f"hybrid+{label}@latency"]
    metrics = retrieval_metrics(top_k, top_n)
    doc_ids = dataset.doc_ids()
    texts = [dataset.corpus[d] for d in doc_ids]
    qids = list(dataset.queries)
    queries = [dataset.queries[q] for q in qids]
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(qids), size=min(latency_queries, len(qids)), replace=False))

    lexical_needed = any(s.startswith(("bm25", "hybrid")) for s in wanted)
    stage = FirstStage(
        texts, embedder if needs_dense else None, bm25=lexical_needed, analyzer=analyzer, cache=cache
    )

    def first(how: str) -> Callable[[list[str], _Timer], Hits]:
        """The first stage `how` (`FirstStage.search`, i.e. `duorank.recall.recall`), its stages timed."""

        def go(qs: list[str], timer: _Timer) -> Hits:
            v = timer("embed", lambda: embedder.encode(qs, kind="query")) if how != "bm25" else None
            return timer("search", lambda: stage.search(how, qs, top_k, vectors=v))  # type: ignore[no-any-return]

        return go

    dense, lexical, hybrid = first("dense"), first("bm25"), first("hybrid")

    settings: dict[str, dict[str, Any]] = {}  # per +cross system: the rerank depth and blend in force

    def rerank_cross(
        recall: str, name: str, model: Any, *, same_depth: bool = False, same_time: bool = False
    ) -> Callable[[list[str], _Timer], Hits]:
        """`Engine.search`'s rerank (`rerank_lists`, the reranker's recorded depth and blend for this recall)
        over this recall's top_k; `same_depth`: at the depth `reranker` read on hybrid; `same_time`: under
        a budget of `reranker`'s p50 rerank time on hybrid, one query at a time (a budget is per search)."""
        first = {"dense": dense, "hybrid": hybrid}[recall]

        def go(qs: list[str], timer: _Timer) -> Hits:
            if same_time and len(qs) > 1:
                parts = [go([q], timer) for q in qs]
                return Hits(np.concatenate([h.ids for h in parts]), np.concatenate([h.scores for h in parts]))
            depth = settings["hybrid+cross"]["depth"] if same_depth else None
            budget = done_before("hybrid+cross").latency_ms["rerank"]["p50"] if same_time else None
            hits = first(qs, timer)
            cand = timer("fetch", lambda: [[texts[i] for i in row[row >= 0]] for row in hits.ids])
            scores = [row[hits.ids[i] >= 0].astype(np.float64) for i, row in enumerate(hits.scores)]
            how = {"recall": recall, "top_n": top_n, "top_k": top_k, "depth": depth, "budget_ms": budget}
            done = timer("rerank", lambda: rerank_lists(model, qs, cand, scores, **how))
            settings[name] = {**done.settings(), **({"budget_ms": round(budget, 1)} if budget else {})}
            return _reorder(hits, done.final)

        return go

    def rerank_embedding(qs: list[str], timer: _Timer) -> Hits:
        hits = lexical(qs, timer)
        v = timer("embed", lambda: embedder.encode(qs, kind="query"))
        cand = timer("fetch", lambda: [row[row >= 0] for row in hits.ids])
        scored = timer("rerank", lambda: [stage.vectors[c] @ v[i] for i, c in enumerate(cand)])  # type: ignore[index]
        return _reorder(hits, scored)

    runners = {
        "bm25": lexical,
        "dense": dense,
        "hybrid": hybrid,
        "bm25+embedding": rerank_embedding,
        "dense+cross": rerank_cross("dense", "dense+cross", reranker),
        "hybrid+cross": rerank_cross("hybrid", "hybrid+cross", reranker),
    }
    if challenger is not None:
        label, model = challenger
        runners[f"dense+{label}"] = rerank_cross("dense", f"dense+{label}", model)
        runners[f"hybrid+{label}"] = rerank_cross("hybrid", f"hybrid+{label}", model)
        runners[f"hybrid+{label}@depth"] = rerank_cross(
            "hybrid", f"hybrid+{label}@depth", model, same_depth=True
        )
        runners[f"hybrid+{label}@latency"] = rerank_cross(
            "hybrid", f"hybrid+{label}@latency", model, same_time=True
        )
    results: list[SystemResult] = []

    def done_before(name: str) -> SystemResult:
        return next(s for s in results if s.name == name)

    for name in wanted:
        fn = runners[name]
        t0 = time.perf_counter()
        hits = fn(queries, _Timer())
        qps = len(queries) / (time.perf_counter() - t0)
        timer = _Timer()
        for i in sample:
            fn([queries[i]], timer)
            timer.next_query()
        run = run_from_hits(_by_rank(hits), qids, doc_ids)
        if dataset.ignore_identical_ids:  # ArguAna / Quora: a query is not its own answer
            run = {q: {d: v for d, v in r.items() if d != q} for q, r in run.items()}
        res = evaluate(dataset.qrels, run, metrics)
        curve_ks = [k for k in (1, 3, 5, 10, 20, 50, 100) if k <= top_k]
        curve = evaluate(dataset.qrels, run, [f"ndcg@{k}" for k in curve_ks]).mean
        try:
            pair_acc: float | None = pairwise_accuracy(dataset.qrels, run)[0]
        except ValueError:  # no query with both a relevant and a non-relevant candidate
            pair_acc = None
        results.append(SystemResult(name, res, run, timer.summary(), qps, curve, pair_acc))
        log.info("%s: %s", name, {m: round(v, 4) for m, v in res.mean.items()})

    primary = f"ndcg@{top_n}"
    comparisons: list[Comparison] = []
    if "dense" in wanted and len(wanted) > 1:
        comparisons = compare(
            {s.name: s.result.per_query[primary] for s in results}, "dense", primary, seed=seed
        )
    reranked = [s for s in results if s.name.startswith("hybrid+")]
    if "hybrid" in wanted and reranked:  # does reranking beat the first stage it reads?
        comparisons += compare(
            {s.name: s.result.per_query[primary] for s in results if s.name.startswith("hybrid")},
            "hybrid",
            primary,
            seed=seed,
        )
    config = {
        "top_k": top_k,
        "top_n": top_n,
        "metrics": metrics,
        "systems": wanted,
        "analyzer": stage.bm25.config["analyzer"] if stage.bm25 is not None else None,
        "seed": seed,
        "latency_queries": len(sample),
        "embedder": _model_config(embedder),
        "reranker": _model_config(reranker),
        "challenger": (
            {"label": challenger[0], **(_model_config(challenger[1]) or {})} if challenger else None
        ),
        "rerank": settings,
        "bm25": stage.bm25.config if stage.bm25 else None,
        "versions": _versions(),
    }
    return RetrievalReport(dataset.name, dataset.split, config, results, comparisons)


def _reorder(hits: Hits, scored: Sequence[NDArray[Any]]) -> Hits:
    """The candidates of each row in the order `Engine.search` returns them for these final scores
    (`best_first`: ties keep the first-stage order)."""
    from duorank.rerank import best_first

    ids = np.full_like(hits.ids, -1)
    for r, s in enumerate(scored):
        cand = hits.ids[r][hits.ids[r] >= 0]
        ids[r, : len(cand)] = cand[best_first(s)]
    return Hits(ids, np.where(ids >= 0, 0.0, -np.inf).astype(np.float32))


def _by_rank(hits: Hits) -> Hits:
    """Each row's list scored by rank (n, n - 1, ... 1), so that the metrics, which break score ties by
    document id as trec_eval does, see the list in the order the engine returns it (ties of the first
    stage go to the document added first)."""
    valid = hits.ids >= 0
    ranks = np.where(valid, valid.sum(axis=1, keepdims=True) - np.cumsum(valid, axis=1) + 1, -np.inf)
    return Hits(hits.ids, ranks.astype(np.float32))


def _model_config(model: Any) -> dict[str, Any] | None:
    if model is None:
        return None
    from duorank.model_folder import VARIANTS

    m = model.manifest
    return {
        "name": model.name,
        "path": str(model.folder),
        "variant": model.variant,
        "device": model.device,
        "providers": model.session.get_providers(),
        "threads": model.session.get_session_options().intra_op_num_threads,
        "spin": model.spin,
        "sha256": m["files"][VARIANTS[model.variant]]["sha256"],
        "source": m.get("source", {}),
        "max_length": m.get("max_length"),
    }


def _versions() -> dict[str, str | None]:
    from ..machine import versions

    return versions(("duorank", "numpy", "numba", "onnxruntime-gpu", "onnxruntime", "tokenizers", "bm25s"))


def sts(embedder: Any, path: Any, split: str = "test") -> dict[str, float]:
    """STS Benchmark: Spearman / Pearson (x100) of cosine vs gold on `split`."""
    s1, s2, gold = load_stsb(path, split)
    a = embedder.encode(s1, kind="document")
    b = embedder.encode(s2, kind="document")
    return {**tasks.sts(a, b, gold), "pairs": len(gold)}


def classification(embedder: Any, path: Any) -> dict[str, float]:
    """MTEB's protocol: logistic regression on 8 train items per label, 10 runs; test accuracy (x100).

    Only the train texts some experiment fits on are embedded (about half of Banking77's); the others'
    rows stay zero and are never read."""
    train, train_y = load_labelled(path, "train")
    test, test_y = load_labelled(path, "test")
    used = np.unique(np.concatenate(tasks.training_samples(train_y)))
    t = embedder.encode(test, kind="document")
    x = np.zeros((len(train), t.shape[1]), dtype=np.float32)
    x[used] = embedder.encode([train[i] for i in used], kind="document")
    scores = tasks.classification(x, train_y, t, test_y)
    return {**scores, "train": len(train), "embedded": int(used.size), "test": len(test)}


def clustering(embedder: Any, path: Any, split: str = "test") -> dict[str, float]:
    """k-means on the embeddings of one labelled split, k = number of labels; NMI/ARI/V/purity (x100)."""
    texts, labels = load_labelled(path, split)
    v = embedder.encode(texts, kind="document")
    return {**tasks.clustering(v, labels), "texts": len(texts), "classes": len(set(labels))}


def bitext(
    embedder: Any, source: Sequence[str] | None = None, target: Sequence[str] | None = None
) -> dict[str, Any]:
    """Bitext mining both ways between `source` and its translations `target` (default: the HSK sentences,
    English and Chinese, `duorank.eval.hsk.pairs`): accuracy / precision / recall / F1 (x100) per direction.
    Both sides are embedded as queries (e5's convention for symmetric tasks)."""
    if source is None or target is None:
        from . import hsk

        source, target = hsk.pairs()
        names = ("en", "zh")
    else:
        names = ("source", "target")
    a = embedder.encode(list(source), kind="query")
    b = embedder.encode(list(target), kind="query")
    return {
        f"{names[0]}->{names[1]}": tasks.bitext_mining(a, b),
        f"{names[1]}->{names[0]}": tasks.bitext_mining(b, a),
        "pairs": len(source),
    }
