"""Experimental augmentation: fine-tuning the interaction judge on warm interactions.

Research code that the benchmarks (benchmarks/judge_finetune.py, benchmarks/judge_prompt.py) and the tests use;
no product path (CLI, flows, serving) calls it. Its API may change without notice.
"""

from augment.experimental._finetune import (
    LABEL,
    JudgeTuning,
    finetune_judge,
    fit_head,
    judge_states,
    judge_training_pairs,
    later_pairs,
    tuned_judge,
    tuned_model_name,
)

__all__ = [
    "LABEL",
    "JudgeTuning",
    "finetune_judge",
    "fit_head",
    "judge_states",
    "judge_training_pairs",
    "later_pairs",
    "tuned_judge",
    "tuned_model_name",
]
