"""A SQLite database as privileged context: its schema and a few example rows.

The file is opened read-only (`file:...?mode=ro`, `PRAGMA query_only`, and the `sql`
verifier's authorizer, which allows only reading: `rlsd.verifiers.sql.connect`), so it is
never modified. The schema is the `CREATE TABLE` / `CREATE VIEW` text SQLite keeps in
`sqlite_master`, which holds the column comments (`-- ...`, `/* ... */`) as they were written.

Which tables a row touches:
- in a gold SQL query, the tables sqlglot finds (common table expressions left out); a query
  sqlglot cannot parse falls back to the name matching below;
- in a question, the tables whose name appears as a word (`order_items` also as "order items",
  and without a final "s"), and the tables of a column whose name appears, when no other table
  has a column of that name (`id`, `name` would match everything).

Simplifications: no indexes or triggers in the schema; example rows are the first rows SQLite
returns (`LIMIT n`, deterministic for a given file), long values cut to 40 characters.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from rlsd.context.errors import DatabaseError

SQLITE_HEADER = b"SQLite format 3\x00"
_MAX_VALUE_CHARS = 40


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = " ".join(str(value).split())
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def _word_re(phrase: str) -> re.Pattern[str]:
    return re.compile(r"(?<![^\W_])" + re.escape(phrase) + r"(?![^\W_])", re.IGNORECASE)


def sql_words(sql: str) -> str:
    """The names (tables, columns, aliases longer than one letter) and literal values of a
    query, for retrieval: its keywords (SELECT, ORDER BY, COUNT) would match any document that
    shows SQL. The query itself when sqlglot cannot parse it."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    try:
        trees = [t for t in sqlglot.parse(sql, read="sqlite") if t is not None]
    except SqlglotError:
        return sql
    words = [
        str(node.this)
        for tree in trees
        for node in tree.walk()
        if isinstance(node, (exp.Identifier, exp.Literal)) and len(str(node.this)) > 1
    ]
    return " ".join(words)


class Database:
    """A SQLite file opened read-only: `tables` (name -> DDL), `columns` (name -> column
    names), `tables_in_sql`, `tables_in_text` and `example_rows`. Use it as a context manager
    or call `close()`."""

    def __init__(self, path: str | Path):
        from rlsd.verifiers.sql import connect

        self.path = Path(path)
        where = str(self.path)
        if not self.path.exists():
            raise DatabaseError(f"database {where!r} does not exist")
        if not self.path.is_file():
            raise DatabaseError(f"database {where!r} is not a file: give a SQLite database file")
        try:
            with self.path.open("rb") as f:
                header = f.read(len(SQLITE_HEADER))
        except OSError as e:
            raise DatabaseError(f"database {where!r} cannot be read ({e.strerror})") from e
        if header != SQLITE_HEADER:
            raise DatabaseError(
                f"database {where!r} is not a SQLite database (its first bytes are not "
                "'SQLite format 3'); rlsd reads SQLite files only (export other databases "
                "to SQLite first)"
            )
        try:
            self._conn = connect(str(self.path.resolve()))
            master = self._conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
            ).fetchall()
            self.tables: dict[str, str] = {name: sql.strip() for name, sql in master if sql}
            self.columns: dict[str, list[str]] = {}
            for name in self.tables:
                cursor = self._conn.execute(f"SELECT * FROM {_quote(name)} LIMIT 0")
                self.columns[name] = [d[0] for d in cursor.description]
        except sqlite3.Error as e:
            if hasattr(self, "_conn"):
                self._conn.close()
            raise DatabaseError(
                f"database {where!r} cannot be opened read-only ({type(e).__name__}: {e}); "
                "a damaged file, or a WAL database whose -wal/-shm files are missing: "
                "checkpoint it (`PRAGMA journal_mode=DELETE`) into one file"
            ) from e
        self._rows: dict[tuple[str, int], str] = {}

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _table(self, name: str) -> str | None:
        """The database's spelling of table `name` (SQLite names are case-insensitive)."""
        lowered = name.lower()
        return next((t for t in self.tables if t.lower() == lowered), None)

    def tables_in_sql(self, sql: str) -> list[str]:
        """The database's tables a query reads, in the order sqlglot walks it (the outer query
        first); the name matching of `tables_in_text` when sqlglot cannot parse it."""
        import sqlglot
        from sqlglot import exp
        from sqlglot.errors import SqlglotError

        try:
            trees = [t for t in sqlglot.parse(sql, read="sqlite") if t is not None]
        except SqlglotError:
            return self.tables_in_text(sql)
        found: list[str] = []
        for tree in trees:
            ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
            for table in tree.find_all(exp.Table):
                name = self._table(table.name) if table.name.lower() not in ctes else None
                if name and name not in found:
                    found.append(name)
        return found

    def tables_in_text(self, text: str) -> list[str]:
        """The tables a question names, directly or by a column only that table has, in order
        of first mention (ties: schema order)."""
        owners: dict[str, list[str]] = {}
        for table, columns in self.columns.items():
            for column in columns:
                owners.setdefault(column.lower(), []).append(table)
        first: dict[str, int] = {}
        for table, columns in self.columns.items():
            distinct = [c for c in columns if len(owners[c.lower()]) == 1 and len(c) > 2]
            names = {table, table.replace("_", " ")}
            names |= {n[:-1] for n in names if n.lower().endswith("s") and len(n) > 3}
            names |= {*distinct, *(c.replace("_", " ") for c in distinct)}
            positions = [m.start() for n in names if (m := _word_re(n).search(text))]
            if positions:
                first[table] = min(positions)
        order = list(self.tables)
        return sorted(first, key=lambda t: (first[t], order.index(t)))

    def example_rows(self, table: str, n: int = 3) -> str:
        """`n` rows of `table` as text: a header line of column names, then one line per row
        (cells separated by ` | `); empty when the table has no rows."""
        key = (table, n)
        if key not in self._rows:
            try:
                rows = self._conn.execute(f"SELECT * FROM {_quote(table)} LIMIT ?", (n,))
                lines = [" | ".join(_cell(v) for v in row) for row in rows.fetchall()]
            except sqlite3.Error as e:  # a view over a missing table, for instance
                raise DatabaseError(
                    f"database {str(self.path)!r}: table {table!r} cannot be read ({e})"
                ) from e
            header = " | ".join(self.columns[table])
            self._rows[key] = "\n".join([header, *lines]) if lines else ""
        return self._rows[key]
