"""Looking verifiers up by name or import path, and routing rows by a `verifier` column.

`get_verifier(name_or_import_path, **options)` returns a TRL reward function:

- a built-in name (`VERIFIERS`): `exact`, `numeric`, `regex`, `math`, `code`, `sql`,
  `json_schema`, `format`, `rg` (reasoning-gym), and `routed` (alias `auto`);
- a name added with `register_verifier(name, factory)`;
- an import path `"mypkg.module:func"`. If `func` is already a reward function object
  (`RewardFunction`, `RoutedReward`) it is returned as is; otherwise it is taken to be a
  per-item scorer `func(completion_text: str, row: dict) -> float | None` and wrapped in a
  fail-safe `RewardFunction` named `func.__name__` (options go to `RewardFunction`).

`routed` dispatches each row to the verifier named in its `verifier` column (a built-in name,
a registered name, or an import path), so one dataset can mix math, code, SQL and JSON tasks.
Sub-verifiers are built once, with `options[name]` as their options. Rows with an empty
`verifier` value use `default`, or score as an `exception` failure when there is none.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from rlsd.rewards import FailureCounts, fail_safe
from rlsd.verifiers.base import RewardFunction

Factory = Callable[..., Any]

# name -> "module:factory", imported on first use (math-verify and sympy are slow to import).
VERIFIERS: dict[str, str] = {
    "exact": "rlsd.verifiers.exact:exact_verifier",
    "numeric": "rlsd.verifiers.numeric:numeric_verifier",
    "regex": "rlsd.verifiers.regex:regex_verifier",
    "math": "rlsd.verifiers.math_equiv:math_verifier",
    "code": "rlsd.verifiers.code:code_verifier",
    "sql": "rlsd.verifiers.sql:sql_verifier",
    "json_schema": "rlsd.verifiers.json_schema:json_schema_verifier",
    "format": "rlsd.verifiers.format:format_reward",
    "rg": "rlsd.verifiers.reasoning_gym:rg_verifier",  # reasoning-gym's scorers
    "routed": "rlsd.verifiers.registry:RoutedReward",
    "auto": "rlsd.verifiers.registry:RoutedReward",
}
_REGISTERED: dict[str, Factory] = {}


def register_verifier(name: str, factory: Factory) -> None:
    """Make `get_verifier(name, **options)` call `factory(**options)`; also usable in `routed`."""
    if not name or ":" in name:
        raise ValueError(f"verifier names must be non-empty and contain no ':', got {name!r}")
    _REGISTERED[name] = factory


def verifier_names() -> list[str]:
    """What `--reward_funcs` accepts by name: the built-in verifiers and the registered ones
    (besides any `module:function` import path)."""
    return [*VERIFIERS, *(name for name in _REGISTERED if name not in VERIFIERS)]


@functools.cache
def _columns_of(name: str) -> tuple[str, ...]:
    try:
        return tuple(getattr(get_verifier(name), "columns", ()))
    except (ValueError, TypeError):  # an unknown name, or a factory that needs options
        return ()


def verifier_columns(name: str) -> tuple[str, ...]:
    """The dataset columns verifier `name` needs besides `prompt`, as the verifier itself
    declares them (`RewardFunction.columns`), for the built-in and the registered ones alike
    (a registered factory's function declares none unless it has a `columns` attribute).
    `routed` / `auto` need none of their own: each row's verifier is looked up in turn."""
    if name in ("routed", "auto"):
        return ()
    if name in _REGISTERED:  # may be registered after a lookup: never cached
        try:
            return tuple(getattr(_REGISTERED[name](), "columns", ()))
        except TypeError:  # a factory that needs options
            return ()
    return _columns_of(name)


def _load(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"import path must look like 'package.module:function', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module '{module_name}' for verifier {path!r}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module '{module_name}' has no attribute '{attr}' ({path!r})")
        obj = getattr(obj, part)
    return obj


def get_verifier(name_or_import_path: str, **options: Any) -> Any:
    """A TRL reward function `fn(prompts, completions, **columns) -> list[float | None]`.

    Every returned object has `__name__` and `failures` (`{"timeout", "exception", "crash"}`
    counts). Example: `get_verifier("numeric", rel_tol=1e-4)`, `get_verifier("mypkg.mod:fn")`.
    """
    name = name_or_import_path
    if name in _REGISTERED:  # fail_safe: a factory may return any TRL reward function
        return fail_safe(_REGISTERED[name](**options))
    if name in VERIFIERS:
        return _load(VERIFIERS[name])(**options)
    if ":" not in name:
        known = sorted(set(VERIFIERS) | set(_REGISTERED))
        raise ValueError(f"unknown verifier {name!r}; use one of {known} or 'package.module:func'")
    obj = _load(name)
    if isinstance(obj, (RewardFunction, RoutedReward)):
        if options:
            raise ValueError(f"{name!r} is a ready reward function; it takes no options")
        return obj
    if not callable(obj):
        raise ValueError(f"{name!r} is not callable")
    return RewardFunction(getattr(obj, "__name__", name.rpartition(":")[2]), obj, **options)


def reward_funcs_for(rows: list[dict[str, Any]], names: list[str]) -> list[Any]:
    """The reward functions for a dataset: one per name in `names`, the first being the
    accuracy verifier; when any row names its own `verifier`, the `routed` one takes the
    first's place and the others are kept (e.g. `["exact", "format"]` on the `rg:` tasks:
    routed correctness plus a format reward, weighted by TRL's `reward_weights`)."""
    if any(row.get("verifier") for row in rows):
        return [get_verifier("routed"), *(get_verifier(name) for name in names[1:])]
    return [get_verifier(name) for name in names]


class RoutedReward:
    """Dispatches each row to the verifier named in its `column` (default `verifier`).

    Args:
        column: the dataset column holding each row's verifier name.
        default: the verifier for rows whose column value is empty (None: such rows fail).
        options: per-verifier options, e.g. `{"code": {"all_or_nothing": True}}`.
        failure_score: what a row with an unknown verifier scores (0.0 or None).
    """

    def __init__(
        self,
        column: str = "verifier",
        default: str | None = None,
        options: dict[str, dict[str, Any]] | None = None,
        failure_score: float | None = 0.0,
    ) -> None:
        self.__name__ = "routed"
        self.column = column
        self.default = default
        self.options = dict(options or {})
        self.failure_score = failure_score
        self.verifiers: dict[str, Any] = {}
        self.failure_counts = FailureCounts()  # routing errors (unknown or empty names)
        self._warned: set[str] = set()

    @property
    def failures(self) -> dict[str, int]:
        """Cumulative failure counts summed over routing errors and every sub-verifier."""
        return _sum_counts(
            [self.failure_counts.totals, *(fn.failures for fn in self.verifiers.values())]
        )

    def pop_failures(self) -> dict[str, int]:
        """Counts since the previous call: `<kind>` summed over routing errors and every
        sub-verifier, plus `<route>/<kind>` per sub-verifier (logged as
        `verifiers/routed/<route>/<kind>`)."""
        popped = {route: fn.pop_failures() for route, fn in self.verifiers.items()}
        counts = _sum_counts([self.failure_counts.pop(), *popped.values()])
        for route, route_counts in popped.items():
            counts.update({f"{route}/{kind}": n for kind, n in route_counts.items()})
        return counts

    def reset_failures(self) -> dict[str, int]:
        """Return the cumulative failure counts and set them (and the sub-verifiers') to zero."""
        return _sum_counts(
            [self.failure_counts.reset(), *(fn.reset_failures() for fn in self.verifiers.values())]
        )

    @property
    def last_errors(self) -> list[str]:
        errors = list(self.failure_counts.last_errors)
        for fn in self.verifiers.values():
            errors.extend(fn.last_errors)
        return errors[-20:]

    def verifier(self, name: str) -> Any:
        """The (cached) reward function for a route name."""
        if name not in self.verifiers:
            self.verifiers[name] = get_verifier(name, **self.options.get(name, {}))
        return self.verifiers[name]

    def _fail(self, name: str, message: str) -> None:
        self.failure_counts.add("exception", message)
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(
                f"routed reward: {message}; those rows score {self.failure_score}", stacklevel=3
            )

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        **columns: Any,
    ) -> list[float | None]:
        if completions is None:
            raise ValueError("routed reward was called without completions")
        n = len(completions)
        routes = columns.get(self.column)
        if routes is None:
            if self.default is None:
                raise ValueError(
                    f"routed reward needs a '{self.column}' dataset column naming each row's "
                    "verifier, or get_verifier('routed', default='<name>')"
                )
            routes = [None] * n
        groups: dict[str, list[int]] = {}
        rewards: list[float | None] = [self.failure_score] * n
        for i, route in enumerate(routes):
            name = route or self.default
            if not name:
                self._fail("", f"row {i} has an empty '{self.column}' and there is no default")
                continue
            groups.setdefault(str(name), []).append(i)
        for name, index in groups.items():
            try:
                fn = self.verifier(name)
            except ValueError as exc:
                for _ in index:
                    self._fail(name, str(exc))
                continue
            sub_columns = {
                key: [value[i] for i in index]
                if isinstance(value, (list, tuple)) and len(value) == n
                else value
                for key, value in columns.items()
            }
            sub_prompts = [prompts[i] for i in index] if prompts is not None else None
            sub_rewards = fn(sub_prompts, [completions[i] for i in index], **sub_columns)
            for i, reward in zip(index, sub_rewards, strict=True):
                rewards[i] = reward
        return rewards


def _sum_counts(counts: Sequence[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for kind, n in one.items():
            total[kind] = total.get(kind, 0) + n
    return total
