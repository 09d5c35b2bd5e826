"""Text analyzers for BM25: how a text (already lowercased) becomes the terms BM25 counts.

- "standard": words of two or more word characters (bm25s's own splitter); a run of Chinese, Japanese
  or Korean text without spaces is one term, so BM25 cannot match a part of it. What collections made
  before analyzers existed were built with, and keep.
- "cjk" (the default for new collections, dependency-free): as Lucene's CJKAnalyzer and Elasticsearch's
  `cjk` analyzer: width folding (full-width Latin and digits to ASCII, half-width Katakana to full-width),
  then each run of Han, Hiragana, Katakana or Hangul becomes its overlapping character bigrams (a lone
  character: itself), and everything else is split as "standard" does. On text without CJK characters
  its terms equal "standard"'s.
- "jieba": Chinese runs cut into words by jieba's dictionary (`rjieba`, the [chinese] extra), Japanese
  and Korean runs as "cjk" bigrams, the rest as "standard".

English stemming and stopwords apply after the split, to every analyzer (they leave CJK terms alone).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

ANALYZERS = ("standard", "cjk", "jieba")
DEFAULT = "cjk"
STANDARD = r"(?u)\b\w\w+\b"  # bm25s's splitter

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_KANA = "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff"
_HANGUL = "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"
_CJK = _HAN + _KANA + _HANGUL
_SPLIT = re.compile(f"([{_CJK}]+)|([^\\W{_CJK}]{{2,}})")
_HAN_RUN = re.compile(f"[{_HAN}]+")
_WIDE = re.compile("[\u3000\uff01-\uffef]+")


def check(analyzer: str) -> str:
    """ValueError naming the value unless `analyzer` is one of ANALYZERS."""
    if analyzer not in ANALYZERS:
        raise ValueError(f"analyzer {analyzer!r}, expected one of {ANALYZERS}")
    return analyzer


def splitter(analyzer: str) -> str | Callable[[str], list[str]]:
    """What bm25s's Tokenizer takes as `splitter` for this analyzer (a regex or a function)."""
    if check(analyzer) == "standard":
        return STANDARD
    if analyzer == "cjk":
        return cjk_terms
    try:
        import rjieba
    except ImportError as e:
        raise ImportError('the "jieba" analyzer needs rjieba: pip install "duorank[chinese]"') from e
    return lambda text: _terms(text, lambda run: _jieba(rjieba, run))


def fold_width(text: str) -> str:
    """Full-width ASCII and the ideographic space to ASCII, half-width Katakana to full-width (NFKC on
    the Halfwidth and Fullwidth Forms block only: other characters are left as they are)."""
    if not _WIDE.search(text):
        return text
    return _WIDE.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)


def bigrams(run: str) -> list[str]:
    """Overlapping character bigrams of a CJK run; a lone character is its own term."""
    return [run] if len(run) < 2 else [run[i : i + 2] for i in range(len(run) - 1)]


def cjk_terms(text: str) -> list[str]:
    """The "cjk" analyzer's terms of a lowercased text."""
    return _terms(text, bigrams)


def _terms(text: str, cut: Callable[[str], list[str]]) -> list[str]:
    out: list[str] = []
    for m in _SPLIT.finditer(fold_width(text).lower()):
        run, word = m.group(1), m.group(2)
        out.extend(cut(run) if run else [word])
    return out


def _jieba(rjieba: object, run: str) -> list[str]:
    """A CJK run: its Chinese parts cut into words (single characters kept: many are words), its kana and
    Hangul parts as bigrams."""
    out: list[str] = []
    pos = 0
    for m in _HAN_RUN.finditer(run):
        out.extend(bigrams(run[pos : m.start()]) if m.start() > pos else [])
        out.extend(w for w in rjieba.cut(m.group()) if w.strip())  # type: ignore[attr-defined]
        pos = m.end()
    if pos < len(run):
        out.extend(bigrams(run[pos:]))
    return out
