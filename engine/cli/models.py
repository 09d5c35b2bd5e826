"""`duorank models`: list, export, quantize, choose-blend, prepare-training, train-reranker."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from .options import preparation, split_options

log = logging.getLogger("duorank.cli")

EXPORT_EXAMPLES = """examples:
  duorank models export ./all-MiniLM-L6-v2 ./minilm-onnx
  duorank models export ./my-cross-encoder ./reranker --kind reranker --fp16
  duorank models export sentence-transformers/all-MiniLM-L6-v2 ./out --backend optimum   (online)
"""


def add(sub: Any) -> None:
    """`duorank models ...`"""
    models = sub.add_parser(
        "models",
        help="list, build and export ONNX models",
        description="List, build and export duorank model folders (ONNX + tokenizer + manifest).",
        epilog="example: duorank models list",
    )
    models.set_defaults(run=_choose)
    msub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    ls = msub.add_parser(
        "list",
        help="built-in and cached models with kind, dim, variants, size and parity",
        description="List built-in names and the model folders in the cache ($DUORANK_HOME/models).",
        epilog="example: duorank models list --json",
    )
    ls.set_defaults(run=_list_models)
    ls.add_argument("--json", action="store_true", help="one JSON object per model on stdout")
    ex = msub.add_parser(
        "export",
        help="export a Hugging Face folder or hub id to a duorank model folder",
        description="Export SOURCE (a local Hugging Face / sentence-transformers folder, or a hub id "
        "when online) to the duorank model folder OUT. Every variant must pass the parity gate.",
        epilog=EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.set_defaults(run=_export_model)
    ex.add_argument("source", metavar="SOURCE")
    ex.add_argument("out", metavar="OUT")
    ex.add_argument("--kind", choices=["embedder", "reranker"], help="default: read from config.json")
    ex.add_argument(
        "--backend",
        choices=["auto", "numpy", "torch", "optimum"],
        default="auto",
        help="numpy: BERT without torch; torch: torch.onnx.export; optimum: optimum's exporter",
    )
    ex.add_argument("--fp16", action="store_true", help="add the half-precision variant (for GPUs)")
    ex.add_argument(
        "--int8", action="store_true", help="add the int8 variant (needs --data for its retrieval check)"
    )
    ex.add_argument("--data", metavar="DIR", help="BEIR folder (e.g. SciFact) for the int8 retrieval check")
    ex.add_argument("--optimize", action="store_true", help="fuse with onnxruntime's transformer optimizer")
    ex.add_argument("--revision", help="hub revision (hub ids only)")
    ex.add_argument("--force", action="store_true", help="replace OUT if it exists")
    qz = msub.add_parser(
        "quantize",
        help="add the int8 variant to an exported model folder (parity + quality gate)",
        description="Quantise FOLDER's fp32 graph to int8 (the recipe of `export --int8`), check it against "
        "the fp32 graph on the edge set and on labelled data (--data: nDCG@10 within 1 point), and add it to "
        "FOLDER (or write --out with the --keep variants).",
        epilog="example:\n  duorank models quantize ./reranker --data ./scifact --out ./rr-int8 --keep int8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    qz.set_defaults(run=_quantize)
    qz.add_argument("folder", metavar="FOLDER")
    qz.add_argument(
        "--data", required=True, metavar="DIR", help="BEIR folder for the quality check (test split)"
    )
    qz.add_argument("--out", metavar="DIR", help="write a new folder instead of adding to FOLDER")
    qz.add_argument("--keep", default="fp32,fp16,int8", help="variants --out keeps (default: %(default)s)")
    qz.add_argument("--force", action="store_true", help="replace --out if it exists")
    cb = msub.add_parser(
        "choose-blend",
        help="choose a reranker's blend weight and depth on your labelled queries (no training)",
        description="Score the dev queries of BEIR (the seeded split training uses) with FOLDER's reranker "
        "over dense, BM25 and hybrid candidates; choose the (depth, blend) that is best on average without "
        "losing on any dataset against the same first stage alone, and record it in FOLDER's manifest: "
        "with one --data and no --python-docs, one pair per first stage (search uses the pair for the "
        "--recall it runs); with several dev domains, one pair for all.",
        epilog="examples:\n  duorank models choose-blend ./reranker --data ./my-qrels --python-docs 200\n"
        "  duorank models choose-blend ./reranker --data ./my-qrels --max-lengths 128,192,256",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cb.set_defaults(run=_choose_blend)
    cb.add_argument("folder", metavar="FOLDER")
    cb.add_argument("--data", required=True, action="append", metavar="BEIR", help="repeat for several")
    cb.add_argument("--split", default="train")
    cb.add_argument(
        "--python-docs", type=int, default=0, metavar="N", help="add N Python-docs pseudo-queries"
    )
    cb.add_argument(
        "--max-lengths",
        metavar="N,N,...",
        help="choose at each window length too (e.g. 128,192,256) and record the shortest within a "
        "quarter point of the best",
    )
    split_options(cb)
    tr = msub.add_parser(
        "train-reranker",
        help="fine-tune a cross-encoder on labelled queries (BEIR layout) and export it",
        description="Fine-tune a cross-encoder from an encoder's weights on the labelled queries of a "
        "BEIR dataset (never its test split), choose the blend weight and rerank depth on a held-out dev "
        "part, and export it through the parity gate. Needs the [export] extra (torch, transformers).",
        epilog="examples:\n  duorank models train-reranker --data ./scifact --out ./reranker\n"
        "  duorank models train-reranker --base ./my-encoder --data ./my-qrels --out ./rr --epochs 3\n"
        "  duorank models train-reranker --data set.json.gz --layers 2 --teacher default --out ./fast",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.set_defaults(run=_train_reranker)
    tr.add_argument("--base", help="Hugging Face encoder folder (default: all-MiniLM-L6-v2 from [models])")
    tr.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="BEIR",
        help="BEIR folder or zip with qrels/<split>.tsv; repeat to train on a mixture; or one "
        "FILE.json.gz of prepare-training",
    )
    tr.add_argument(
        "--python-docs",
        type=int,
        default=0,
        metavar="N",
        help="mix in N pseudo-queries from this machine's Python docs (out-of-domain robustness)",
    )
    tr.add_argument("--split", default="train", help="labelled split to train on (default: %(default)s)")
    tr.add_argument("--out", required=True, metavar="DIR", help="the model folder to write")
    tr.add_argument("--epochs", type=int, default=2, help="passes over the training queries (default: 2)")
    tr.add_argument("--batch-size", type=int, default=16, help="pairs per step (groups of --group-size)")
    tr.add_argument("--group-size", type=int, default=8, help="1 positive + N-1 negatives (default: 8)")
    tr.add_argument(
        "--max-length", type=int, default=256, help="tokens per (query, document) pair (default: 256)"
    )
    tr.add_argument("--lr", type=float, default=5e-5, help="AdamW peak learning rate (default: 5e-5)")
    tr.add_argument("--negatives", type=int, default=50, help="depth of the lists negatives come from")
    tr.add_argument("--sources", default="dense,bm25", help="first stages for negatives: dense,bm25")
    split_options(tr)
    tr.add_argument("--max-queries", type=int, help="train on the first N queries only (quick runs)")
    tr.add_argument("--max-steps", type=int, help="stop after N steps")
    tr.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs, CPUs with native bf16)")
    tr.add_argument("--int8", action="store_true", help="add the int8 variant (checked on the dev queries)")
    tr.add_argument("--force", action="store_true", help="replace OUT if it exists")
    tr.add_argument(
        "--distill",
        type=int,
        default=0,
        metavar="N",
        help="mix in N sentence pairs scored by the embedder (keeps graded similarity)",
    )
    tr.add_argument("--distill-weight", type=float, default=1.0, help="weight of that loss (default: 1)")
    tr.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to train")
    tr.add_argument(
        "--layers", type=int, metavar="N", help="keep the base's first N encoder layers (a faster student)"
    )
    tr.add_argument(
        "--teacher",
        metavar="RERANKER",
        help="learn this reranker's scores of each group too (a name such as default, or a folder)",
    )
    tr.add_argument(
        "--teacher-weight", type=float, default=1.0, help="weight of the teacher loss (default: 1)"
    )
    tr.add_argument(
        "--train-seed",
        type=int,
        metavar="N",
        help="seed of the initialisation, example order and negatives (default: --seed, which also "
        "seeds the split; a prepared set keeps its own)",
    )
    tr.add_argument(
        "--no-export",
        action="store_true",
        help="write the trained checkpoint (+ duorank-train.json) instead of a model folder; "
        "`duorank models export` it later",
    )
    pt = msub.add_parser(
        "prepare-training",
        help="compute a reranker's training set (splits, negatives, distillation pairs) into one file",
        description="Everything train-reranker computes before its first step, in one gzip JSON file: "
        "per dataset the seeded train/dev split, negatives mined from the first stages, the dev queries' "
        "candidate lists, and --distill pairs scored by the embedder. Training from it (train-reranker "
        "--data FILE.json.gz) needs only torch and transformers: prepare here, train on a GPU machine.",
        epilog="example:\n  duorank models prepare-training --data ./scifact --python-docs 200"
        " --distill 16000 --out set.json.gz\n  duorank models train-reranker --data set.json.gz "
        "--device cuda --bf16 --no-export --out ./ckpt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pt.set_defaults(run=_prepare_training)
    pt.add_argument("--data", required=True, action="append", metavar="BEIR", help="repeat for several")
    pt.add_argument("--split", default="train")
    pt.add_argument("--python-docs", type=int, default=0, metavar="N")
    pt.add_argument("--distill", type=int, default=0, metavar="N")
    pt.add_argument("--negatives", type=int, default=50)
    pt.add_argument("--sources", default="dense,bm25")
    split_options(pt)
    pt.add_argument("--max-queries", type=int)
    pt.add_argument("--out", required=True, metavar="FILE.json.gz")


def _list_models(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..models import list_models

    rows = list_models()
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(
        f"{'NAME':24} {'KIND':9} {'DIM':>4} {'VARIANTS':16} {'SIZE MB':>8}  "
        "PARITY (min cosine / max diff)  PATH"
    )
    for r in rows:
        size = f"{r['bytes'] / 1e6:.1f}" if r.get("bytes") else "-"
        print(
            f"{r['name']:24} {r['kind']:9} {r.get('dim') or '-':>4} "
            f"{','.join(r.get('variants', [])) or '-':16} "
            f"{size:>8}  {r.get('parity') or 'not built yet':30} {r.get('path', '')}"
        )
    return 0


def _export_model(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..models_export import export

    check = None
    if args.int8:
        if not args.data:
            parser.error("--int8 needs --data DIR (a BEIR folder for the retrieval check)")
        from ..models_export.gate import retrieval_check

        check = retrieval_check(args.data)
    out = export(
        args.source,
        args.out,
        kind=args.kind,
        backend=args.backend,
        fp16=args.fp16,
        int8=args.int8,
        optimize=args.optimize,
        revision=args.revision,
        overwrite=args.force,
        int8_check=check,
    )
    print(out)
    return 0


def _quantize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..models_export import add_int8
    from ..models_export.gate import retrieval_check

    keep = tuple(v.strip() for v in args.keep.split(",") if v.strip())
    print(add_int8(args.folder, retrieval_check(args.data), out=args.out, keep=keep, overwrite=args.force))
    return 0


def _choose_blend(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..models_export.train import TrainConfig, choose_defaults

    cfg = TrainConfig(dev_fraction=args.dev_fraction, seed=args.seed, python_docs=args.python_docs)
    lengths = None
    if args.max_lengths:
        try:
            lengths = [int(x) for x in args.max_lengths.split(",") if x.strip()]
        except ValueError:
            parser.error(f"--max-lengths {args.max_lengths!r}: expected comma-separated integers")
    choice = choose_defaults(args.folder, args.data, split=args.split, config=cfg, max_lengths=lengths)
    print(json.dumps({k: v for k, v in choice.items() if k != "grid"}))
    return 0


def _prepare_training(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..models_export.train import TrainConfig, prepare_training, save_prepared

    if not args.out.endswith(".json.gz"):
        parser.error(f"--out {args.out!r}: expected a name ending in .json.gz")
    cfg = TrainConfig(**preparation(args))
    print(save_prepared(prepare_training(args.data, split=args.split, config=cfg), args.out))
    return 0


def _train_reranker(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..models_export.builtin import weights_folder
    from ..models_export.train import TrainConfig, is_prepared, train_reranker

    if any(is_prepared(d) for d in args.data) and len(args.data) > 1:
        parser.error("--data FILE.json.gz (a prepared training set) goes alone")

    config = TrainConfig(
        **preparation(args),
        epochs=args.epochs,
        batch_size=args.batch_size,
        group_size=args.group_size,
        max_length=args.max_length,
        lr=args.lr,
        max_steps=args.max_steps,
        bf16=args.bf16,
        int8=args.int8,
        distill_weight=args.distill_weight,
        device=args.device,
        train_seed=args.train_seed,
        layers=args.layers,
        teacher=args.teacher,
        teacher_weight=args.teacher_weight,
    )
    base = args.base or weights_folder("default")[0]
    data = args.data[0] if is_prepared(args.data[0]) else args.data
    report = train_reranker(
        base,
        data,
        args.out,
        split=args.split,
        config=config,
        overwrite=args.force,
        export_onnx=not args.no_export,
    )
    print(report.out)
    log.warning(
        "trained %d steps in %.0f s; dev choice: %s top-%d, blend %.1f",
        report.steps,
        report.seconds,
        report.source,
        report.depth,
        report.blend,
    )
    return 0


def _choose(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    parser.error(
        "models: choose a SUBCOMMAND: list, export, quantize, prepare-training, train-reranker or "
        "choose-blend (see duorank models --help)"
    )
