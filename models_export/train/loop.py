"""The training loop: grouped softmax cross-entropy over first-stage negatives, AdamW with warm-up, the
per-epoch dev check, the best checkpoint, its export and record."""

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
from typing import Any

import numpy as np

from ..deps import require
from ..record import TRAIN_RECORD, record_defaults, training_record
from .choose import choose_blend
from .config import TrainConfig
from .prepare import is_prepared, load_prepared, prepare_training

log = logging.getLogger("duorank.models_export.train")


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
    model = _student(transformers, base, cfg.layers)
    teacher = None
    if cfg.teacher is not None and cfg.teacher_weight > 0:
        from .teacher import Teacher

        teacher = Teacher(cfg.teacher, max_length=cfg.max_length, device=cfg.device)
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
                    pairs, targets = [], []
                    for p, q, pos in batch:
                        ds, pool = parts[p].ds, parts[p].negatives[q]
                        k = cfg.group_size - 1
                        negs = rng.sample(pool, k) if len(pool) >= k else [rng.choice(pool) for _ in range(k)]
                        pairs += [(ds.queries[q], ds.corpus[d]) for d in [pos, *negs]]
                        if teacher is not None:
                            keyed = [((p, q, d), ds.corpus[d]) for d in [pos, *negs]]
                            targets.append(teacher.logits(ds.queries[q], keyed))
                    logits = _logits(torch, model, tok, pairs, cfg).view(len(batch), cfg.group_size)
                    loss = _group_loss(torch, logits)
                    shown = {"loss": f"{float(loss.detach()):.3f}"}
                    if teacher is not None:
                        t_loss = _teacher_loss(torch, logits, np.stack(targets))
                        loss = loss + cfg.teacher_weight * t_loss
                        shown["teacher"] = f"{float(t_loss.detach()):.3f}"
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
                    p.ds.name: dev_ndcg(
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
                    from ..distill import correlations

                    got = score_pairs(torch, model, tok, [(x.a, x.b) for x in prep.distill_dev], cfg)
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
        choice = choose_blend(
            lambda pairs: (
                1.0 / (1.0 + np.exp(-score_pairs(torch, best_model, tok, pairs, cfg).astype(np.float64)))
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
            "data_license": {p.ds.name: license_of(p.ds.name) for p in parts},
            "train_queries": {p.ds.name: len(p.train_q) for p in parts},
            "dev_queries": {p.ds.name: len(p.dev_q) for p in parts},
            "distill_pairs": {"train": len(prep.distill_train), "dev": len(prep.distill_dev)},
            **({"teacher": teacher.provenance()} if teacher is not None else {}),
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
        from .. import export

        export(checkpoint, out, kind="reranker", provenance=provenance, overwrite=overwrite)
        record_defaults(out, choice)
        if cfg.int8:
            from .. import add_int8
            from ..gate import retrieval_check

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


def _seed_everything(torch: Any, seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _student(transformers: Any, base: str | os.PathLike[str], layers: int | None) -> Any:
    """The cross-encoder to train: the base with one logit, cut to its first `layers` encoder layers."""
    config = transformers.AutoConfig.from_pretrained(str(base), num_labels=1)
    if layers is not None:
        have = int(config.num_hidden_layers)
        if layers > have:
            raise ValueError(f"layers {layers}: the base {base} has only {have} encoder layers")
        config.num_hidden_layers = layers
    return transformers.AutoModelForSequenceClassification.from_pretrained(str(base), config=config)


def _group_loss(torch: Any, logits: Any) -> Any:
    """Softmax cross-entropy of each group (rows of `logits`), the positive first."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return torch.nn.functional.cross_entropy(logits, target)


def _teacher_loss(torch: Any, logits: Any, teacher: np.ndarray) -> Any:
    """KL(teacher's softmax over each group || the student's), the mean over groups."""
    t = torch.as_tensor(teacher, dtype=logits.dtype, device=logits.device)
    f = torch.nn.functional
    student, target = f.log_softmax(logits, dim=-1), f.log_softmax(t, dim=-1)
    return f.kl_div(student, target, log_target=True, reduction="batchmean")


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


def score_pairs(
    torch: Any, model: Any, tok: Any, pairs: list[tuple[str, str]], cfg: TrainConfig
) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(pairs), 32):
            out.append(_logits(torch, model, tok, pairs[i : i + 32], cfg).view(-1).cpu().numpy())
    model.train()
    return np.concatenate(out) if out else np.empty(0, np.float32)


def dev_ndcg(
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
    scores = score_pairs(torch, model, tok, pairs, cfg)
    result: dict[str, dict[str, float]] = {q: {} for q in dev_q}
    for (q, d), s in zip(owners, scores):
        result[q][d] = float(s)
    return float(evaluate({q: ds.qrels[q] for q in dev_q}, result, ["ndcg@10"]).mean["ndcg@10"])


def _save_checkpoint(model: Any, tok: Any, folder: Path, max_length: int) -> None:
    import json

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # safetensors, the default of transformers 4.x and 5
    tok.save_pretrained(tmp)
    (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def license_of(name: str) -> str | None:
    known = {
        "scifact": "CC BY-NC 2.0 (SciFact, allenai)",
        "python-docs": "PSF License (the installed Python's documentation and docstrings)",
    }
    return known.get(name.lower())
