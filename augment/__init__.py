"""Language-model augmentation: item descriptions, user profiles and synthetic interactions.

Backends (a local transformers model, or any OpenAI-compatible HTTP server) share the `Backend` protocol;
prompts are versioned templates; outputs are validated and cached by (model, prompt version, input hash).
"""

from augment._augment import (
    DESCRIPTION,
    PROFILE,
    SIMILARITY,
    TITLES,
    WEIGHT,
    AugmentStats,
    candidate_users,
    describe_items,
    judge_pairs,
    profile_users,
    simulate_interactions,
)
from augment._backends import (
    PRECISIONS,
    SMOLLM2_NAME,
    Backend,
    Generation,
    HttpBackend,
    LocalBackend,
    Precision,
    convert_smollm2,
    smollm2_name,
)
from augment._cache import GenerationCache, input_hash
from augment._prompts import (
    INTERACTION_JUDGE,
    ITEM_DESCRIPTION,
    PROMPTS,
    USER_PROFILE,
    Messages,
    PromptTemplate,
    clean_field,
    item_description_messages,
    judge_messages,
    user_profile_messages,
)
from augment._validate import OutputRules, rejection_reason, tidy

__all__ = [
    "DESCRIPTION",
    "INTERACTION_JUDGE",
    "ITEM_DESCRIPTION",
    "PRECISIONS",
    "PROFILE",
    "PROMPTS",
    "SIMILARITY",
    "SMOLLM2_NAME",
    "TITLES",
    "USER_PROFILE",
    "WEIGHT",
    "AugmentStats",
    "Backend",
    "Generation",
    "GenerationCache",
    "HttpBackend",
    "LocalBackend",
    "Messages",
    "OutputRules",
    "Precision",
    "PromptTemplate",
    "candidate_users",
    "clean_field",
    "convert_smollm2",
    "describe_items",
    "input_hash",
    "item_description_messages",
    "judge_messages",
    "judge_pairs",
    "profile_users",
    "rejection_reason",
    "simulate_interactions",
    "smollm2_name",
    "tidy",
    "user_profile_messages",
]
