"""BM25 over text without spaces: the analyzers (duorank.analyzers) and their place in a collection."""
# ruff: noqa: RUF001  (full-width letters and CJK punctuation are what these tests are about)

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from duorank import Collection
from duorank.analyzers import STANDARD, bigrams, cjk_terms, fold_width, splitter

DOCS = {
    "zh-1": "北京大学是中国著名的高等学府，位于北京市海淀区。",
    "zh-2": "上海是中国最大的经济中心，拥有繁忙的港口。",
    "zh-3": "机器学习是人工智能的一个分支，研究计算机如何学习。",
    "mix": "我们使用 Python 和 PyTorch 训练深度学习模型。",
    "ja": "東京タワーは東京都港区にある電波塔です。",
    "ko": "서울은 대한민국의 수도이며 가장 큰 도시입니다.",
    "en": "The password can be reset from the account security page.",
    "wide": "ＵＰＤＡＴＥ　ＹＯＵＲ　ＥＭＡＩＬ with ａｂｃ１２３",
}


def _collection(path: Path, analyzer: str | None = None, bm25: object = True) -> Collection:
    coll = Collection.create(path, dim=4, bm25=bm25, analyzer=analyzer)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    coll.add(rng.normal(size=(len(DOCS), 4)).astype(np.float32), list(DOCS.values()), list(DOCS))
    coll.save()
    return coll


def _top(coll: Collection, query: str) -> list[str]:
    return coll.search(query, 3).external_ids[0]


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("北京大学", "zh-1"),  # a phrase inside a sentence without spaces
        ("中国的港口", "zh-2"),
        ("人工智能", "zh-3"),
        ("深度学习 PyTorch", "mix"),  # mixed Chinese and English
        ("pytorch", "mix"),
        ("東京タワー", "ja"),  # Han + Katakana
        ("대한민국 수도", "ko"),  # Hangul
        ("reset password", "en"),
        ("ａｂｃ１２３", "wide"),  # full-width Latin and digits fold to ASCII
        ("update email", "wide"),
        ("abc123", "wide"),
    ],
)
def test_a_cjk_query_finds_the_document_holding_its_phrase(tmp_path: Path, query: str, want: str) -> None:
    with _collection(tmp_path / "c") as coll:
        assert _top(coll, query)[0] == want


def test_the_standard_analyzer_cannot_match_inside_chinese_text(tmp_path: Path) -> None:
    """What collections without an analyzer did: a Chinese sentence is one term, so no query matches."""
    with _collection(tmp_path / "c", "standard") as coll:
        assert _top(coll, "北京大学") == []


def test_the_analyzer_survives_save_and_open_and_rebuilds(tmp_path: Path) -> None:
    _collection(tmp_path / "c", "cjk").close()
    with Collection.open(tmp_path / "c", "a") as coll:
        assert coll.manifest["bm25"]["analyzer"] == "cjk"
        assert _top(coll, "人工智能")[0] == "zh-3"
        coll.add(np.ones((1, 4), np.float32), ["广州是一座历史悠久的城市。"], ["zh-4"])
        coll.save()  # BM25 rebuilt with the recorded analyzer
    with Collection.open(tmp_path / "c") as coll:
        assert _top(coll, "广州")[0] == "zh-4"


def test_an_old_collection_keeps_the_analyzer_it_was_built_with(tmp_path: Path) -> None:
    """A collection made before analyzers (no "analyzer" in its manifest or BM25 file) stays "standard",
    also when an add rebuilds its BM25."""
    _collection(tmp_path / "c", "standard").close()
    man = json.loads((tmp_path / "c" / "collection.json").read_text())
    del man["bm25"]["analyzer"]
    (tmp_path / "c" / "collection.json").write_text(json.dumps(man))
    with Collection.open(tmp_path / "c", "a", verify=False) as coll:
        assert coll.manifest["bm25"]["analyzer"] == "standard"
        coll.add(np.ones((1, 4), np.float32), ["广州是一座城市"], ["zh-4"])
        coll.save()
    with Collection.open(tmp_path / "c") as coll:
        assert _top(coll, "广州") == []
        assert _top(coll, "reset password")[0] == "en"


def test_bad_analyzer_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="analyzer 'klingon', expected one of"):
        Collection.create(tmp_path / "a", dim=4, bm25=True, analyzer="klingon")
    with pytest.raises(ValueError, match="without BM25"):
        Collection.create(tmp_path / "b", dim=4, analyzer="cjk")


def test_jieba_cuts_chinese_into_words(tmp_path: Path) -> None:
    pytest.importorskip("rjieba", reason="the jieba analyzer needs the [chinese] extra (rjieba)")
    split = splitter("jieba")
    assert callable(split)
    terms = split("我们在北京大学学习自然语言处理, and ｶﾀｶﾅ")
    assert "北京大学" in terms and "学习" in terms and "and" in terms and "カタ" in terms
    with _collection(tmp_path / "c", "jieba") as coll:
        assert coll.manifest["bm25"]["analyzer"] == "jieba"
        assert _top(coll, "北京大学")[0] == "zh-1"
        assert _top(coll, "上海港口")[0] == "zh-2"


def test_terms_of_each_script() -> None:
    assert cjk_terms("北京大学") == ["北京", "京大", "大学"]
    assert cjk_terms("我 love 北京") == ["我", "love", "北京"]  # a lone character is its own term
    assert cjk_terms("abc中文def") == ["abc", "中文", "def"]  # script changes split words
    assert cjk_terms("ﾃｽﾄ") == ["テス", "スト"]  # half-width Katakana folds to full-width
    assert cjk_terms("한국어") == ["한국", "국어"]
    assert fold_width("ＡＢＣ　１２３") == "ABC 123"
    assert fold_width("ﬁ²") == "ﬁ²"  # width folding only: other compatibility forms are left alone
    assert bigrams("") == [""] and bigrams("中") == ["中"]


@given(st.text(alphabet=st.characters(codec="latin-1"), max_size=80))
def test_cjk_equals_standard_on_text_without_cjk(text: str) -> None:
    """On Latin text the default analyzer's terms are the standard one's (SciFact's BM25 is unchanged)."""
    lowered = text.lower()
    assert cjk_terms(lowered) == re.findall(STANDARD, lowered)
