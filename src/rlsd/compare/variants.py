"""The variants of `rlsd compare`: a name and the `rlsd train` flags that make it
(`BUILTIN_VARIANTS`, or `name=flag:value,...`, or a YAML mapping), and the presets."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A variant is a name and the `rlsd train` flags that make it; nothing else may differ.
BUILTIN_VARIANTS: dict[str, dict[str, Any]] = {
    "grpo": {"algorithm": "grpo"},
    "opsd": {"algorithm": "opsd"},
    "rlsd": {"algorithm": "rlsd"},  # the paper's defaults: lambda 0.5 -> 0 over 50 steps
    # The probe found the defaults move the mean advantage by < 1%: a stronger setting.
    "rlsd_strong": {
        "algorithm": "rlsd",
        "rlsd_lambda": 1.0,
        "rlsd_lambda_decay_steps": 0,
        "rlsd_eps_w": 0.5,
    },
    "grpo_opsd": {"algorithm": "grpo_opsd"},
}
# Flags that compare owns: giving them after `--` would break "same everything else".
RESERVED = ("algorithm", "output_dir", "seed", "resume_from_checkpoint")


@dataclass
class Preset:
    algorithms: list[str]
    seeds: int
    max_steps: int
    num_eval: int
    eval_every: int
    train_flags: list[str] = field(default_factory=list)


PRESETS = {
    "default": Preset(["grpo", "opsd", "rlsd", "rlsd_strong"], 3, 100, 1000, 10),
    "quick": Preset(
        ["grpo", "rlsd"],
        1,
        4,
        64,
        2,
        ["--per_device_train_batch_size", "32", "--num_train", "256"],
    ),
}


def _infer_algorithm(name: str) -> str:
    from rlsd.config import ALGORITHMS

    for algorithm in sorted(ALGORITHMS, key=len, reverse=True):  # grpo_opsd before grpo
        if name == algorithm or name.startswith((f"{algorithm}_", f"{algorithm}-")):
            return algorithm
    raise ValueError(
        f"variant {name!r}: cannot tell its algorithm from the name; add `algorithm:<one of "
        f"{sorted(ALGORITHMS)}>` to its flags (e.g. {name}=algorithm:rlsd,rlsd_eps_w:0.5)."
    )


def _variant(name: str, flags: dict[str, Any] | None) -> dict[str, Any]:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"variant name {name!r}: use letters, digits, '_', '-' and '.' only.")
    if not flags:
        if name not in BUILTIN_VARIANTS:
            raise ValueError(
                f"unknown variant {name!r}: built-in ones are {sorted(BUILTIN_VARIANTS)}; "
                f"define others as `{name}=algorithm:rlsd,rlsd_eps_w:0.5` or in a YAML mapping."
            )
        return dict(BUILTIN_VARIANTS[name])
    flags = {str(k).lstrip("-"): v for k, v in flags.items()}
    base = dict(BUILTIN_VARIANTS.get(name, {}))  # `rlsd=rlsd_eps_w:0.3` overrides a built-in
    if "algorithm" not in flags and "algorithm" not in base:
        base["algorithm"] = _infer_algorithm(name)
    return {**base, **flags}


def parse_variants(specs: list[str]) -> dict[str, dict[str, Any]]:
    """Variants from `--algorithms` tokens: built-in names, `name=flag:value,...`, or one
    YAML file mapping names to flag mappings (an empty mapping means the built-in)."""
    if len(specs) == 1 and specs[0].endswith((".yaml", ".yml")):
        import yaml

        path = Path(specs[0])
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: expected a mapping of variant name -> flags, got {type(data).__name__}."
            )
        return {str(name): _variant(str(name), flags) for name, flags in data.items()}
    variants: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        flags: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition(":")
            if not sep:
                raise ValueError(f"variant {spec!r}: {item!r} is not `flag:value`.")
            flags[key.strip()] = value.strip()
        if name in variants:
            raise ValueError(f"variant {name!r} is given twice.")
        variants[name] = _variant(name, flags)
    return variants


def variant_flags(flags: dict[str, Any]) -> list[str]:
    out = []
    for key, value in flags.items():
        if isinstance(value, bool):
            value = str(value).lower()
        out += [f"--{key}", str(value)]
    return out
