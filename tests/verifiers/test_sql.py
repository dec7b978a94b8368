"""`sql`: result multisets, ORDER BY, read-only enforcement and runaway queries."""

import sqlite3

import pytest

from rlsd.verifiers import get_verifier
from rlsd.verifiers.sql import extract_query

SCRIPT = """
CREATE TABLE emp(id INTEGER, name TEXT, dept TEXT, salary REAL);
INSERT INTO emp VALUES (1, 'ann', 'eng', 100), (2, 'bob', 'eng', 90), (3, 'cid', 'ops', 90);
"""


@pytest.fixture
def db_file(tmp_path):
    path = tmp_path / "emp.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCRIPT)
    conn.commit()
    conn.close()
    return str(path)


def test_extract_query():
    assert extract_query("```sql\nSELECT 1;\n```") == "SELECT 1;"
    assert extract_query(" SELECT 2 ") == "SELECT 2"


def test_equivalent_queries_and_near_misses():
    fn = get_verifier("sql")
    reference = "SELECT name FROM emp WHERE salary = 90"
    completions = [
        "SELECT name FROM emp WHERE salary < 100",  # same rows, different query
        "SELECT e.name FROM emp AS e WHERE e.id IN (2, 3) ORDER BY name DESC",
        "-- comment\nSELECT name FROM emp WHERE salary <= 90;",
        "SELECT name FROM emp",  # extra row
        "SELECT name, id FROM emp WHERE salary = 90",  # extra column
        "SELECT DISTINCT dept FROM emp",  # same count, other values
        "SELEC name FROM emp",  # syntax error: 0, not a failure
    ]
    n = len(completions)
    rewards = fn(None, completions, answer=[reference] * n, database=[SCRIPT] * n)
    assert rewards == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert fn.failures == {"timeout": 0, "exception": 0, "crash": 0}


def test_multiset_counts_duplicates_and_order_by_matters(db_file):
    fn = get_verifier("sql")
    dup = fn.score_one(
        "SELECT DISTINCT dept FROM emp", answer="SELECT dept FROM emp", database=db_file
    )
    assert dup == 0.0
    ordered = "SELECT id FROM emp ORDER BY id DESC"
    assert fn.score_one("SELECT id FROM emp ORDER BY -id", answer=ordered, database=db_file) == 1.0
    assert fn.score_one("SELECT id FROM emp ORDER BY id", answer=ordered, database=db_file) == 0.0


def test_broken_reference_is_a_failure_not_a_zero():
    fn = get_verifier("sql")
    assert fn(None, ["SELECT 1"], answer=["SELECT nope FROM emp"], database=[SCRIPT]) == [0.0]
    assert fn.failures["exception"] == 1
    assert "reference SQL fails" in fn.last_errors[-1]
