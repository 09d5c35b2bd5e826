"""The cross-encoder: (query, text) pairs -> relevance scores, long texts in windows; its recorded defaults
(blend weight and depth per first stage)."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from duorank.model_folder import read_manifest
from duorank.recall import RECALLS
from duorank.rerank import RerankCost
from duorank.validate import check_texts

from .registry import resolve
from .runtime import OnnxModel

log = logging.getLogger("duorank.models")


@dataclass(frozen=True, slots=True)
class Scored:
    """Rerank scores plus how long inputs were handled: windows per pair and pairs cut (query or document)."""

    scores: NDArray[np.float32]  # (n,)
    windows: NDArray[np.int64]  # (n,) windows scored per pair (1 when the pair fits max_length)
    truncated: NDArray[np.bool_]  # (n,) text lost: the query was cut, or the document in "truncate" mode

    @property
    def n_truncated(self) -> int:
        return int(self.truncated.sum())


@dataclass(frozen=True, slots=True)
class PairTokens:
    """(query, text) pairs as the reranker's tokenizer cut them (`Reranker.tokenize`), ready for
    `Reranker.score_groups`: one encoding per pair (its overflowing windows attached), texts per group,
    and which groups' queries were cut at max_query_tokens."""

    encodings: list[Any]  # tokenizers.Encoding per pair, groups one after the other
    sizes: tuple[int, ...]  # pairs per group
    query_cut: NDArray[np.bool_]  # (groups,)

    def __len__(self) -> int:
        return len(self.encodings)

    def head(self, depth: int) -> PairTokens:
        """The first `depth` pairs of every group."""
        keep, start, sizes = [], 0, []
        for size in self.sizes:
            n = min(size, depth)
            keep.extend(self.encodings[start : start + n])
            sizes.append(n)
            start += size
        return PairTokens(keep, tuple(sizes), self.query_cut)


@dataclass(frozen=True, slots=True)
class RerankDefaults:
    """A reranker's blend weight (1.0: the reranker alone) and rerank depth (None: all of top_k);
    `adaptive`: the weight is scaled per list by `duorank.rerank.adaptive_weight` (recorded as
    `rerank.scale = "adaptive"` by a choice made that way)."""

    blend: float
    depth: int | None
    adaptive: bool = False


