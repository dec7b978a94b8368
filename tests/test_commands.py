"""One command line for every command (`rlsd.arguments`): the shared flags, a YAML file, a
wrong choice and the previous release's spellings, checked on every command of `rlsd.cli`.

Each command's `parse` is its real parser (the one its `main` calls), so these tests parse
without training, sampling or loading a model."""

import json
import os
import subprocess
import sys

import pytest

from rlsd.cli import COMMANDS, main
from rlsd.data import UserError

# one value per shared idea (the `rlsd train` names); a command takes the ones that apply to it
VALUES = {
    "model_name_or_path": "some/model",
    "dataset_path": "rows.jsonl",
    "eval_dataset_path": "held.jsonl",
    "output_dir": "out/dir",
    "task": "counting",
    "task_config": '{"min_terms": 2}',
    "privileged": "answer",
    "rlsd_lambda": 0.3,
    "rlsd_eps_w": 0.4,
    "num_generations": 4,
    "max_completion_length": 17,
    "seed": 3,
}
SHARED = {
    "train": list(VALUES),
    "eval": [
        "model_name_or_path",
        "dataset_path",
        "output_dir",
        "task",
        "task_config",
        "privileged",
        "num_generations",
        "max_completion_length",
        "seed",
    ],
    "sft": ["output_dir", "task", "seed"],
    "compare": ["model_name_or_path", "output_dir", "task", "task_config"],
    "credit": [k for k in VALUES if k != "eval_dataset_path"],
    "probe": [k for k in VALUES if k not in ("eval_dataset_path", "rlsd_lambda")],
    "context": ["model_name_or_path", "dataset_path", "output_dir"],
}
PREFIX = {"context": ["build"]}  # words before the flags


def test_every_command_is_in_the_table():
    assert set(SHARED) == set(COMMANDS)


def _parsed(name: str, argv: list[str]) -> dict:
    """The command's fields, all its dataclasses merged (train has three)."""
    fields: dict = {}
    for instance in COMMANDS[name].parse([*PREFIX.get(name, []), *argv]):
        fields.update(vars(instance))
    return fields


def _flags(names: list[str]) -> list[str]:
    return [arg for n in names for arg in (f"--{n}", str(VALUES[n]))]


@pytest.mark.parametrize("name", sorted(SHARED))
def test_every_command_takes_the_shared_flags(name):
    fields = _parsed(name, _flags(SHARED[name]))
    for key in SHARED[name]:
        assert fields[key] == VALUES[key], (name, key)


@pytest.mark.parametrize("name", sorted(SHARED))
def test_every_command_reads_a_yaml_file_and_flags_override_it(name, tmp_path):
    import yaml

    keys = SHARED[name]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({k: VALUES[k] for k in keys}))
    fields = _parsed(name, [str(config), "--output_dir", "from/flag"])
    assert fields["output_dir"] == "from/flag"
    for key in keys:
        if key != "output_dir":
            assert fields[key] == VALUES[key], (name, key)
    config.write_text("output_dir: x\nno_such_field: 1\n")
    with pytest.raises(UserError, match="no_such_field"):
        _parsed(name, [str(config)])


CHOICE_FIELDS = ("task", "privileged", "algorithm", "reward_funcs")


@pytest.mark.parametrize("name", sorted(SHARED))
def test_a_wrong_choice_is_one_line_listing_the_valid_ones(name, capsys):
    """Through `rlsd` itself: exit 2, one error line that lists the choices; a command
    without choice fields (context) says the flag is unknown, in one line too."""
    taken = [f for f in CHOICE_FIELDS if f in _parsed(name, _flags(SHARED[name][:1]))]
    if not taken:
        argv = [name, *PREFIX.get(name, []), "--task", "bogus"]
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert "unknown argument(s): --task bogus" in err[0] and len(err) == 2
        return
    listed = {
        "task": ("mixed", "counting_visual", "rg:<dataset>"),
        "privileged": ("solution", "answer", "sql", "rules"),
        "algorithm": ("grpo", "rlsd", "opsd", "opd"),
        "reward_funcs": ("exact", "numeric", "math", "code", "module:function"),
    }
    for field in taken:
        argv = [name, *PREFIX.get(name, []), f"--{field}", "bogus"]
        assert main(argv) == 2, (name, field)
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and err[0].startswith(f"rlsd {name}: error:"), err
        assert "bogus" in err[0] and all(c in err[0] for c in listed[field]), err[0]


def test_the_help_lists_the_registries_choices(capsys):
    """`train --help` lists every built-in task (it used to list 4 of 6) and the sql
    task's privileged kinds; a verifier registered at run time appears too."""
    from rlsd.arguments import build_parser
    from rlsd.cli import ScriptArguments
    from rlsd.tasks import TASKS
    from rlsd.verifiers import register_verifier

    register_verifier("my_checker", lambda: None)
    help_text = build_parser([ScriptArguments], "rlsd train", "").format_help()
    flat = " ".join(help_text.split())
    for task in TASKS:
        assert task in flat
    assert "solution, answer, sql, rules" in flat and "my_checker" in flat


