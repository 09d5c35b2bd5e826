"""Chunking by tokens: long documents become overlapping windows the embedder reads whole.

Each chunk is an exact substring of its document (cut at token boundaries, by the tokenizer's character
offsets), so what a user sees is what was embedded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PARENT, CHUNK = "_parent", "_chunk"  # metadata keys of chunks: the document's id, the chunk's number


@dataclass(frozen=True, slots=True)
class Chunk:
    parent: int  # position of the document in the input
    number: int  # 0, 1, ... within the document
    text: str
    start: int  # character offsets in the document
    end: int


def chunk_texts(texts: Sequence[str], tokenizer: Any, *, max_tokens: int, overlap: int = 0) -> list[Chunk]:
    """Split each text into windows of at most max_tokens tokens, consecutive windows sharing `overlap`.

    tokenizer: a HuggingFace `tokenizers.Tokenizer` (its truncation and padding are not used here). A text
    that fits in one window is one chunk, itself.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens {max_tokens!r}, expected an int >= 1")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < max_tokens:
        raise ValueError(f"overlap {overlap!r}, expected an int in [0, max_tokens={max_tokens})")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    out: list[Chunk] = []
    for p, (text, enc) in enumerate(zip(texts, tok.encode_batch(list(texts), add_special_tokens=False))):
        offsets = enc.offsets
        if len(offsets) <= max_tokens:
            out.append(Chunk(p, 0, text, 0, len(text)))
            continue
        words, n = enc.word_ids, len(offsets)

        def inside(i: int, words: list[int | None] = words) -> bool:  # token i continues token i-1's word
            return words[i] is not None and words[i] == words[i - 1]

        first, number = 0, 0
        while True:
            last = min(first + max_tokens, n) - 1
            end_at = last
            while end_at > first and end_at + 1 < n and inside(end_at + 1):
                end_at -= 1  # end on a word boundary when the window holds more than one word
            last = end_at if end_at > first else last
            out.append(
                Chunk(
                    p, number, text[offsets[first][0] : offsets[last][1]], offsets[first][0], offsets[last][1]
                )
            )
            if last == n - 1:
                break
            nxt = max(last + 1 - overlap, first + 1)
            while nxt > first + 1 and inside(nxt):
                nxt -= 1  # start on a word boundary
            first, number = nxt, number + 1
    return out


def document_chunks(
    texts: Sequence[str],
    ids: Sequence[str],
    metadata: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    *,
    max_tokens: int | None,
    overlap: int = 0,
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """What a collection stores for these documents: their chunks' texts, ids and metadata. A document cut
    in several chunks gives ids "<id>#0", "<id>#1", ... and each chunk's metadata names its document
    (PARENT) and number (CHUNK); max_tokens None: the documents themselves, unchanged."""
    if max_tokens is None:
        return list(texts), list(ids), [dict(m) for m in metadata]
    chunks = chunk_texts(texts, tokenizer, max_tokens=max_tokens, overlap=overlap)
    many = np.bincount([c.parent for c in chunks], minlength=len(texts)) > 1
    return (
        [c.text for c in chunks],
        [ids[c.parent] + (f"#{c.number}" if many[c.parent] else "") for c in chunks],
        [{**metadata[c.parent], PARENT: ids[c.parent], CHUNK: c.number} for c in chunks],
    )
