"""A row's privileged context: its own reference, then what the database and the documents
add, under a token budget.

For each row, in this order:
1. **the reference**, never dropped: the row's `privileged_context` (as given, first), its
   `answer` (`Final answer: ...`, or `Reference SQL:` when the row's verifier is `sql` or the
   answer is a query; left out when the privileged context already contains it) and a gold SQL
   column (`gold_sql`, `sql`; left out when equal to the answer);
2. **the ranked pieces**: the schema (DDL) of the tables the row touches (found in its gold
   SQL, then named in its question), the `top_k` document chunks BM25 ranks highest for the
   question and the reference (`retrieval_query`: a gold query's names and values, not its
   keywords), example rows of the touched tables, the schema of the other
   tables. The touched tables' DDL ranks first because it is short and is what the gold SQL
   is written against.

Pieces are joined with blank lines. Under `budget` tokens (the model's tokenizer, counted on
the joined text), the longest prefix of the ranked pieces that fits is kept: the lowest-ranked
go first, and a lower-ranked piece is never kept in place of a higher-ranked one. A reference
that alone exceeds the budget is a `ContextBudgetError`. Because the order is the ranking, the
teacher's own `teacher_max_prompt_length`, which cuts the end of the privileged text, also
cuts the lowest-ranked text first.

Each row's provenance says what was kept and dropped: the source (`reference`, `schema`,
`document`, `rows`), the column, table or document and chunk id, the BM25 score and rank, and
the tokens. It names where text came from and never holds the text itself, so it may be
logged. Everything here is deterministic: files in sorted order, ties broken by position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsd.context.database import Database, sql_words
from rlsd.context.documents import DEFAULT_MAX_CHARS, Documents, load_documents
from rlsd.context.errors import ContextBudgetError, ContextError
from rlsd.context.retrieval import DocumentIndex
from rlsd.prompts import content_text, is_conversational

GOLD_SQL_COLUMNS = ("gold_sql", "sql")
PROVENANCE_COLUMN = "context_provenance"
DEFAULT_BUDGET = 1024
DEFAULT_TOP_K = 5
DEFAULT_EXAMPLE_ROWS = 3
_SQL_START_RE = re.compile(r"\s*(?:select|with)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Piece:
    """One block of privileged text and where it came from (`provenance`: never the text)."""

    text: str
    provenance: dict[str, Any]


def question_text(row: Mapping[str, Any]) -> str:
    """The row's question: a text prompt, or its last user message."""
    prompt: Any = row.get("prompt", "")
    if is_conversational(prompt):
        prompt = next((m.get("content") for m in reversed(prompt) if m.get("role") == "user"), "")
    return content_text(prompt)


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def reference_pieces(row: Mapping[str, Any]) -> list[Piece]:
    """The row's own reference (see the module docstring), in the order it is shown."""
    pieces: list[Piece] = []
    privileged = _text(row.get("privileged_context")).strip()
    if privileged:
        pieces.append(Piece(privileged, {"source": "reference", "column": "privileged_context"}))
    answer = _text(row.get("answer")).strip()
    answer_is_sql = bool(answer) and (row.get("verifier") == "sql" or _SQL_START_RE.match(answer))
    if answer and answer not in privileged:
        text = f"Reference SQL:\n{answer}" if answer_is_sql else f"Final answer: {answer}"
        pieces.append(Piece(text, {"source": "reference", "column": "answer"}))
    for column in GOLD_SQL_COLUMNS:
        sql = _text(row.get(column)).strip()
        if sql and " ".join(sql.split()) != " ".join(answer.split()) and sql not in privileged:
            provenance = {"source": "reference", "column": column}
            pieces.append(Piece(f"Reference SQL:\n{sql}", provenance))
            break
    return pieces


def _sql_of(row: Mapping[str, Any]) -> list[str]:
    """The row's gold SQL queries (a gold SQL column; the answer when it is a query)."""
    queries = [_text(row.get(c)) for c in GOLD_SQL_COLUMNS if _text(row.get(c)).strip()]
    answer = _text(row.get("answer"))
    if answer.strip() and (row.get("verifier") == "sql" or _SQL_START_RE.match(answer)):
        queries.append(answer)
    return queries


