"""Verifiable rewards: `get_verifier(name_or_import_path)` returns a TRL reward function.

See docs/verifiers.md for the verifier table, the dataset columns each needs, the sandbox and
what it does not protect against. Modules: `extract` (answer extraction), one module per
verifier kind (`exact`, `numeric`, `regex`, `math_equiv`, `code`, `sql`, `json_schema`,
`format`), `sandbox` (running untrusted code) and `sandbox_runner` (its runner, run by path
inside the sandbox), `pool` (parallel scoring with deadlines) and `pool_worker` (its worker
processes), `base` (the fail-safe reward-function wrapper) and `registry` (names, import paths,
routing). Failures are counted with `rlsd.rewards.FailureCounts`.
"""

from rlsd.verifiers.base import RewardFunction
from rlsd.verifiers.extract import completion_text, extract_answer
from rlsd.verifiers.registry import (
    VERIFIERS,
    RoutedReward,
    get_verifier,
    register_verifier,
    reward_funcs_for,
    verifier_columns,
    verifier_names,
)

__all__ = [
    "VERIFIERS",
    "RewardFunction",
    "RoutedReward",
    "completion_text",
    "extract_answer",
    "get_verifier",
    "register_verifier",
    "reward_funcs_for",
    "verifier_columns",
    "verifier_names",
]
