"""What a Hugging Face / sentence-transformers folder says: kind, pooling, length, prefixes, head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
}


def _json(path: Path) -> dict[str, Any]:
    obj = _json_any(path)
    return obj if isinstance(obj, dict) else {}


def _json_any(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def detect_kind(folder: Path) -> str:
    archs = _json(folder / "config.json").get("architectures") or []
    return "reranker" if any(a.endswith("ForSequenceClassification") for a in archs) else "embedder"


def describe(folder: Path, kind: str) -> dict[str, Any]:
    """Manifest fields read from the folder's config files (docs/format.md, "Model folder")."""
    folder = Path(folder)
    cfg = _json(folder / "config.json")
    if not cfg:
        raise FileNotFoundError(
            f"{folder / 'config.json'}: missing; SOURCE must be a Hugging Face model folder"
        )
    st = _json(folder / "sentence_bert_config.json")
    limit = int(cfg.get("max_position_embeddings", 512))
    if cfg.get("model_type") in ("xlm-roberta", "roberta", "camembert"):  # positions start after padding
        limit -= int(cfg.get("pad_token_id", 1)) + 1
    max_length = min(int(st.get("max_seq_length") or limit), limit)
    out: dict[str, Any] = {"kind": kind, "max_length": max_length, "model_type": cfg.get("model_type")}
    if kind == "embedder":
        modules: Any = _json_any(folder / "modules.json") or []
        pooling, normalize = "mean", True
        for mod in modules if isinstance(modules, list) else []:
            if mod.get("type", "").endswith("Pooling"):
                pcfg = _json(folder / mod.get("path", "") / "config.json")
                chosen = [v for k, v in _POOLING_KEYS.items() if pcfg.get(k)]
                others = [
                    k
                    for k, v in pcfg.items()
                    if k.startswith("pooling_mode") and v and k not in _POOLING_KEYS
                ]
                if others or len(chosen) != 1:
                    raise ValueError(
                        f"{folder / mod.get('path', '')}: pooling {pcfg}; duorank runs one of mean, cls, last"
                    )
                pooling = chosen[0]
        if modules:
            normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        prompts = _json(folder / "config_sentence_transformers.json").get("prompts") or {}
        out.update(
            pooling=pooling,
            normalize=normalize,
            prefixes={
                "query": prompts.get("query", ""),
                "document": prompts.get("document", prompts.get("passage", "")),
            },
        )
    else:
        num_labels = len(cfg.get("id2label") or {0: "LABEL_0"})
        st_cfg = cfg.get("sentence_transformers") or {}
        act = str(st_cfg.get("activation_fn", "Sigmoid" if num_labels == 1 else "Identity")).rsplit(".", 1)[
            -1
        ]
        activation = {"Sigmoid": "sigmoid", "Identity": "identity", "Softmax": "softmax"}.get(act)
        if activation is None:
            raise ValueError(
                f"{folder / 'config.json'}: activation {act!r}; expected Sigmoid, Identity or Softmax"
            )
        out.update(num_labels=num_labels, activation=activation, pooling="none", normalize=False)
    return out


def fixed_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    """The folder's tokenizer with truncation at the model's max_length and no fixed padding.

    Shipped tokenizer.json files often carry a training-time setting (all-MiniLM-L6-v2: truncation 128 and
    padding to 128 while the model reads 256); the runtime pads each batch to its own longest sequence.
    """
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    elif (folder / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        lower = _json(folder / "tokenizer_config.json").get("do_lower_case", True)
        tok = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=bool(lower))._tokenizer
    else:
        raise FileNotFoundError(f"{folder}: no tokenizer.json or vocab.txt")
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok
