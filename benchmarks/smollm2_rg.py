"""SmolLM2-135M-Instruct on reasoning-gym tasks: calibration, the self-teacher probe, a
training run and a compare, through rlsd's public API and CLI. Measured, never asserted.

    OMP_NUM_THREADS=2 python benchmarks/smollm2_rg.py calibrate      # ~75 s a configuration
    OMP_NUM_THREADS=2 python benchmarks/smollm2_rg.py probe
    OMP_NUM_THREADS=2 python benchmarks/smollm2_rg.py train          # the 60-minute run
    OMP_NUM_THREADS=1 python benchmarks/smollm2_rg.py compare        # grpo, rlsd x2, opsd
    OMP_NUM_THREADS=1 python benchmarks/smollm2_rg.py estimators     # + cepo, peer (issue 18)

`calibrate` samples one response (temperature 1, as the held-out evaluation) for each of 200
held-out problems per (dataset, configuration) and scores the same responses three ways: the
`rg` verifier (the text inside `<answer>` tags, what training rewards), `rg` lenient (else the
last number or line) and `format` (one `<answer>` block). Everything lands in
`runs/smollm2-rg/` (git-ignored); `commands.txt` gets every command run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("runs/smollm2-rg")
RECIPE = Path(__file__).resolve().parents[1] / "examples" / "smollm2.yaml"  # the train stage

CALIBRATION = [
    ("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}),
    (
        "basic_arithmetic",
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2, "operators": ["+", "-"]},
    ),
    ("products", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}),
    ("leg_counting", {"min_animals": 1, "max_animals": 2, "max_instances": 3}),
    ("letter_counting", {"min_words": 3, "max_words": 5}),
    ("spell_backward", {"min_word_len": 3, "max_word_len": 5}),
    ("number_sorting", {"min_numbers": 3, "max_numbers": 3, "max_decimals": 0}),
    ("gsm_symbolic", {}),
]

# The task the training run, the probe and the compare use (chosen from the calibration).
TASK = "rg:letter_counting"
TASK_CONFIG = {"min_words": 3, "max_words": 5}
# The reward: the rg verifier (routed by the rows) plus the format reward at weight 0.2.
REWARD_FLAGS = ["--reward_funcs", "exact", "format", "--reward_weights", "1.0", "0.2"]
# The compare's runs: the recipe's (examples/smollm2.yaml) model, task, reward and batch; the
# held-out evaluation sampled only (the greedy pass would double it), before and after.
TRAIN_FLAGS = [
    "--model_name_or_path",
    "smollm2",
    "--task_config",
    json.dumps(TASK_CONFIG),
    *REWARD_FLAGS,
    "--learning_rate",
    "5e-6",
    "--lr_scheduler_type",
    "constant",
    "--per_device_train_batch_size",
    "32",
    "--num_generations",
    "8",
    "--max_completion_length",
    "32",
    "--eval_num_samples",
    "1",
    "--eval_greedy",
    "false",
    "--save_steps",
    "2",
    "--save_total_limit",
    "1",
]


STRONG = "rlsd_lambda:1.0,rlsd_lambda_decay_steps:0,rlsd_eps_w:0.5"  # lambda 1 held, eps_w 0.5
VARIANTS = {
    "compare": ["grpo", "rlsd", f"rlsd_strong=algorithm:rlsd,{STRONG}", "opsd"],
    # The magnitude estimators at rlsd_strong's lambda and eps_w, beside the runs of `compare`
    # (same folder: grpo and rlsd_strong are reused). `contrastive` with beta 1 is CEPO's
    # formula exactly (docs/results.md section 8), so it is not run again here.
    "estimators": [
        "grpo",
        f"rlsd_strong=algorithm:rlsd,{STRONG}",
        f"cepo_strong=algorithm:rlsd,rlsd_estimator:cepo,{STRONG}",
        f"peer_strong=algorithm:rlsd,privileged_source:peer,{STRONG}",
    ],
}


def _log(command: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "commands.txt").open("a") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M ") + shlex.join(command) + "\n")


def calibrate(n: int, configs: list[tuple[str, dict]]) -> None:
    import torch

    from rlsd.evaluation import generate, score_completions
    from rlsd.models import load_model
    from rlsd.tasks import get_task, make_rows
    from rlsd.verifiers import get_verifier

    _log([sys.executable, *sys.argv])
    torch.manual_seed(0)
    model, tokenizer = load_model("smollm2")
    verifiers = {
        "strict": get_verifier("rg"),
        "lenient": get_verifier("rg", lenient=True),
        "format": get_verifier("format"),
    }
    path = OUT / "calibration.jsonl"
    done = (
        {json.loads(line)["key"] for line in path.read_text().splitlines()}
        if path.exists()
        else set()
    )
    for dataset, config in configs:
        key = f"{dataset} {json.dumps(config, sort_keys=True)}"
        if key in done:
            continue
        task = get_task("rg:" + dataset, config)
        rows = make_rows(task.problems("eval", n, seed=0), "answer")
        start = time.time()
        texts = generate(model, tokenizer, [r["prompt"] for r in rows], 1, 1.0, 48, seed=0)
        line = {"key": key, "dataset": dataset, "config": config, "n": len(rows)}
        for name, fn in verifiers.items():
            rewards = score_completions(fn, rows, texts)
            line[name] = sum((r[0] or 0.0) >= 1.0 for r in rewards) / len(rows)
        line["seconds"] = round(time.time() - start, 1)
        line["examples"] = [t[0] for t in texts[:3]]
        print(json.dumps(line), flush=True)
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")


def run(command: list[str]) -> None:
    _log(command)
    start = time.time()
    subprocess.run(command, check=True)
    print(f"{time.time() - start:.0f} s: {shlex.join(command)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("calibrate", "probe", "train", *VARIANTS))
    parser.add_argument("--n", type=int, default=200, help="calibrate: held-out problems")
    parser.add_argument("--seeds", type=int, default=3, help="compare: seeds")
    args, rest = parser.parse_known_args()
    rlsd = [sys.executable, "-m", "rlsd.cli"]
    if args.stage == "calibrate":
        calibrate(args.n, CALIBRATION)
    elif args.stage == "probe":
        task = ["--task", TASK, "--task_config", json.dumps(TASK_CONFIG)]
        run(
            [
                *rlsd,
                "probe",
                "--model_name_or_path",
                "smollm2",
                *task,
                "--num_problems",
                "64",
                "--num_generations",
                "8",
                "--max_completion_length",
                "48",
                "--output_dir",
                str(OUT / "probe"),
                *rest,
            ]
        )
    elif args.stage == "train":
        out = OUT / "train"
        resume = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        extra = ["--resume_from_checkpoint", str(resume[-1])] if resume else []
        run([*rlsd, "train", str(RECIPE), "--output_dir", str(out), *extra, *rest])
    else:
        run(
            [
                *rlsd,
                "compare",
                "--variants",
                *VARIANTS[args.stage],
                "--seeds",
                str(args.seeds),
                "--output_dir",
                str(OUT / "compare"),
                *("--task", TASK, "--max_steps", "6", "--num_eval", "200", "--eval_every", "6"),
                *rest,
                "--",
                *TRAIN_FLAGS,
            ]
        )


if __name__ == "__main__":
    main()
