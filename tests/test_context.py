"""rlsd.context: documents are chunked along their headings and bounded; BM25 picks the relevant
chunk; the budget drops the lowest-ranked pieces first and never the reference; the build is
deterministic and keeps provenance; the database gives the schema and example rows of the
tables a gold SQL reads and is never modified; bad input gets named errors; `rlsd context
build` writes a file `rlsd train` reads; `rlsd train --context_docs` keeps a canary sentence
of a document out of the whole run folder and the console."""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from rlsd.cli import main
from rlsd.context import (
    ContextBudgetError,
    ContextBuilder,
    ContextError,
    Database,
    DatabaseError,
    DocumentError,
    DocumentIndex,
    EncryptedPDFError,
    read_documents,
    reference_pieces,
)
from rlsd.context.documents import chunk_sections, load_documents, markdown_sections
from rlsd.data import read_rows, to_dataset

GLOSSARY = """# Glossary

Terms every analyst uses.

## Active customer

An active customer placed at least one order in the last 90 days.
Customers on the blocklist are never active.

## Fiscal year

The fiscal year starts on April 1st and ends on March 31st.

```sql
# not a heading: inside a code block
SELECT 1;
```
"""
REGIONS_HTML = (
    "<html><head><title>t</title><style>p {color: red}</style></head><body>"
    "<h1>Regions</h1><p>EMEA groups Europe, the Middle East &amp; Africa.</p>"
    "<h2>APAC</h2><ul><li>Japan</li><li>Australia</li></ul>"
    "<script>var hidden = 'script text';</script></body></html>"
)
SCHEMA = """
CREATE TABLE customers (
  id INTEGER PRIMARY KEY,
  name TEXT,      -- legal name of the customer
  region TEXT     /* EMEA, APAC or AMER */
);
CREATE TABLE orders (
  id INTEGER PRIMARY KEY,
  customer_id INTEGER REFERENCES customers(id),
  net_amount REAL, -- excludes taxes and refunds
  ordered_on TEXT
);
CREATE TABLE products (id INTEGER PRIMARY KEY, title TEXT);
INSERT INTO customers VALUES (1, 'Acme', 'EMEA'), (2, 'Globex', 'APAC'), (3, 'Initech', 'AMER'),
  (4, 'Umbrella', 'EMEA');
INSERT INTO orders VALUES (1, 1, 10.5, '2024-01-02'), (2, 2, 20.0, '2024-03-04');
INSERT INTO products VALUES (1, 'Widget');
"""
GOLD_SQL = (
    "WITH recent AS (SELECT customer_id FROM orders WHERE ordered_on >= '2024-01-01') "
    "SELECT count(DISTINCT c.id) FROM customers c JOIN recent r ON r.customer_id = c.id "
    "WHERE c.region = 'EMEA'"
)


def text_pdf(lines: list[str]) -> bytes:
    """A one-page PDF whose text pypdf extracts (written by hand: pypdf writes no text)."""
    stream = "".join(
        f"BT /F1 12 Tf 72 {720 - 20 * i} Td ({s}) Tj ET\n" for i, s in enumerate(lines)
    )
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        "/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}endstream",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    trailer = f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    return out + trailer.encode()


def encrypted_pdf(path: Path, password: str = "secret") -> Path:
    from pypdf import PdfReader, PdfWriter

    plain = path.with_suffix(".plain")
    plain.write_bytes(text_pdf(["Confidential salary bands"]))
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt(password)
    with path.open("wb") as f:
        writer.write(f)
    plain.unlink()
    return path


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    (folder / "policies").mkdir(parents=True)
    (folder / "glossary.md").write_text(GLOSSARY)
    (folder / "policies" / "regions.html").write_text(REGIONS_HTML)
    (folder / "revenue.txt").write_text(
        "Net revenue excludes taxes and refunds.\n\nShipping fees count as revenue.\n"
    )
    (folder / "tickets.jsonl").write_text(
        json.dumps({"title": "Ticket 17", "text": "A customer asked how refunds are booked."})
        + "\n"
        + json.dumps("Support closes tickets within two days.")
        + "\n"
    )
    (folder / "policies" / "refunds.pdf").write_bytes(
        text_pdf(["Refund policy", "Refunds are allowed within 30 days of delivery."])
    )
    (folder / ".draft.md").write_text("a hidden draft")
    (folder / "logo.png").write_bytes(b"\x89PNG not a document")
    return folder


