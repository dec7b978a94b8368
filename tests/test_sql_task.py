"""The built-in `sql` task: shipped database and documents, rules that change the answer,
the held-out split, and the `sql` verifier on its rows."""

from __future__ import annotations

import json
import random
import re
import sqlite3

import pytest

from rlsd.tasks import get_task, make_rows
from rlsd.tasks.sql import (
    DB_PATH,
    DOCS_DIR,
    EVAL_COUNTRIES,
    SCHEMA,
    SqlTask,
    fiscal_year,
    fiscal_year_months,
    read_rules,
)
from rlsd.verifiers import get_verifier, reward_funcs_for
from rlsd.verifiers.sql import connect

TASK = get_task("sql")
assert isinstance(TASK, SqlTask)
# The naive reading of each rule: the CRM flag for "active", gross for "net", the calendar
# year for "FYnn", the textbook regions.
TEXTBOOK_REGIONS = {"EMEA": "DE,FR,UK", "AMER": "US,CA,BR,MX", "APAC": "JP,AU,SG,IN"}


def _rows(sql: str) -> list[tuple]:
    conn = connect(str(DB_PATH))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _naive(template: str, param: dict) -> dict[str, str]:
    """Gold SQL with one rule at a time replaced by its naive reading, by rule."""
    _, _, sql = TASK.solve(template, param)
    out = {}
    if TASK.active in sql:
        out["active"] = sql.replace(TASK.active, "st='A'")
    if TASK.net + " and " in sql:
        out["net"] = sql.replace(TASK.net + " and ", "")
    span = re.search(r"ym between \d+ and \d+", sql)
    if span:
        y = param["year"]
        out["FY"] = sql.replace(span.group(0), f"ym between {y}01 and {y}12")
    if param.get("place") in TEXTBOOK_REGIONS:
        members = ",".join(f"'{c}'" for c in TEXTBOOK_REGIONS[param["place"]].split(","))
        out["region"] = re.sub(r"cc in\([^)]*\)", f"cc in({members})", sql)
    return out


def test_database_and_documents_ship_and_load():
    assert DB_PATH.is_file() and DB_PATH.stat().st_size < 64_000
    tables = {r[0] for r in _rows("select name from sqlite_master where type='table'")}
    assert tables == {"c", "o", "p"}
    conn = sqlite3.connect(f"file:{DB_PATH}?mode=ro", uri=True)
    for table, columns in re.findall(r"(\w+)\(([^)]*)\)", SCHEMA):  # the schema is the DB's
        info = conn.execute(f"pragma table_info({table})").fetchall()
        assert [r[1] for r in info] == columns.split(","), table
    conn.close()
    assert {p.name for p in DOCS_DIR.iterdir()} >= {"glossary.md", "regions.md"}
    rules = read_rules()
    assert rules["active"] == "lo>=2404" and rules["net"] == "ret=0"
    assert rules["EMEA"] == "DE,FR,UK,IN"
    with pytest.raises(sqlite3.DatabaseError):  # the verifier's connection is read-only
        _rows("delete from o")


def test_fiscal_year_helpers():
    assert fiscal_year_months(24, 4) == (2304, 2403)
    assert fiscal_year_months(24, 1) == (2401, 2412)
    assert [fiscal_year(m) for m in (2403, 2404, 2503)] == [24, 25, 25]


def test_every_gold_sql_runs_and_every_rule_changes_its_result():
    checked = 0
    for template, param in TASK.combinations():
        _, notes, sql = TASK.solve(template, param)
        gold = _rows(sql)
        assert gold[0][0] not in (None, 0), (template, param)
        variants = _naive(template, param)
        assert variants, (template, param)  # every question needs a rule from the documents
        for rule, naive in variants.items():
            assert _rows(naive) != gold, f"{rule} does not matter for {template} {param}"
            checked += 1
    assert checked > 250