DEPRECATED = [  # (command, old spelling, field, value, the new flag the line names)
    ("credit", ["--lam", "0.3"], "rlsd_lambda", 0.3, "--rlsd_lambda"),
    ("credit", ["--eps_w", "0.4"], "rlsd_eps_w", 0.4, "--rlsd_eps_w"),
    ("credit", ["--group_size", "4"], "num_generations", 4, "--num_generations"),
    ("credit", ["--output", "d"], "output_dir", "d", "--output_dir"),
    ("credit", ["--negative_only", "true"], "rlsd_negative_only", True, "--rlsd_negative_only"),
    ("credit", ["--max_new_tokens", "9"], "max_completion_length", 9, "--max_completion_length"),
    ("credit", ["some/model"], "model_name_or_path", "some/model", "--model_name_or_path"),
    ("eval", ["some/model"], "model_name_or_path", "some/model", "--model_name_or_path"),
    ("eval", ["--num_samples=4"], "num_generations", 4, "--num_generations"),
    ("eval", ["--max_new_tokens", "9"], "max_completion_length", 9, "--max_completion_length"),
    ("compare", ["--algorithms", "grpo", "rlsd"], "variants", ["grpo", "rlsd"], "--variants"),
    ("compare", ["--output", "d"], "output_dir", "d", "--output_dir"),
    ("context", ["--dataset", "r.jsonl"], "dataset_path", "r.jsonl", "--dataset_path"),
    ("context", ["--docs", "D"], "context_docs", "D", "--context_docs"),
    ("context", ["--db", "c.db"], "context_db", "c.db", "--context_db"),
    ("context", ["--budget", "5"], "context_budget", 5, "--context_budget"),
    ("context", ["--top_k", "2"], "context_top_k", 2, "--context_top_k"),
    ("context", ["--example_rows", "0"], "context_example_rows", 0, "--context_example_rows"),
    ("context", ["--strict"], "context_strict", True, "--context_strict"),
    ("context", ["--model", "m"], "model_name_or_path", "m", "--model_name_or_path"),
]


@pytest.mark.parametrize(("name", "old", "field", "value", "new"), DEPRECATED)
def test_the_old_spellings_map_to_the_new_with_one_line(name, old, field, value, new, capsys):
    twice = [*old, *old] if old[0].startswith("--") else old  # a flag twice: still one line
    fields = _parsed(name, twice)
    assert fields[field] == value
    err = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert len(err) == 1 and new in err[0] and f"rlsd {name}" in err[0], err


def test_the_old_output_files_still_get_written(tmp_path, tiny_path, capsys):
    """`eval --output FILE` (a file, not a folder) keeps its meaning for one release."""
    file, folder = tmp_path / "m.json", tmp_path / "d"
    argv = ["eval", "--model_name_or_path", tiny_path, "--num_eval", "4", "--num_generations"]
    assert main([*argv, "1", "--output", str(file), "--output_dir", str(folder)]) == 0
    assert json.loads(file.read_text()) == json.loads((folder / "eval.json").read_text())
    assert "--output FILE is deprecated" in capsys.readouterr().err


def test_importing_rlsd_changes_no_global_state():
    """Every module of rlsd imported: the matplotlib backend, the environment and the warning
    filters are as before (reports.plots used to call `matplotlib.use`)."""
    code = """
import importlib, os, pkgutil, warnings
import matplotlib
# the libraries rlsd imports first: their own import-time filters are not rlsd's
for lib in ("torch", "transformers", "trl", "datasets", "accelerate", "peft", "sympy",
            "math_verify", "reasoning_gym", "pypdf", "bm25s", "requests", "PIL.Image"):
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
before = (matplotlib.get_backend(), dict(os.environ), list(warnings.filters))
import rlsd
skip = ("rlsd.verifiers.sandbox_runner", "rlsd.verifiers.pool_worker")  # run as programs
for info in pkgutil.walk_packages(rlsd.__path__, "rlsd."):
    if not info.name.startswith(skip):
        importlib.import_module(info.name)
after = (matplotlib.get_backend(), dict(os.environ), list(warnings.filters))
assert before[0] == after[0] == "svg", (before[0], after[0])
assert before[1] == after[1], set(after[1].items()) ^ set(before[1].items())
assert before[2] == after[2], after[2][: len(after[2]) - len(before[2])]
print("unchanged")
"""
    env = dict(os.environ, MPLBACKEND="svg")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "unchanged" in done.stdout, done.stderr[-2000:]
