"""Reading a folder of documents and splitting it into chunks for retrieval.

Formats (by extension, case-insensitive): `.md`/`.markdown`, `.txt`, `.html`/`.htm`, `.pdf`
(text extracted with pypdf) and `.jsonl` (one record per line: a `text`, `content`, `body` or
`passage` field, and an optional `title`). The folder is walked recursively in sorted order;
hidden files and folders (a name starting with `.`) and other extensions are skipped.

Each document becomes *sections* (a heading and its paragraphs: a markdown or HTML heading, a
PDF page, a JSONL record; a `.txt` file is one section), and each section becomes chunks of
whole paragraphs of at most `max_chars` characters, heading included. A chunk never spans two
sections, so it never mixes two headings, pages or records; a paragraph longer than a chunk is
split at sentence ends, and a sentence longer than a chunk at spaces. Each chunk starts with
its heading path (`Glossary > Active customer`), which BM25 then matches too.

Unreadable documents (a file that is not UTF-8, a truncated, empty or password-protected
PDF, a JSONL line that is not JSON) are skipped, each with its reason (`load_documents`
returns them), so that one bad file in a folder of thousands does not stop the build;
`strict=True` stops at the first instead. pypdf's own log messages (e.g. "EOF marker not
found") are kept off the console: the reason says what went wrong.

Simplifications: HTML is reduced to its text (tables become rows of cells, nothing else of the
layout survives); PDF text is whatever pypdf extracts (a scanned PDF has none and yields no
chunks; a password-protected one is unreadable unless its user password is empty); a file
that is not UTF-8 is unreadable, not guessed at.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from rlsd.context.errors import DocumentError, EncryptedPDFError

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".jsonl")
JSONL_TEXT_FIELDS = ("text", "content", "body", "passage")
DEFAULT_MAX_CHARS = 1000
_MAX_HEADING_CHARS = 200

_MD_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?;:])\s+")

Section = tuple[str, list[str]]  # (heading path, paragraphs)


@dataclass(frozen=True)
class Chunk:
    """A piece of one document: `document` is its path relative to the folder (POSIX
    separators), `index` its position in the document (0-based), `text` what is retrieved and
    shown to the teacher (heading path first)."""

    document: str
    index: int
    text: str

    @property
    def id(self) -> str:
        """`document#index`: stable as long as the document does not change."""
        return f"{self.document}#{self.index}"


# ------------------------------------------------------------------------------- chunking
def _pieces(paragraph: str, max_chars: int) -> list[str]:
    """`paragraph` cut at sentence ends (then at spaces, then anywhere) into parts of at most
    `max_chars` characters."""
    if len(paragraph) <= max_chars:
        return [paragraph]
    parts: list[str] = []
    for sentence in _SENTENCE_END_RE.split(paragraph):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            parts.append(sentence[:cut].rstrip())
            sentence = sentence[cut:].lstrip()
        if parts and len(parts[-1]) + 1 + len(sentence) <= max_chars:
            parts[-1] += " " + sentence
        elif sentence:
            parts.append(sentence)
    return parts


def chunk_sections(document: str, sections: list[Section], max_chars: int) -> list[Chunk]:
    """Chunks of whole paragraphs, at most `max_chars` characters each (heading line included),
    never across two sections. Paragraphs are joined with a blank line."""
    if max_chars < 50:
        raise ValueError(f"max_chars must be at least 50, got {max_chars}")
    chunks: list[Chunk] = []
    for heading, paragraphs in sections:
        heading = heading[:_MAX_HEADING_CHARS]
        head = heading + "\n" if heading else ""
        room = max_chars - len(head)
        body: list[str] = []
        for paragraph in paragraphs:
            for piece in _pieces(paragraph, room):
                if body and len("\n\n".join([*body, piece])) > room:
                    chunks.append(Chunk(document, len(chunks), head + "\n\n".join(body)))
                    body = []
                body.append(piece)
        if body:
            chunks.append(Chunk(document, len(chunks), head + "\n\n".join(body)))
    return chunks


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each with its whitespace collapsed."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


# -------------------------------------------------------------------------------- formats
def markdown_sections(text: str) -> list[Section]:
    """Sections of a markdown text: each heading starts one, named by its heading path. Lines
    inside fenced code blocks are never headings; a code block stays one paragraph."""
    sections: list[Section] = [("", [])]
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    fence = ""

    def flush() -> None:
        if any(line.strip() for line in lines):
            sections[-1][1].append("\n".join(lines))  # list items keep their lines
        lines.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if fence:
            lines.append(line)
            if stripped.startswith(fence):
                sections[-1][1].append("\n".join(lines).strip())
                lines.clear()
                fence = ""
            continue
        if stripped.startswith(("```", "~~~")):
            flush()
            fence = stripped[:3]
            lines.append(line)
            continue
        heading = _MD_HEADING_RE.match(stripped)
        if heading:
            flush()
            level = len(heading.group(1))
            path = [(lv, name) for lv, name in path if lv < level] + [(level, heading.group(2))]
            sections.append((" > ".join(name for _, name in path), []))
        elif not stripped:
            flush()
        else:
            lines.append(stripped)
    if fence:  # an unclosed fence: keep its lines
        sections[-1][1].append("\n".join(lines).strip())
    else:
        flush()
    return [s for s in sections if s[1]]


class _HTMLText(HTMLParser):
    """Headings and text blocks of an HTML page (script, style and head content skipped)."""

    BLOCKS = {
        "p", "div", "li", "tr", "br", "section", "article", "table", "ul", "ol", "pre",
        "blockquote", "dt", "dd", "header", "footer", "main", "nav", "aside", "hr", "body",
    }  # fmt: skip
    SKIPPED = {"script", "style", "head", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = [("", [])]
        self.path: list[tuple[int, str]] = []
        self.text: list[str] = []
        self.heading_level = 0
        self.skipping = 0

    def _flush(self) -> None:
        text = " ".join("".join(self.text).split())
        self.text = []
        if not text:
            return
        if self.heading_level:
            level = self.heading_level
            self.path = [(lv, name) for lv, name in self.path if lv < level] + [(level, text)]
            self.sections.append((" > ".join(name for _, name in self.path), []))
        else:
            self.sections[-1][1].append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIPPED:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading_level = int(tag[1])
        elif tag in self.BLOCKS:
            self._flush()
        elif tag in ("td", "th"):
            self.text.append(" | " if self.text else "")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading_level = 0
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.text.append(data)


def html_sections(text: str) -> list[Section]:
    """Sections of an HTML page: each `h1`-`h6` starts one; block elements are paragraphs."""
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    parser._flush()
    return [s for s in parser.sections if s[1]]


@contextmanager
def _quiet_pypdf():
    """pypdf logs and warns about damaged files on its own (to the console); the error we
    raise says it once, so its messages are held back while a PDF is read."""
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def pdf_sections(path: Path) -> list[Section]:
    """One section per PDF page (`page N`), its paragraphs from pypdf's text."""
    with _quiet_pypdf():
        return _pdf_sections(path)


