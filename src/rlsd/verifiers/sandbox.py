"""Running untrusted Python in a separate, limited process.

`run(payload, limits)` starts `python -I -c RUNNER` in a fresh process (never in the trainer's)
and returns its (size-capped) stdout, stderr and report lines. The runner is trusted code that
reads the payload from stdin, sets up the jail and only then executes the untrusted source:

- resource limits (setrlimit): address space (`memory_mb`), CPU seconds, file size (also caps
  stdout/stderr, which go to files), open files, core dumps off, and process count (NPROC);
- privileges: when the trainer runs as root (CI does), RLIMIT_NPROC would not bind, so the
  runner drops to an unprivileged uid/gid (a per-run uid in 60001-64999, falling back to 65534
  "nobody") with no supplementary groups. That uid cannot write the host's files, read other
  processes' `/proc/<pid>/environ`, or signal the trainer;
- namespaces, where `unshare` works: a new network namespace (no interfaces but a down
  loopback: no network at all), a PID namespace with its own `/proc` (the trainer's processes
  are invisible, and when the runner exits every process it forked dies with it) and an IPC
  namespace. As non-root this needs unprivileged user namespaces (`--user --map-root-user`);
  `isolation()` reports what this machine allows;
- a fresh temporary working directory (also HOME and TMPDIR) deleted afterwards;
- a scrubbed environment (PATH, HOME, TMPDIR, LANG only);
- a wall-clock limit: the whole process group is SIGKILLed when it passes, and the runner
  carries PR_SET_PDEATHSIG so it dies if its parent does.

What this does NOT protect against (read before pointing it at hostile users):
- It is not a security boundary like a VM, gVisor or seccomp: kernel bugs, and anything the
  unprivileged uid may do, remain possible. No syscall filtering is done.
- Without root and without user namespaces, code runs as the trainer's own user: it can then
  write (or delete) any file that user can, read its environment via /proc, signal it, and use
  the network. `isolation()` says which case applies.
- World-writable places (/tmp, /dev/shm) can be written (each file capped by RLIMIT_FSIZE);
  world-readable files (e.g. the dataset, if readable) can be read.
- Concurrent runs with the same uid share the NPROC budget (uids rotate to make this rare).
- Reward forging inside the process: assert results are reported by the runner in the same
  process, so code that introspects the runner's frames can find the per-run nonce and forge
  them. stdin/stdout tests are compared by the parent and cannot be forged this way.
- CPU and memory use up to the limits, times the number of parallel runs.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass

# Imported by the runner before dropping privileges: the interpreter's stdlib may live under
# a directory only root can read (e.g. /root/.pyenv), and warm modules start faster.
PREIMPORT: tuple[str, ...] = (
    "abc",
    "array",
    "bisect",
    "cmath",
    "collections",
    "copy",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "io",
    "itertools",
    "json",
    "math",
    "numbers",
    "operator",
    "random",
    "re",
    "socket",
    "statistics",
    "string",
    "struct",
    "textwrap",
    "time",
    "typing",
    "unicodedata",
)

_UID_RANGE = (60001, 64999)
_uid_counter = itertools.count(os.getpid() * 7919)
_uid_lock = threading.Lock()


@dataclass(frozen=True)
class Limits:
    """Per-run limits. `wall_s` is wall-clock for the whole run (startup included)."""

    wall_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    nproc: int = 16
    file_size_mb: int = 16
    open_files: int = 64
    output_bytes: int = 1_000_000  # how much stdout/stderr the parent reads back


@dataclass(frozen=True)
class Isolation:
    """What this machine allows: the `unshare` prefix, its namespaces, and the uid drop."""

    prefix: tuple[str, ...]
    namespaces: tuple[str, ...]
    drop_privileges: bool


@dataclass
class RunResult:
    """What came back from one run. `reports` are the runner's nonce-checked report lines."""

    returncode: int | None
    stdout: str
    stderr: str
    reports: list[str]
    timed_out: bool

    @property
    def started(self) -> bool:
        """The runner reached the untrusted code (else the sandbox itself failed)."""
        return "ready" in self.reports


