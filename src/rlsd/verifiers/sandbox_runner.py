"""The code sandbox's runner: trusted code that sets up the jail, then runs untrusted code.

`rlsd.verifiers.sandbox.run` starts `python -I <this file>` (inside bubblewrap when it can) and
writes one JSON payload to its stdin:

    source, mode ("stdio" | "asserts"), stdin, tests, per_test_s, limits (a `Limits` as a
    dict), uid (int to drop root to, or None), nonce, report_fd, preimport, pid_namespace

In order, the runner: drops its own folder from `sys.path` (it may be the package folder,
whose `code.py` would shadow the standard library's); pre-imports `preimport` (the stdlib may
be readable only before the uid drop); puts the test's stdin on fd 0 (an in-memory file);
sets the rlimits (address space, file size, open files, no core dumps, CPU seconds); drops
root to `uid` with no supplementary groups, or exits if it cannot; sets no-new-privileges and
PR_SET_PDEATHSIG; sets RLIMIT_NPROC (which binds only after the uid drop); reports `ready`.
Then it runs the program as `__main__` (stdio) or as module `solution` followed by each test
with `per_test_s` seconds each (asserts), writing `<nonce> <line>` reports to `report_fd`:
`ready`, `test <i> <0|1>`, `source-error`, `done`.

This file uses the standard library only: inside the sandbox rlsd itself is not importable.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
MB = 1024 * 1024


class _TestTimeout(BaseException):
    """Raised by SIGALRM when a test (or the program's import) runs past `per_test_s`."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _TestTimeout()


def preimport(names: list[str]) -> None:
    """Import modules while they are still readable (before the uid drop)."""
    for name in names:
        try:
            __import__(name)
        except Exception:
            pass


def replace_stdin(data: str) -> None:
    """Make fd 0 (and `sys.stdin`) an in-memory file holding `data`."""
    fd = os.memfd_create("stdin")
    os.write(fd, data.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    os.dup2(fd, 0)
    os.close(fd)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))


def set_limits(limits: dict[str, Any]) -> None:
    """Every rlimit but NPROC (which must follow the uid drop to bind)."""
    for res, value in (
        (resource.RLIMIT_AS, limits["memory_mb"] * MB),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * MB),
        (resource.RLIMIT_NOFILE, limits["open_files"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(res, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))


def drop_privileges(uid: int) -> None:
    """Become `uid` (group `uid`, no supplementary groups); 65534 if `uid` is refused."""
    os.setgroups([])
    try:
        os.setgid(uid)
        os.setuid(uid)
    except OSError:
        os.setgid(65534)
        os.setuid(65534)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("could not drop privileges")


def run_asserts(
    source: str, tests: list[str], per_test_s: float, report: Callable[[str], None]
) -> None:
    """Run `source` as module `solution`, then each test in its namespace."""
    namespace: dict[str, Any] = {"__name__": "solution"}
    try:
        signal.setitimer(signal.ITIMER_REAL, per_test_s)
        exec(compile(source, "solution.py", "exec"), namespace)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException:
        report("source-error")
        raise SystemExit(1) from None
    for i, test in enumerate(tests):
        ok = False
        try:
            signal.setitimer(signal.ITIMER_REAL, per_test_s)
            exec(compile(test, f"test_{i}.py", "exec"), namespace)
            ok = True
        except BaseException:
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        report(f"test {i} {int(ok)}")


def main() -> None:
    del sys.path[0]  # this file's folder
    payload = json.loads(sys.stdin.buffer.read())
    nonce, fd = payload.pop("nonce"), payload.pop("report_fd")

    def report(line: str) -> None:
        os.write(fd, f"{nonce} {line}\n".encode())

    preimport(payload["preimport"])
    replace_stdin(payload.get("stdin", ""))
    set_limits(payload["limits"])
    if payload["uid"] is not None:
        drop_privileges(payload["uid"])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries gain nothing
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by setuid, so set after it
    if os.getppid() == 1 and not payload["pid_namespace"]:
        raise SystemExit("parent died")
    nproc = payload["limits"]["nproc"]
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    source, tests = payload.pop("source"), payload.pop("tests", [])
    signal.signal(signal.SIGALRM, _on_alarm)
    report("ready")
    if payload["mode"] == "stdio":
        exec(compile(source, "solution.py", "exec"), {"__name__": "__main__"})
    else:
        run_asserts(source, tests, payload["per_test_s"], report)
    sys.stdout.flush()
    report("done")


if __name__ == "__main__":
    main()
