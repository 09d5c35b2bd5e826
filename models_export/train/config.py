"""What a training run is given: `TrainConfig`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("duorank.models_export.train")


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
    layers: int | None = None  # keep the base's first N encoder layers (a smaller, faster student)
    teacher: str | None = None  # a reranker (name or folder) whose scores of each group the model learns
    teacher_weight: float = 1.0  # weight of the teacher loss (KL of the group softmaxes) next to the labels

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
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"layers {self.layers}: expected >= 1 (or None: all of the base's)")
        if self.teacher_weight < 0:
            raise ValueError(f"teacher_weight {self.teacher_weight}: expected >= 0")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device {self.device!r}: expected 'cpu' or 'cuda'")
        unknown = set(self.sources) - {"dense", "bm25"}
        if unknown or not self.sources:
            raise ValueError(f"sources {self.sources}: expected some of ('dense', 'bm25')")