@pytest.fixture
def company_db(tmp_path) -> Path:
    path = tmp_path / "company.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    conn.commit()
    conn.close()
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rlsd.models import DEFAULT_MODEL_PATH

    return AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_PATH))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ documents
def test_chunks_follow_headings_pages_and_records_and_stay_bounded(docs):
    chunks = read_documents(docs)
    by_id = {c.id: c.text for c in chunks}
    assert list(by_id) == [
        "glossary.md#0",
        "glossary.md#1",
        "glossary.md#2",
        "policies/refunds.pdf#0",
        "policies/regions.html#0",
        "policies/regions.html#1",
        "revenue.txt#0",
        "tickets.jsonl#0",
        "tickets.jsonl#1",
    ]  # sorted paths; hidden and unsupported files skipped
    assert by_id["glossary.md#1"].startswith("Glossary > Active customer\nAn active customer")
    assert "Fiscal year" not in by_id["glossary.md#1"]  # a chunk never spans two headings
    assert "# not a heading" in by_id["glossary.md#2"]  # a code block is not a heading
    assert by_id["policies/refunds.pdf#0"].startswith("page 1\nRefund policy")
    assert (
        by_id["policies/regions.html#0"] == "Regions\nEMEA groups Europe, the Middle East & Africa."
    )
    assert by_id["policies/regions.html#1"].startswith("Regions > APAC\nJapan")
    assert "script text" not in json.dumps(by_id) and "color: red" not in json.dumps(by_id)
    assert by_id["tickets.jsonl#0"].startswith("Ticket 17\n")
    assert by_id["tickets.jsonl#1"] == "line 2\nSupport closes tickets within two days."

    long = " ".join(f"Sentence number {i} says something about refunds." for i in range(60))
    sections = markdown_sections(f"# Policy\n\n{long}\n\nShort closing paragraph.\n")
    pieces = chunk_sections("policy.md", sections, max_chars=300)
    assert len(pieces) > 5 and all(len(c.text) <= 300 for c in pieces)
    assert all(c.text.startswith("Policy\n") for c in pieces)
    assert all(c.text.rstrip().endswith(".") for c in pieces)  # cut at sentence ends
    assert [c.index for c in pieces] == list(range(len(pieces)))


def test_bm25_ranks_the_relevant_chunk_first(docs):
    index = DocumentIndex(read_documents(docs))
    top = index.search("When does the fiscal year start?", top_k=3)
    assert top[0][0].id == "glossary.md#2"
    assert [score for _, score in top] == sorted((score for _, score in top), reverse=True)
    assert index.search("Which refunds are allowed after delivery?", 1)[0][0].id == (
        "policies/refunds.pdf#0"
    )
    assert index.search("net_revenue", 1)[0][0].id == "revenue.txt#0"  # identifiers split
    assert index.search("blocklists of customers", 1)[0][0].id == "glossary.md#1"  # plurals
    assert index.search("zebra xylophone", 5) == []  # no shared term: nothing retrieved


# ------------------------------------------------------------------------ budget, provenance
def rows() -> list[dict]:
    return [
        {
            "prompt": "How many active customers are in EMEA?",
            "answer": GOLD_SQL,
            "verifier": "sql",
            "database": "company.db",
            "privileged_context": "Count customers with an order since January.",
        },
        {"prompt": "When does the fiscal year start?", "answer": "April 1st"},
        {"prompt": "Which refunds?", "answer": "Widget", "gold_sql": "SELECT title FROM products"},
    ]