def test_rows_prompt_answer_privileged_context():
    (row,) = make_rows([TASK.problem("revenue_place", {"place": "EMEA", "year": 24})])
    assert row["prompt"] == [{"role": "user", "content": f"{SCHEMA}\nQ:net revenue in EMEA FY24?"}]
    gold = (
        "select sum(amt) from o join c using(cid) where ret=0 and "
        "cc in('DE','FR','UK','IN') and ym between 2304 and 2403"
    )
    assert row["answer"] == gold
    assert row["privileged_context"] == f"--net:ret=0;FY24:2304-2403;EMEA:DE,FR,UK,IN\n{gold}"
    assert row["database"] == str(DB_PATH.resolve()) and row["verifier"] == "sql"

    # the ablation's kinds: the result alone, the query alone, the rules alone
    problem = TASK.problem("active", {"place": "DE"})
    query = "select count(*) from c where cc='DE' and lo>=2404"
    (count,) = _rows(query)[0]
    kinds = {k: make_rows([problem], k)[0]["privileged_context"] for k in TASK.privileged_kinds}
    assert kinds == {
        "solution": f"--active:lo>=2404\n{query}",
        "answer": f"A:{count}",
        "sql": query,
        "rules": "--active:lo>=2404",
    }
    assert count > 0
    with pytest.raises(ValueError, match=r"one of \['answer', 'rules', 'solution', 'sql'\]"):
        make_rows([problem], "documents")


def test_context_leak_rate_ignores_the_gold_query_and_flags_copied_documents():
    from rlsd.evaluation import context_beyond_answer
    from rlsd.objectives import leak_flags

    (row,) = make_rows([TASK.problem("revenue", {"year": 24})])
    document = "Returned orders are excluded entirely, whatever the refund was, says Finance."
    row["privileged_context"] += "\n" + document
    correct = row["answer"]  # the student writes the gold query: a leak by the 40-char test
    copied = correct + "\n-- " + document[:45]
    assert leak_flags([correct, copied], [row["privileged_context"]] * 2) == [True, True]
    context = context_beyond_answer(row)
    assert row["answer"] not in context and document in context
    assert leak_flags([correct, copied], [context] * 2) == [False, True]
    # a short answer (the other tasks) is left in: the two measures are the same there
    short = {"privileged_context": "Q:2+2 A:4", "answer": "4"}
    assert context_beyond_answer(short) == "Q:2+2 A:4"


def test_fits_the_tiny_model():
    problems = TASK.problems("train", 10_000) + TASK.problems("eval", 10_000)
    longest = max(len(p.solution) for p in problems)
    assert longest + 1 <= TASK.max_completion_length
    # BOS + prompt + worked solution + EOS: the student fits 256 positions
    assert max(len(p.question) + len(p.solution) + 2 for p in problems) <= 256


def test_held_out_split_is_fixed_and_disjoint():
    train, held_out = TASK.problems("train", 10_000, 0), TASK.problems("eval", 10_000, 0)
    assert len(train) > 100 and len(held_out) > 30
    train_q = {p.question for p in train}
    assert not train_q & {p.question for p in held_out}
    for cc in EVAL_COUNTRIES:  # unseen values: never asked about in training
        assert not any(re.search(rf"\b{cc}\b", q.split("\n")[1]) for q in train_q)
        assert any(re.search(rf"\b{cc}\b", p.question.split("\n")[1]) for p in held_out)
    # unseen combinations of seen values: the held-out (template, parameters) pairs that do not
    # name an unseen country have each parameter value in some training question
    train_combos = [(t, p) for t, p in TASK.combinations() if not TASK.is_held_out(t, p)]
    seen_values = {v for _, p in train_combos for v in p.values()}
    combos = [
        (t, p)
        for t, p in TASK.combinations()
        if TASK.is_held_out(t, p) and p.get("place") not in EVAL_COUNTRIES
    ]
    assert len(combos) > 10
    assert all(v in seen_values for _, p in combos for v in p.values())
    # the seed orders the problems; it does not change the split
    assert {p.question for p in TASK.problems("eval", 10_000, 3)} == {p.question for p in held_out}
    assert [p.question for p in TASK.problems("train", 5, 1)] != [p.question for p in train[:5]]
    with pytest.raises(ValueError, match="split"):
        TASK.problems("test", 3)


