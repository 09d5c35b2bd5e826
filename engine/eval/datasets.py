"""BEIR-layout datasets: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`, from a folder or a `.zip`.

Every line is checked: a malformed line, a missing `_id` or `text`, a duplicate id, or a qrels row naming
an unknown query or document raises DatasetError naming the file and the line number.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from duorank.errors import DuorankError


class DatasetError(DuorankError, ValueError):
    """A dataset file is missing or malformed; the message names the file and the line."""


@dataclass(frozen=True)
class Dataset:
    name: str
    corpus: dict[str, str]  # doc id -> "title text" (title first, as BEIR's dense evaluation joins them)
    titles: dict[str, str]
    queries: dict[str, str]  # only the queries judged in this split
    qrels: dict[str, dict[str, int]]
    split: str
    ignore_identical_ids: bool = False  # ArguAna / Quora: a hit whose doc id equals the query id is dropped

    def doc_ids(self) -> list[str]:
        return list(self.corpus)


class _Source:
    """Files of a BEIR folder or zip (the zip may hold the files under one top folder, as BEIR's zips do)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.prefix = PurePosixPath()
        if path.is_file() and zipfile.is_zipfile(path):
            self.zip = zipfile.ZipFile(path)
            names = self.zip.namelist()
            hits = [n for n in names if n.endswith("corpus.jsonl")]
            if not hits:
                raise DatasetError(f"{path}: no corpus.jsonl inside the zip")
            self.prefix = PurePosixPath(hits[0]).parent
        elif not path.is_dir():
            raise DatasetError(f"{path}: not a BEIR folder or zip")

    def label(self, rel: str) -> str:
        return f"{self.path}!{self.prefix / rel}" if self.zip else str(self.path / rel)

    def open(self, rel: str) -> IO[str]:
        try:
            if self.zip is not None:
                raw = self.zip.open(str(self.prefix / rel))
                return io.TextIOWrapper(raw, encoding="utf-8", newline=None)
            return open(
                self.path / rel, encoding="utf-8", newline=None
            )  # newline=None: CRLF files read the same
        except (FileNotFoundError, KeyError):
            raise DatasetError(f"{self.label(rel)}: missing") from None


def _jsonl(src: _Source, rel: str) -> Iterator[tuple[int, dict[str, object]]]:
    with src.open(rel) as f:
        for n, obj in json_objects(f, src.label(rel)):
            if not isinstance(obj.get("_id"), (str, int)):
                raise DatasetError(f"{src.label(rel)}:{n}: expected an object with an '_id'")
            yield n, obj


def json_objects(lines: Iterable[str], label: str) -> Iterator[tuple[int, dict[str, object]]]:
    """(line number, JSON object) of each non-blank line; errors name the file and the line."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{label}:{n}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DatasetError(f"{label}:{n}: expected a JSON object")
        yield n, obj


def load_beir(
    path: str | Path, split: str = "test", *, ignore_identical_ids: bool = False, name: str | None = None
) -> Dataset:
    """Load and validate a BEIR dataset (folder or zip). Queries are restricted to those judged in `split`."""
    path = Path(path).expanduser()
    src = _Source(path)
    corpus: dict[str, str] = {}
    titles: dict[str, str] = {}
    for n, obj in _jsonl(src, "corpus.jsonl"):
        did = str(obj["_id"])
        if did in corpus:
            raise DatasetError(f"{src.label('corpus.jsonl')}:{n}: duplicate doc id {did!r}")
        text, title = obj.get("text"), obj.get("title") or ""
        if not isinstance(text, str) or not isinstance(title, str):
            raise DatasetError(f"{src.label('corpus.jsonl')}:{n}: 'text' and 'title' must be strings")
        titles[did] = title
        corpus[did] = f"{title} {text}".strip() if title else text
    all_queries: dict[str, str] = {}
    for n, obj in _jsonl(src, "queries.jsonl"):
        qid = str(obj["_id"])
        if qid in all_queries:
            raise DatasetError(f"{src.label('queries.jsonl')}:{n}: duplicate query id {qid!r}")
        if not isinstance(obj.get("text"), str):
            raise DatasetError(f"{src.label('queries.jsonl')}:{n}: 'text' must be a string")
        all_queries[qid] = str(obj["text"])
    qrels: dict[str, dict[str, int]] = {}
    rel = f"qrels/{split}.tsv"
    with src.open(rel) as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and parts[0].lower() in ("query-id", "qid", "query_id"):
                continue
            if not line.strip():
                continue
            if len(parts) != 3:
                raise DatasetError(f"{src.label(rel)}:{n}: expected 3 tab-separated fields, got {len(parts)}")
            qid, did, grade = parts
            try:
                g = int(grade)
            except ValueError:
                raise DatasetError(f"{src.label(rel)}:{n}: grade {grade!r} is not an integer") from None
            if qid not in all_queries:
                raise DatasetError(f"{src.label(rel)}:{n}: unknown query id {qid!r}")
            if did not in corpus:
                raise DatasetError(f"{src.label(rel)}:{n}: unknown doc id {did!r}")
            qrels.setdefault(qid, {})[did] = g
    if not qrels:
        raise DatasetError(f"{src.label(rel)}: no judgements")
    queries = {q: all_queries[q] for q in qrels}
    return Dataset(name or path.stem, corpus, titles, queries, qrels, split, ignore_identical_ids)


def load_stsb(path: str | Path, split: str = "test") -> tuple[list[str], list[str], list[float]]:
    """STS Benchmark pairs of one split from `stsb.jsonl` (fields split, score, sentence1, sentence2)."""
    path = Path(path).expanduser()
    file = path / "stsb.jsonl" if path.is_dir() else path
    s1: list[str] = []
    s2: list[str] = []
    gold: list[float] = []
    for n, obj in _jsonl_plain(file):
        if obj.get("split") != split:
            continue
        try:
            s1.append(str(obj["sentence1"]))
            s2.append(str(obj["sentence2"]))
            gold.append(float(obj["score"]))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{file}:{n}: expected sentence1, sentence2 and a numeric score") from None
    if not s1:
        raise DatasetError(f"{file}: no rows of split {split!r}")
    return s1, s2, gold


def load_labelled(path: str | Path, split: str) -> tuple[list[str], list[str]]:
    """Texts and labels of one split from a jsonl with fields split, label, text (e.g. Banking77)."""
    file = Path(path).expanduser()
    if file.is_dir():
        found = sorted(file.glob("*.jsonl"))
        if len(found) != 1:
            raise DatasetError(f"{file}: expected exactly one .jsonl file, found {len(found)}")
        file = found[0]
    texts, labels = [], []
    for n, obj in _jsonl_plain(file):
        if obj.get("split") != split:
            continue
        if not isinstance(obj.get("text"), str) or "label" not in obj:
            raise DatasetError(f"{file}:{n}: expected a string 'text' and a 'label'")
        texts.append(str(obj["text"]))
        labels.append(str(obj["label"]))
    if not texts:
        raise DatasetError(f"{file}: no rows of split {split!r}")
    return texts, labels


def _jsonl_plain(file: Path) -> Iterator[tuple[int, dict[str, object]]]:
    try:
        f = open(file, encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{file}: missing") from None
    with f:
        yield from json_objects(f, str(file))


BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


def get(name: str, *, url: str | None = None, folder: str | Path | None = None) -> Path:
    """The BEIR zip of dataset `name` in the cache ($DUORANK_HOME/datasets), downloaded first if absent.

    `url` overrides the public BEIR location (any urllib URL, file:// included). The download goes to a
    temporary file that is checked (a valid BEIR zip with test qrels) before it is renamed into place.
    """
    import shutil
    import urllib.request

    from duorank.model_folder import home

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"dataset name {name!r}: expected a BEIR name such as 'scifact'")
    dest_dir = Path(folder).expanduser() if folder else home() / "datasets"
    dest = dest_dir / f"{name}.zip"
    if dest.is_file():
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".{name}.zip.part"
    source = url or BEIR_URL.format(name=name)
    try:
        with urllib.request.urlopen(source, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"could not download {source}: {e}") from e
    try:
        load_beir(tmp)  # validates the whole dataset
    except DatasetError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest
