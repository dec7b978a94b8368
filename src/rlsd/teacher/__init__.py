"""The self-teacher (spec section 4): the policy's own network shown privileged context `r` (a
reference solution, an internal document), `logp_T[t] = log pi_teacher(y_t | x, r, y_<t)`.

One concern per module:

- `rlsd.teacher.prompt`: what the teacher reads (the template filled with the question and
  the privileged text, rendered as TRL renders the student's prompt, cut to
  `teacher_max_prompt_length` in its privileged part only);
- `rlsd.teacher.contexts`: which privileged text each group's teacher is shown for the
  estimators beyond the paper's (a successful peer rollout, a wrong answer);
- `rlsd.teacher.scoring`: how it scores responses (the shared-prefix engine, and
  `TeacherScorer`, the one object the trainer calls between batch and loss);
- `rlsd.teacher.snapshot`: its weights (`TeacherSnapshot`: build, sync, save, load;
  `TeacherSyncCallback`).

Privileged text only ever enters the teacher's prompt ids; it is never added to the student
prompt and never logged unless the user asks (`log_privileged`). Error messages name a row by
its question, never by its privileged text.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that owns it. Imported on first use (PEP 562), so that importing
# one light part (the template, for the config) does not load torch and transformers.
_OWNERS = {
    "example_images": "rlsd.prompts",
    "left_pad": "rlsd.prompts",
    "privileged_text": "rlsd.prompts",
    "render_prompts": "rlsd.prompts",
    "GroupContexts": "rlsd.teacher.contexts",
    "group_contexts": "rlsd.teacher.contexts",
    "DEFAULT_TEACHER_TEMPLATE": "rlsd.teacher.prompt",
    "DEFAULT_TRUNCATION_MARKER": "rlsd.teacher.prompt",
    "fill_template": "rlsd.teacher.prompt",
    "teacher_input_ids": "rlsd.teacher.prompt",
    "teacher_prompt": "rlsd.teacher.prompt",
    "teacher_prompt_batch": "rlsd.teacher.prompt",
    "teacher_prompt_ids": "rlsd.teacher.prompt",
    "SHARED_PREFIX_MAX_ERR": "rlsd.teacher.scoring",
    "TeacherScorer": "rlsd.teacher.scoring",
    "shared_prefix_logits": "rlsd.teacher.scoring",
    "shared_prefix_logps": "rlsd.teacher.scoring",
    "TEACHER_ADAPTER": "rlsd.teacher.snapshot",
    "TEACHER_STATE_DIR": "rlsd.teacher.snapshot",
    "TeacherSnapshot": "rlsd.teacher.snapshot",
    "TeacherSyncCallback": "rlsd.teacher.snapshot",
    "cast_lm_head_to_fp32": "rlsd.teacher.snapshot",
    "is_teacher_parameter": "rlsd.teacher.snapshot",
    "policy_parameter_name": "rlsd.teacher.snapshot",
    "skip_teacher_parameters": "rlsd.teacher.snapshot",
}


def __getattr__(name: str) -> Any:
    if name in _OWNERS:
        return getattr(importlib.import_module(_OWNERS[name]), name)
    if name in ("contexts", "prompt", "scoring", "snapshot"):
        return importlib.import_module(f"rlsd.teacher.{name}")
    raise AttributeError(f"module 'rlsd.teacher' has no attribute {name!r}")


__all__ = [
    "DEFAULT_TEACHER_TEMPLATE",
    "DEFAULT_TRUNCATION_MARKER",
    "SHARED_PREFIX_MAX_ERR",
    "TEACHER_ADAPTER",
    "TEACHER_STATE_DIR",
    "GroupContexts",
    "TeacherScorer",
    "TeacherSnapshot",
    "TeacherSyncCallback",
    "cast_lm_head_to_fp32",
    "example_images",
    "fill_template",
    "group_contexts",
    "is_teacher_parameter",
    "left_pad",
    "policy_parameter_name",
    "privileged_text",
    "render_prompts",
    "shared_prefix_logits",
    "shared_prefix_logps",
    "skip_teacher_parameters",
    "teacher_input_ids",
    "teacher_prompt",
    "teacher_prompt_batch",
    "teacher_prompt_ids",
]
