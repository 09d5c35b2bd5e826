"""Fine-tune a cross-encoder on labelled queries (BEIR layout) and export it as a duorank reranker.

The recipe: BertForSequenceClassification with one logit, initialised from an encoder's weights; per
labelled (query, positive), a group of the positive and `group_size - 1` negatives drawn each epoch from
the first-stage candidates (dense and/or BM25 top `negatives`, never a labelled positive); softmax
cross-entropy over each group (the positive is class 0); AdamW, linear warm-up then decay, gradient
clipping. A seeded split of the training queries is the dev set: it tracks nDCG@10 after each epoch (the
best epoch is kept) and chooses the blend weight and the rerank depth recorded in the manifest. The test
split is refused as training data.

Rooms: `config` (TrainConfig), `prepare` (datasets, split, first-stage lists, negatives; the prepared
file), `loop` (the training loop and export), `choose` (the dev-grid choice of blend and depth). torch and
transformers are imported only inside the loop (the `[export]` extra).
"""

from __future__ import annotations

from .choose import (
    BLEND_GRID,
    TOLERANCE,
    choose_blend,
    choose_defaults,
    choose_from_grid,
    pair_scorer,
    sigmoid_head,
)
from .config import TrainConfig
from .loop import TrainReport, base_training, train_reranker
from .prepare import (
    Part,
    Prepared,
    first_stage_runs,
    is_prepared,
    judged_queries,
    load_datasets,
    load_prepared,
    mine_negatives,
    prepare_part,
    prepare_training,
    save_prepared,
    split_queries,
)

__all__ = [
    "BLEND_GRID",
    "TOLERANCE",
    "Part",
    "Prepared",
    "TrainConfig",
    "TrainReport",
    "base_training",
    "choose_blend",
    "choose_defaults",
    "choose_from_grid",
    "first_stage_runs",
    "is_prepared",
    "judged_queries",
    "load_datasets",
    "load_prepared",
    "mine_negatives",
    "pair_scorer",
    "prepare_part",
    "prepare_training",
    "save_prepared",
    "sigmoid_head",
    "split_queries",
    "train_reranker",
]
