"""`rg`: a reasoning-gym generator's own scorer, for the `rg:<dataset>` tasks.

The completion's answer is the text inside its last `<answer>...</answer>` (reasoning-gym's
own `extract_answer`, which the tasks' instruction asks for); a completion without one
scores what the generator's `score_answer(None, entry)` gives (0). `lenient=True` falls
back to the last number, else the last non-empty line, for models that ignore the tags
(how docs/results.md's calibration reads "lenient"); training uses the strict form, so the
format is what is rewarded.

The entry is regenerated from the row's `rg_dataset`, `rg_config` (a JSON object) and
`rg_index` columns (`rlsd.tasks.reasoning_gym` writes them), so the scorer sees the item and
its metadata exactly as the generator made them. Scores are the generator's: most are 0 or 1,
some give partial credit (reasoning-gym's default scorer gives `len(answer) / len(response)`
when the response contains the answer). Scoring runs in the trainer's process: the scorers
parse text and never run model-written code.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any

from rlsd.verifiers.base import RewardFunction
from rlsd.verifiers.extract import extract_answer

COLUMNS = ("rg_dataset", "rg_config", "rg_index")


@lru_cache(maxsize=4096)
def _entry(dataset: str, config_json: str, index: int) -> dict[str, Any]:
    from rlsd.tasks.reasoning_gym import generator

    return generator(dataset, config_json)[index]


def parse_answer(completion: str, lenient: bool = False) -> str | None:
    """The answer the scorer sees: the last `<answer>` text; with `lenient`, else the last
    number, else the last non-empty line."""
    from reasoning_gym.utils import extract_answer as tagged

    answer = tagged(completion)
    if answer is None and lenient:
        answer = extract_answer(completion, ("last_number", "last_line"))
    return answer


def score_reasoning_gym(completion: str, row: dict[str, Any], *, lenient: bool = False) -> float:
    """The generator's `score_answer` of the parsed answer against the row's entry."""
    from rlsd.tasks.reasoning_gym import generator

    dataset, config_json, index = str(row["rg_dataset"]), str(row["rg_config"]), row["rg_index"]
    entry = _entry(dataset, config_json, int(index))
    scorer = generator(dataset, config_json).score_answer
    return float(scorer(parse_answer(completion, lenient), entry))


def rg_verifier(*, lenient: bool = False, **options: Any) -> RewardFunction:
    """The `rg` reward function; `options` go to `RewardFunction` (e.g. `failure_score`)."""

    score = partial(score_reasoning_gym, lenient=lenient)
    return RewardFunction("rg", score, columns=COLUMNS, **options)
