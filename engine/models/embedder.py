"""The bi-encoder: texts -> L2-normalised float32 vectors, in token-budget batches."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from duorank.model_folder import read_manifest
from duorank.validate import check_texts

from .registry import resolve
from .runtime import OnnxModel

log = logging.getLogger("duorank.models")


@dataclass(frozen=True, slots=True)
class Tokens:
    """Texts as the embedder's tokenizer cut them (`Embedder.tokenize`), ready for `Embedder.encode`: the
    side's prefix applied, which texts were cut at max_length, and tokens per text (special tokens
    included, as fed to the model)."""

    kind: str  # "query" or "document"
    encodings: list[Any]  # tokenizers.Encoding per text
    truncated: NDArray[np.bool_]  # (n,)
    lengths: NDArray[np.int64]  # (n,)

    def __len__(self) -> int:
        return len(self.encodings)

    @property
    def n_truncated(self) -> int:
        return int(self.truncated.sum())

    @property
    def total(self) -> int:
        """Tokens of all texts together (what an OpenAI-style `usage.prompt_tokens` counts)."""
        return int(self.lengths.sum())


class Embedder(OnnxModel):
    """A bi-encoder: texts -> float32 (n, dim) vectors, L2-normalised unless asked otherwise.

    Two stages, one call each: `tokenize(texts, kind=...)` -> `Tokens` (what was cut, token counts) and
    `encode(texts or Tokens)` -> vectors. `encode(texts)` tokenises itself; pass `Tokens` when the token
    counts matter too, so that the texts are tokenised once."""

    kind = "embedder"

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike[str] = "default",
        *,
        device: str = "cpu",
        variant: str | None = None,
        threads: int | None = None,
        batch_tokens: int | None = None,
        spin: bool = False,
        verify: bool = True,
    ) -> Embedder:
        """spin=True: onnxruntime's threads spin between nodes while a call runs (faster for one caller at a
        time, slower when calls overlap; docs/models.md, "Spinning")."""
        folder = resolve(name_or_path, cls.kind)
        return cls(
            folder,
            read_manifest(folder, verify=verify),
            device=device,
            variant=variant,
            threads=threads,
            batch_tokens=batch_tokens,
            spin=spin,
        )

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def tokenize(self, texts: str | Sequence[str], *, kind: str = "document") -> Tokens:
        """`texts` (a single string is one text) with the model's prefix for `kind` ("query" or
        "document"), tokenised and cut at max_length. Logs a warning when some were cut."""
        texts = check_texts([texts] if isinstance(texts, str) else texts)
        if kind not in ("query", "document"):
            raise ValueError(f"kind {kind!r}, expected 'query' or 'document'")
        prefix = self.manifest.get("prefixes", {}).get(kind, "")
        if prefix:
            texts = [prefix + t for t in texts]
        encodings = self.tokenizer.encode_batch(texts)
        n = len(encodings)
        truncated = np.fromiter((len(e.overflowing) > 0 for e in encodings), dtype=np.bool_, count=n)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=n)
        if truncated.any():
            log.warning("%d of %d texts were cut at %d tokens", int(truncated.sum()), n, self.max_length)
        return Tokens(kind, encodings, truncated, lengths)

    def encode(
        self,
        texts: str | Sequence[str] | Tokens,
        *,
        kind: str | None = None,
        normalize: bool = True,
        progress: bool | None = None,
    ) -> NDArray[np.float32]:
        """Vectors of `texts` in their order, float32 (n, dim); a single string gives one row, (1, dim), as
        sentence-transformers and fastembed users expect. kind "query" or "document" (the default) picks
        the model's prefix for that side (`encode_query`, `encode_document`); `Tokens` carry their own.
        A progress bar from 2,000 texts when stderr is a terminal (progress=True: always)."""
        if isinstance(texts, Tokens):
            if kind is not None and kind != texts.kind:
                raise ValueError(f"kind {kind!r}, but the tokens were made for kind {texts.kind!r}")
            tokens = texts
        else:
            tokens = self.tokenize(texts, kind=kind or "document")
        out = np.empty((len(tokens), self.dim), dtype=np.float32)
        pooling = self.manifest["pooling"]
        for rows, feeds in self._batches(tokens.encodings, progress, "embedding"):
            h = self._run(feeds)
            mask = feeds["attention_mask"] if "attention_mask" in feeds else (feeds["input_ids"] != 0)
            out[rows] = _pool(h, mask, pooling)
        if normalize and self.manifest.get("normalize", True):
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        return out

    def encode_query(
        self, texts: str | Sequence[str], *, progress: bool | None = None
    ) -> NDArray[np.float32]:
        """`encode(texts, kind="query")`: the model's query prefix, if it has one."""
        return self.encode(texts, kind="query", progress=progress)

    def encode_document(
        self, texts: str | Sequence[str], *, progress: bool | None = None
    ) -> NDArray[np.float32]:
        """`encode(texts, kind="document")`: the model's document prefix, if it has one."""
        return self.encode(texts, kind="document", progress=progress)


def _pool(h: NDArray[np.float32], mask: NDArray[np.int64], pooling: str) -> NDArray[np.float32]:
    if h.ndim == 2 or pooling == "none":
        return h
    if pooling == "cls":
        return h[:, 0]
    if pooling == "last":
        return h[np.arange(len(h)), mask.sum(axis=1) - 1]
    m = mask.astype(np.float32)[:, :, None]
    return (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
