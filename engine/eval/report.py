"""Reports of a retrieval run: JSON (every per-query value and the configuration), Markdown, PNG plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_LABELS = {"ndcg": "nDCG", "mrr": "MRR", "map": "MAP", "recall": "R", "precision": "P", "hit_rate": "Hit"}


def _label(metric: str) -> str:
    base, k = metric.split("@")
    return f"{_LABELS.get(base, base)}@{k}"


def markdown(report: Any) -> str:
    """One row per system: metrics (x100), latency p50/p99 per stage, throughput; * = significant vs dense."""
    metrics = report.config["metrics"]
    primary = f"ndcg@{report.config['top_n']}"
    sig = {c.system: c for c in report.comparisons if c.baseline == "dense"}
    head = [
        "system",
        *map(_label, metrics),
        "pair acc",
        "embed ms",
        "search ms",
        "rerank ms",
        "total p50/p99 ms",
        "q/s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in report.systems:
        cells = [s.name]
        for m in metrics:
            v = f"{100 * s.result.mean[m]:.2f}"
            c = sig.get(s.name)
            if m == primary and c is not None and c.significant:
                v += "*"
            cells.append(v)
        cells.append(f"{100 * s.pairwise_accuracy:.2f}" if s.pairwise_accuracy is not None else "-")
        lat = s.latency_ms
        for stage in ("embed", "search", "rerank"):
            cells.append(f"{lat[stage]['p50']:.1f}" if stage in lat else "-")
        tot = lat.get("total")
        cells.append(f"{tot['p50']:.1f} / {tot['p99']:.1f}" if tot else "-")
        cells.append(f"{s.queries_per_s:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"{report.dataset} ({report.split}, {len(report.systems[0].result.per_query[primary])} queries), "
        f"top_k {report.config['top_k']}. Latency: one query at a time over "
        f"{report.config['latency_queries']} queries; q/s: all queries batched."
    )
    for name, s in (report.config.get("rerank") or {}).items():
        scale = ", scaled per list by the adaptive weight" if s["adaptive"] else ""
        budget = f" (the deepest that fit a budget of {s['budget_ms']} ms)" if s.get("budget_ms") else ""
        lines.append(
            f"{name}: the reranker read the top {s['depth']}{budget}, blend weight {s['blend']}{scale}."
        )
    for baseline in dict.fromkeys(c.baseline for c in report.comparisons):
        against = [c for c in report.comparisons if c.baseline == baseline]
        lines.append(
            (
                f"`*`: {_label(primary)} differs from dense with Holm-corrected p < 0.05 "
                "(paired randomization test, 10,000 resamples). "
                if baseline == "dense"
                else f"Against {baseline} (Holm-corrected over these): "
            )
            + "; ".join(
                f"{c.system}: {100 * c.mean_diff:+.2f} "
                f"[{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}], p={c.p_holm:.3g}"
                for c in against
            )
        )
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def save(report: Any, folder: str | Path, *, plots: bool = True) -> list[Path]:
    """Write report.json and report.md (and, with matplotlib, ndcg_at_k.png and quality_latency.png)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "report.json", folder / "report.md"]
    _atomic_write(written[0], json.dumps(report.to_dict(), indent=1, sort_keys=True))
    _atomic_write(written[1], markdown(report))
    if plots:
        written += plot(report, folder)
    return written


def plot(report: Any, folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import logging

        logging.getLogger("duorank.eval").warning('plots skipped: pip install "duorank[plot]" for matplotlib')
        return []
    out = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in report.systems:
        ks = [int(m.split("@")[1]) for m in s.curve]
        ax.plot(ks, [100 * v for v in s.curve.values()], marker="o", label=s.name)
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("nDCG@k")
    ax.set_title(f"{report.dataset}: nDCG@k")
    ax.legend()
    fig.tight_layout()
    out.append(folder / "ndcg_at_k.png")
    fig.savefig(out[-1], dpi=120)
    plt.close(fig)
    primary = f"ndcg@{report.config['top_n']}"
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in report.systems:
        ax.scatter(s.latency_ms["total"]["p50"], 100 * s.result.mean[primary])
        ax.annotate(s.name, (s.latency_ms["total"]["p50"], 100 * s.result.mean[primary]))
    ax.set_xscale("log")
    ax.set_xlabel("latency per query, p50 (ms)")
    ax.set_ylabel(_label(primary))
    ax.set_title(f"{report.dataset}: quality vs latency")
    fig.tight_layout()
    out.append(folder / "quality_latency.png")
    fig.savefig(out[-1], dpi=120)
    plt.close(fig)
    return out
