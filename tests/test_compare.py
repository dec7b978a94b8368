"""`rlsd compare`: the table computation on hand-made metrics, variant parsing, resume, and an
end-to-end `--quick` run (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from rlsd.compare import (
    BUILTIN_VARIANTS,
    Run,
    check_folder,
    estimate_seconds,
    parse_variants,
    prepare,
    variant_flags,
)
from rlsd.reports.compare_report import (
    dedupe,
    format_table,
    paired_difference,
    plot_compare,
    plot_weights,
    read_runs_jsonl,
    seed_band,
    steps_to_reach,
    summarize,
    write_runs_jsonl,
)


def _run(accuracies: list[float], every: int = 10, **train) -> list[dict]:
    """Hand-made metrics: an eval record every `every` steps plus a train record per step."""
    records = []
    for i, acc in enumerate(accuracies):
        records.append({"step": i * every, "eval/accuracy": acc, "eval/leak_rate": 0.0})
    for step in range(1, (len(accuracies) - 1) * every + 1):
        records.append({"step": step, "reward": 0.5, "entropy": 1.0, "step_time": 2.0, **train})
    return records


@pytest.fixture
def runs():
    return {
        # GRPO: final mean (0.30 + 0.34) / 2 = 0.32, first reached at step 30.
        "grpo": {0: _run([0.1, 0.2, 0.25, 0.30]), 1: _run([0.1, 0.2, 0.34, 0.34])},
        # RLSD: reaches 0.32 at step 20 (mean 0.33), final 0.40 +- 0.
        "rlsd": {
            0: _run(
                [0.1, 0.31, 0.4, 0.4], **{"rlsd/w_moved_ratio_reweighted": 0.2, "time/teacher": 1.0}
            ),
            1: _run(
                [0.1, 0.35, 0.4, 0.4], **{"rlsd/w_moved_ratio_reweighted": 0.4, "time/teacher": 1.0}
            ),
        },
        # OPSD: never reaches GRPO's final.
        "opsd": {0: _run([0.1, 0.3, 0.2, 0.1]), 1: _run([0.1, 0.3, 0.2, 0.1])},
    }


def test_steps_to_reach():
    assert steps_to_reach([0, 10, 20], [0.1, 0.3, 0.5], 0.3) == 10
    assert steps_to_reach([0, 10, 20], [0.1, 0.3, 0.5], 0.6) is None
    assert steps_to_reach([0, 10], [0.4, 0.1], 0.2) == 0


def test_seed_band_mean_and_sample_std():
    steps, mean, std, count = seed_band({0: _run([0.2, 0.4]), 1: _run([0.4, 0.8])}, "eval/accuracy")
    assert steps == [0, 10] and count == [2, 2]
    assert mean == pytest.approx([0.3, 0.6])
    assert std == pytest.approx([math.sqrt(0.02), math.sqrt(0.08)])  # n - 1 in the denominator


def test_summarize_speedup_spread_and_weights(runs):
    rows = {r["variant"]: r for r in summarize(runs, baseline="grpo")}
    grpo, rlsd, opsd = rows["grpo"], rows["rlsd"], rows["opsd"]
    assert grpo["final_accuracy_mean"] == pytest.approx(0.32)
    assert grpo["final_accuracy_std"] == pytest.approx(math.sqrt(2 * 0.02**2))
    assert grpo["steps_to_baseline_final"] == 30 and grpo["steps_ratio_to_baseline"] == 1.0
    assert rlsd["steps_to_baseline_final"] == 10  # mean 0.33 at step 10 >= 0.32
    assert rlsd["steps_ratio_to_baseline"] == pytest.approx(1 / 3)
    assert rlsd["final_accuracy_std"] == 0.0
    assert rlsd["best_accuracy"] == pytest.approx(0.4) and rlsd["best_step"] == 20
    assert opsd["steps_to_baseline_final"] is None and opsd["steps_ratio_to_baseline"] is None
    assert opsd["best_accuracy"] == pytest.approx(0.3) and opsd["best_step"] == 10
    assert rlsd["rlsd/w_moved_ratio_reweighted"] == pytest.approx(0.3)
    assert math.isnan(grpo["rlsd/w_moved_ratio_reweighted"])
    assert rlsd["step_time_mean"] == 2.0 and rlsd["teacher_time_mean"] == 1.0


def test_format_table_has_a_row_per_variant(runs):
    table = format_table(summarize(runs), baseline="grpo")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[:4]] == ["variant", "grpo", "rlsd", "opsd"]
    assert "| rlsd | 2 | 40.0 ± 0.0 | 40.0 (20) | 10 | 0.33 |" in table
    assert "| opsd | 2 | 10.0 ± 0.0 | 30.0 (10) | > 30 | n/a |" in table
    weights = [r for r in rows if r.startswith("| rlsd |") and "0.300" in r]
    assert weights, "the RLSD weight table lists w_moved_ratio"
    # Every table row has as many cells as its header (no stray '|' in labels).
    for block in table.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        assert len({line.count("|") for line in lines}) <= 1, block


def test_summarize_without_baseline(runs):
    rows = summarize({"rlsd": runs["rlsd"]}, baseline="grpo")
    assert rows[0]["steps_to_baseline_final"] is None
    assert "n/a" in format_table(rows)


def test_dedupe_keeps_last_per_step_and_kind():
    records = [
        {"step": 2, "eval/accuracy": 0.1},
        {"step": 2, "reward": 0.1},
        {"step": 3, "reward": 0.2},  # logged before an interruption...
        {"step": 2, "eval/accuracy": 0.2},  # ...the resumed run re-evaluates its checkpoint
        {"step": 3, "reward": 0.3},
        {"step": 3, "train_runtime": 1.0},  # the trainer's closing log is not a train step
    ]
    out = dedupe(records)
    assert [r.get("eval/accuracy", r.get("reward")) for r in out if "train_runtime" not in r] == [
        0.2,
        0.1,
        0.3,
    ]


def test_runs_jsonl_round_trip_and_plot(runs, tmp_path):
    path = write_runs_jsonl(runs, tmp_path / "runs.jsonl")
    again = read_runs_jsonl(path)
    assert format_table(summarize(again)) == format_table(summarize(runs))  # NaN != NaN in dicts
    assert plot_compare(again, tmp_path / "curves.png").stat().st_size > 10_000


def test_parse_variants(tmp_path):
    v = parse_variants(["grpo", "rlsd_strong"])
    assert v["grpo"] == {"algorithm": "grpo"}
    assert variant_flags(v["rlsd_strong"]) == [
        "--algorithm",
        "rlsd",
        "--rlsd_lambda",
        "1.0",
        "--rlsd_lambda_decay_steps",
        "0",
        "--rlsd_eps_w",
        "0.5",
    ]
    custom = parse_variants(["rlsd_eps05=rlsd_eps_w:0.5,rlsd_lambda_decay_steps:0"])
    assert custom["rlsd_eps05"] == {
        "algorithm": "rlsd",
        "rlsd_eps_w": "0.5",
        "rlsd_lambda_decay_steps": "0",
    }
    assert parse_variants(["rlsd=rlsd_eps_w:0.3"])["rlsd"] == {
        "algorithm": "rlsd",
        "rlsd_eps_w": "0.3",
    }
    assert parse_variants(["mine=algorithm:grpo"])["mine"] == {"algorithm": "grpo"}
    with pytest.raises(ValueError, match="algorithm"):
        parse_variants(["mystery=rlsd_eps_w:0.5"])
    with pytest.raises(ValueError, match="unknown variant"):
        parse_variants(["nope"])
    yaml_path = tmp_path / "variants.yaml"
    yaml_path.write_text("grpo:\nrlsd_neg:\n  rlsd_negative_only: true\n")
    from_yaml = parse_variants([str(yaml_path)])
    assert from_yaml["grpo"] == BUILTIN_VARIANTS["grpo"]
    assert variant_flags(from_yaml["rlsd_neg"]) == [
        "--algorithm",
        "rlsd",
        "--rlsd_negative_only",
        "true",
    ]


def test_estimate_scales_with_work():
    v = parse_variants(["grpo", "opsd", "rlsd", "rlsd_strong"])
    base = estimate_seconds(v, 3, 60, 500, 10)
    assert estimate_seconds(v, 5, 60, 1000, 10) > base > estimate_seconds(v, 3, 60, 500, 10, jobs=2)
    grpo = estimate_seconds({"g": {"algorithm": "grpo"}}, 1, 60, 0, 0)
    strong = estimate_seconds({"s": BUILTIN_VARIANTS["rlsd_strong"]}, 1, 60, 0, 0)
    paper = estimate_seconds({"r": {"algorithm": "rlsd"}}, 1, 60, 0, 0)
    assert grpo < paper < strong
    # steps and evaluations of 4.4x longer completions cost 4.4 ** 1.35 = 7.39x (sql)
    g = {"g": {"algorithm": "grpo"}}
    startup = estimate_seconds(g, 1, 0, 0, 0)
    steps = estimate_seconds(g, 1, 60, 0, 0, completion_length=176) - startup
    assert abs(steps / (grpo - startup) - 7.3903) < 1e-3
    evals = estimate_seconds(g, 1, 0, 100, 0, completion_length=176, eval_samples=4)
    assert abs((evals - startup) / (100 * 2 * 0.007) - 4 * 7.3903) < 4e-3


def test_prepare_skip_resume_fresh(tmp_path):
    folder = tmp_path / "runs" / "rlsd" / "seed0"
    run = Run("rlsd", 0, folder, ["--output_dir", str(folder), "--seed", "0"])
    assert prepare(run) == ("fresh", [])
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "reward": s}) + "\n" for s in range(5))
    )
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (folder / "checkpoint-4").mkdir()  # incomplete (no trainer_state.json): ignored
    action, extra = prepare(run)
    assert action == "resume" and extra == [
        "--resume_from_checkpoint",
        str(folder / "checkpoint-2"),
    ]
    assert [
        json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()
    ] == [0, 1, 2]
    (folder / "summary.json").write_text("{}")
    assert prepare(run) == ("skip", [])
    (folder / "compare_run.json").write_text(json.dumps({"argv": ["--seed", "1"]}))
    with pytest.raises(SystemExit, match="different command"):
        check_folder(run)


def test_prepare_restarts_without_checkpoint(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    (folder / "train.log").write_text("first attempt\n")
    run = Run("grpo", 0, folder, [])
    assert prepare(run) == ("fresh", [])
    assert sorted(p.name for p in folder.iterdir()) == ["train.log"]


def test_reserved_flags_are_refused(tmp_path, capsys):
    from rlsd.compare import main
    from rlsd.data import UserError

    with pytest.raises(UserError, match="--algorithm cannot be passed to the runs"):
        main(["--quick", "--output_dir", str(tmp_path), "--", "--algorithm", "grpo"])


def test_dry_run_lists_runs(tmp_path, capsys):
    from rlsd.compare import main

    out = main(
        ["--seeds", "5", "--num_eval", "1000", "--dry_run", "--output_dir", str(tmp_path / "c")]
    )
    assert out["runs"] == 20 and out["estimate_s"] > 0
    printed = capsys.readouterr().out
    assert printed.count("rlsd train") == 20 and "--num_eval 1000" in printed
    assert not (tmp_path / "c").exists()


def test_parallel_jobs_run_every_run_once(tmp_path, monkeypatch):
    """`--jobs 2` runs each (variant, seed) once; a finished run is skipped next time."""
    import rlsd.compare as compare

    calls = []

    def fake_execute(run, extra):
        calls.append((run.variant, run.seed))
        run.folder.mkdir(parents=True, exist_ok=True)
        (run.folder / "metrics.jsonl").write_text(
            json.dumps({"step": 0, "eval/accuracy": 0.1 * run.seed})
            + "\n"
            + json.dumps({"step": 1, "reward": 0.5, "step_time": 1.0})
            + "\n"
        )
        (run.folder / "summary.json").write_text("{}")
        return {"returncode": 0, "wall_s": 0.0}

    monkeypatch.setattr(compare.runner, "execute", fake_execute)
    argv = [
        "--variants",
        "grpo",
        "rlsd_strong",
        "--seeds",
        "2",
        "--jobs",
        "2",
        "--output_dir",
        str(tmp_path / "c"),
    ]
    out = compare.main(argv)
    assert sorted(calls) == [("grpo", 0), ("grpo", 1), ("rlsd_strong", 0), ("rlsd_strong", 1)]
    assert set(out["status"].values()) == {"done"}
    assert [r["variant"] for r in out["rows"]] == ["grpo", "rlsd_strong"]
    assert compare.main(argv)["status"] == dict.fromkeys(out["status"], "skipped")
    assert len(calls) == 4


@pytest.mark.slow
def test_compare_quick_end_to_end_and_resume(tmp_path, random_path):
    """`rlsd compare --quick` writes the report; a second invocation skips finished runs."""
    from rlsd.compare import main
    from rlsd.models import DEFAULT_MODEL_PATH

    # The shipped model when it is there (what users get), else a random one: same plumbing.
    model = (
        str(DEFAULT_MODEL_PATH)
        if (DEFAULT_MODEL_PATH / "model.safetensors").exists()
        else random_path
    )
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        "-m",
        "rlsd.cli",
        "compare",
        "--quick",
        "--output_dir",
        str(out),
        "--",
        "--model_name_or_path",
        model,
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    for name in ("results.md", "curves.png", "runs.jsonl", "command.txt", "compare.json"):
        assert (out / name).exists(), name
    table = (out / "results.md").read_text()
    for variant in ("grpo", "rlsd"):
        assert f"\n| {variant} | 1 |" in table, table
    records = read_runs_jsonl(out / "runs.jsonl")
    assert set(records) == {"grpo", "rlsd"}
    assert any("eval/accuracy" in r for r in records["rlsd"][0])
    assert (out / "command.txt").read_text().startswith("rlsd compare --quick")

    summaries = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed0/summary.json")}
    assert len(summaries) == 2
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("skipped (finished") == 2, second.stdout
    assert {p: p.stat().st_mtime_ns for p in summaries} == summaries

    (out / "results.md").unlink()
    rebuilt = main(["--quick", "--output_dir", str(out), "--report_only"])
    assert (out / "results.md").exists() and {r["variant"] for r in rebuilt["rows"]} == {
        "grpo",
        "rlsd",
    }
    assert (out / "command.txt").read_text().startswith("rlsd compare --quick --output_dir")


def test_paired_difference_against_the_baseline(runs):
    # rlsd - grpo per seed: 0.40 - 0.30, 0.40 - 0.34 -> mean 0.08, sd 0.0283, se 0.02
    rlsd = paired_difference(runs["rlsd"], runs["grpo"])
    assert rlsd["paired_n"] == 2 and rlsd["paired_diff_mean"] == pytest.approx(0.08)
    assert rlsd["paired_diff_se"] == pytest.approx(0.02)
    assert rlsd["paired"] == "beats"  # 0.08 > 2 x 0.02
    assert paired_difference(runs["opsd"], runs["grpo"])["paired"] == "below"  # -0.22 +- 0.02
    assert paired_difference(runs["grpo"], runs["grpo"])["paired"] == "within noise"
    noisy = {0: _run([0.1, 0.5]), 1: _run([0.1, 0.2])}
    base = {0: _run([0.1, 0.3]), 1: _run([0.1, 0.3])}  # +0.2 and -0.1: mean 0.05, se 0.15
    assert paired_difference(noisy, base)["paired"] == "within noise"
    assert paired_difference({0: _run([0.1, 0.5])}, base)["paired"] == "n/a"  # one seed
    table = format_table(summarize(runs), baseline="grpo")
    assert "| +8.0 ± 2.0 | beats |" in table and "| -22.0 ± 2.0 | below |" in table


def test_plot_weights_draws_what_the_teacher_did(runs, tmp_path):
    assert plot_weights(runs, tmp_path / "none.png") is None  # no variant logged them
    stats = {"rlsd/w_q10": 0.9, "rlsd/w_q50": 1.0, "rlsd/w_q90": 1.3, "rlsd/delta_mean": 0.1}
    stats |= {"rlsd/adv_hat_over_adv_pos": 1.02, "rlsd/adv_hat_over_adv_neg": 0.97}
    with_weights = {**runs, "cepo": {0: _run([0.1, 0.2], **stats), 1: _run([0.1, 0.3], **stats)}}
    out = plot_weights(with_weights, tmp_path / "weights.png")
    assert out is not None and out.stat().st_size > 10_000
