"""Loading and validating training data: JSONL, JSON, CSV, Parquet or a `datasets` folder.

Columns:
- `prompt` (required): text, or chat messages `[{"role": ..., "content": ...}, ...]`
  (in CSV a messages list is written as a JSON string);
- `answer`: the reference final answer (required by the answer-checking verifiers);
- `privileged_context` (optional): what the self-teacher sees (else `answer`);
- `teacher_prompt` (optional): replaces the whole teacher prompt;
- `verifier` (optional): routes the row to a verifier by name, plus that verifier's columns
  (`tests` for code, `schema` for json_schema, `database` for sql).

Validation runs over the whole file before training and reports every bad row at once,
each naming the file, the row (1-based; the line for JSONL) and the column. Files are only
read, never rewritten.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlsd.verifiers.registry import verifier_columns

MAX_ERRORS_SHOWN = 20


class UserError(Exception):
    """A mistake in what the user gave (data, configuration, flags, files, models), not a bug:
    the `rlsd` command prints the message alone and exits with status 2 (`--debug` shows the
    traceback). Its message says what was wrong, where, and what to do."""


class DataError(UserError, ValueError):
    """Bad training data: the message lists each problem with file, row and column."""


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN from pandas / CSV
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, dict)):
        return len(value) == 0
    return False


def _read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    rows, errors = [], []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(
                    f"{path}: line {line_no}: not valid JSON ({e.msg} at column {e.colno})"
                )
                continue
            if not isinstance(row, dict):
                errors.append(
                    f"{path}: line {line_no}: expected a JSON object, got {type(row).__name__}"
                )
                continue
            row["_line"] = line_no
            rows.append(row)
    return rows, errors


def _maybe_messages(value: Any) -> Any:
    """CSV cells holding a JSON list of messages become that list."""
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, list):
            return parsed
    return value


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a data file or `datasets` folder, validated (raises `DataError`)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    errors: list[str] = []
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if "train" not in loaded:
                raise DataError(f"{path}: a DatasetDict without a 'train' split ({list(loaded)})")
            loaded = loaded["train"]
        rows = [dict(r) for r in loaded]
    elif path.suffix in (".jsonl", ".ndjson"):
        rows, errors = _read_jsonl(path)
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        rows = data
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            rows = [{k: _maybe_messages(v) for k, v in r.items()} for r in csv.DictReader(f)]
        for i, r in enumerate(rows, start=2):  # line 1 is the header
            r["_line"] = i
    elif path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise DataError(
            f"{path}: unsupported format {path.suffix!r}; use .jsonl, .json, .csv, .parquet "
            "or a `datasets.save_to_disk` folder"
        )
    errors += validate_rows(rows, str(path))
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = (
            f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more"
            if len(errors) > MAX_ERRORS_SHOWN
            else ""
        )
        raise DataError(f"{len(errors)} problem(s) in {path}:\n  {shown}{more}")
    for r in rows:
        r.pop("_line", None)
    return rows


def _where(source: str, index: int, row: dict) -> str:
    line = row.get("_line")
    return f"{source}: row {index}" + (f" (line {line})" if line and line != index else "")


def validate_rows(rows: Iterable[dict[str, Any]], source: str = "<data>") -> list[str]:
    """Problems with `rows` as messages naming source, row (1-based) and column."""
    errors: list[str] = []
    rows = list(rows)
    if not rows:
        return [f"{source}: no rows"]
    first_kind: tuple[int, bool] | None = None  # (row, is chat) of the first valid prompt
    for index, row in enumerate(rows, start=1):
        where = _where(source, index, row)
        prompt = row.get("prompt")
        if isinstance(prompt, (str, list)) and not _empty(prompt):
            if first_kind is None:
                first_kind = (index, isinstance(prompt, list))
            elif first_kind[1] != isinstance(prompt, list):
                kinds = ("text", "chat messages")
                errors.append(
                    f"{where}: column 'prompt' is {kinds[isinstance(prompt, list)]} but row "
                    f"{first_kind[0]} is {kinds[first_kind[1]]}; use one kind for the whole file"
                )
        if "prompt" not in row:
            errors.append(f"{where}: column 'prompt' is missing")
        elif _empty(prompt):
            errors.append(f"{where}: column 'prompt' is empty")
        elif isinstance(prompt, list):
            for j, m in enumerate(prompt):
                if not isinstance(m, dict) or "role" not in m or "content" not in m:
                    errors.append(
                        f"{where}: column 'prompt': message {j} needs 'role' and 'content'"
                    )
                    break
            else:
                if not any(m["role"] == "user" for m in prompt):
                    errors.append(f"{where}: column 'prompt': no message with role 'user'")
        elif not isinstance(prompt, str):
            errors.append(f"{where}: column 'prompt' must be text or chat messages")
        verifier = row.get("verifier")
        if verifier is not None and not isinstance(verifier, str):
            errors.append(f"{where}: column 'verifier' must be a verifier name")
            continue
        needed = verifier_columns(verifier or "exact")
        for column in needed:
            if column not in row:
                needed_by = verifier or "exact"
                errors.append(
                    f"{where}: column {column!r} is missing (needed by verifier {needed_by!r})"
                )
            elif _empty(row[column]):
                needed_by = verifier or "exact"
                errors.append(
                    f"{where}: column {column!r} is empty (needed by verifier {needed_by!r})"
                )
        for column in ("privileged_context", "teacher_prompt"):
            if (
                column in row
                and row[column] is not None
                and not isinstance(row[column], (str, list))
            ):
                errors.append(f"{where}: column {column!r} must be text")
    return errors


def to_dataset(rows: list[dict[str, Any]]):
    """A `datasets.Dataset` of validated rows (columns absent from a row become None)."""
    from datasets import Dataset

    columns = sorted({k for r in rows for k in r})
    return Dataset.from_list([{k: r.get(k) for k in columns} for r in rows])