def test_budget_drops_the_lowest_ranked_first_and_keeps_the_reference(docs, company_db, tokenizer):
    row = rows()[0]
    with ContextBuilder(docs, company_db, tokenizer=tokenizer, budget=None) as builder:
        full_text, full = builder.build(row)
        ranking = full["kept"]
        assert [p["source"] for p in ranking[:2]] == ["reference", "reference"]  # never dropped
        assert full_text.startswith("Count customers with an order since January.")
        reference = builder.count_tokens("\n\n".join(p.text for p in reference_pieces(row)))
        sizes = []
        middle = (full["tokens"] + reference) // 2
        for budget in (full["tokens"], full["tokens"] - 1, middle, reference + 30, reference):
            builder.budget = budget
            text, provenance = builder.build(row)
            kept = provenance["kept"]
            assert provenance["tokens"] == builder.count_tokens(text) <= budget
            assert kept + provenance["dropped"] == ranking  # a prefix of the ranking is kept
            assert kept[:2] == ranking[:2] and text.startswith(full_text[:40])
            if provenance["dropped"]:  # the longest prefix that fits: one more piece would not
                following = builder.pieces(row)[1][len(kept) - 2].text
                assert builder.count_tokens(text + "\n\n" + following) > budget
            sizes.append(len(kept))
        assert sizes[0] == len(ranking) and sizes == sorted(sizes, reverse=True)
        assert sizes[-1] == 2 and len(set(sizes)) >= 4  # at the end only the reference fits
        builder.budget = reference - 1
        with pytest.raises(ContextBudgetError):
            builder.build(row)


def test_a_reference_over_the_budget_is_a_named_error(docs, tokenizer):
    row = {"prompt": "Summarise the refund policy.", "privileged_context": "SECRET " * 40}
    with ContextBuilder(docs, tokenizer=tokenizer, budget=100) as builder:
        with pytest.raises(ContextBudgetError) as error:
            builder.build_rows([row], source="train.jsonl")
    message = str(error.value)
    assert "train.jsonl: row 1" in message and "Summarise the refund policy." in message
    assert "budget of 100" in message and "SECRET" not in message  # never the reference text


def test_build_is_deterministic_with_provenance_and_never_changes_the_rows(
    docs, company_db, tokenizer
):
    given = rows()
    before = json.dumps(given)
    builds = []
    for _ in range(2):
        with ContextBuilder(docs, company_db, tokenizer=tokenizer, budget=600, top_k=3) as b:
            builds.append(b.build_rows(given, source="d.jsonl"))
            chunks = {c.id: c for c in b.chunks}
    assert json.dumps(builds[0]) == json.dumps(builds[1]) and json.dumps(given) == before
    for row in builds[0]:
        provenance = row["context_provenance"]
        assert provenance["budget"] == 600 and provenance["tokens"] <= 600
        documents = [p for p in provenance["kept"] + provenance["dropped"] if "chunk" in p]
        assert documents and [p["rank"] for p in documents] == list(range(1, len(documents) + 1))
        assert [p["score"] for p in documents] == sorted(
            (p["score"] for p in documents), reverse=True
        )
        for p in documents:
            assert p["score"] > 0 and chunks[p["chunk"]].document == p["document"]
        for p in provenance["kept"]:
            if "chunk" in p:
                assert chunks[p["chunk"]].text in row["privileged_context"]
        assert row["privileged_context"] not in json.dumps(provenance)  # names, never text
    fiscal = builds[0][1]
    assert fiscal["privileged_context"].startswith("Final answer: April 1st\n\n")
    assert fiscal["context_provenance"]["kept"][1]["chunk"] == "glossary.md#2"
    assert "Reference SQL:\nSELECT title FROM products" in builds[0][2]["privileged_context"]


