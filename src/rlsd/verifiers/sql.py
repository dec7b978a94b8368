"""`sql`: the completion's query and the reference query give the same result on SQLite.

Columns: `answer` is the reference SQL; `database` is a SQLite file path, or a string of SQL
that creates and fills the tables (built once per distinct script into a private temporary
file, removed at exit). Reward 1.0 when both results are equal as multisets of rows; order
matters only when the reference has a top-level-looking `ORDER BY` (a regex check, so an
`ORDER BY` inside a subquery also counts: a simplification). Column names are ignored, the
number of columns is not.

Safety: the database is opened read-only (`file:...?mode=ro`, `PRAGMA query_only`) and an
authorizer allows only reading (SELECT, READ, FUNCTION, RECURSIVE): writes, ATTACH, DETACH,
PRAGMA, schema changes and transactions are denied, so the file is never modified. Only one
statement starting with SELECT, WITH or VALUES is run. A progress handler stops any query
after `time_limit` seconds (runaway recursive CTEs, huge joins), and at most `max_rows` rows
are fetched. A bad, denied or runaway *completion* query scores 0; a failing *reference*
query is a verifier failure (exception), since the row itself is broken.

Extraction: the last ```sql fenced block, else any fenced block, else `<answer>`, else the
whole completion.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from functools import lru_cache, partial
from typing import Any

from rlsd.verifiers.base import RewardFunction
from rlsd.verifiers.extract import find_fenced, find_tag
from rlsd.verifiers.pool import Backend

_ALLOWED_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}
_COMMENT_RE = re.compile(r"\s*(?:--[^\n]*\n?|/\*.*?\*/)", re.DOTALL)
_QUERY_START_RE = re.compile(r"(?:select|with|values)\b", re.IGNORECASE)
_ORDER_BY_RE = re.compile(r"\border\s+by\b", re.IGNORECASE)

_script_dir: str | None = None
_script_lock = threading.Lock()


class QueryError(Exception):
    """The query was rejected, failed, ran too long or returned too many rows."""


def extract_query(completion: str) -> str:
    """The SQL in a completion (see the module docstring)."""
    return (
        find_fenced(completion, ("sql", "sqlite"))
        or find_fenced(completion)
        or find_tag(completion, "answer")
        or completion
    ).strip()


def _authorize(action: int, arg1: Any, arg2: Any, db_name: Any, source: Any) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def _script_database(script: str) -> str:
    """A read-only-openable file built from a SQL script (once per script per process)."""
    global _script_dir
    with _script_lock:
        if _script_dir is None:
            _script_dir = tempfile.mkdtemp(prefix="rlsd-sql-")
            atexit.register(shutil.rmtree, _script_dir, True)
        path = os.path.join(_script_dir, hashlib.sha256(script.encode()).hexdigest() + ".db")
        if not os.path.exists(path):
            partial_path = path + ".building"
            conn = sqlite3.connect(partial_path)
            try:
                conn.executescript(script)
                conn.commit()
            finally:
                conn.close()
            os.replace(partial_path, path)
        return path


def database_path(database: Any) -> str:
    """The file to open for a row's `database` value (a path, or a SQL script)."""
    if not isinstance(database, str) or not database.strip():
        raise ValueError(f"'database' must be a SQLite file path or a SQL script, got {database!r}")
    if "\n" not in database and ";" not in database:
        if not os.path.isfile(database):
            raise ValueError(f"'database' file {database!r} does not exist")
        return os.path.abspath(database)
    return _script_database(database)


def connect(path: str) -> sqlite3.Connection:
    """A read-only connection with the write-denying authorizer installed."""
    uri = "file:" + urllib.parse.quote(path) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    if hasattr(conn, "setlimit"):  # Python >= 3.11: cap string/blob sizes
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10_000_000)
    conn.set_authorizer(_authorize)
    return conn


def run_query(path: str, query: str, time_limit: float, max_rows: int) -> list[tuple[Any, ...]]:
    """The rows of one read-only query, or QueryError."""
    body = _COMMENT_RE.sub(" ", query).strip().rstrip(";").strip()
    if not _QUERY_START_RE.match(body):
        raise QueryError(f"only SELECT / WITH / VALUES queries are run, got {body[:60]!r}")
    conn = connect(path)
    deadline = time.monotonic() + time_limit
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        rows = conn.execute(body).fetchmany(max_rows + 1)
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError) as exc:
        late = time.monotonic() > deadline
        raise QueryError(("timed out: " if late else "") + f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    if len(rows) > max_rows:
        raise QueryError(f"more than {max_rows} rows")
    return [tuple(row) for row in rows]


@lru_cache(maxsize=1024)
def _reference_rows(
    path: str, query: str, time_limit: float, max_rows: int
) -> tuple[tuple[Any, ...], ...]:
    try:
        return tuple(run_query(path, query, time_limit, max_rows))
    except QueryError as exc:
        raise ValueError(f"the reference SQL fails: {exc} (query: {query[:200]!r})") from exc


def score_sql(
    completion: str,
    row: dict[str, Any],
    *,
    time_limit: float = 2.0,
    max_rows: int = 100_000,
) -> float:
    """1.0 when the completion's query returns the reference query's rows."""
    reference = row.get("answer")
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError(f"'answer' must hold the reference SQL query, got {reference!r}")
    path = database_path(row.get("database"))
    expected = _reference_rows(path, reference.strip(), time_limit, max_rows)
    try:
        got = run_query(path, extract_query(completion), time_limit, max_rows)
    except QueryError:
        return 0.0
    if len(got) != len(expected) or (got and len(got[0]) != len(expected[0])):
        return 0.0
    if _ORDER_BY_RE.search(reference):
        return float(got == list(expected))
    return float(Counter(got) == Counter(expected))


def sql_verifier(
    *,
    time_limit: float = 2.0,
    max_rows: int = 100_000,
    backend: Backend = "thread",
    **options: Any,
) -> RewardFunction:
    """The `sql` reward function (`time_limit` seconds per query); options go to
    `RewardFunction`.

    The reference results are cached per (database, query), so a GRPO group of completions
    for one prompt runs the reference once. A database file changed on disk during training
    keeps its cached reference results (a simplification).
    """
    score = partial(score_sql, time_limit=time_limit, max_rows=max_rows)
    return RewardFunction(
        "sql",
        score,
        columns=("answer", "database"),
        backend=backend,  # type: ignore[arg-type]
        timeout=max(10.0, 4 * time_limit),
        **options,
    )
