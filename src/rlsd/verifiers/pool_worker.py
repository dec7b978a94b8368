"""A `ProcessPool` worker: `python -m rlsd.verifiers.pool_worker FD`.

The pool starts each worker as a fresh interpreter running this module, so a worker never
imports, let alone re-runs, the user's `__main__` (multiprocessing's spawn and forkserver
methods do, which breaks scripts without `if __name__ == "__main__":`). `FD` is the worker's
end of a socket pair; the protocol over it (`multiprocessing.connection` messages) is:

1. parent -> worker: `(sys_path, preload, memory_mb)`. The worker takes the parent's
   `sys.path` (so it can unpickle what the parent can import), caps its address space at
   `memory_mb` (RLIMIT_AS), imports the `preload` modules and answers `("ready", None)`;
2. parent -> worker: `(fn, args)`; worker -> parent: `("ok", fn(*args))` or
   `("error", "<ExceptionType>: message")`; repeated;
3. parent -> worker: `None`, or the connection closes (the parent exited): the worker exits.

It ignores SIGINT (Ctrl-C in a terminal is the trainer's to handle; the pool stops its workers).
"""

from __future__ import annotations

import importlib
import multiprocessing.connection as mpc
import resource
import signal
import sys
from typing import Any


def describe(exc: BaseException) -> str:
    """`"<ExceptionType>: message"`, at most 500 characters."""
    return f"{type(exc).__name__}: {exc}"[:500]


def serve(conn: mpc.Connection) -> None:
    """Handshake, then answer `(fn, args)` requests until `None` or the connection closes."""
    try:
        sys_path, preload, memory_mb = conn.recv()
    except (EOFError, OSError):
        return
    sys.path[:] = sys_path
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # a verifier that needs it reports the error on its own items
            pass
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        except Exception as exc:  # e.g. a function defined in the parent's `__main__`
            conn.send(("error", f"cannot load the function in the worker: {describe(exc)}"))
            continue
        if message is None:
            return
        fn, args = message
        try:
            reply: tuple[str, Any] = ("ok", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - the worker must survive anything
            reply = ("error", describe(exc))
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable value
            conn.send(("error", describe(exc)))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        raise SystemExit("usage: python -m rlsd.verifiers.pool_worker FD (started by the pool)")
    serve(mpc.Connection(int(sys.argv[1])))


if __name__ == "__main__":
    main()
