"""Language-model augmentation: item descriptions, user profiles and synthetic interactions.

Backends (a local model run by llama.cpp or by transformers, or any OpenAI-compatible HTTP server) share the
`Backend` protocol, and `make_backend` builds one by its kind; prompts are versioned templates; outputs are
validated and cached by (model, prompt version, input hash). Fine-tuning the judge is research code, in
`augment.experimental`.
"""

from augment._augment import (
    DESCRIPTION,
    PROFILE,
    SIMILARITY,
    TITLES,
    WEIGHT,
    AugmentStats,
    CostEstimate,
    candidate_users,
    describe_items,
    description_prompts,
    estimate_cost,
    grounded_description_prompts,
    judge_pairs,
    judge_prompts,
    profile_prompts,
    profile_users,
    simulate_interactions,
)
from augment._backend import Backend, Generation
from augment._cache import GenerationCache, input_hash
from augment._factory import make_backend
from augment._http import HttpBackend
from augment._inprocess import InProcessBackend
from augment._llamacpp import LLAMACPP_NAME, LlamaCppBackend, llamacpp_gguf, llamacpp_name, smollm2_llamacpp_gguf
from augment._local import BF16_TOLERANCE, PRECISIONS, LocalBackend, Precision
from augment._models import (
    DEFAULT_LOCAL_MODEL,
    LOCAL_MODELS,
    SMOLLM2_NAME,
    LocalModel,
    convert_smollm2,
    local_model,
    model_tokenizer,
    smollm2_name,
    smollm2_tokenizer,
)
from augment._prompts import (
    INTERACTION_JUDGE,
    INTERACTION_JUDGE_V1,
    INTERACTION_JUDGE_V2,
    ITEM_DESCRIPTION,
    ITEM_DESCRIPTION_GROUNDED,
    PROMPT_VERSIONS,
    PROMPTS,
    USER_PROFILE,
    Messages,
    PromptTemplate,
    clean_field,
    grounded_item_data,
    item_description_messages,
    judge_messages,
    user_profile_messages,
)
from augment._validate import OutputRules, rejection_reason, tidy

__all__ = [
    "BF16_TOLERANCE",
    "DEFAULT_LOCAL_MODEL",
    "DESCRIPTION",
    "INTERACTION_JUDGE",
    "INTERACTION_JUDGE_V1",
    "INTERACTION_JUDGE_V2",
    "ITEM_DESCRIPTION",
    "ITEM_DESCRIPTION_GROUNDED",
    "LLAMACPP_NAME",
    "LOCAL_MODELS",
    "PRECISIONS",
    "PROFILE",
    "PROMPTS",
    "PROMPT_VERSIONS",
    "SIMILARITY",
    "SMOLLM2_NAME",
    "TITLES",
    "USER_PROFILE",
    "WEIGHT",
    "AugmentStats",
    "Backend",
    "CostEstimate",
    "Generation",
    "GenerationCache",
    "HttpBackend",
    "InProcessBackend",
    "LlamaCppBackend",
    "LocalBackend",
    "LocalModel",
    "Messages",
    "OutputRules",
    "Precision",
    "PromptTemplate",
    "candidate_users",
    "clean_field",
    "convert_smollm2",
    "describe_items",
    "description_prompts",
    "estimate_cost",
    "grounded_description_prompts",
    "grounded_item_data",
    "input_hash",
    "item_description_messages",
    "judge_messages",
    "judge_pairs",
    "judge_prompts",
    "llamacpp_gguf",
    "llamacpp_name",
    "local_model",
    "make_backend",
    "model_tokenizer",
    "profile_prompts",
    "profile_users",
    "rejection_reason",
    "simulate_interactions",
    "smollm2_llamacpp_gguf",
    "smollm2_name",
    "smollm2_tokenizer",
    "tidy",
    "user_profile_messages",
]
