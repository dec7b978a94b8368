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

Workers are started with the `forkserver` method: forking a trainer process that holds CUDA
contexts and library threads is unsafe, so workers fork from a small clean server process
that has pre-imported the verifier modules. The pool is shared by all verifiers in a process
(`shared_pool`) and closed at exit. `fn` and the items must be picklable (module-level
functions, `functools.partial` of them).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

Backend = Literal["inline", "thread", "process"]
FAILURE_KINDS: tuple[str, ...] = ("timeout", "exception", "crash")

# Modules the forkserver imports once, so each forked worker starts warm.
PRELOAD: tuple[str, ...] = ("rlsd.verifiers.math_equiv",)


@dataclass
class Outcome:
    """The result of scoring one item: a value, or a failure kind and its message."""

    value: Any = None
    failure: str | None = None  # one of FAILURE_KINDS, or None on success
    error: str = ""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _worker_main(conn: mpc.Connection, memory_mb: int | None) -> None:
    """Worker loop: receive `(fn, args)`, send `("ok", value)` or `("error", message)`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    if memory_mb:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, args = message
        try:
            reply: tuple[str, Any] = ("ok", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - the worker must survive anything
            reply = ("error", _describe(exc))
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable value
            conn.send(("error", _describe(exc)))


class _Worker:
    def __init__(self, ctx: Any, memory_mb: int | None) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child_conn, memory_mb), daemon=True)
        self.process.start()
        child_conn.close()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=2)
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
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(list(preload))
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.memory_mb)

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
                worker = self._idle.pop() if self._idle else self._spawn()
                index, item = pending.popleft()
                try:
                    worker.conn.send((fn, tuple(item)))
                except Exception as exc:  # dead worker or unpicklable item
                    worker.kill()
                    results[index] = Outcome(failure="exception", error=_describe(exc))
                    continue
                busy[worker] = (index, time.monotonic() + timeout)
            if not busy:
                continue
            next_deadline = min(deadline for _, deadline in busy.values())
            waitables: list[Any] = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            mpc.wait(waitables, timeout=max(0.0, next_deadline - time.monotonic()))
            now = time.monotonic()
            for worker, (index, deadline) in list(busy.items()):
                outcome: Outcome | None = None
                if worker.conn.poll():
                    try:
                        status, payload = worker.conn.recv()
                        if status == "ok":
                            outcome = Outcome(value=payload)
                        else:
                            outcome = Outcome(failure="exception", error=str(payload))
                        self._idle.append(worker)
                    except (EOFError, OSError) as exc:
                        outcome = Outcome(failure="crash", error=_describe(exc))
                        worker.kill()
                elif not worker.process.is_alive():
                    code = worker.process.exitcode
                    outcome = Outcome(failure="crash", error=f"worker exited with code {code}")
                    worker.kill()
                elif now >= deadline:
                    outcome = Outcome(failure="timeout", error=f"no result within {timeout:g}s")
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
