"""What long privileged context costs the self-teacher: the teacher's time against the length
of the privileged document, shared-prefix scoring (`rlsd.teacher.shared_prefix_logps`: the
teacher prompt encoded once, its KV cache scoring the G responses) against the full forward
(prompt + response for each of the G rows), both in units of a plain student forward of the
same responses. Measured, never asserted.

Run (13 minutes here, on a 2-core CPU shared with other work; the full forward at L = 2,048
is half of it):

    OMP_NUM_THREADS=1 python benchmarks/context_length.py
    OMP_NUM_THREADS=1 python benchmarks/context_length.py --lengths 128 512 --repeats 1

SmolLM2-135M-Instruct in float32 (`rlsd.models.gguf.smollm2_135m()`, see `cost.py` for how it
is installed), with TRL's fused LM head (`add_fused_lm_head`, temperature 1) as the trainer
gives its teacher. One teacher prompt: the spec's default template
(`rlsd.teacher.DEFAULT_TEACHER_TEMPLATE`) filled with a question and a privileged document of
exactly L SmolLM2 tokens (the first L tokens of `cost.py`'s synthetic internal handbook), in
the chat template, as `teacher_prompt_ids` builds it. G = 8 responses of T = 64 tokens, fixed
token ids from a seeded generator (the content does not change the cost). For each L:

- `full`: one forward over the 8 rows of `[teacher prompt, response]`, scoring the response
  tokens (the full-forward reference of `tests/test_teacher_engine.py`);
- `shared`: `shared_prefix_logps` on the same rows, split by its `timings` into `prefix`
  (encoding the one distinct prompt) and `responses` (the 8 responses from its cache);
- `student`: the same forward as `full` with the student prompt (the question only), the
  unit: what a GRPO step's loss forward costs without its backward.

All under `torch.no_grad()`, one warm-up (each of the three once, at the first L), then
`--repeats` rounds interleaved (full, shared, student, full, ...) so that a slow patch of a
shared machine falls on all three; figures are medians. The full forward is skipped at an L
where its time, projected linearly in tokens from the previous L, passes `--full_limit_s`.
`max |diff|` is the largest absolute difference between the two log-prob tensors.

Measured 2026-11-29 (2-core CPU shared with two other long jobs, load average about 3, fp32,
OMP_NUM_THREADS=1; the table is in benchmarks/README.md): shared-prefix scoring is 0.30x the
full forward at L = 128 (214-token teacher prompt), 0.24x at 256, 0.14-0.20x at 512 and 1,024
and 0.13x at 2,048 (15 s against 111 s). In units of the student forward (about 4 s, 8 x
(57 + 64) tokens) the full forward costs 2.5x at L = 128 and 27x at 2,048, the shared one
0.7x and 3.6x: its responses part grows with L too (2.5 s to 6.9 s), most likely as each
response attends over the whole cached prompt and the cache is copied once per response.
The two log-prob tensors agree to 2.5e-5. At 2,048 the linear projection (74 s) let the full
forward run though one repeat took 111 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
GROUP = 8
RESPONSE_TOKENS = 64


def load_cost():
    """`benchmarks/cost.py` as a module (its SmolLM2 folder and synthetic documents)."""
    spec = importlib.util.spec_from_file_location("bench_cost", HERE / "cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def repeat_rows(ids: list[int], pad_id: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt as `rows` identical left-padded rows: ids and mask `[rows, W]`."""
    from rlsd.teacher import left_pad

    return left_pad([ids] * rows, pad_id)


def full_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """`[B, T]` log-probs of the responses from one forward over `[prompt, response]`."""
    T = completion_ids.size(1)
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-T] = -100
    return model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs[
        :, -T:
    ]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(
    model,
    teacher: tuple[torch.Tensor, torch.Tensor],
    student: tuple[torch.Tensor, torch.Tensor],
    completion: tuple[torch.Tensor, torch.Tensor],
    repeats: int,
    run_full: bool,
) -> dict[str, Any]:
    """Median seconds of the full forward, shared-prefix scoring (and its split) and the
    student forward over `repeats` interleaved rounds; max |diff| of the two log-probs."""
    from rlsd.teacher import shared_prefix_logps

    times: dict[str, list[float]] = {
        k: [] for k in ("full", "shared", "prefix", "responses", "student")
    }
    diff = None
    for _ in range(repeats):
        if run_full:
            seconds, full = timed(lambda: full_logps(model, *teacher, *completion))
            times["full"].append(seconds)
        split: dict[str, float] = {}
        seconds, shared = timed(
            lambda t=split: shared_prefix_logps(model, *teacher, *completion, timings=t)
        )
        if shared is None:
            raise SystemExit("shared_prefix_logps could not share this model's cache")
        times["shared"].append(seconds)
        times["prefix"].append(split["teacher_prefix"])
        times["responses"].append(split["teacher_responses"])
        seconds, _ = timed(lambda: full_logps(model, *student, *completion))
        times["student"].append(seconds)
        if run_full:
            gap = ((shared - full).abs() * completion[1]).max().item()
            diff = gap if diff is None else max(diff, gap)
    out: dict[str, Any] = {k: statistics.median(v) if v else None for k, v in times.items()}
    out["runs"] = times
    out["max_abs_diff"] = diff
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| L (tokens) | teacher prompt | full s | shared s (prefix + responses) | shared/full "
        "| full/student | shared/student | student s | max abs diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        lines.append(
            f"| {r['L']} | {r['teacher_prompt_tokens']} | {_cell(r['full'])} "
            f"| {r['shared']:.2f} ({r['prefix']:.2f} + {r['responses']:.2f}) "
            f"| {_cell(_ratio(r['shared'], r['full']))} "
            f"| {_cell(_ratio(r['full'], r['student']), 1)} "
            f"| {_cell(_ratio(r['shared'], r['student']), 1)} | {r['student']:.2f} | {diff} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--full_limit_s",
        type=float,
        default=90.0,
        help="skip the full forward at an L where one repeat would take longer (projected)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/bench-context-length")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    from rlsd.prompts import tokenize_prompts
    from rlsd.teacher import DEFAULT_TEACHER_TEMPLATE, teacher_prompt_ids

    began = time.perf_counter()
    cost = load_cost()
    folder = cost.smollm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    add_fused_lm_head(model)
    pad = tokenizer.pad_token_id

    document, question, _ = cost.synthetic_document(random.Random(args.seed), 0)
    prompt = [{"role": "user", "content": question}]
    student = repeat_rows(tokenize_prompts(tokenizer, [prompt])[0], pad, GROUP)
    generator = torch.Generator().manual_seed(args.seed)
    completion_ids = torch.randint(
        100, len(tokenizer), (GROUP, RESPONSE_TOKENS), generator=generator
    )
    completion = (completion_ids, torch.ones_like(completion_ids))
    print(
        f"SmolLM2-135M fp32, G = {GROUP}, T = {RESPONSE_TOKENS}, student prompt "
        f"{student[0].size(1)} tokens, threads {torch.get_num_threads()}, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    results: list[dict[str, Any]] = []
    last_full: tuple[float, int] | None = None  # (seconds, tokens) of the last full forward
    with torch.no_grad():
        for i, L in enumerate(args.lengths):
            privileged, count = cost.fit_tokens(tokenizer, document, L)
            row = {"prompt": prompt, "privileged_context": privileged}
            ids = teacher_prompt_ids(tokenizer, [row], DEFAULT_TEACHER_TEMPLATE)[0][0]
            teacher = repeat_rows(ids, pad, GROUP)
            tokens = GROUP * (len(ids) + RESPONSE_TOKENS)
            projected = last_full and last_full[0] * tokens / last_full[1]
            run_full = not projected or projected <= args.full_limit_s
            if i == 0:  # one warm-up of each path, not timed
                measure(model, teacher, student, completion, 1, True)
            res = measure(model, teacher, student, completion, args.repeats, run_full)
            if run_full:
                last_full = (res["full"], tokens)
            res.update(L=count, teacher_prompt_tokens=len(ids), full_projected_s=projected)
            results.append(res)
            note = "" if run_full else f" (full skipped: projected {projected:.0f} s)"
            print(format_table([res]).splitlines()[-1] + note, flush=True)

    wall = time.perf_counter() - began
    table = format_table(results)
    print(f"\n{table}\n\nwall time {wall / 60:.1f} min, load {os.getloadavg()[0]:.1f}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "context_length.md").write_text(table + "\n")
    summary = {
        "model": "SmolLM2-135M-Instruct fp32",
        "group": GROUP,
        "response_tokens": RESPONSE_TOKENS,
        "student_prompt_tokens": student[0].size(1),
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "wall_s": wall,
        "results": results,
    }
    (out / "context_length.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'context_length.md'} and {out / 'context_length.json'}")
    return results


if __name__ == "__main__":
    main()
