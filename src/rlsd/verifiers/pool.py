"""Scoring a batch in parallel with a per-item deadline.

`run_batch(fn, items, backend=..., workers=..., timeout=...)` calls `fn(*item)` for every item
and returns one `Outcome` per item, in order, never raising. Three backends:

- `"inline"`: in the caller's thread, one after another. No deadline can be enforced (nothing
  can be killed); for cheap, bounded work (string compares, size-limited JSON).
- `"thread"`: a thread pool. For work that bounds itself and releases the GIL: the code
  verifier (each item waits on its own sandbox subprocess, which has its own wall limit) and
  SQL (SQLite's progress handler stops the query). The deadline is still checked: a late
  item scores as a timeout, but its thread cannot be killed and finishes in the background.
- `"process"`: a pool of worker processes (`ProcessPool`). A worker that passes the deadline
  is SIGKILLed and replaced; a worker that dies (segfault, OOM kill, `os._exit`) is counted as
  a crash and replaced. The item's deadline starts when it is handed to a worker, so a hung
  item costs at most `timeout` and the rest of the batch goes on in the other workers.

Workers are fresh interpreters running `python -m rlsd.verifiers.pool_worker` (see there for
the protocol), started with `subprocess`: they never import the user's `__main__`, so a script
with or without `if __name__ == "__main__":`, `python -c`, a notebook and `torchrun` all work
(multiprocessing's spawn and forkserver re-run an unguarded script in every worker, and fork
is unsafe in a trainer that holds CUDA contexts and library threads). A worker takes the
parent's `sys.path` and pre-imports the verifier modules before it reports ready; an item's
deadline starts only then. The pool is shared by all verifiers in a process (`shared_pool`)
and closed at exit. `fn` and the items must be picklable by reference to an importable module
(module-level functions, `functools.partial` of them; not functions defined in `__main__`).
"""

from __future__ import annotations

import atexit
import multiprocessing.connection as mpc
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

Backend = Literal["inline", "thread", "process"]

# Modules each worker imports before it reports ready, so an item's deadline excludes them.
PRELOAD: tuple[str, ...] = ("rlsd.verifiers.math_equiv",)
# How long a new worker may take to start and import PRELOAD before its item times out.
STARTUP_TIMEOUT_S = 120.0


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


@dataclass
class Outcome:
    """The result of scoring one item: a value, or a failure kind and its message."""

    value: Any = None
    failure: str | None = None  # one of rlsd.rewards.FAILURE_KINDS, or None on success
    error: str = ""