RUNNER = r"""
def _runner():
    import ctypes, io, json, os, resource, signal, sys
    payload = json.loads(sys.stdin.buffer.read())
    nonce, fd = payload.pop("nonce"), payload.pop("report_fd")
    def report(line):
        os.write(fd, (nonce + " " + line + "\n").encode())
    for name in payload["preimport"]:
        try:
            __import__(name)
        except Exception:
            pass
    data = payload.get("stdin", "").encode()
    with open("stdin.txt", "wb") as f:
        f.write(data)
    stdin_fd = os.open("stdin.txt", os.O_RDONLY)
    os.unlink("stdin.txt")
    os.dup2(stdin_fd, 0)
    os.close(stdin_fd)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    lim = payload["limits"]
    mb = 1024 * 1024
    for res, value in ((resource.RLIMIT_AS, lim["memory_mb"] * mb),
                       (resource.RLIMIT_FSIZE, lim["file_size_mb"] * mb),
                       (resource.RLIMIT_NOFILE, lim["open_files"]),
                       (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    uid = payload["uid"]
    libc = ctypes.CDLL(None, use_errno=True)
    if uid is not None:
        os.setgroups([])
        try:
            os.setgid(uid)
            os.setuid(uid)
        except OSError:
            os.setgid(65534)
            os.setuid(65534)
        if os.getuid() == 0 or os.geteuid() == 0:
            raise SystemExit("could not drop privileges")
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (cleared by setuid, so set it after)
    if os.getppid() == 1 and not payload["pid_namespace"]:
        raise SystemExit("parent died")
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
    source, tests = payload.pop("source"), payload.pop("tests", [])
    per_test_s = payload["per_test_s"]
    class _Timeout(BaseException):
        pass
    def _alarm(signum, frame):
        raise _Timeout()
    signal.signal(signal.SIGALRM, _alarm)
    report("ready")
    if payload["mode"] == "stdio":
        exec(compile(source, "solution.py", "exec"), {"__name__": "__main__"})
        sys.stdout.flush()
        report("done")
        return
    namespace = {"__name__": "solution"}
    try:
        signal.setitimer(signal.ITIMER_REAL, per_test_s)
        exec(compile(source, "solution.py", "exec"), namespace)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException:
        report("source-error")
        raise SystemExit(1)
    for i, test in enumerate(tests):
        ok = False
        try:
            signal.setitimer(signal.ITIMER_REAL, per_test_s)
            exec(compile(test, "test_%d.py" % i, "exec"), namespace)
            ok = True
        except BaseException:
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        report("test %d %d" % (i, ok))
    sys.stdout.flush()
    report("done")
_runner()
"""


def _probe(prefix: tuple[str, ...]) -> bool:
    try:
        done = subprocess.run(
            [*prefix, "true"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe once which namespaces `unshare` can create here, and whether we can drop root."""
    root = os.geteuid() == 0
    user = () if root else ("--user", "--map-root-user")
    full = ("unshare", *user, "--kill-child", "--net", "--pid", "--mount-proc", "--ipc")
    candidates = [
        (full, ("net", "pid", "ipc", "mount")),
        (("unshare", *user, "--net"), ("net",)),
    ]
    for prefix, namespaces in candidates:
        if shutil.which("unshare") and _probe(prefix):
            return Isolation(prefix, namespaces, root)
    return Isolation((), (), root)


def _next_uid() -> int:
    with _uid_lock:
        low, high = _UID_RANGE
        return low + next(_uid_counter) % (high - low + 1)


def _kill_uid(uid: int) -> None:
    """Kill every process left running as `uid` (only needed without a PID namespace)."""
    code = "import os, signal; os.kill(-1, signal.SIGKILL)"
    subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        user=uid,
        group=uid,
        extra_groups=[],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=10,
        env={},
        check=False,
    )


def _read(path: str, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def run(
    source: str,
    *,
    mode: str = "stdio",
    stdin: str = "",
    tests: list[str] | None = None,
    per_test_s: float = 2.0,
    limits: Limits = Limits(),
) -> RunResult:
    """Run `source` in the sandbox.

    `mode="stdio"`: execute it as `__main__` with `stdin`; the report ends with `done` when
    it finished without an exception. `mode="asserts"`: execute it as module `solution`,
    then each of `tests` in its namespace with `per_test_s` seconds each; reports
    `test <i> <0|1>` per test.
    """
    if mode not in ("stdio", "asserts"):
        raise ValueError(f"sandbox mode must be 'stdio' or 'asserts', not {mode!r}")
    iso = isolation()
    base = tempfile.mkdtemp(prefix="rlsd-sandbox-")
    uid = _next_uid() if iso.drop_privileges else None
    try:
        os.chmod(base, 0o711)  # the sandbox uid may enter work/ but not list or read base/
        work = os.path.join(base, "work")
        os.mkdir(work, 0o700)
        if uid is not None:
            os.chown(work, uid, uid)
        paths = {name: os.path.join(base, name) for name in ("stdout", "stderr", "report")}
        # The child gets write-only, append-only descriptors: it cannot read the report back
        # (which would reveal the nonce), and the files themselves are root-only.
        fds = {
            name: os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            for name, path in paths.items()
        }
        nonce = secrets.token_hex(16)
        payload = {
            "source": source,
            "mode": mode,
            "stdin": stdin,
            "tests": tests or [],
            "per_test_s": per_test_s,
            "limits": asdict(limits),
            "uid": uid,
            "nonce": nonce,
            "report_fd": fds["report"],
            "preimport": PREIMPORT,
            "pid_namespace": "pid" in iso.namespaces,
        }
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": work,
            "TMPDIR": work,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
        }
        try:
            proc = subprocess.Popen(
                [*iso.prefix, sys.executable, "-I", "-c", RUNNER],
                stdin=subprocess.PIPE,
                stdout=fds["stdout"],
                stderr=fds["stderr"],
                pass_fds=(fds["report"],),
                cwd=work,
                env=env,
                start_new_session=True,
            )
        finally:
            for fd in fds.values():
                os.close(fd)
        timed_out = False
        try:
            proc.communicate(json.dumps(payload).encode(), timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            if uid is not None and "pid" not in iso.namespaces:
                _kill_uid(uid)
        prefix = nonce + " "
        reports = [
            line[len(prefix) :]
            for line in _read(paths["report"], 1_000_000).splitlines()
            if line.startswith(prefix)
        ]
        return RunResult(
            returncode=proc.returncode,
            stdout=_read(paths["stdout"], limits.output_bytes),
            stderr=_read(paths["stderr"], limits.output_bytes),
            reports=reports,
            timed_out=timed_out,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