def test_counterfactual_questions_are_training_ones_under_other_rules():
    rng = random.Random(0)
    problems = [TASK.counterfactual(rng) for _ in range(300)]
    train_questions = {p.question for p in TASK.problems("train", 10_000)}
    real = {p.question: p.solution for p in TASK.problems("train", 10_000)}
    assert {p.question for p in problems} <= train_questions  # never a held-out question
    assert sum(p.solution != real[p.question] for p in problems) > 270
    # as long as the real rules' solutions, and the gold query runs
    assert max(len(p.solution) for p in problems) + 1 <= TASK.max_completion_length
    for p in problems[:30]:
        assert p.solution.endswith(p.answer) and p.privileged["sql"] == p.answer
        assert p.privileged["answer"] == f"A:{_rows(p.answer)[0][0]}"
    assert get_task("arithmetic").counterfactual(rng) is None  # no rules to change


def test_sql_verifier_scores_gold_1_and_wrong_0():
    rows = make_rows(TASK.problems("eval", 10_000))
    reward = get_verifier("sql")
    routed = reward_funcs_for(rows, ["exact"])[0]  # the `verifier` column routes to `sql`
    for fn in (reward, routed):
        assert fn(
            prompts=None,
            completions=[r["privileged_context"] for r in rows],
            **{k: [r[k] for r in rows] for k in ("answer", "database", "verifier")},
        ) == [1.0] * len(rows)
    naive = [next(iter(_naive(*tc).values())) for tc in TASK.combinations()[:20]]
    rows20 = make_rows([TASK.problem(*tc) for tc in TASK.combinations()[:20]])
    scores = reward(
        prompts=None,
        completions=naive + ["select 1", "drop table o"],
        answer=[r["answer"] for r in rows20] + [rows20[0]["answer"]] * 2,
        database=[r["database"] for r in rows20] + [rows20[0]["database"]] * 2,
    )
    assert scores == [0.0] * 22


def test_sft_on_sql_repeats_problems_routes_to_sql_and_sets_positions(tmp_path, monkeypatch):
    from rlsd.models import sft
    from rlsd.models.sft import SFTArgs, build_examples, run_sft

    def gold_accuracy(model, tokenizer, rows, reward_fn, **kwargs):  # the reference, scored
        completions = [r["privileged_context"] for r in rows]
        columns = {k: [r[k] for r in rows] for k in ("answer", "database", "verifier")}
        scores = reward_fn(prompts=None, completions=completions, **columns)
        return {"accuracy": sum(scores) / len(scores)}

    monkeypatch.setattr(sft, "evaluate", gold_accuracy)
    from rlsd.models.tiny import build_tokenizer

    examples = build_examples(SFTArgs(task="sql", num_train=300), build_tokenizer())
    assert len(examples) == 300  # 127 training problems, repeated
    assert max(len(ids) for ids, _ in examples) > 256  # the self-teacher's format: 512 positions
    # --num_problems: SFT sees the first 10 of the seed's order only, the rest stay new for RL
    tokenizer = build_tokenizer()
    first = TASK.problems("train", 10)
    solutions = {tuple(tokenizer(p.solution, add_special_tokens=False)["input_ids"]) for p in first}

    def targets(examples):
        return [tuple(t for t in labels if t != -100)[:-1] for _, labels in examples]

    plain = SFTArgs(task="sql", num_train=300, num_problems=10, counterfactual_fraction=0.0)
    assert set(targets(build_examples(plain, tokenizer))) == solutions
    # the default: every self-teacher example but those shown the query's result alone (0.7 x
    # (1 - 0.2 / 3) of all) is asked under other rules; its target is no real solution, and
    # the self-teacher's prompt shows it (whole, or its rules or its query)
    few = build_examples(SFTArgs(task="sql", num_train=300, num_problems=10), tokenizer)
    other = [(ids, t) for (ids, _), t in zip(few, targets(few)) if t not in solutions]
    assert 0.55 < len(other) / len(few) < 0.75
    half = build_examples(
        SFTArgs(task="sql", num_train=300, num_problems=10, counterfactual_fraction=0.5), tokenizer
    )
    assert 0.2 < sum(t not in solutions for t in targets(half)) / len(half) < 0.45
    shown = {"whole": 0, "part": 0}
    for ids, target in other:
        prompt, text = tokenizer.decode(ids[: -len(target) - 1]), tokenizer.decode(target)
        rules, query = text.split("\n")
        shown["whole" if f"R:{text}" in prompt else "part"] += 1
        assert f"R:{rules}" in prompt or f"R:{query}" in prompt
    assert shown["whole"] > 3 * shown["part"] > 0  # the worked solution four times in five
    args = SFTArgs(
        output_dir=str(tmp_path / "m"),
        task="sql",
        num_train=40,
        num_eval=2,
        batch_size=4,
        max_steps=1,
        eval_every=1,
        max_positions=512,
    )
    summary = run_sft(args, log=lambda _: None)
    # the worked solution (rules as a comment, then the query) scores 1 only with `sql`
    assert summary["steps"] == 1 and summary["sampled_accuracy"] == 1.0
    config = (tmp_path / "m" / "config.json").read_text()
    assert '"max_position_embeddings": 512' in config


