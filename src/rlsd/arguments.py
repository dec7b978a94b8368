"""One command line for every `rlsd` command.

Every command parses the way a TRL script does, with TRL's `TrlParser` (a
`transformers.HfArgumentParser`) over the command's dataclasses: an optional YAML file first
(or `--config FILE`), whose keys are field names, then `--field value` flags that override it;
`--help` is generated from the fields and their `help` sentences. `parse_command` is the one
entry, used by `train`, `eval`, `sft`, `compare`, `credit`, `probe` and `context build`.

One name per idea, the `rlsd train` names: `--model_name_or_path`, `--dataset_path`,
`--eval_dataset_path`, `--output_dir`, `--task`, `--task_config`, `--privileged`,
`--rlsd_lambda`, `--rlsd_eps_w`, `--num_generations`, `--max_completion_length`, `--seed`.
The spellings of earlier releases (`--output`, `--lam`, `--group_size`, a positional model
folder, ...) still work in this release and print one deprecation line naming the new flag.

The choices of `--task`, `--privileged`, `--algorithm`, `--reward_funcs`, `--rlsd_estimator`,
`--privileged_source` and `--rlsd_negative_context` are read from the registries when the
parser is built, so the help lists what the code accepts; a value outside them is one
`UserError` line that lists the valid ones (`rlsd` exits 2).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from rlsd.data import UserError


def _tasks() -> list[str]:
    from rlsd.tasks import task_names

    return task_names()


def _privileged_kinds() -> list[str]:
    from rlsd.tasks import TASKS

    kinds: dict[str, None] = {}
    for task in TASKS.values():
        kinds.update(dict.fromkeys(task.privileged_kinds))
    return list(kinds)


def _algorithms() -> list[str]:
    from rlsd.config import ALGORITHMS

    return list(ALGORITHMS)


def _estimators() -> list[str]:
    from rlsd.objectives import ESTIMATORS

    return list(ESTIMATORS)


def _privileged_sources() -> list[str]:
    from rlsd.config import PRIVILEGED_SOURCES

    return list(PRIVILEGED_SOURCES)


def _negative_contexts() -> list[str]:
    from rlsd.config import NEGATIVE_CONTEXTS

    return list(NEGATIVE_CONTEXTS)


def _verifiers() -> list[str]:
    from rlsd.verifiers.registry import verifier_names

    return [*verifier_names(), "module:function"]


# field name -> the registry that lists its valid values (for the help and the check)
CHOICES: dict[str, Callable[[], list[str]]] = {
    "task": _tasks,
    "privileged": _privileged_kinds,
    "algorithm": _algorithms,
    "reward_funcs": _verifiers,
    "rlsd_estimator": _estimators,
    "privileged_source": _privileged_sources,
    "rlsd_negative_context": _negative_contexts,
}


def check_choice(name: str, value: Any, valid: Sequence[str] | None = None) -> None:
    """A `UserError` unless `value` (or each of a list) is one of `--name`'s choices
    (`valid`, default `CHOICES[name]()`); `rg:<dataset>` and `module:function` stand for any
    value of that form, checked where it is loaded."""
    valid = list(valid if valid is not None else CHOICES[name]())
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item is None or item in valid:
            continue
        if "rg:<dataset>" in valid and str(item).startswith("rg:"):
            continue
        if "module:function" in valid and ":" in str(item):
            continue
        close = difflib.get_close_matches(str(item), valid, n=1)
        raise UserError(
            f"--{name} {item}: not one of {', '.join(valid)}"
            + (f" (did you mean {close[0]}?)" if close else "")
        )


def deprecated(prog: str, old: str, new: str) -> None:
    """The one line an old spelling prints (stderr)."""
    print(
        f"{prog}: {old} is deprecated and will be removed in the next release; use {new}",
        file=sys.stderr,
    )


def _rename(prog: str, argv: list[str], renamed: Mapping[str, str]) -> list[str]:
    """`argv` with every old `--flag` (or `--flag=value`) spelled as its new name."""
    out, warned = [], set()
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name.startswith("--") and name[2:] in renamed:
            new = f"--{renamed[name[2:]]}"
            if name not in warned:
                deprecated(prog, name, new)
                warned.add(name)
            arg = new + eq + value
        out.append(arg)
    return out


def config_path(argv: Sequence[str]) -> str | None:
    """The YAML file of a command line: its first argument (`cmd CONFIG.yaml ...`) or the
    value of `--config`."""
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        return argv[0]
    if "--config" in argv[:-1]:
        return argv[list(argv).index("--config") + 1]
    return None


def build_parser(
    types: Iterable[type],
    prog: str,
    description: str,
    defaults: Mapping[str, Any] | None = None,
    usage: str | None = None,
):
    """TRL's parser over `types`, with `defaults` over the fields' own and the registries'
    choices appended to the help of the fields in `CHOICES`."""
    from trl import TrlParser

    dataclass_types: list[Any] = list(types)  # dataclasses (TRL's `DataClassType`)
    parser = TrlParser(
        dataclass_types,
        prog=prog,
        usage=usage or f"{prog} [CONFIG.yaml] [--field value ...]",
        description=description,
    )
    for action in parser._actions:
        if action.dest in CHOICES and action.help is not None:
            action.help = f"{action.help} Choices: {', '.join(CHOICES[action.dest]())}."
    if defaults:
        parser.set_defaults_with_config(**defaults)
    return parser


def parse_command(
    types: Sequence[type],
    argv: Sequence[str],
    prog: str,
    description: str,
    *,
    renamed: Mapping[str, str] | None = None,
    positional: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    usage: str | None = None,
) -> tuple[Any, ...]:
    """One instance of each of `types` from a command line: `[CONFIG.yaml] [--field value ...]`.

    `renamed` maps old flag names to new ones (each use prints one deprecation line);
    `positional` names the field that a first bare argument (not a YAML file) used to set, now
    a deprecated spelling of `--positional`. `defaults` replace the fields' defaults (a YAML
    file and the flags override them). Unknown flags or YAML keys, a missing file, invalid
    YAML, a field's own validation and a value outside its registry's choices are each a
    one-line `UserError`.
    """
    import yaml

    argv = list(argv)
    path = config_path(argv)
    if path is not None and argv[0] == path:
        argv = ["--config", *argv]
    if positional and argv and not argv[0].startswith("-"):
        deprecated(prog, f"a bare {positional} ({argv[0]})", f"--{positional} {argv[0]}")
        argv = [f"--{positional}", *argv]
    argv = _rename(prog, argv, renamed or {})
    parser = build_parser(types, prog, description, defaults, usage)
    try:
        *parsed, unknown = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except FileNotFoundError as e:
        raise UserError(f"{e.filename}: no such file") from e
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from e
    except ValueError as e:  # a field's validation (RLSDConfig, GRPOConfig, ...)
        raise UserError(str(e).splitlines()[0] if str(e) else repr(e)) from e
    if unknown:  # from the YAML file or the command line
        known = [o for action in parser._actions for o in action.option_strings]
        names = [a for a in unknown if a.startswith("--")]
        close = difflib.get_close_matches(names[0].split("=")[0], known, n=1) if names else []
        raise UserError(
            f"unknown argument(s): {' '.join(unknown)}"
            + (f" (did you mean {close[0]}?)" if close else "")
            + f"; `{prog} --help` lists every field."
        )
    for instance in parsed:
        for name in CHOICES:
            if hasattr(instance, name):
                check_choice(name, getattr(instance, name))
    return tuple(parsed)
