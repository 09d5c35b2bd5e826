"""Fine-tune a cross-encoder on labelled queries (BEIR layout) and export it as a duorank reranker.

The recipe (issue "A reranker that really ranks"): BertForSequenceClassification with one logit,
initialised from an encoder's weights; per labelled (query, positive), a group of the positive and
`group_size - 1` negatives drawn each epoch from the first-stage candidates (dense and/or BM25 top
`negatives`, never a labelled positive); softmax cross-entropy over each group (the positive is class 0);
AdamW, linear warm-up then decay, gradient clipping. A seeded split of the training queries is the dev set:
it tracks nDCG@10 after each epoch (the best epoch is kept) and chooses the blend weight and the rerank
depth recorded in the manifest. The test split is refused as training data.

torch and transformers are imported only here (the `[export]` extra).
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from .deps import require
from .record import TRAIN_RECORD, record_defaults, training_record

log = logging.getLogger("duorank.models_export.train")

BLEND_GRID = tuple(round(0.1 * i, 1) for i in range(11))
TOLERANCE = 0.0025  # mean dev nDCG@10 a shallower rerank depth may give up (a quarter of a point)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 16  # pairs per step (a multiple of group_size)
    group_size: int = 8  # 1 positive + group_size - 1 negatives
    max_length: int = 256
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    negatives: int = 50  # depth of each first-stage list negatives are drawn from
    sources: tuple[str, ...] = ("dense", "bm25")
    dev_fraction: float = 0.135
    depths: tuple[int, ...] = (10, 20, 30, 50)  # rerank depths tried on dev at the end
    dev_depth: int = 30  # depth of the per-epoch dev check
    seed: int = 0
    max_queries: int | None = None  # first N training queries (quick runs, tests)
    max_steps: int | None = None
    bf16: bool = False  # bf16 autocast (fast only on CPUs with native bf16: AVX-512 BF16 / AMX)
    python_docs: int = 0  # pseudo-queries from this machine's Python docs mixed in (domain robustness)
    int8: bool = False  # add the int8 variant (gate: parity + nDCG@10 on the dev queries within 1 point)
    distill: int = 0  # sentence pairs scored by the embedder mixed in (graded similarity; see distill.py)
    distill_weight: float = 1.0  # weight of the distillation loss (1 - Pearson) next to the ranking loss
    distill_batch: int = 32  # distillation pairs per step
    device: str = "cpu"  # "cuda": train on a GPU (bf16 autocast is native there)
    train_seed: int | None = None  # seed of initialisation, example order and sampled negatives (None: seed)

    def __post_init__(self) -> None:
        if self.batch_size % self.group_size or self.group_size < 2:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of group_size {self.group_size} >= 2"
            )
        if not 0 < self.dev_fraction < 1:
            raise ValueError(f"dev_fraction {self.dev_fraction}: expected 0 < f < 1")
        if self.python_docs < 0:
            raise ValueError(f"python_docs {self.python_docs}: expected >= 0")
        if self.distill < 0 or self.distill_weight < 0 or self.distill_batch < 2:
            raise ValueError(
                f"distill {self.distill}, distill_weight {self.distill_weight}, distill_batch "
                f"{self.distill_batch}: expected pairs >= 0, weight >= 0, batch >= 2"
            )
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device {self.device!r}: expected 'cpu' or 'cuda'")
        unknown = set(self.sources) - {"dense", "bm25"}
        if unknown or not self.sources:
            raise ValueError(f"sources {self.sources}: expected some of ('dense', 'bm25')")


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
    """Per source ("dense": the default embedder, exact search; "bm25"), each query's top `depth` doc ids,
    and their scores."""
    from duorank import ExactIndex
    from duorank.lexical import BM25, rrf

    doc_ids = dataset.doc_ids()
    texts = [dataset.corpus[d] for d in doc_ids]
    qids = list(dataset.queries)
    queries = [dataset.queries[q] for q in qids]
    runs: dict[str, dict[str, list[str]]] = {}
    scores: dict[str, dict[str, list[float]]] = {}

    hits: dict[str, Any] = {}
    if "bm25" in sources:
        hits["bm25"] = BM25.build(texts).search(queries, depth)
    if "dense" in sources:
        from duorank.eval.run import corpus_vectors
        from duorank.models import Embedder

        emb = Embedder.load("default")
        index = ExactIndex(dim=emb.dim)
        index.add(corpus_vectors(emb, texts))
        hits["dense"] = index.search(emb.encode(queries, kind="query"), depth)
    if "dense" in hits and "bm25" in hits:  # what the engine's recall="hybrid" runs
        hits["hybrid"] = rrf([hits["dense"], hits["bm25"]], depth)
    for source, h in hits.items():
        runs[source] = {q: [doc_ids[i] for i in row[row >= 0]] for q, row in zip(qids, h.ids)}
        scores[source] = {q: s[ids >= 0].tolist() for q, ids, s in zip(qids, h.ids, h.scores)}
    return runs, scores


@dataclass
class _Part:
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


def _prepare(ds: Any, cfg: TrainConfig) -> _Part:
    qids = judged_queries(ds)
    if cfg.max_queries:
        qids = qids[: cfg.max_queries]
    train_q, dev_q = split_queries(qids, cfg.dev_fraction, cfg.seed)
    runs, scores = first_stage_runs(ds, cfg.sources, max(cfg.negatives, *cfg.depths, cfg.dev_depth))
    negatives = mine_negatives(
        {q: ds.qrels[q] for q in train_q}, [runs[s] for s in cfg.sources], cfg.negatives
    )
    return _Part(ds, train_q, dev_q, runs, scores, negatives)


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

    parts: list[_Part]
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
    parts = [_prepare(ds, cfg) for ds in _datasets(data, split, cfg)]
    distill_train: list[Any] = []
    distill_dev: list[Any] = []
    if cfg.distill:
        from .distill import teacher_pairs

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

    from .distill import Pair

    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        if doc["split"] == "test":
            raise ValueError("it was made from the test split, which is never training data")
        parts = [
            _Part(
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


@dataclass
class TrainReport:
    out: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    dev_curve: list[dict[str, Any]] = field(default_factory=list)
    blend: float = 1.0
    depth: int = 30
    source: str = "dense"
    seconds: float = 0.0


def train_reranker(
    base: str | os.PathLike[str],
    data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    split: str = "train",
    config: TrainConfig | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    export_onnx: bool = True,
) -> TrainReport:
    """Train on `split` of the BEIR dataset(s) `data` (plus `config.python_docs` pseudo-queries from the
    Python docs) from the encoder folder `base`; export to `out`. Each dataset is split into train and dev
    on its own; the dev figures are the mean over datasets, so a small domain counts as much as a big one.

    `data` may instead be a prepared training set (`prepare_training` + `save_prepared`, a .json.gz file):
    then its preparation options replace `config`'s. With `export_onnx=False`, `out` is the trained
    Hugging Face checkpoint plus `duorank-train.json` (provenance and dev choice), which `export` reads:
    train on a GPU machine, export and quantise elsewhere."""
    cfg = config or TrainConfig()
    if split == "test":
        raise ValueError("the test split is never training data: train on 'train' (or your own split)")
    if cfg.int8 and not export_onnx:
        raise ValueError("int8 needs the ONNX export: drop int8 or keep export_onnx")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (overwrite=True / --force to replace it)")
    torch = require("torch", "torch")
    transformers = require("transformers", "transformers")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda': this torch sees no CUDA GPU (use device='cpu')")
    device = torch.device(cfg.device)

    t0 = time.perf_counter()
    if is_prepared(data):
        prep = load_prepared(data)
    else:
        prep = prepare_training(data, split=split, config=cfg)
    cfg = replace(cfg, **prep.config)
    seed = cfg.seed if cfg.train_seed is None else cfg.train_seed
    _seed_everything(torch, seed)
    parts = prep.parts
    examples = [
        (p, q, d)
        for p, part in enumerate(parts)
        for q in part.train_q
        for d, g in sorted(part.ds.qrels[q].items())
        if g > 0 and part.negatives.get(q)
    ]
    if not examples:
        raise ValueError(f"{data}: no training query has both a positive and a mined negative")
    log.info(
        "training on %d (query, positive) pairs of %s; dev %s queries; %d distillation pairs; %s",
        len(examples),
        ", ".join(f"{len(p.train_q)} {p.ds.name} queries" for p in parts),
        " + ".join(str(len(p.dev_q)) for p in parts),
        len(prep.distill_train),
        cfg.device,
    )

    tok = transformers.AutoTokenizer.from_pretrained(str(base))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    model.to(device)
    model.train()
    groups_per_step = cfg.batch_size // cfg.group_size
    steps_per_epoch = math.ceil(len(examples) / groups_per_step)
    total = (
        steps_per_epoch * cfg.epochs
        if cfg.max_steps is None
        else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    )
    decay = [p for n, p in model.named_parameters() if not any(k in n for k in ("bias", "LayerNorm"))]
    rest = [p for n, p in model.named_parameters() if any(k in n for k in ("bias", "LayerNorm"))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    sched = transformers.get_linear_schedule_with_warmup(opt, int(cfg.warmup * total), total)
    rng = random.Random(seed)
    distill_rng = random.Random(seed + 1)
    distilling = bool(prep.distill_train) and cfg.distill_weight > 0
    report = TrainReport(out=out, steps=0)
    best = -1.0
    work = Path(tempfile.mkdtemp(prefix="duorank-train-"))
    checkpoint = work / "checkpoint"
    bar = None
    if progress or progress is None:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="training", unit="step", disable=False if progress else None)
    try:
        try:
            for epoch in range(cfg.epochs):
                order = examples[:]
                rng.shuffle(order)
                for i in range(0, len(order), groups_per_step):
                    if report.steps >= total:
                        break
                    batch = order[i : i + groups_per_step]
                    pairs = []
                    for p, q, pos in batch:
                        ds, pool = parts[p].ds, parts[p].negatives[q]
                        k = cfg.group_size - 1
                        negs = rng.sample(pool, k) if len(pool) >= k else [rng.choice(pool) for _ in range(k)]
                        pairs += [(ds.queries[q], ds.corpus[d]) for d in [pos, *negs]]
                    loss = _group_loss(torch, model, tok, pairs, len(batch), cfg)
                    shown = {"loss": f"{float(loss.detach()):.3f}"}
                    if distilling:
                        n = min(cfg.distill_batch, len(prep.distill_train))
                        chosen = distill_rng.sample(prep.distill_train, n)
                        d_loss = _distill_loss(torch, model, tok, chosen, cfg)
                        loss = loss + cfg.distill_weight * d_loss
                        shown["distill"] = f"{float(d_loss.detach()):.3f}"
                    opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    report.steps += 1
                    report.losses.append(float(loss.detach()))
                    if on_step is not None:
                        on_step(report.steps, report.losses[-1])
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(**shown, epoch=epoch + 1)
                per = {
                    p.ds.name: _dev_ndcg(
                        torch, model, tok, p.ds, p.dev_q, p.runs[cfg.sources[0]], cfg.dev_depth, cfg
                    )
                    for p in parts
                }
                score = float(np.mean(list(per.values())))
                point: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "step": report.steps,
                    "dev_ndcg@10": score,
                    "per_dataset": per,
                }
                if prep.distill_dev:
                    from .distill import correlations

                    got = _score(torch, model, tok, [(x.a, x.b) for x in prep.distill_dev], cfg)
                    point["distill_dev"] = correlations(got, [x.teacher for x in prep.distill_dev])
                report.dev_curve.append(point)
                log.info(
                    "epoch %d: dev nDCG@10 %.4f (reranking %s top-%d)%s",
                    epoch + 1,
                    score,
                    cfg.sources[0],
                    cfg.dev_depth,
                    f"; distillation dev {point['distill_dev']}" if "distill_dev" in point else "",
                )
                if score > best:
                    best = score
                    _save_checkpoint(model, tok, checkpoint, cfg.max_length)
                if report.steps >= total:
                    break
        except KeyboardInterrupt:
            if not checkpoint.exists():
                raise
            log.warning("interrupted: exporting the last good checkpoint (dev nDCG@10 %.4f)", best)
        if not checkpoint.exists():
            _save_checkpoint(model, tok, checkpoint, cfg.max_length)
        tok = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
        best_model = transformers.AutoModelForSequenceClassification.from_pretrained(str(checkpoint))
        best_model.to(device)
        # the exported head is a sigmoid (one logit): choose on the scores the engine will blend
        choice = _choose_blend(
            lambda pairs: (
                1.0 / (1.0 + np.exp(-_score(torch, best_model, tok, pairs, cfg).astype(np.float64)))
            ),
            parts,
            cfg,
            adaptive=True,
        )
        report.blend, report.depth, report.source = choice["blend"], choice["depth"], choice["source"]
        report.seconds = time.perf_counter() - t0
        provenance = {
            "trained_by": "duorank models train-reranker",
            "base": str(Path(base).resolve()) if Path(base).exists() else str(base),
            **base_training(base),
            "data": prep.data,
            "split": prep.split,
            "data_license": {p.ds.name: _license_of(p.ds.name) for p in parts},
            "train_queries": {p.ds.name: len(p.train_q) for p in parts},
            "dev_queries": {p.ds.name: len(p.dev_q) for p in parts},
            "distill_pairs": {"train": len(prep.distill_train), "dev": len(prep.distill_dev)},
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "hardware": torch.cuda.get_device_name(device) if cfg.device == "cuda" else "cpu",
            "dev_curve": report.dev_curve,
            "dev_choice": choice,
            "steps": report.steps,
            "seconds": round(report.seconds, 1),
        }
        if not export_onnx:
            _write_checkpoint(checkpoint, out, provenance)
            return report
        from . import export

        export(checkpoint, out, kind="reranker", provenance=provenance, overwrite=overwrite)
        record_defaults(out, choice)
        if cfg.int8:
            from . import add_int8
            from .gate import retrieval_check

            add_int8(out, retrieval_check(parts[0].ds, queries=parts[0].dev_q))
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(work, ignore_errors=True)
    return report


def base_training(base: str | os.PathLike[str]) -> dict[str, Any]:
    """{"base_training": the base's own training record} when `base` is a checkpoint trained here
    (`--no-export`), so a model fine-tuned further records the whole chain; {} for a plain encoder.
    The base's dev grid is left out (its choice is kept): it describes a model that no longer ships."""
    parent = training_record(base)
    if parent is None:
        return {}
    choice = parent.get("dev_choice")
    if isinstance(choice, dict):
        parent["dev_choice"] = {k: v for k, v in choice.items() if k != "grid"}
    return {"base_training": parent}


def _write_checkpoint(checkpoint: Path, out: Path, provenance: dict[str, Any]) -> None:
    """`out` = the checkpoint folder plus duorank-train.json, replacing `out` only once complete."""
    import json

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp)
    (tmp / TRAIN_RECORD).write_text(json.dumps(provenance, indent=1), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _datasets(data: Any, split: str, cfg: TrainConfig) -> list[Any]:
    from duorank.eval.datasets import load_beir

    sources = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not sources:
        raise ValueError("no training data: give at least one BEIR folder")
    datasets = [load_beir(d, split) for d in sources]
    if cfg.python_docs:
        from .pseudo import python_docs_dataset

        datasets.append(python_docs_dataset(cfg.python_docs, seed=cfg.seed))
    return datasets


def _seed_everything(torch: Any, seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _group_loss(
    torch: Any, model: Any, tok: Any, pairs: list[tuple[str, str]], groups: int, cfg: TrainConfig
) -> Any:
    logits = _logits(torch, model, tok, pairs, cfg).view(groups, cfg.group_size)
    target = torch.zeros(groups, dtype=torch.long, device=logits.device)
    return torch.nn.functional.cross_entropy(logits, target)


def _distill_loss(torch: Any, model: Any, tok: Any, pairs: list[Any], cfg: TrainConfig) -> Any:
    """1 - Pearson correlation of the logits of sentence pairs with the embedder's cosines."""
    x = _logits(torch, model, tok, [(p.a, p.b) for p in pairs], cfg).view(-1)
    y = torch.tensor([p.teacher for p in pairs], dtype=x.dtype, device=x.device)
    x, y = x - x.mean(), y - y.mean()
    return 1.0 - (x * y).sum() / (x.norm() * y.norm() + 1e-8)


def _logits(torch: Any, model: Any, tok: Any, pairs: list[tuple[str, str]], cfg: TrainConfig) -> Any:
    """float32 logits of (query, document) pairs on the model's device (bf16 autocast with cfg.bf16)."""
    enc = _encode(tok, pairs, cfg).to(model.device)
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        return model(**enc).logits.float()


def _encode(tok: Any, pairs: list[tuple[str, str]], cfg: TrainConfig) -> Any:
    """(query, document) pairs as padded tensors; only the document is cut at max_length."""
    return tok(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        truncation="only_second",
        max_length=cfg.max_length,
        padding=True,
        return_tensors="pt",
    )


def _score(torch: Any, model: Any, tok: Any, pairs: list[tuple[str, str]], cfg: TrainConfig) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(pairs), 32):
            out.append(_logits(torch, model, tok, pairs[i : i + 32], cfg).view(-1).cpu().numpy())
    model.train()
    return np.concatenate(out) if out else np.empty(0, np.float32)


def _dev_ndcg(
    torch: Any,
    model: Any,
    tok: Any,
    ds: Any,
    dev_q: list[str],
    run: Mapping[str, Sequence[str]],
    depth: int,
    cfg: TrainConfig,
) -> float:
    from duorank.eval.metrics import evaluate

    pairs, owners = [], []
    for q in dev_q:
        for d in list(run.get(q, ()))[:depth]:
            pairs.append((ds.queries[q], ds.corpus[d]))
            owners.append((q, d))
    scores = _score(torch, model, tok, pairs, cfg)
    result: dict[str, dict[str, float]] = {q: {} for q in dev_q}
    for (q, d), s in zip(owners, scores):
        result[q][d] = float(s)
    return float(evaluate({q: ds.qrels[q] for q in dev_q}, result, ["ndcg@10"]).mean["ndcg@10"])


def _choose_blend(
    score: Callable[[list[tuple[str, str]]], np.ndarray],
    parts: Sequence[_Part],
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
) -> dict[str, Any]:
    """Choose (again) the blend weight and depth of a reranker folder on the dev queries of `data` (the
    same seeded split as training with `config`), score with its ONNX graph, and record them in its
    manifest. Returns the choice. Use it to tune a trained reranker for your own labelled queries."""
    from duorank.models import Reranker

    cfg = config or TrainConfig()
    if split == "test":
        raise ValueError("the test split is never used to choose: give 'train' (or your own split)")
    parts = [_prepare(ds, cfg) for ds in _datasets(data, split, cfg)]
    rr = Reranker.load(folder, long_documents="truncate")
    choice = _choose_blend(pair_scorer(rr), parts, cfg, adaptive=sigmoid_head(rr))
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


def _save_checkpoint(model: Any, tok: Any, folder: Path, max_length: int) -> None:
    import json

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # safetensors, the default of transformers 4.x and 5
    tok.save_pretrained(tmp)
    (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _license_of(name: str) -> str | None:
    known = {
        "scifact": "CC BY-NC 2.0 (SciFact, allenai)",
        "python-docs": "PSF License (the installed Python's documentation and docstrings)",
    }
    return known.get(name.lower())
