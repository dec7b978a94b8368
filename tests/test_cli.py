"""The `rlsd` command: train writes a complete run folder, YAML + overrides resolve as in TRL,
eval reports accuracy and pass@k, sft rebuilds a loadable model, bad data stops early."""

import json

import pytest
import yaml

from rlsd.cli import main, parse_train_args

pytestmark = pytest.mark.slow


def test_yaml_then_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"algorithm": "grpo", "learning_rate": 3e-5, "task": "counting"}))
    script, config, model = parse_train_args([str(cfg), "--learning_rate", "2e-5"])
    assert (config.algorithm, config.learning_rate, script.task) == ("grpo", 2e-5, "counting")
    assert config.max_steps == 150 and config.per_device_train_batch_size == 128  # CPU defaults
    assert config.output_dir.startswith("runs/grpo-counting-")


def test_train_writes_the_run_folder_then_eval_reads_it(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "32",
        "--num_train",
        "64",
        "--num_eval",
        "32",
        "--eval_every",
        "2",
        "--save_steps",
        "2",
        "--output_dir",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy (sampled, 32 problems)" in printed and "before ->" in printed
    for name in (
        "config.json",
        "metrics.jsonl",
        "samples.jsonl",
        "curves.png",
        "summary.json",
        "checkpoint-2",
        "final",
    ):
        assert (out / name).exists(), name
    assert (out / "checkpoint-2" / "rlsd_teacher" / "state.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["algorithm"] == "rlsd" and config["script"]["task"] == "mixed"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, 2, 3]
    assert any("rlsd/lambda" in r for r in records)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all("privileged" not in json.dumps(s) for s in samples)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and 0.0 <= summary["accuracy_after"] <= 1.0

    metrics_path = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                str(out / "final"),
                "--num_eval",
                "16",
                "--num_samples",
                "4",
                "--output",
                str(metrics_path),
            ]
        )
        == 0
    )
    metrics = json.loads(metrics_path.read_text())
    assert metrics["num_problems"] == 16 and {"accuracy", "pass@1", "pass@4", "leak_rate"} <= set(
        metrics
    )
    assert metrics["pass@1"] <= metrics["pass@4"]


def test_train_on_a_user_file_and_bad_data_stops_before_training(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Q:{i}+1="}],
            "answer": str(i + 1),
            "privileged_context": f"{i}+1={i + 1};A:{i + 1}",
        }
        for i in range(8)
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset_path",
                str(data),
                "--max_steps",
                "1",
                "--per_device_train_batch_size",
                "16",
                "--output_dir",
                str(out),
                "--teacher_template",
                "R:{privileged}\n{question}",
            ]
        )
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["steps"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "Q"}]}) + "\n")
    from rlsd.data import DataError

    with pytest.raises(DataError, match=r"bad.jsonl: row 1: column 'answer' is missing"):
        main(["train", "--dataset_path", str(bad), "--output_dir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


def test_sft_rebuilds_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tiny"
    assert (
        main(
            [
                "sft",
                "--output_dir",
                str(out),
                "--num_train",
                "400",
                "--num_eval",
                "16",
                "--max_steps",
                "20",
                "--eval_every",
                "10",
                "--batch_size",
                "16",
            ]
        )
        == 0
    )
    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["steps"] == 20 and [h["step"] for h in summary["history"]] == [10, 20]
    assert summary["history"][-1]["loss"] < 3.0  # learning, from ~4.6 (uniform over 100 chars)
    AutoModelForCausalLM.from_pretrained(out)


def test_seeded_evaluation_is_reproducible_and_leaves_the_rng_alone(tiny_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlsd.evaluation import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    tok = AutoTokenizer.from_pretrained(tiny_path)
    prompts = [[{"role": "user", "content": "Q:3+4-2="}]] * 4
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = generate(model, tok, prompts, num_samples=2, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert generate(model, tok, prompts, num_samples=2, seed=7) == first
