"""Privileged context from internal data: documents and a database feed the self-teacher.

From a folder of documents (`.md`, `.txt`, `.html`, `.pdf`, `.jsonl`) and/or a SQLite
database, each row gets a `privileged_context`: its own reference (never cut), the schema and
example rows of the tables it touches, and the document chunks BM25 ranks highest for its
question, under a token budget of the model's tokenizer, with the provenance of every piece.
Only the self-teacher sees this text; the student's prompt is unchanged, and logs hold the
provenance (documents, chunk ids, scores), never the text, unless `log_privileged`.

- `documents`: reading and chunking a folder (`read_documents`, `Chunk`);
- `retrieval`: the BM25 index (bm25s) over the chunks (`DocumentIndex`);
- `database`: a SQLite file, read-only: schema, touched tables, example rows (`Database`);
- `builder`: the reference, the ranking, the budget, the provenance (`ContextBuilder`);
- `command`: `rlsd context build`;
- `errors`: the named errors, each a `rlsd.data.UserError`.

```python
from rlsd.context import ContextBuilder
with ContextBuilder("docs/", "company.db", tokenizer=tokenizer, budget=1024) as builder:
    rows = builder.build_rows(read_rows("train.jsonl"))   # privileged_context, context_provenance
```
"""

from rlsd.context.builder import (
    DEFAULT_BUDGET,
    DEFAULT_EXAMPLE_ROWS,
    DEFAULT_TOP_K,
    PROVENANCE_COLUMN,
    ContextBuilder,
    Piece,
    question_text,
    reference_pieces,
)
from rlsd.context.database import Database
from rlsd.context.documents import Chunk, read_documents
from rlsd.context.errors import (
    ContextBudgetError,
    ContextError,
    DatabaseError,
    DocumentError,
    EncryptedPDFError,
)
from rlsd.context.retrieval import DocumentIndex

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_EXAMPLE_ROWS",
    "DEFAULT_TOP_K",
    "PROVENANCE_COLUMN",
    "Chunk",
    "ContextBudgetError",
    "ContextBuilder",
    "ContextError",
    "Database",
    "DatabaseError",
    "DocumentError",
    "DocumentIndex",
    "EncryptedPDFError",
    "Piece",
    "question_text",
    "read_documents",
    "reference_pieces",
]