def _pdf_sections(path: Path) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if path.stat().st_size == 0:
        raise DocumentError(f"{path}: an empty file, not a PDF; repair or remove it")
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise EncryptedPDFError(
                f"{path}: the PDF is encrypted (password-protected); rlsd cannot read it. "
                "Decrypt it first (e.g. `qpdf --decrypt --password=... in.pdf out.pdf`) or "
                "remove it from the folder."
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except EncryptedPDFError:
        raise
    except (PyPdfError, OSError, ValueError, KeyError, TypeError) as e:
        raise DocumentError(
            f"{path}: cannot read this PDF ({type(e).__name__}: {e}); repair or remove it"
        ) from e
    return [(f"page {i}", _paragraphs(text)) for i, text in enumerate(pages, start=1) if text]


def jsonl_sections(path: Path, text: str) -> list[Section]:
    """One section per JSONL record (its `title`, else `line N`)."""
    sections: list[Section] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DocumentError(f"{path}: line {line_no}: not valid JSON ({e.msg})") from e
        if isinstance(record, str):
            body, title = record, ""
        elif isinstance(record, dict):
            field = next((f for f in JSONL_TEXT_FIELDS if isinstance(record.get(f), str)), None)
            if field is None:
                raise DocumentError(
                    f"{path}: line {line_no}: no text field; give one of "
                    f"{', '.join(JSONL_TEXT_FIELDS)} (and optionally 'title')"
                )
            body, title = record[field], str(record.get("title") or "")
        else:
            raise DocumentError(
                f"{path}: line {line_no}: expected a JSON object or string, got "
                f"{type(record).__name__}"
            )
        sections.append((title or f"line {line_no}", _paragraphs(body)))
    return sections


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DocumentError(
            f"{path}: not UTF-8 text (byte {e.start}); convert it to UTF-8 or remove it"
        ) from e
    except OSError as e:
        raise DocumentError(f"{path}: cannot be read ({e.strerror})") from e


def document_sections(path: Path) -> list[Section]:
    """The sections of one document, by its extension."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return pdf_sections(path)
    text = _read_text(path)
    if suffix in (".md", ".markdown"):
        return markdown_sections(text)
    if suffix in (".html", ".htm"):
        return html_sections(text)
    if suffix == ".jsonl":
        return jsonl_sections(path, text)
    return [("", _paragraphs(text))]


def document_files(folder: str | Path) -> list[Path]:
    """The supported files under `folder`, recursively, in sorted order (hidden ones skipped).
    A missing folder, a file, or a folder without any supported file is a `DocumentError`."""
    root = Path(folder)
    if not root.exists():
        raise DocumentError(f"documents folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DocumentError(f"{str(root)!r} is not a folder: give the folder of the documents")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUPPORTED_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DocumentError(
            f"documents folder {str(root)!r} has no documents: rlsd reads "
            f"{', '.join(SUPPORTED_SUFFIXES)} files (hidden files are skipped)"
        )
    return files


@dataclass
class Documents:
    """What `load_documents` read: the chunks, the number of documents found, and the
    `(document, reason)` of each one skipped as unreadable."""

    chunks: list[Chunk]
    files: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """`3 of 1,204 documents skipped (unreadable)`, or that none was."""
        if not self.skipped:
            return f"{self.files:,} documents read, none skipped"
        return f"{len(self.skipped):,} of {self.files:,} documents skipped (unreadable)"


def load_documents(
    folder: str | Path, max_chars: int = DEFAULT_MAX_CHARS, strict: bool = False
) -> Documents:
    """Every chunk of every readable document under `folder`, in file order then position;
    an unreadable one is skipped with its reason (`strict`: a `DocumentError` instead). A
    folder with no text at all is a `DocumentError` either way."""
    root = Path(folder)
    chunks: list[Chunk] = []
    skipped: list[tuple[str, str]] = []
    files = document_files(root)
    for path in files:
        name = path.relative_to(root).as_posix()
        try:
            sections = document_sections(path)
        except DocumentError as e:
            if strict:
                raise
            skipped.append((name, str(e).removeprefix(f"{path}: ")))
            continue
        chunks += chunk_sections(name, sections, max_chars)
    if not chunks:
        example = f"; {len(skipped)} skipped, e.g. {': '.join(skipped[0])}" if skipped else ""
        raise DocumentError(
            f"documents folder {str(root)!r}: its {len(files)} document(s) hold no readable "
            f"text (a scanned PDF needs OCR first){example}"
        )
    return Documents(chunks, len(files), skipped)


def read_documents(folder: str | Path, max_chars: int = DEFAULT_MAX_CHARS) -> list[Chunk]:
    """Every chunk of every document under `folder`, stopping at the first unreadable one
    (`load_documents(..., strict=True).chunks`)."""
    return load_documents(folder, max_chars, strict=True).chunks
