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

from rlsd.prompts import example_images, left_pad, privileged_text, render_prompts
from rlsd.teacher.contexts import GroupContexts, group_contexts
from rlsd.teacher.prompt import (
    DEFAULT_TEACHER_TEMPLATE,
    DEFAULT_TRUNCATION_MARKER,
    fill_template,
    teacher_input_ids,
    teacher_prompt,
    teacher_prompt_batch,
    teacher_prompt_ids,
)
from rlsd.teacher.scoring import (
    SHARED_PREFIX_MAX_ERR,
    TeacherScorer,
    shared_prefix_logits,
    shared_prefix_logps,
)
from rlsd.teacher.snapshot import (
    TEACHER_ADAPTER,
    TEACHER_STATE_DIR,
    TeacherSnapshot,
    TeacherSyncCallback,
    cast_lm_head_to_fp32,
    is_teacher_parameter,
    policy_parameter_name,
    skip_teacher_parameters,
)

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
