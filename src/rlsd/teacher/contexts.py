"""Which texts the self-teacher is shown, per group, for the estimators beyond the paper's.

`algorithm="rlsd"` shows the teacher each row's privileged context (its reference). Two
options change that, chosen per group of `G` rollouts from their total rewards (the weighted
sum TRL computes) and texts:

- `privileged_source="peer"` (HSD, arXiv 2606.15576): the teacher is shown the group's
  highest-scoring *successful* rollout (total reward >= `threshold`; ties: the first) in place
  of the reference, so the privileged text is in the student's own style. A group without a
  success keeps the reference (a *fallback*, counted). One peer serves the whole group (the
  successful rollout is also scored under itself), so the group keeps one teacher prompt and
  the shared-prefix path encodes it once.
- a negative context, for `rlsd_estimator="cepo"` and `"contrastive"`:
  `rlsd_negative_context="wrong"` is CEPO's rule (its `_build_cepo_teacher_batch`): the
  final answer of the group's lowest-scoring *rejected* rollout (total reward < `threshold`;
  ties: the first), read by rlsd's answer extractor (`rlsd.verifiers.extract`: `\\boxed{}`,
  `<answer>` tags, an `A:`/`Answer:` marker, else the last line; CEPO reads `\\boxed{}` only),
  else the rollout's first 50 characters; `"shuffled"` is the reference of the next group in
  the batch. A group without one (no rejected rollout, an empty answer, or a batch of one
  group) gets no negative context: the trainer then uses the positive log-probs on both sides,
  `delta = 0` for `cepo` exactly as CEPO does, and counts a fallback.

Pure functions of lists, the same on every process (they see the gathered batch), so that
every rank makes the same choices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rlsd.verifiers.extract import extract_answer

# CEPO's fallback when no answer can be read from a rejected rollout: its first 50 characters.
NEGATIVE_PREFIX_CHARS = 50


@dataclass
class GroupContexts:
    """Per row of the batch: the positive text (`None`: the row's own reference) and the
    negative one (`None`: no negative, use the positive on both sides); and per batch the
    number of groups that fell back."""

    positive: list[str | None]
    negative: list[str | None]
    peer_fallbacks: int
    negative_fallbacks: int
    groups: int


def final_answer(text: str, extract: Callable[[str], str | None] | None = None) -> str:
    """The final answer of a rollout, as CEPO reads its wrong answer: the extractor's, else the
    first `NEGATIVE_PREFIX_CHARS` characters (stripped)."""
    answer = (extract or extract_answer)(text)
    if answer is None or not str(answer).strip():
        answer = text[:NEGATIVE_PREFIX_CHARS]
    return str(answer).strip()


def _score(reward: float) -> float:
    return -math.inf if reward is None or math.isnan(reward) else float(reward)


def group_contexts(
    texts: Sequence[str],
    rewards: Sequence[float],
    references: Sequence[str],
    group_size: int,
    source: str = "reference",
    negative: str | None = None,
    threshold: float = 0.5,
    extract: Callable[[str], str | None] | None = None,
) -> GroupContexts:
    """The teacher's texts for a batch of `N = P * G` rollouts (prompt-major, as TRL orders
    them): `source` in {"reference", "peer"}, `negative` in {None, "wrong", "shuffled"}. NaN
    rewards rank lowest (a failed rollout)."""
    n = len(texts)
    if not (len(rewards) == len(references) == n) or group_size < 1 or n % group_size:
        raise ValueError(
            f"group_contexts: {n} texts, {len(rewards)} rewards and {len(references)} "
            f"references must be equal and a multiple of the group size {group_size}"
        )
    groups = n // group_size
    positive: list[str | None] = [None] * n
    negatives: list[str | None] = [None] * n
    peer_fallbacks = negative_fallbacks = 0
    for g in range(groups):
        rows = range(g * group_size, (g + 1) * group_size)
        scores = {i: _score(rewards[i]) for i in rows}
        successes = [i for i in rows if scores[i] >= threshold]
        rejected = [i for i in rows if scores[i] < threshold]
        if source == "peer":
            if successes:
                best = max(successes, key=lambda i: scores[i])  # the first of equal maxima
                for i in rows:
                    positive[i] = texts[best]
            else:
                peer_fallbacks += 1
        text: str | None = None
        if negative == "wrong" and rejected:
            worst = min(rejected, key=lambda i: scores[i])  # the first of equal minima
            text = final_answer(texts[worst], extract) or None
        elif negative == "shuffled" and groups > 1:
            text = references[((g + 1) % groups) * group_size]
        if negative is not None:
            if text is None:
                negative_fallbacks += 1
            for i in rows:
                negatives[i] = text
    return GroupContexts(positive, negatives, peer_fallbacks, negative_fallbacks, groups)