def test_train_takes_the_tasks_defaults_unless_the_user_sets_them(tmp_path):
    from rlsd.cli import CPU_DEFAULTS, parse_train_args

    def parsed(argv):  # parsed once: the task's defaults are the parser's
        script, config, _ = parse_train_args(argv)
        return script, config

    script, config = parsed(["--task", "sql"])
    own = {"max_completion_length": 176, "teacher_template": TASK.teacher_template}
    for name, value in {**own, **TASK.train_defaults}.items():
        assert getattr(script if hasattr(script, name) else config, name) == value, name
    # derived from the task's batch as from a user's: one generation batch per step
    assert config.generation_batch_size == config.per_device_train_batch_size
    # a flag or a YAML key wins
    _, config = parsed(["--task", "sql", "--max_steps", "7", "--max_completion_length=99"])
    assert (config.max_steps, config.max_completion_length) == (7, 99)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("task: sql\nper_device_train_batch_size: 16\n")
    _, config = parsed([str(yaml_file)])
    assert config.per_device_train_batch_size == config.generation_batch_size == 16
    assert config.max_steps == TASK.train_defaults.get("max_steps", CPU_DEFAULTS["max_steps"])


@pytest.mark.slow
def test_train_task_sql_uses_the_shipped_sql_model_and_scores_by_execution(tmp_path, capsys):
    """`rlsd train --task sql`: the shipped 512-position model, the task's defaults, the
    self-teacher's prompts (reference + question, ~400 characters) within its positions, and
    held-out execution accuracy above zero from the start (the warm start works)."""
    from rlsd.cli import main
    from rlsd.models import default_model_path

    out = tmp_path / "run"
    argv = ["train", "--task", "sql", "--max_steps", "2", "--per_device_train_batch_size", "16"]
    argv += ["--eval_every", "0", "--eval_num_samples", "1", "--output_dir", str(out)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["model_name_or_path"] in (None, str(default_model_path(TASK)))
    assert config["config"]["max_completion_length"] == TASK.max_completion_length
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    before = next(r for r in records if r["step"] == 0 and "eval/accuracy" in r)
    assert before["eval/accuracy"] > 0.1  # execution accuracy of the shipped warm start
    assert "eval/context_leak_rate" in before
    steps = [r for r in records if "rewards/routed/mean" in r]
    assert len(steps) == 2 and all("rlsd/lambda" in r for r in steps)
    # the teacher scored responses from the shared prefix: its prompts fit the 512 positions
    assert any(r.get("time/teacher_responses", 0) > 0 for r in steps)