class Reranker(OnnxModel):
    """A cross-encoder: (query, text) pairs -> relevance scores (float32, higher is more relevant).

    Documents longer than max_length are scored in overlapping windows (`long_documents="windows"`, the
    default; `stride` tokens of overlap, max_length // 8 unless given) and the pair's score is the max over
    windows (or `aggregate="mean_top2"`); `long_documents="truncate"` scores only the first window and
    counts the pair as cut.
    """

    kind = "reranker"

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        *,
        long_documents: str,
        stride: int | None,
        aggregate: str,
        max_query_tokens: int | None,
        max_length: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(folder, manifest, **kw)
        if max_length is not None:
            if not 16 <= max_length <= self.max_length:
                raise ValueError(f"max_length {max_length}: expected 16..{self.max_length} (the model's)")
            self.max_length = int(max_length)
        if long_documents not in ("windows", "truncate"):
            raise ValueError(f"long_documents {long_documents!r}, expected 'windows' or 'truncate'")
        if aggregate not in ("max", "mean_top2"):
            raise ValueError(f"aggregate {aggregate!r}, expected 'max' or 'mean_top2'")
        self.max_query_tokens = int(max_query_tokens or self.max_length // 2)
        if not 1 <= self.max_query_tokens <= self.max_length - 8:
            raise ValueError(f"max_query_tokens {self.max_query_tokens}: expected 1..{self.max_length - 8}")
        stride = self.max_length // 8 if stride is None else stride
        if not 0 <= stride < self.max_length - self.max_query_tokens - 3:
            raise ValueError(f"stride {stride}: expected 0..{self.max_length - self.max_query_tokens - 4}")
        self.long_documents, self.stride, self.aggregate = long_documents, int(stride), aggregate
        self._pair_tok = type(self.tokenizer).from_str(self.tokenizer.to_str())
        self._pair_tok.enable_truncation(self.max_length, stride=self.stride, strategy="only_second")
        self._query_tok = type(self.tokenizer).from_str(self.tokenizer.to_str())
        self._query_tok.no_truncation()
        self._activation = manifest.get("activation", "identity")
        self.cost: RerankCost | None = None  # measure_cost(): what a rerank costs on this machine
        self._ratios: deque[float] = deque(maxlen=64)  # actual / predicted ms of recent budgeted reranks

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike[str] = "default",
        *,
        device: str = "cpu",
        variant: str | None = None,
        threads: int | None = None,
        batch_tokens: int | None = None,
        long_documents: str | None = None,
        stride: int | None = None,
        aggregate: str = "max",
        max_query_tokens: int | None = None,
        max_length: int | None = None,
        spin: bool = False,
        verify: bool = True,
    ) -> Reranker:
        """long_documents: None takes the model's recorded choice (a reranker trained on truncated
        documents records "truncate"), else "windows". max_length: tokens a (query, text) window holds,
        at most the model's; None takes the length recorded as the best for this model on its dev set
        (`rerank.max_length`), else the model's. spin: as `Embedder.load`."""
        folder = resolve(name_or_path, cls.kind)
        manifest = read_manifest(folder, verify=verify)
        recorded = manifest.get("rerank") or {}
        if long_documents is None:
            long_documents = str(recorded.get("long_documents", "windows"))
        if max_length is None and recorded.get("max_length") is not None:
            max_length = int(recorded["max_length"])
        return cls(
            folder,
            manifest,
            device=device,
            variant=variant,
            threads=threads,
            batch_tokens=batch_tokens,
            long_documents=long_documents,
            stride=stride,
            aggregate=aggregate,
            max_query_tokens=max_query_tokens,
            max_length=max_length,
            spin=spin,
        )

    @property
    def blend(self) -> float:
        """Weight of this reranker's score when blended with the first stage's (1.0: the reranker alone);
        a trained model records the weight chosen on its dev set."""
        return self.defaults().blend

    @property
    def depth(self) -> int | None:
        """The rerank depth (top_k) chosen on the dev set at training, when recorded."""
        return self.defaults().depth

    def defaults(self, recall: str | None = None) -> RerankDefaults:
        """The blend weight and depth chosen on dev for reranking the first stage `recall` ("dense", "bm25",
        "hybrid"); the overall choice when None or when the manifest records none for that first stage."""
        rec = self.manifest.get("rerank") or {}
        if recall is not None and recall not in RECALLS:
            raise ValueError(f"recall {recall!r}: expected one of {', '.join(RECALLS)} or None")
        own = (rec.get("recall") or {}).get(recall) or rec
        depth = own.get("depth")
        adaptive = rec.get("scale") == "adaptive"
        return RerankDefaults(float(own.get("blend", 1.0)), None if depth is None else int(depth), adaptive)

    def measure_cost(self, lengths: Sequence[int] = (32, 128, 256), pairs: int = 8) -> RerankCost:
        """Time this reranker here (median of 5) on `pairs` synthetic pairs padded to each of `lengths`
        (capped at max_length) and on one short pair; keep the result as `self.cost` (the cost model a
        rerank budget uses, `duorank.rerank.budget_depth`) and return it. About 0.5 s for the default
        reranker on 2 cores."""
        word = "data"
        sizes = sorted({min(int(n), self.max_length) for n in lengths})
        per_window = []
        for n in sizes:
            text = " ".join([word] * max(1, n - 4))
            tokens = self.tokenize([(word, [text] * pairs)]).head(pairs)
            per_window.append(_median_ms(lambda t=tokens: self.score_groups(t)) / pairs)
        one = self.tokenize([(word, [word])])
        fixed = max(0.0, _median_ms(lambda: self.score_groups(one)) - per_window[0])
        self.cost = RerankCost(fixed, tuple(sizes), tuple(per_window))
        self._ratios.clear()
        log.info("rerank cost here: %s", self.cost)
        return self.cost

    def observe_cost(self, predicted_ms: float, actual_ms: float) -> None:
        """Record what a budgeted rerank took against what `cost` predicted (`duorank.rerank` calls it)."""
        if predicted_ms > 0 and actual_ms >= 0:
            self._ratios.append(actual_ms / predicted_ms)

    @property
    def cost_scale(self) -> float:
        """The 90th percentile of actual / predicted time over the last 64 budgeted reranks, at least 1
        (1.0 before any): a budget is divided by it, so that a busy machine, or one slower than when
        `measure_cost` ran, gets shallower reranks rather than late ones."""
        return max(1.0, float(np.percentile(self._ratios, 90))) if self._ratios else 1.0

    def score(self, query: str, texts: Sequence[str], *, progress: bool | None = None) -> NDArray[np.float32]:
        """The reranker's score of each (query, text) pair, float32 (n,), in the order of `texts` (for a
        sigmoid head, in [0, 1]: one scale across queries, not a calibrated probability)."""
        check_texts(texts)
        return self.score_groups([(query, texts)], progress=progress)[0].scores

    def tokenize(self, groups: Sequence[tuple[str, Sequence[str]]]) -> PairTokens:
        """The pairs of every (query, texts) group tokenised as the model reads them (queries cut at
        max_query_tokens, documents in windows or truncated): the first half of `score_groups`, for a caller
        that times or reuses it."""
        if isinstance(groups, (str, bytes)) or not len(groups):
            raise ValueError("groups must be a non-empty list of (query, texts) pairs")
        queries, docs = [], []
        for g, item in enumerate(groups):
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError(f"groups[{g}] must be a (query, texts) pair, got {type(item).__name__}")
            q, texts = item
            if not isinstance(q, str):
                raise TypeError(f"groups[{g}] query is {type(q).__name__}, expected str")
            queries.append(q)
            docs.append(check_texts(texts, f"groups[{g}] texts", allow_empty=True))
        cut_queries, q_cut = self._cap_queries(queries)
        pairs = [(cut_queries[g], d) for g, texts in enumerate(docs) for d in texts]
        return PairTokens(self._pair_tok.encode_batch(pairs), tuple(len(d) for d in docs), q_cut)

    def score_groups(
        self,
        groups: Sequence[tuple[str, Sequence[str]]] | PairTokens,
        *,
        progress: bool | None = None,
    ) -> list[Scored]:
        """The batched form: per (query, texts) group its `Scored` (scores, windows per pair, pairs cut), all
        pairs of all groups batched together by token budget. `groups` may be tokenised already
        (`tokenize`)."""
        tokens = groups if isinstance(groups, PairTokens) else self.tokenize(groups)
        encodings, q_cut = tokens.encodings, tokens.query_cut
        windows: list[Any] = []
        owner: list[int] = []
        n_windows = np.ones(len(encodings), dtype=np.int64)
        for p, e in enumerate(encodings):
            windows.append(e)
            owner.append(p)
            if e.overflowing and self.long_documents == "windows":
                windows.extend(e.overflowing)
                owner.extend([p] * len(e.overflowing))
                n_windows[p] += len(e.overflowing)
        raw = np.empty(len(windows), dtype=np.float32)
        for rows, feeds in self._batches(windows, progress, "reranking"):
            raw[rows] = self._activate(self._run(feeds))
        pair_scores = _aggregate(raw, np.asarray(owner, dtype=np.int64), len(encodings), self.aggregate)
        group_of_pair = np.repeat(np.arange(len(tokens.sizes)), tokens.sizes)
        doc_cut = np.fromiter(
            (bool(e.overflowing) and self.long_documents == "truncate" for e in encodings),
            np.bool_,
            len(encodings),
        )
        truncated = doc_cut | q_cut[group_of_pair]
        if truncated.any():
            log.warning(
                "%d of %d (query, text) pairs were cut at %d tokens",
                int(truncated.sum()),
                len(encodings),
                self.max_length,
            )
        out, start = [], 0
        for size in tokens.sizes:
            sl = slice(start, start + size)
            out.append(Scored(pair_scores[sl], n_windows[sl], truncated[sl]))
            start += size
        return out

    def _cap_queries(self, queries: list[str]) -> tuple[list[str], NDArray[np.bool_]]:
        """Queries cut to max_query_tokens (at a token boundary), so every window keeps room for the text."""
        encs = self._query_tok.encode_batch(queries, add_special_tokens=False)
        out, cut = [], np.zeros(len(queries), dtype=np.bool_)
        for i, (q, e) in enumerate(zip(queries, encs)):
            if len(e.ids) > self.max_query_tokens:
                out.append(q[: e.offsets[self.max_query_tokens - 1][1]])
                cut[i] = True
            else:
                out.append(q)
        return out, cut

    def _activate(self, logits: NDArray[np.float32]) -> NDArray[np.float32]:
        if logits.ndim == 2 and logits.shape[1] > 1:  # several labels: probability of the last ("relevant")
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            return (z[:, -1] / z.sum(axis=1)).astype(np.float32)
        x = logits.reshape(len(logits))
        if self._activation == "sigmoid":
            return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
        return x


def _aggregate(raw: NDArray[np.float32], owner: NDArray[np.int64], n: int, how: str) -> NDArray[np.float32]:
    if len(raw) == n:
        return raw
    best = np.full(n, -np.inf, dtype=np.float32)
    np.maximum.at(best, owner, raw)
    if how == "max":
        return best
    # mean of the two best windows (a single window counts alone)
    order = np.lexsort((-raw, owner))
    out = best.copy()
    first = np.searchsorted(owner[order], np.arange(n))
    counts = np.bincount(owner, minlength=n)
    two = counts >= 2
    out[two] = (raw[order][first[two]] + raw[order][first[two] + 1]) / 2
    return out


def _median_ms(fn: Any, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))
