"""`rlsd context build`: build every row's privileged context into a file, to inspect it or
to train on it (`rlsd train --dataset_path F.ctx.jsonl`).

The output is the dataset's rows as JSONL with `privileged_context` replaced by the built
context and a `context_provenance` column (what was kept and dropped, with document names,
chunk ids, BM25 scores and token counts). The console gets a summary, never privileged text.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rlsd.context.builder import (
    DEFAULT_BUDGET,
    DEFAULT_EXAMPLE_ROWS,
    DEFAULT_TOP_K,
    PROVENANCE_COLUMN,
    ContextBuilder,
)
from rlsd.context.documents import DEFAULT_MAX_CHARS
from rlsd.data import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlsd context",
        description="Privileged context for the self-teacher from internal documents and a "
        "SQLite database (`rlsd context build --help`).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="build each row's privileged context into a .ctx.jsonl file",
        description="For each row of --dataset: its own reference (privileged_context, answer, "
        "gold SQL; never cut), the schema and example rows of the tables it touches (--db), and "
        "the --top_k document chunks BM25 ranks highest for its question (--docs), under "
        "--budget tokens of the model's tokenizer (lowest-ranked pieces dropped first). Writes "
        "the rows with the new privileged_context and a context_provenance column.",
    )
    build.add_argument(
        "--docs", metavar="DIR", help="folder of .md, .txt, .html, .pdf and .jsonl documents"
    )
    build.add_argument("--db", metavar="FILE", help="SQLite database file (opened read-only)")
    build.add_argument(
        "--dataset", metavar="F", required=True, help="the rows (any format rlsd train reads)"
    )
    build.add_argument(
        "--out", metavar="F", help="output JSONL (default: the dataset's name + .ctx.jsonl)"
    )
    build.add_argument(
        "--budget",
        metavar="N",
        type=int,
        default=DEFAULT_BUDGET,
        help="tokens of each row's context; 0: no budget (default: %(default)s)",
    )
    build.add_argument(
        "--top_k",
        metavar="K",
        type=int,
        default=DEFAULT_TOP_K,
        help="document chunks retrieved per row (default: %(default)s)",
    )
    build.add_argument(
        "--example_rows",
        metavar="N",
        type=int,
        default=DEFAULT_EXAMPLE_ROWS,
        help="example rows shown per touched table (default: %(default)s)",
    )
    build.add_argument(
        "--chunk_chars",
        metavar="N",
        type=int,
        default=DEFAULT_MAX_CHARS,
        help="most characters per document chunk (default: %(default)s)",
    )
    build.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable document (default: skip it, name it and go on)",
    )
    build.add_argument(
        "--model",
        default="",
        help="model folder whose tokenizer counts the budget (default: the shipped tiny model)",
    )
    return parser


def load_tokenizer(path: str) -> Any:
    """The tokenizer of a model folder (or Hub id when online); a `UserError` if none."""
    from transformers import AutoTokenizer

    from rlsd.models import DEFAULT_MODEL_PATH

    path = path or str(DEFAULT_MODEL_PATH)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer of {path!r}: {str(e).splitlines()[0]}") from e


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over the built rows' provenance (no privileged text)."""
    provenance = [r[PROVENANCE_COLUMN] for r in rows if "kept" in r[PROVENANCE_COLUMN]]
    tokens = [p["tokens"] for p in provenance if "tokens" in p]
    return {
        "rows": len(rows),
        "rows_built": len(provenance),
        "tokens_mean": round(sum(tokens) / len(tokens), 1) if tokens else 0,
        "tokens_max": max(tokens, default=0),
        "rows_with_drops": sum(bool(p["dropped"]) for p in provenance),
        "pieces_dropped": sum(len(p["dropped"]) for p in provenance),
        "rows_without_documents": sum(
            not any(k["source"] == "document" for k in p["kept"]) for p in provenance
        ),
    }


def report_skipped(documents, path: Path) -> None:
    """One console line per skipped document and a summary line; the list (document, tab,
    reason) written to `path` when any was skipped."""
    for name, reason in documents.skipped:
        print(f"skipped {name}: {reason}")
    if documents.files:
        print(documents.summary() + (f"; the list: {path}" if documents.skipped else ""))
    if documents.skipped:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{name}\t{reason}\n" for name, reason in documents.skipped))


def build_main(args: argparse.Namespace) -> dict[str, Any]:
    from rlsd.data import read_rows

    if not args.docs and not args.db:
        raise UserError("give --docs DIR, --db FILE or both")
    dataset = Path(args.dataset)
    out = Path(args.out) if args.out else dataset.with_name(dataset.stem + ".ctx.jsonl")
    if out.exists() and dataset.exists() and out.resolve() == dataset.resolve():
        raise UserError(f"--out {out} is the dataset itself; rlsd never rewrites your data")
    rows = read_rows(dataset)
    tokenizer = load_tokenizer(args.model)
    start = time.perf_counter()
    with ContextBuilder(
        args.docs,
        args.db,
        tokenizer=tokenizer,
        budget=args.budget or None,
        top_k=args.top_k,
        example_rows=args.example_rows,
        chunk_chars=args.chunk_chars,
        strict=args.strict,
    ) as builder:
        report_skipped(builder.documents, out.with_name(out.name + ".skipped.txt"))
        built = builder.build_rows(rows, source=str(dataset))
        documents = len({c.document for c in builder.chunks})
        chunks = len(builder.chunks)
        tables = len(builder.database.tables) if builder.database is not None else 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in built:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    summary = summarize(built)
    summary.update(out=str(out), seconds=round(time.perf_counter() - start, 2))
    sources = [f"{documents} documents ({chunks} chunks)"] if args.docs else []
    sources += [f"{args.db} ({tables} tables)"] if args.db else []
    print(
        f"{summary['rows_built']} of {len(built)} rows built from {' and '.join(sources)}: "
        f"{summary['tokens_mean']} context tokens per row on average, {summary['tokens_max']} "
        f"at most (budget {args.budget or 'none'}); {summary['rows_with_drops']} rows dropped "
        f"{summary['pieces_dropped']} pieces to fit"
        + (f"; {summary['rows_without_documents']} rows got no document chunk" if args.docs else "")
        + f"; wrote {out} ({summary['seconds']} s)"
    )
    return summary


def main(argv: list[str]) -> dict[str, Any]:
    """`rlsd context ACTION ...`."""
    args = build_parser().parse_args(argv)
    return build_main(args)  # the one action so far
