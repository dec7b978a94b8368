"""`rlsd probe`: the shuffled control, the numbers on hand-made records, the sentence, and a
real run on the shipped tiny model (console table, probe.json, no privileged text)."""

import json
import math

import pytest

from rlsd.cli import main
from rlsd.reports.probe import probe_stats, shuffled_contexts, verdict


def test_shuffled_contexts_never_give_a_row_its_own_text():
    texts = [f"ref {i}" for i in range(7)]
    for seed in range(5):
        control = shuffled_contexts(texts, seed)
        assert sorted(control) == sorted(texts)  # a permutation
        assert all(c != t for c, t in zip(control, texts))
    # equal texts (answers that repeat) are swapped away where the rows allow
    texts = ["7", "7", "3", "5", "7", "9"]
    control = shuffled_contexts(texts, 0)
    assert sorted(control) == sorted(texts) and all(c != t for c, t in zip(control, texts))
    with pytest.raises(ValueError, match="at least 2 rows"):
        shuffled_contexts(["only"], 0)


def _sample(correct, student, teacher, control):
    return {
        "correct": correct,
        "logp_student": student,
        "logp_teacher": teacher,
        "logp_teacher_control": control,
    }


def test_probe_stats_hand_example():
    records = [
        {
            "samples": [
                # correct: Delta(true) = [0.5, 0.0], Delta(shuffled) = [-0.5, 0.0]
                _sample(True, [-1.0, -1.0], [-0.5, -1.0], [-1.5, -1.0]),
                # correct: Delta(true) = [0.1], Delta(shuffled) = [0.3]
                _sample(True, [-2.0], [-1.9], [-1.7]),
                # incorrect: Delta(true) = [-1.0, 0.25], Delta(shuffled) = [0.0, 0.0]
                _sample(False, [-1.0, -1.0], [-2.0, -0.75], [-1.0, -1.0]),
            ]
        }
    ]
    stats = probe_stats(records, eps_w=0.2)
    true = stats["correct"]["true"]
    assert true["tokens"] == 3
    assert true["delta_mean"] == pytest.approx(0.6 / 3)
    assert true["delta_abs_mean"] == pytest.approx(0.6 / 3)
    assert true["w_outside"] == pytest.approx(1 / 3)  # 0.5 > log 1.2; 0.1 and 0 inside
    shuffled = stats["correct"]["shuffled"]
    assert shuffled["delta_mean"] == pytest.approx(-0.2 / 3)
    assert shuffled["w_outside"] == pytest.approx(2 / 3)  # -0.5 < log 0.8, 0.3 > log 1.2
    # incorrect: sign -1, so x = [1.0, -0.25]: both outside [log 0.8, log 1.2]
    assert stats["incorrect"]["true"]["w_outside"] == pytest.approx(1.0)
    diff = stats["correct"]["difference"]
    # per response: (0.5 - -0.5) = 1.0 and (0.1 - 0.3) = -0.2
    assert diff["responses"] == 2 and diff["mean"] == pytest.approx(0.4)
    assert diff["se"] == pytest.approx(math.sqrt(((0.6**2) * 2 / 1) / 2))
    assert diff["share_positive"] == 0.5
    assert stats["incorrect"]["difference"]["mean"] == pytest.approx(-0.75)
    assert stats["responses"] == 3 and stats["accuracy"] == pytest.approx(2 / 3)


def _stats(correct, incorrect):
    def one(mean, se, n=50):
        return {"difference": {"responses": n, "mean": mean, "se": se, "share_positive": 0.5}}

    return {"correct": one(*correct), "incorrect": one(*incorrect)}


def test_verdict_says_what_the_numbers_mean():
    reads = verdict(_stats((3.0, 0.5), (-2.0, 0.5)))
    assert reads.startswith("The context carries information beyond its mere presence")
    assert "raises correct responses and lowers incorrect ones" in reads
    both_up = verdict(_stats((3.0, 0.5), (4.0, 0.5)))
    assert "raises incorrect responses too" in both_up
    flat = verdict(_stats((0.4, 0.5), (-0.2, 0.5)))
    assert flat.startswith("The true context does not move the teacher more than a shuffled")
    assert "Too few" in verdict(_stats((0.0, math.nan), (0.0, math.nan)))


@pytest.mark.slow
def test_probe_runs_on_the_tiny_model_and_keeps_privileged_text_out(tmp_path, capsys):
    out = tmp_path / "probe"
    argv = ["probe", "--task", "arithmetic", "--num_problems", "12", "--num_generations", "4"]
    assert main([*argv, "--output_dir", str(out), "--log_samples", "True"]) == 0
    printed = capsys.readouterr().out
    assert "mean |Δ|" in printed and "sum Δ(true) - sum Δ(shuffled)" in printed
    result = json.loads((out / "probe.json").read_text())
    assert result["responses"] == 48 and result["verdict"] in printed
    assert set(result["correct"]) == {"true", "shuffled", "difference"}
    # the tiny model was warm-started to read its reference: the true context helps
    assert result["correct"]["difference"]["mean"] > 0
    from rlsd.tasks import get_task

    solutions = [p.solution for p in get_task("arithmetic").problems("eval", 12, 0)]
    written = (out / "probe.json").read_text()
    assert not any(s in written for s in solutions if len(s) > 12)
    # samples.json: the responses (a correct one may equal its reference) and their numbers
    samples = json.loads((out / "samples.json").read_text())
    assert len(samples) == 48 and not any("privileged" in key for key in samples[0])
    assert main(["probe", "--task", "nope", "--output_dir", str(out)]) == 2