class _Worker:
    """One worker process and the parent's end of its connection."""

    def __init__(self, memory_mb: int | None, preload: Sequence[str]) -> None:
        parent_sock, child_sock = socket.socketpair()
        try:
            # PYTHONPATH only has to find rlsd; the handshake then sets the exact sys.path.
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rlsd.verifiers.pool_worker", str(child_sock.fileno())],
                stdin=subprocess.DEVNULL,
                pass_fds=(child_sock.fileno(),),
                env=env,
            )
        finally:
            child_sock.close()
        self.conn = mpc.Connection(parent_sock.detach())
        self.conn.send((list(sys.path), list(preload), memory_mb))
        self.ready = False

    def exit_message(self) -> str:
        """Why the worker is gone (after its connection closed)."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "worker closed its connection"
        return f"worker exited with code {code}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.process.wait(timeout=2)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()


class ProcessPool:
    """Persistent worker processes; `map` scores items with a per-item deadline.

    `memory_mb` caps each worker's address space (RLIMIT_AS), so a pathological expression
    raises MemoryError (scored as an exception) instead of exhausting the host.
    """

    def __init__(
        self, workers: int, memory_mb: int | None = 4096, preload: Sequence[str] = PRELOAD
    ) -> None:
        if workers < 1:
            raise ValueError(f"ProcessPool needs workers >= 1, got {workers}")
        self.workers = workers
        self.memory_mb = memory_mb
        self.preload = tuple(preload)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def _start_worker(self) -> _Worker:
        return _Worker(self.memory_mb, self.preload)

    def map(
        self, fn: Callable[..., Any], items: Sequence[tuple[Any, ...]], timeout: float
    ) -> list[Outcome]:
        """Score `fn(*item)` for each item; never raises, never waits past a deadline."""
        with self._lock:
            return self._map(fn, items, timeout)

    def _map(
        self, fn: Callable[..., Any], items: Sequence[tuple[Any, ...]], timeout: float
    ) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(items)
        pending = deque(enumerate(items))
        busy: dict[_Worker, tuple[int, float]] = {}
        while pending or busy:
            while pending and len(busy) < self.workers:
                index, item = pending.popleft()
                try:
                    worker = self._idle.pop() if self._idle else self._start_worker()
                except OSError as exc:  # e.g. out of processes or memory
                    results[index] = Outcome(failure="crash", error=_describe(exc))
                    continue
                try:
                    worker.conn.send((fn, tuple(item)))
                except Exception as exc:  # dead worker or unpicklable item
                    worker.kill()
                    results[index] = Outcome(failure="exception", error=_describe(exc))
                    continue
                # A new worker's clock starts when it reports ready (after its imports).
                wait = timeout if worker.ready else STARTUP_TIMEOUT_S
                busy[worker] = (index, time.monotonic() + wait)
            if not busy:
                continue
            next_deadline = min(deadline for _, deadline in busy.values())
            mpc.wait([w.conn for w in busy], timeout=max(0.0, next_deadline - time.monotonic()))
            now = time.monotonic()
            for worker, (index, deadline) in list(busy.items()):
                outcome: Outcome | None = None
                if worker.conn.poll():
                    try:
                        status, payload = worker.conn.recv()
                    except (EOFError, OSError):  # the worker died (segfault, OOM kill, _exit)
                        outcome = Outcome(failure="crash", error=worker.exit_message())
                        worker.kill()
                    else:
                        if status == "ready":
                            worker.ready = True
                            busy[worker] = (index, now + timeout)
                            continue
                        if status == "ok":
                            outcome = Outcome(value=payload)
                        else:
                            outcome = Outcome(failure="exception", error=str(payload))
                        self._idle.append(worker)
                elif now >= deadline:
                    what = f"no result within {timeout:g}s" if worker.ready else "no start"
                    outcome = Outcome(failure="timeout", error=what)
                    worker.kill()
                if outcome is not None:
                    results[index] = outcome
                    del busy[worker]
        return [r if r is not None else Outcome(failure="crash") for r in results]

    def close(self) -> None:
        """Stop all idle workers (busy ones only exist inside `map`)."""
        with self._lock:
            while self._idle:
                self._idle.pop().stop()


_SHARED: dict[int, ProcessPool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(workers: int) -> ProcessPool:
    """The process-wide pool with `workers` workers (created on first use, closed at exit)."""
    with _SHARED_LOCK:
        pool = _SHARED.get(workers)
        if pool is None:
            pool = _SHARED[workers] = ProcessPool(workers)
        return pool


@atexit.register
def close_shared_pools() -> None:
    """Stop the shared pools' workers (also runs at interpreter exit)."""
    with _SHARED_LOCK:
        for pool in _SHARED.values():
            pool.close()
        _SHARED.clear()


def default_workers() -> int:
    """Half the CPUs this process may use, at least 1 and at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // 2))


def _run_one(fn: Callable[..., Any], item: Sequence[Any]) -> Outcome:
    try:
        return Outcome(value=fn(*item))
    except Exception as exc:
        return Outcome(failure="exception", error=_describe(exc))


def run_batch(
    fn: Callable[..., Any],
    items: Sequence[tuple[Any, ...]],
    *,
    backend: Backend = "inline",
    workers: int | None = None,
    timeout: float = 10.0,
) -> list[Outcome]:
    """Score every item with `fn(*item)` on `backend`; one `Outcome` per item, in order."""
    if not items:
        return []
    workers = workers or default_workers()
    if backend == "inline" or (backend == "thread" and workers == 1 and len(items) == 1):
        return [_run_one(fn, item) for item in items]
    if backend == "thread":
        executor = ThreadPoolExecutor(max_workers=min(workers, len(items)))
        try:
            futures = [executor.submit(_run_one, fn, item) for item in items]
            # Items start when a thread is free, so the batch deadline allows for queueing.
            rounds = -(-len(items) // min(workers, len(items)))
            batch_deadline = time.monotonic() + timeout * rounds
            outcomes = []
            for future in futures:
                try:
                    left = max(0.0, batch_deadline - time.monotonic())
                    outcomes.append(future.result(timeout=left))
                except FutureTimeout:
                    outcomes.append(Outcome(failure="timeout", error=f"over {timeout:g}s"))
            return outcomes
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
    if backend == "process":
        return shared_pool(workers).map(fn, items, timeout)
    raise ValueError(f"unknown backend {backend!r}; choose 'inline', 'thread' or 'process'")
