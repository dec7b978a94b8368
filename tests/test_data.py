"""Bad data gets a clear error naming the file, the row and the column; files stay intact."""

import json

import pandas as pd
import pytest

from rlsd.data import DataError, read_rows, to_dataset

GOOD = {
    "prompt": [{"role": "user", "content": "Q:1+2="}],
    "answer": "3",
    "privileged_context": "1+2=3;A:3",
}


def write_jsonl(path, rows, raw_lines=()):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return path


def test_good_files_in_every_format(tmp_path):
    rows = [GOOD, {"prompt": [{"role": "user", "content": "Q:2+2="}], "answer": "4"}]
    assert read_rows(write_jsonl(tmp_path / "d.jsonl", rows))[1]["answer"] == "4"
    (tmp_path / "d.json").write_text(json.dumps(rows))
    assert len(read_rows(tmp_path / "d.json")) == 2
    pd.DataFrame([{"prompt": json.dumps(GOOD["prompt"]), "answer": "3"}]).to_csv(
        tmp_path / "d.csv", index=False
    )
    assert read_rows(tmp_path / "d.csv")[0]["prompt"] == GOOD["prompt"]  # messages parsed back
    pd.DataFrame([{"prompt": "Q:1+2=", "answer": "3"}]).to_parquet(tmp_path / "d.parquet")
    assert read_rows(tmp_path / "d.parquet")[0]["answer"] == "3"
    to_dataset(rows).save_to_disk(str(tmp_path / "folder"))
    assert len(read_rows(tmp_path / "folder")) == 2


@pytest.mark.parametrize(
    "row,message",
    [
        ({"answer": "3"}, "row 2: column 'prompt' is missing"),
        ({"prompt": "  ", "answer": "3"}, "row 2: column 'prompt' is empty"),
        ({"prompt": "Q:1+2="}, "row 2: column 'answer' is missing"),
        ({"prompt": "Q:1+2=", "answer": ""}, "row 2: column 'answer' is empty"),
        ({"prompt": [{"content": "hi"}], "answer": "3"}, "message 0 needs 'role' and 'content'"),
        (
            {"prompt": [{"role": "system", "content": "x"}], "answer": "3"},
            "no message with role 'user'",
        ),
        ({"prompt": 7, "answer": "3"}, "column 'prompt' must be text or chat messages"),
        (
            {"prompt": "write f", "verifier": "code"},
            "column 'tests' is missing (needed by verifier 'code')",
        ),
        ({"prompt": "json", "verifier": "json_schema", "schema": {}}, "column 'schema' is empty"),
        (
            {"prompt": "Q", "answer": "1", "privileged_context": 5},
            "column 'privileged_context' must be text",
        ),
        (
            {"prompt": "Q:1+2=", "answer": "3"},
            "row 2: column 'prompt' is text but row 1 is chat messages",
        ),
    ],
)
def test_each_malformed_row_gives_its_named_error(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, row])
    before = path.read_bytes()
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert path.read_bytes() == before  # nothing lost or rewritten


def test_invalid_json_line_and_all_errors_reported_at_once(tmp_path):
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [GOOD, {"prompt": GOOD["prompt"]}],
        raw_lines=["{not json", "[1, 2]"],
    )
    with pytest.raises(DataError) as info:
        read_rows(path)
    text = str(info.value)
    assert "3 problem(s)" in text
    assert "line 3: not valid JSON" in text and "line 4: expected a JSON object" in text
    assert "row 2: column 'answer' is missing" in text


def test_csv_rows_name_their_line(tmp_path):
    pd.DataFrame([{"prompt": "Q:1=", "answer": "1"}, {"prompt": "Q:2=", "answer": None}]).to_csv(
        tmp_path / "d.csv", index=False
    )
    with pytest.raises(DataError, match=r"row 2 \(line 3\): column 'answer' is empty"):
        read_rows(tmp_path / "d.csv")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported format"):
        read_rows(tmp_path / "d.txt")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows"):
        read_rows(tmp_path / "empty.jsonl")


def test_the_columns_a_verifier_needs_come_from_the_verifier_itself(tmp_path):
    """No second table: a registered verifier's declared columns are checked like a
    built-in's, and the built-in table matches what each verifier declares."""
    from rlsd.data import validate_rows
    from rlsd.verifiers import RewardFunction, register_verifier, verifier_columns

    assert verifier_columns("sql") == ("answer", "database")
    assert verifier_columns("format") == () and verifier_columns("routed") == ()
    register_verifier(
        "ticket_lookup",
        lambda: RewardFunction("ticket_lookup", lambda **row: 1.0, columns=("ticket_id",)),
    )
    rows = [{"prompt": "Which queue?", "verifier": "ticket_lookup"}]
    errors = validate_rows(rows, "tickets.jsonl")
    assert errors == [
        "tickets.jsonl: row 1: column 'ticket_id' is missing (needed by verifier 'ticket_lookup')"
    ]