def retrieval_query(row: Mapping[str, Any]) -> str:
    """What a row's documents are retrieved with: its question, privileged context and answer,
    and the names and values of its gold SQL (`sql_words`: not its keywords)."""
    queries = _sql_of(row)
    answer = _text(row.get("answer"))
    parts = [question_text(row), _text(row.get("privileged_context"))]
    parts += [answer] if answer not in queries else []
    parts += [sql_words(q) for q in queries]
    return "\n".join(p for p in parts if p.strip())


class ContextBuilder:
    """Builds each row's privileged context from a folder of documents (`docs`) and/or a
    SQLite database (`db`); `build(row)` gives `(text, provenance)`, `build_rows(rows)` new rows
    with `privileged_context` and `context_provenance`.

    `budget` counts tokens with `tokenizer` (the model's: `tokenizer(text)["input_ids"]`);
    `None` means no budget. `top_k` chunks are retrieved per row, `example_rows` rows shown per
    touched table, documents cut into chunks of at most `chunk_chars` characters; unreadable
    documents are skipped (`documents.skipped`, each with its reason) unless `strict`. The
    database stays open (read-only) until `close()`; the builder is a context manager."""

    def __init__(
        self,
        docs: str | Path | None = None,
        db: str | Path | None = None,
        *,
        tokenizer: Any = None,
        budget: int | None = DEFAULT_BUDGET,
        top_k: int = DEFAULT_TOP_K,
        example_rows: int = DEFAULT_EXAMPLE_ROWS,
        chunk_chars: int = DEFAULT_MAX_CHARS,
        strict: bool = False,
    ):
        if docs is None and db is None:
            raise ContextError("privileged context needs a documents folder, a database or both")
        if budget is not None and budget < 1:
            raise ContextError(f"the context budget must be a positive token count, got {budget}")
        if budget is not None and tokenizer is None:
            raise ValueError("a token budget needs the model's tokenizer to count tokens")
        if top_k < 0 or example_rows < 0:
            raise ContextError(f"top_k ({top_k}) and example_rows ({example_rows}) must be >= 0")
        if chunk_chars < 50:
            raise ContextError(f"chunks must hold at least 50 characters, got {chunk_chars}")
        self.tokenizer = tokenizer
        self.budget = budget
        self.top_k = top_k
        self.example_rows = example_rows
        # unreadable documents are skipped (`self.documents.skipped`) unless `strict`
        self.documents = (
            load_documents(docs, chunk_chars, strict) if docs is not None else Documents([], 0)
        )
        self.chunks = self.documents.chunks
        self.index = DocumentIndex(self.chunks) if self.chunks else None
        self.database = Database(db) if db is not None else None
        self._piece_tokens: dict[str, int] = {}
        self._separator_tokens = self.count_tokens("\n\n") if tokenizer is not None else 0

    def close(self) -> None:
        if self.database is not None:
            self.database.close()

    def __enter__(self) -> ContextBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def pieces(self, row: Mapping[str, Any]) -> tuple[list[Piece], list[Piece]]:
        """The row's reference and, best first, everything else it could get (before the
        budget); documents are retrieved with `retrieval_query(row)`."""
        return reference_pieces(row), self.ranked_pieces(row, retrieval_query(row))

    def ranked_pieces(self, row: Mapping[str, Any], query: str) -> list[Piece]:
        """What the database and the documents add for `row`, best first."""
        db = self.database
        touched: list[str] = []
        pieces: list[Piece] = []
        if db is not None:
            for sql in _sql_of(row):
                touched += [t for t in db.tables_in_sql(sql) if t not in touched]
            touched += [t for t in db.tables_in_text(question_text(row)) if t not in touched]
            pieces += [Piece(db.tables[t] + ";", {"source": "schema", "table": t}) for t in touched]
        if self.index is not None and self.top_k:
            for rank, (chunk, score) in enumerate(self.index.search(query, self.top_k), 1):
                where = {"document": chunk.document, "chunk": chunk.id}
                provenance = {"source": "document", **where, "score": round(score, 4)}
                provenance["rank"] = rank
                pieces.append(Piece(f"From {chunk.document}:\n{chunk.text}", provenance))
        if db is not None:
            for table in touched if self.example_rows else []:
                rows = db.example_rows(table, self.example_rows)
                if rows:
                    provenance = {"source": "rows", "table": table, "rows": rows.count("\n")}
                    pieces.append(Piece(f"Example rows of {table}:\n{rows}", provenance))
            others = [t for t in db.tables if t not in touched]
            pieces += [Piece(db.tables[t] + ";", {"source": "schema", "table": t}) for t in others]
        return pieces

    def _fit(
        self, reference: list[Piece], ranked: list[Piece], where: str
    ) -> tuple[int, int | None]:
        """How many of the ranked pieces fit the budget after the reference, and the tokens of
        the joined text (None without a tokenizer). A first guess adds the pieces' own counts;
        exact counts of the joined text then settle it (tokens at the seams differ a little)."""
        if self.tokenizer is None:
            return len(ranked), None
        if self.budget is None:
            return len(ranked), self.count_tokens(_join(reference + ranked))
        used = self.count_tokens(_join(reference))
        if used > self.budget:
            columns = ", ".join(p.provenance["column"] for p in reference)
            raise ContextBudgetError(
                f"{where}: the row's own reference ({columns}) takes {used} tokens, over the "
                f"context budget of {self.budget}; raise the budget (--budget, --context_budget): "
                "rlsd never cuts a row's reference"
            )
        kept, guess = 0, used
        for piece in ranked:
            guess += self._separator_tokens + piece.provenance["tokens"]
            if guess > self.budget:
                break
            kept += 1
        tokens = self.count_tokens(_join(reference + ranked[:kept]))
        while tokens > self.budget:  # stops at kept = 0 at the latest: the reference fits
            kept -= 1
            tokens = self.count_tokens(_join(reference + ranked[:kept]))
        while kept < len(ranked):
            longer = self.count_tokens(_join(reference + ranked[: kept + 1]))
            if longer > self.budget:
                break
            kept, tokens = kept + 1, longer
        return kept, tokens

    def build(self, row: Mapping[str, Any], where: str = "row") -> tuple[str, dict[str, Any]]:
        """`(privileged text, provenance)` of one row; `where` names the row in errors (its
        question is added; its privileged text never is)."""
        reference, ranked = self.pieces(row)
        if self.tokenizer is not None:
            for piece in reference:
                piece.provenance["tokens"] = self.count_tokens(piece.text)
            for piece in ranked:  # chunks, schema and rows recur across rows: counted once
                if piece.text not in self._piece_tokens:
                    self._piece_tokens[piece.text] = self.count_tokens(piece.text)
                piece.provenance["tokens"] = self._piece_tokens[piece.text]
        named = f"{where} (question: {_short(question_text(row))!r})"
        kept, tokens = self._fit(reference, ranked, named)
        provenance: dict[str, Any] = {} if tokens is None else {"tokens": tokens}
        provenance["budget"] = self.budget
        provenance["kept"] = [p.provenance for p in reference + ranked[:kept]]
        provenance["dropped"] = [p.provenance for p in ranked[kept:]]
        return _join(reference + ranked[:kept]), provenance

    def build_rows(
        self, rows: Iterable[Mapping[str, Any]], source: str = "<data>"
    ) -> list[dict[str, Any]]:
        """New rows (the given ones are not changed) whose `privileged_context` is the built
        context, with its provenance in `context_provenance`. A row with a `teacher_prompt`
        (which replaces the whole teacher prompt) is kept as it is, its provenance saying so;
        a row built before (it has `context_provenance`) is a `ContextError`."""
        built: list[dict[str, Any]] = []
        for index, row in enumerate(rows, start=1):
            where = f"{source}: row {index}"
            if PROVENANCE_COLUMN in row:
                raise ContextError(
                    f"{where} already has a built context (column {PROVENANCE_COLUMN!r}): "
                    "build from the original data, or train on this file without --context_docs"
                )
            new = dict(row)
            if row.get("teacher_prompt"):
                new[PROVENANCE_COLUMN] = {"skipped": "the row has its own teacher_prompt"}
            else:
                text, new[PROVENANCE_COLUMN] = self.build(row, where)
                if text:
                    new["privileged_context"] = text
            built.append(new)
        return built


def _join(pieces: list[Piece]) -> str:
    return "\n\n".join(p.text for p in pieces)
