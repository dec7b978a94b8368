"""`pool.run_batch`: deadlines, crashes and exceptions on every backend."""

import os
import time

from rlsd.verifiers.pool import run_batch


def test_process_pool_timeout_crash_exception_and_recovery():
    start = time.monotonic()
    outcomes = run_batch(time.sleep, [(30,), (0,), (0,)], backend="process", workers=2, timeout=1)
    assert [o.failure for o in outcomes] == ["timeout", None, None]
    assert time.monotonic() - start < 10
    assert run_batch(os._exit, [(3,)], backend="process", workers=2, timeout=5)[0].failure == (
        "crash"
    )
    outcomes = run_batch(int, [("x",), ("4",)], backend="process", workers=2, timeout=5)
    assert outcomes[0].failure == "exception" and "invalid literal" in outcomes[0].error
    assert outcomes[1].value == 4


def test_inline_and_thread_backends():
    assert [o.value for o in run_batch(abs, [(-1,), (2,)])] == [1, 2]
    outcomes = run_batch(time.sleep, [(3,), (0,)], backend="thread", workers=2, timeout=0.5)
    assert [o.failure for o in outcomes] == ["timeout", None]
    assert run_batch(int, [("x",)], backend="thread", workers=2)[0].failure == "exception"


def test_process_workers_do_not_import_main(monkeypatch):
    """A function from the caller's `__main__` cannot be sent to a worker: a clear exception."""
    import __main__

    def scorer(x):
        return x

    scorer.__module__, scorer.__qualname__ = "__main__", "rlsd_test_scorer"
    monkeypatch.setattr(__main__, "rlsd_test_scorer", scorer, raising=False)
    [outcome] = run_batch(scorer, [(1,)], backend="process", workers=1, timeout=30)
    assert outcome.failure == "exception" and "cannot load the function" in outcome.error
    assert run_batch(abs, [(-3,)], backend="process", workers=1, timeout=30)[0].value == 3
