"""`rlsd context build`: build every row's privileged context into a file, to inspect it or
to train on it (`rlsd train --dataset_path F.ctx.jsonl`).

The output is the dataset's rows as JSONL with `privileged_context` replaced by the built
context and a `context_provenance` column (what was kept and dropped, with document names,
chunk ids, BM25 scores and token counts). The console gets a summary, never privileged text.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
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


@dataclass
class ContextBuildArguments:
    """`rlsd context build`: the rows, the sources of their context, and its budget (the
    fields and names of `rlsd train`'s `--context_*` options)."""

    dataset_path: str = field(
        default="", metadata={"help": "The rows (any format rlsd train reads). Required."}
    )
    context_docs: str | None = field(
        default=None,
        metadata={"help": "Folder of .md, .txt, .html, .pdf and .jsonl documents (BM25-ranked)."},
    )
    context_db: str | None = field(
        default=None, metadata={"help": "SQLite database file (opened read-only)."}
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the output, <dataset name>.ctx.jsonl (default: the dataset's own "
            "folder)."
        },
    )
    out: str | None = field(
        default=None,
        metadata={
            "help": "Deprecated (removed in the next release): the output file; use --output_dir."
        },
    )
    context_budget: int = field(
        default=DEFAULT_BUDGET,
        metadata={"help": "Tokens of each row's context, the model's tokenizer; 0: no budget."},
    )
    context_top_k: int = field(
        default=DEFAULT_TOP_K, metadata={"help": "Document chunks retrieved per row."}
    )
    context_example_rows: int = field(
        default=DEFAULT_EXAMPLE_ROWS,
        metadata={"help": "Example rows shown per table a row touches (0: none)."},
    )
    chunk_chars: int = field(
        default=DEFAULT_MAX_CHARS, metadata={"help": "Most characters per document chunk."}
    )
    context_strict: bool = field(
        default=False,
        metadata={
            "help": "Stop at the first unreadable document (default: skip it, name it and go on; "
            "the list is written beside the output)."
        },
    )
    model_name_or_path: str = field(
        default="",
        metadata={
            "help": "Model folder whose tokenizer counts the budget (default: the shipped tiny "
            "model)."
        },
    )


# the spellings of the previous release (one deprecation line each)
RENAMED = {
    "dataset": "dataset_path",
    "docs": "context_docs",
    "db": "context_db",
    "budget": "context_budget",
    "top_k": "context_top_k",
    "example_rows": "context_example_rows",
    "strict": "context_strict",
    "model": "model_name_or_path",
}
ACTIONS = {"build": "build each row's privileged context into a .ctx.jsonl file"}
BUILD_DESCRIPTION = (
    "For each row of --dataset_path: its own reference (privileged_context, answer, gold SQL; "
    "never cut), the schema and example rows of the tables it touches (--context_db), and the "
    "--context_top_k document chunks BM25 ranks highest for its question (--context_docs), "
    "under --context_budget tokens of the model's tokenizer (lowest-ranked pieces dropped "
    "first). Writes the rows with the new privileged_context and a context_provenance column."
)


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


def build_main(args: ContextBuildArguments) -> dict[str, Any]:
    from rlsd.data import read_rows

    if not args.dataset_path:
        raise UserError("give --dataset_path F, the rows to build the context of")
    if not args.context_docs and not args.context_db:
        raise UserError("give --context_docs DIR, --context_db FILE or both")
    dataset = Path(args.dataset_path)
    name = dataset.stem + ".ctx.jsonl"
    if args.out:
        out = Path(args.out)
    else:
        out = Path(args.output_dir) / name if args.output_dir else dataset.with_name(name)
    if out.exists() and dataset.exists() and out.resolve() == dataset.resolve():
        raise UserError(f"the output {out} is the dataset itself; rlsd never rewrites your data")
    rows = read_rows(dataset)
    tokenizer = load_tokenizer(args.model_name_or_path)
    start = time.perf_counter()
    with ContextBuilder(
        args.context_docs,
        args.context_db,
        tokenizer=tokenizer,
        budget=args.context_budget or None,
        top_k=args.context_top_k,
        example_rows=args.context_example_rows,
        chunk_chars=args.chunk_chars,
        strict=args.context_strict,
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
    sources = [f"{documents} documents ({chunks} chunks)"] if args.context_docs else []
    sources += [f"{args.context_db} ({tables} tables)"] if args.context_db else []
    budget = args.context_budget or "none"
    no_document = f"; {summary['rows_without_documents']} rows got no document chunk"
    print(
        f"{summary['rows_built']} of {len(built)} rows built from {' and '.join(sources)}: "
        f"{summary['tokens_mean']} context tokens per row on average, {summary['tokens_max']} "
        f"at most (budget {budget}); {summary['rows_with_drops']} rows dropped "
        f"{summary['pieces_dropped']} pieces to fit"
        + (no_document if args.context_docs else "")
        + f"; wrote {out} ({summary['seconds']} s)"
    )
    return summary


def parse_args(argv: list[str]) -> tuple[ContextBuildArguments]:
    """`ContextBuildArguments` from `build [CONFIG.yaml] [--field value ...]`."""
    from rlsd.arguments import parse_command

    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        actions = "\n".join(f"  {name:8} {summary}" for name, summary in ACTIONS.items())
        print(f"usage: rlsd context ACTION [--field value ...]\n\nactions:\n{actions}")
        if not argv:
            raise UserError(f"give an action: {', '.join(ACTIONS)}")
        raise SystemExit(0)
    if argv[0] not in ACTIONS:
        raise UserError(f"unknown action {argv[0]!r}: choose one of {', '.join(ACTIONS)}")
    return parse_command(
        [ContextBuildArguments],
        argv[1:],
        "rlsd context build",
        BUILD_DESCRIPTION,
        renamed=RENAMED,
    )


def main(argv: list[str]) -> dict[str, Any]:
    """`rlsd context ACTION [CONFIG.yaml] [--field value ...]` (ACTION: build)."""
    from rlsd.arguments import deprecated

    (args,) = parse_args(argv)
    if args.out:
        deprecated("rlsd context build", "--out FILE", "--output_dir DIR")
    return build_main(args)
