"""The `duorank` command: demo, index, search, info, bench; exit codes 0 ok / 1 error / 2 usage."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from duorank.cli import main
from duorank.models_export import export
from tests.tiny_bert import tiny_bert_folder

DOCS = [
    {
        "id": "pw",
        "text": "To reset your password, open Settings and choose Security.",
        "metadata": {"topic": "account"},
    },
    {
        "id": "bill",
        "text": "Invoices are sent on the first day of each month.",
        "metadata": {"topic": "billing"},
    },
    {
        "id": "ship",
        "text": "Parcels ship within two business days by courier.",
        "metadata": {"topic": "orders"},
    },
    {
        "id": "ret",
        "text": "You may return an item within 30 days for a refund.",
        "metadata": {"topic": "orders"},
    },
    {
        "id": "2fa",
        "text": "Two-factor authentication adds a code sent to your phone.",
        "metadata": {"topic": "account"},
    },
]


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duorank.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def kb(tmp_path, default_embedder):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    assert main(["index", str(tmp_path / "kb"), str(src), "--json"]) == 0
    return tmp_path / "kb"


def test_index_search_info(kb, tmp_path, capsys):
    capsys.readouterr()
    assert main(["search", str(kb), "how do I change my password", "--top-n", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    hits = out["queries"][0]["hits"]
    assert hits[0]["id"] == "pw" and len(hits) == 2
    assert set(out["timings_ms"]) == {"embed", "search", "fetch", "rerank", "total"}
    assert hits[0]["rerank_score"] is None  # no reranker in this collection: nothing reranked
    assert main(["search", str(kb), "password", "--top-n", "1", "--rerank", "embedding"]) == 0
    assert ", reranker 0." in capsys.readouterr().out
    assert main(["search", str(kb), "password", "--top-n", "1", "--rerank", "embedding", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)["queries"][0]["hits"][0]
    assert hit["rerank_score"] == hit["score"]  # the cosine, not blended
    where = json.dumps({"topic": "orders"})
    assert main(["search", str(kb), "refund", "--where", where, "--recall", "hybrid", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["queries"][0]["hits"]
    assert {h["id"] for h in hits} == {"ship", "ret"}
    assert main(["search", str(kb), "phone code", "parcel", "--top-n", "1"]) == 0
    text = capsys.readouterr().out
    assert "# phone code" in text and "\t2fa\t" in text and "\tship\t" in text
    assert main(["info", str(kb), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 5 and info["bm25"] and info["engine"]["embedder"] == "default"
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Notes about gardening and tomatoes.")
    (folder / "sub" / "b.md").write_text("# Cooking\nHow to bake bread at home.")
    assert main(["index", str(kb), str(folder)]) == 0
    assert "added 2 documents" in capsys.readouterr().out
    assert main(["search", str(kb), "baking bread", "--top-n", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queries"][0]["hits"][0]["id"] == "sub/b.md"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "{kb}", "   "], "empty query"),
        (["search", "{kb}", "x", "--top-n", "9", "--top-k", "3"], "--top-n 9 > --top-k 3"),
        (["search", "{kb}", "x", "--where", "{lang: en}"], "--where is not valid JSON"),
        (["search", "{kb}", "x", "--where", '{"lang": {"like": "e"}}'], "unknown operator"),
        (["search", "{kb}", "x", "--top-k", "0"], "--top-k must be >= 1"),
        (["search", "{kb}"], "required"),
        (["frobnicate"], "invalid choice"),
        (["models", "prepare-training", "--data", "d", "--out", "set.json"], "ending in .json.gz"),
        (["models", "train-reranker", "--data", "a.json.gz", "--data", "b", "--out", "o"], "goes alone"),
        (["models", "train-reranker", "--data", "d", "--out", "o", "--device", "tpu"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(kb, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main([a.replace("{kb}", str(kb)) for a in args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_errors_exit_1(kb, tmp_path, caplog):
    assert main(["search", str(tmp_path / "missing"), "x"]) == 1
    assert "not a duorank collection" in caplog.text
    other = export(tiny_bert_folder(tmp_path / "hf", kind="embedder"), tmp_path / "tiny", backend="numpy")
    assert main(["search", str(kb), "x", "--model", str(other)]) == 1
    assert "384-d vectors" in caplog.text
    assert main(["search", str(kb), "x", "--rerank", "cross"]) == 1
    assert "needs a reranker" in caplog.text
    assert main(["index", str(kb), str(tmp_path / "nothing-here")]) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "pw", "text": "again"}\n')
    assert main(["index", str(kb), str(bad)]) == 1
    assert "already in the store" in caplog.text
    assert main(["info", str(kb), "--json"]) == 0  # nothing of the failed index landed


def test_ctrl_c_during_index_keeps_the_collection(kb, tmp_path):
    big = tmp_path / "big.jsonl"
    with big.open("w") as f:
        for i in range(3000):
            f.write(
                json.dumps({"id": f"d{i}", "text": f"Document {i}. " + "Some words about things. " * 30})
                + "\n"
            )
    proc = subprocess.Popen(
        [sys.executable, "-m", "duorank.cli", "index", str(kb), str(big)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
        # a shell running this suite in the background (CI's `cmd &`) starts it with SIGINT ignored,
        # which a child inherits: give the CLI the terminal's default, as when a user presses Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (kb / "docs-writer.sqlite").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the writer opened the collection: imports and model load are done
    time.sleep(1.5)  # embedding under way (3000 documents take minutes)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    res = _run("info", str(kb), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["count"] == 5


def test_demo_in_a_subprocess(default_embedder):
    res = _run("demo", "--max-documents", "12", "--top-n", "2", "what does the assert statement do?")
    assert res.returncode == 0, res.stderr
    assert "Q: what does the assert statement do?" in res.stdout
    assert "rank before rerank" in res.stdout and "timings" in res.stdout
    assert "building the demo knowledge base" in res.stderr
    again = _run("demo", "--max-documents", "12", "--json", "assert")
    assert again.returncode == 0 and "building" not in again.stderr  # cached
    assert json.loads(again.stdout)["queries"][0]["hits"]


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand of the parser, as the words that name it."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*path, name))
                found += _commands(sub, (*path, name))
    return found


def test_help_on_every_command():
    from duorank.cli import build_parser

    commands = _commands(build_parser())
    assert ("index",) in commands and ("models", "export") in commands and ("eval", "retrieval") in commands
    for cmd in commands:
        res = _run(*cmd, "--help", timeout=60)
        assert res.returncode == 0 and "example" in res.stdout, cmd


def test_the_collection_comes_first(kb, capsys):
    """`index DIR SOURCE...`, `search DIR QUERY...`, `info DIR`: the folder is the first word everywhere."""
    from duorank.cli import build_parser

    for cmd in ("index", "search", "info"):
        sub = build_parser().parse_args([cmd, "kb/", "x"] if cmd != "info" else [cmd, "kb/"])
        assert sub.collection == "kb/", cmd
    with pytest.raises(SystemExit) as exit_:
        main(["index", str(kb), "docs.jsonl", "--collection", str(kb)])
    assert exit_.value.code == 2 and "--collection" in capsys.readouterr().err


def test_index_skips_empty_documents_and_counts_them(tmp_path, default_embedder, capsys, caplog):
    """Real corpora hold empty documents: bulk ingest skips them with a warning naming them, reports the
    count, and fails only with --strict (leaving the collection as it was); the library's add still
    refuses them."""
    docs = [*DOCS[:2], {"id": "blank", "text": "  \n "}, {"id": "none", "text": ""}]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps(DOCS[2]) + "\n")
    kb = tmp_path / "kb"
    capsys.readouterr()
    assert main(["index", str(kb), str(src), str(more), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["documents"] == 3 and report["skipped_empty"] == 2 and report["total"] == 3
    assert "skipped 2 empty documents (ids 'blank', 'none')" in caplog.text
    assert main(["index", str(kb), str(src), "--strict"]) == 1
    assert "2 empty documents (ids 'blank', 'none'); --strict refuses them" in caplog.text
    assert main(["info", str(kb), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 3
    only_empty = tmp_path / "empty.jsonl"
    only_empty.write_text(json.dumps({"id": "e", "text": " "}) + "\n")
    assert main(["index", str(kb), str(only_empty)]) == 1
    assert "every document of" in caplog.text
    import duorank

    with (
        duorank.Engine.open(kb, "a") as eng,
        pytest.raises(ValueError, match=r"texts\[0\] \(id 'e'\) is empty"),
    ):
        eng.add([" "], ["e"])


def test_bench_prints_rates(default_embedder):
    res = _run("bench", "--documents", "20", "--queries", "5", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["documents"] == 20 and out["ingest_docs_per_s"] > 0
    assert set(out["query_p50_ms"]) == {"embed", "search", "fetch", "rerank", "total"}
    assert out["machine"]["cores"] >= 1 and out["machine"]["isa"]