# ------------------------------------------------------------------------------- database
def test_database_schema_and_example_rows_of_the_gold_sql_tables(docs, company_db, tokenizer):
    digest = sha256(company_db)
    with Database(company_db) as db:
        assert list(db.tables) == ["customers", "orders", "products"]
        assert "-- legal name of the customer" in db.tables["customers"]  # comments kept
        assert db.tables_in_sql(GOLD_SQL) == ["customers", "orders"]  # the CTE is no table
        assert db.tables_in_sql("SELEC broken FROM products") == ["products"]  # name fallback
        assert db.tables_in_text("What is the net amount per region?") == ["orders", "customers"]
        assert (
            db.example_rows("customers", 2)
            == "id | name | region\n1 | Acme | EMEA\n2 | Globex | APAC"
        )
        with pytest.raises(sqlite3.Error):  # read-only: writes are refused
            db._conn.execute("DELETE FROM customers")
    with ContextBuilder(None, company_db, tokenizer=tokenizer, budget=None) as builder:
        text, provenance = builder.build(rows()[0])
    kept = [(p["source"], p.get("table")) for p in provenance["kept"]]
    assert kept == [
        ("reference", None),
        ("reference", None),
        ("schema", "customers"),
        ("schema", "orders"),
        ("rows", "customers"),
        ("rows", "orders"),
        ("schema", "products"),  # untouched tables rank last
    ]
    assert "Reference SQL:\nWITH recent" in text and "/* EMEA, APAC or AMER */" in text
    assert "Example rows of customers:\nid | name | region\n1 | Acme | EMEA" in text
    assert sha256(company_db) == digest and sorted(p.name for p in company_db.parent.iterdir()) == [
        "company.db",
        "docs",
    ]  # no journal, -wal or -shm file either


