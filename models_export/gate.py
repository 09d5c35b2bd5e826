"""The int8 gate's quality half: nDCG on labelled data, int8 against fp32, through the runtime."""

from __future__ import annotations

from typing import Any


def retrieval_check(
    data: Any,
    *,
    max_drop: float = 1.0,
    k: int = 10,
    split: str = "test",
    queries: Any = None,
    depth: int = 20,
) -> Any:
    """The quality half of the int8 gate: nDCG@k on a labelled BEIR set (SciFact), int8 within max_drop
    points of fp32. An embedder embeds the whole corpus with each variant and searches it; a reranker
    reranks the BM25 top `depth` of each query (documents cut at its max_length) with each variant.

    data: a BEIR folder (its `split`) or a loaded `Dataset`; queries: a subset of its query ids (default
    all). Returns a callable(folder) -> dict for `export(int8_check=...)`; it takes minutes on a small CPU.
    """
    import numpy as np

    from duorank.eval.datasets import Dataset, load_beir
    from duorank.eval.metrics import evaluate
    from duorank.model_folder import read_manifest
    from duorank.models import Embedder, Reranker

    ds = data if isinstance(data, Dataset) else load_beir(data, split)
    doc_ids = ds.doc_ids()
    qids = list(ds.queries) if queries is None else list(queries)
    qrels = {q: ds.qrels[q] for q in qids}
    candidates: list[Any] = []

    def embedder_run(folder: Any, variant: str) -> dict[str, dict[str, float]]:
        emb = Embedder.load(folder, variant=variant, threads=2)
        d = emb.encode([ds.corpus[i] for i in doc_ids], progress=True)
        q = emb.encode([ds.queries[i] for i in qids], kind="query")
        s = q @ d.T
        top = np.argsort(-s, axis=1)[:, :100]
        return {qid: {doc_ids[j]: float(s[r, j]) for j in top[r]} for r, qid in enumerate(qids)}

    def reranker_run(folder: Any, variant: str) -> dict[str, dict[str, float]]:
        if not candidates:
            from duorank.lexical import BM25

            hits = BM25.build([ds.corpus[i] for i in doc_ids]).search([ds.queries[q] for q in qids], depth)
            candidates.extend([doc_ids[j] for j in row[row >= 0]] for row in hits.ids)
        rr = Reranker.load(folder, variant=variant, threads=2, long_documents="truncate")
        groups = [(ds.queries[q], [ds.corpus[d] for d in docs]) for q, docs in zip(qids, candidates)]
        scores = [s.scores for s in rr.score_groups(groups)]
        return {q: dict(zip(docs, map(float, s))) for q, docs, s in zip(qids, candidates, scores)}

    def check(folder: Any) -> dict[str, Any]:
        kind = read_manifest(folder, verify=False)["kind"]
        run = reranker_run if kind == "reranker" else embedder_run
        base, quant = (
            100 * evaluate(qrels, run(folder, v), [f"ndcg@{k}"]).mean[f"ndcg@{k}"] for v in ("fp32", "int8")
        )
        return {
            "dataset": ds.name,
            "split": ds.split,
            "queries": len(qids),
            **({"bm25_depth": depth} if kind == "reranker" else {}),
            f"ndcg@{k}_fp32": round(base, 2),
            f"ndcg@{k}_int8": round(quant, 2),
            "max_drop": max_drop,
            "passed": base - quant <= max_drop,
        }

    return check
