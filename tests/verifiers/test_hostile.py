"""Hostile inputs: each scores 0, the host stays intact, and the next item scores normally.

Limits are kept small so the bombs are safe on a shared 2-core machine: RLIMIT_AS 256 MB,
NPROC 16 (binding because the sandbox drops root), and 1-2 s wall limits.
"""

import hashlib
import os
import socket
import sqlite3
import threading

import pytest

from rlsd.verifiers import get_verifier
from rlsd.verifiers.sandbox import isolation

GOOD = "def add(a, b):\n    return a + b"
TESTS = ["assert add(1, 2) == 3"]
needs_root = pytest.mark.skipif(
    not isolation().drop_privileges, reason="privilege drop needs the trainer to run as root"
)
needs_netns = pytest.mark.skipif("net" not in isolation().namespaces, reason="no net namespace")


@pytest.fixture
def code_fn():
    return get_verifier("code", time_limit=1.0, memory_mb=256, nproc=16, file_size_mb=1)


def score_then_good(fn, hostile: str) -> list:
    """Score a hostile program followed by a good one in the same batch."""
    return fn(None, [hostile + "\n" + GOOD, GOOD], tests=[TESTS, TESTS])


def test_infinite_loop(code_fn):
    assert score_then_good(code_fn, "while True:\n    pass") == [0.0, 1.0]


@needs_root
def test_fork_bomb_is_contained(code_fn):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    assert score_then_good(code_fn, bomb) == [0.0, 1.0]
    assert code_fn.score_one(GOOD, tests=TESTS) == 1.0


def test_memory_bomb(code_fn):
    bomb = "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))"
    assert score_then_good(code_fn, bomb) == [0.0, 1.0]


def test_huge_output_is_capped(code_fn):
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 1_000_000)"
    assert score_then_good(code_fn, flood) == [0.0, 1.0]
    fn = get_verifier("code", time_limit=1.0, file_size_mb=1)
    assert fn.score_one("print('y' * 50_000_000)", tests=[{"input": "", "output": "y"}]) == 0.0


@needs_root
def test_writes_outside_the_work_dir_fail(code_fn, tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("original")
    os.chmod(tmp_path, 0o755)  # the sandbox may see the file, but must not change it
    hostile = (
        f"open({str(sentinel)!r}, 'w').write('pwned')\nimport os\nos.remove({str(sentinel)!r})"
    )
    assert score_then_good(code_fn, hostile) == [0.0, 1.0]
    assert sentinel.read_text() == "original"


def test_parent_environment_is_not_readable(code_fn, monkeypatch):
    monkeypatch.setenv("RLSD_TEST_SECRET", "hunter2")
    hostile = (
        "import os\nfound = 'hunter2' in str(os.environ)\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n"
        "        found = found or b'hunter2' in open(f'/proc/{pid}/environ', 'rb').read()\n"
        "    except OSError:\n"
        "        pass\n"
        "assert found"
    )
    # The hostile part raises unless it found the secret, so a leak would score 1.
    assert code_fn(None, [hostile], tests=[["assert True"]]) == [0.0]
    assert code_fn.score_one(GOOD, tests=TESTS) == 1.0


@needs_netns
def test_no_network(code_fn):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    got = []
    threading.Thread(target=lambda: got.append(_accept(server)), daemon=True).start()
    hostile = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"
    assert code_fn(None, [hostile], tests=[["assert True"]]) == [0.0]
    server.close()
    assert got in ([], [None])
    assert code_fn.score_one(GOOD, tests=TESTS) == 1.0


def _accept(server):
    try:
        return server.accept()
    except OSError:
        return None


@needs_root
def test_killing_the_parent_fails(code_fn):
    hostile = (
        f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n"
        "os.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)"
    )
    code_fn(None, [hostile], tests=[["assert True"]])
    assert code_fn.score_one(GOOD, tests=TESTS) == 1.0  # and we are still alive


def test_forged_exit_does_not_pass(code_fn):
    assert code_fn.score_one("import os\nos._exit(0)\n" + GOOD, tests=TESTS) == 0.0
    assert code_fn.score_one("import sys\nsys.exit(0)\n" + GOOD, tests=TESTS) == 0.0


def test_sandbox_leaves_no_temporary_directory(code_fn, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code_fn.score_one("open('junk.txt', 'w').write('x')\n" + GOOD, tests=TESTS)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def sqlite_file(tmp_path):
    path = tmp_path / "shop.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE t(x INTEGER); INSERT INTO t VALUES (1), (2), (3);")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM t",
        "UPDATE t SET x = 0",
        "DROP TABLE t",
        "INSERT INTO t VALUES (4)",
        "SELECT x FROM t; DELETE FROM t",
        "ATTACH DATABASE '{other}' AS o",
        "PRAGMA user_version = 7",
        "WITH d AS (SELECT 1) DELETE FROM t",
        "VACUUM INTO '{other}'",
        "SELECT writefile('{other}', 'x')",
        "CREATE TABLE u AS SELECT x FROM t",
    ],
)
def test_sql_writes_are_refused_and_the_file_is_untouched(sqlite_file, tmp_path, query):
    other = tmp_path / "other.db"
    before = hashlib.sha256(sqlite_file.read_bytes()).hexdigest()
    fn = get_verifier("sql")
    reference = "SELECT x FROM t"
    rewards = fn(
        None,
        [query.format(other=other), reference],
        answer=[reference] * 2,
        database=[str(sqlite_file)] * 2,
    )
    assert rewards == [0.0, 1.0]
    assert hashlib.sha256(sqlite_file.read_bytes()).hexdigest() == before
    assert not other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.db"]


def test_sql_runaway_recursive_cte_is_stopped(sqlite_file):
    fn = get_verifier("sql", time_limit=0.5)
    runaway = (
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) FROM c"
    )
    cross = "SELECT count(*) FROM t a, t b, t c, t d, t e, t f, t g, t h, t i, t j, t k, t l, t m"
    reference = "SELECT count(*) FROM t"
    rewards = fn(
        None, [runaway, cross, reference], answer=[reference] * 3, database=[str(sqlite_file)] * 3
    )
    assert rewards == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "payload",
    [
        "[" * 100_000 + "]" * 100_000,  # deep nesting
        '{"a": ' * 5_000 + "1" + "}" * 5_000,
        '{"name": "' + "x" * 2_000_000 + '", "age": 1}',  # huge
    ],
)
def test_json_bombs_score_zero(payload):
    fn = get_verifier("json_schema")
    schema = {"type": ["object", "array"]}
    rewards = fn(None, [payload, '{"ok": true}'], schema=[schema, schema])
    assert rewards == [0.0, 1.0]
    assert fn.failures == {"timeout": 0, "exception": 0, "crash": 0}