# ---------------------------------------------------------------------------- named errors
def bad_inputs(tmp_path: Path) -> dict[str, tuple[dict, type[Exception], str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.docx").write_text("not read")
    encrypted = tmp_path / "encrypted"
    encrypted.mkdir()
    encrypted_pdf(encrypted / "salaries.pdf")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scan.pdf").write_bytes(b"this is not a PDF")
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    (jsonl / "kb.jsonl").write_text('{"title": "no text field"}\n')
    (tmp_path / "text.db").write_text("id,name\n1,Acme\n")
    (tmp_path / "damaged.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    return {
        "missing folder": ({"docs": tmp_path / "nope"}, DocumentError, "does not exist"),
        "a file, not a folder": ({"docs": tmp_path / "text.db"}, DocumentError, "not a folder"),
        "empty folder": ({"docs": empty}, DocumentError, "has no documents"),
        "encrypted PDF": ({"docs": encrypted}, EncryptedPDFError, "salaries.pdf: the PDF is enc"),
        "unreadable PDF": ({"docs": broken}, DocumentError, "scan.pdf: cannot read this PDF"),
        "bad JSONL record": ({"docs": jsonl}, DocumentError, "kb.jsonl: line 1: no text field"),
        "missing database": ({"db": tmp_path / "none.db"}, DatabaseError, "does not exist"),
        "not SQLite": ({"db": tmp_path / "text.db"}, DatabaseError, "not a SQLite database"),
        "damaged SQLite": ({"db": tmp_path / "damaged.db"}, DatabaseError, "opened read-only"),
        "nothing given": ({}, ContextError, "a documents folder, a database or both"),
        "zero budget": ({"docs": jsonl, "budget": 0}, ContextError, "positive token count"),
    }


def test_bad_input_gets_a_named_error(tmp_path, tokenizer):
    cases = bad_inputs(tmp_path)
    for name, (kwargs, error, words) in cases.items():
        with pytest.raises(error) as raised:  # strict: the first unreadable document stops it
            ContextBuilder(**kwargs, tokenizer=tokenizer, strict=True)
        assert words in str(raised.value), (name, str(raised.value))
        if "budget" not in kwargs:  # the error names the folder, file or document
            assert str(kwargs.get("docs") or kwargs.get("db") or "") in str(raised.value)
    assert (
        sha256(tmp_path / "damaged.db")
        == hashlib.sha256(b"SQLite format 3\x00" + b"\xff" * 200).hexdigest()
    )


# ------------------------------------------------------------------------------ commands
def test_context_build_end_to_end(tmp_path, docs, company_db, capsys, tiny_path):
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    digest = sha256(company_db)
    argv = ["context", "build", "--context_docs", str(docs), "--context_db", str(company_db)]
    argv += ["--dataset_path", str(data), "--context_budget", "700", "--context_top_k", "2"]
    assert main(argv) == 0
    out = tmp_path / "questions.ctx.jsonl"  # the default output: beside the dataset
    printed = capsys.readouterr().out
    assert "3 of 3 rows built" in printed and str(out) in printed
    assert "fiscal year starts" not in printed  # a summary, never privileged text
    built = read_rows(out)
    assert len(built) == 3 and sha256(company_db) == digest
    assert "The fiscal year starts on April 1st" in built[1]["privileged_context"]
    assert all(r["context_provenance"]["tokens"] <= 700 for r in built)
    assert len(to_dataset(built)) == 3  # `rlsd train --dataset_path` reads it

    again = ["--dataset_path", str(out), "--output_dir", str(tmp_path / "again")]
    assert main([*argv[:-4], *again]) == 2
    assert "already has a built context" in capsys.readouterr().err
    assert main(["context", "build", "--dataset_path", str(data)]) == 2
    assert "give --context_docs DIR, --context_db FILE or both" in capsys.readouterr().err
    assert (
        main(
            [
                "context",
                "build",
                "--context_docs",
                str(tmp_path / "nope"),
                "--dataset_path",
                str(data),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    other = tmp_path / "other" / "questions.ctx.jsonl"
    argv = ["context", "build", "--context_docs", str(docs), "--context_db", str(company_db)]
    argv += ["--dataset_path", str(data), "--output_dir", str(other.parent)]
    argv += ["--context_budget", "0", "--context_top_k", "1"]
    argv += [
        "--context_example_rows",
        "0",
        "--chunk_chars",
        "60",
        "--model_name_or_path",
        tiny_path,
    ]
    assert main(argv) == 0 and "(18 chunks)" in capsys.readouterr().out  # 9 at 1000 characters
    for row in read_rows(other):
        provenance = row["context_provenance"]
        assert provenance["budget"] is None and provenance["dropped"] == []
        sources = [p["source"] for p in provenance["kept"]]
        assert sources.count("document") <= 1 and "rows" not in sources
    assert main([*argv[:-1], str(tmp_path / "no-model")]) == 2
    assert "cannot load the tokenizer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as help_exit:
        main(["context", "build", "--help"])
    assert help_exit.value.code == 0 and "--context_top_k" in capsys.readouterr().out


def test_a_messy_folder_builds_with_a_summary(tmp_path, docs, capsys):
    """Unreadable documents are skipped, one line each naming it and the reason, then a
    summary and the list beside the output; pypdf's own messages stay off the console; with
    --strict the first one stops the build (exit 2) and nothing is written."""
    (docs / "latin1.md").write_bytes("Caf\xe9 policy".encode("latin-1"))
    whole = text_pdf(["Refund policy for resellers"])
    (docs / "truncated.pdf").write_bytes(whole[: len(whole) // 2])
    (docs / "empty.pdf").write_bytes(b"")
    (docs / "good.pdf").write_bytes(whole)
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    out = tmp_path / "built.jsonl"
    argv = ["context", "build", "--context_docs", str(docs), "--dataset_path", str(data)]
    argv += ["--out", str(out)]  # the previous release's spelling: still a file
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "skipped latin1.md: not UTF-8 text (byte 3)" in printed
    assert "skipped truncated.pdf: cannot read this PDF" in printed
    assert "skipped empty.pdf: an empty file, not a PDF" in printed
    assert "3 of 9 documents skipped (unreadable)" in printed  # 5 fixture files + 4 here
    assert "EOF marker" not in printed.replace("cannot read this PDF (PdfReadError: EOF", "")
    listed = (tmp_path / "built.jsonl.skipped.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == ["empty.pdf", "latin1.md", "truncated.pdf"]
    assert len(read_rows(out)) == 3
    assert any("Refund policy for resellers" in c.text for c in load_documents(docs).chunks)
    strict = tmp_path / "strict.jsonl"
    assert main([*argv[:-1], str(strict), "--context_strict"]) == 2
    assert "empty.pdf: an empty file" in capsys.readouterr().err and not strict.exists()


def test_train_flags_reach_the_builder(tmp_path, docs, company_db, tiny_path):
    from rlsd.cli import _build_context, parse_train_args

    argv = ["--context_docs", str(docs), "--context_db", str(company_db)]
    argv += ["--context_budget", "400", "--context_top_k", "1", "--context_example_rows", "0"]
    script, _, _ = parse_train_args(argv)
    train, held_out, provenance = _build_context(script, tiny_path, rows(), rows()[:1], tmp_path)
    assert [p["split"] for p in provenance] == ["train"] * 3 + ["eval"]
    assert all("context_provenance" not in r for r in train + held_out)  # into the run folder
    assert held_out[0]["privileged_context"] == train[0]["privileged_context"]
    for p in provenance:
        pieces = p["kept"] + p["dropped"]
        assert p["budget"] == 400 and p["tokens"] <= 400
        assert [x["source"] for x in pieces].count("document") <= 1
        assert "rows" not in [x["source"] for x in pieces] and "schema" in str(pieces)


CANARY = "CANARY-5b1d the quiet heron audits the ledger at dawn"


@pytest.mark.slow
def test_train_with_context_docs_keeps_the_canary_out_of_the_run_folder(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text(
        f"# Addition\n\nQ 1 2 3 4 5 6 7 8 plus one. {CANARY}.\n\n# Other\n\nNothing here.\n"
    )
    (docs / "faq.txt").write_text("Subtraction is not covered.\n")
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": [{"role": "user", "content": f"Q:{i}+1="}], "answer": str(i + 1)})
            + "\n"
            for i in range(8)
        )
    )
    command = [sys.executable, "-m", "rlsd.cli", "train", "--dataset_path", str(data)]
    command += ["--eval_dataset_path", str(data), "--context_docs", str(docs)]
    command += ["--context_budget", "150", "--teacher_template", "R:{privileged}\n{question}"]
    command += ["--max_steps", "2", "--save_steps", "1", "--per_device_train_batch_size", "16"]
    command += ["--max_completion_length", "16"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    secret = CANARY.split()[0]

    def train(out: Path, *extra: str) -> tuple[list[str], str]:
        """The files of the run folder holding the canary, and the console."""
        argv = [*command, "--output_dir", str(out), *extra]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (out / "checkpoint-2" / "rlsd_teacher").exists() and (out / "final").exists()
        found = [
            str(path.relative_to(out))
            for path in sorted(out.rglob("*"))
            if path.is_file() and secret.encode() in path.read_bytes()
        ]
        return found, done.stdout + done.stderr

    leaked, console = train(tmp_path / "run")
    assert leaked == [] and secret not in console  # no file of the run folder, nor the console
    provenance = [
        json.loads(line) for line in (tmp_path / "run" / "context_provenance.jsonl").open()
    ]
    assert len(provenance) == 16 and {p["split"] for p in provenance} == {"train", "eval"}
    assert all(  # yet the canary's chunk was in every row's privileged context
        any(k.get("chunk") == "handbook.md#0" for k in p["kept"]) for p in provenance
    )
    missing = ["train", "--dataset_path", str(data), "--context_docs", str(tmp_path / "nope")]
    assert main(missing) == 2  # a named error, before the model is loaded
    # The control: asked to, the run logs the privileged text, canary included.
    logged, _ = train(tmp_path / "logged", "--log_privileged", "True")
    assert logged == ["samples.jsonl"]
