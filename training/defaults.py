"""Every default the product trains, gates and augments with: the gate, the cut-off, the segments the language
model works on, the ranker's calibration grid; the models' hyperparameters are `ModelSettings` (training._settings),
whose fields' defaults are the product's. The flows, the CLI's help and the benchmarks read them here, so changing
one changes what runs. This module stays light (no torch): the CLI imports it at start-up.

Each value was chosen on a validation split; the script that measured it is named beside it and its figures are in
docs/benchmarks.md.
"""

from __future__ import annotations

from catalog import HEAD_SHARE as HEAD_SHARE  # the segments' rules live with them (catalog), shown here
from catalog import SPARSE_MAX as SPARSE_MAX
from catalog import Segments
from monitor import GateConfig

# ------------------------------------------------------------------------------------------------ gate

GATE = GateConfig()
"""The gate every refresh, retrain and backfill window passes (metrics, tolerance, reference, confidence)."""
DEFAULT_GATE_METRICS: tuple[str, ...] = tuple(metric.name for metric in GATE.metrics)
DEFAULT_GATE_TOLERANCE: float = GATE.tolerance
DEFAULT_K = 20
"""Cut-off of every reported metric."""
MAX_EPOCHS = 150
"""Most epochs (BPR-MF) or iterations (ALS, whose own default is 30) of a training run's collaborative model: the
cap `--max-epochs` sets (early stopping on validation pairs ends training well before)."""

# ------------------------------------------------------------------------------------------------ augmentation

ITEM_SEGMENTS = (Segments.new, Segments.cold, Segments.sparse)
"""Item segments the language model describes."""
USER_SEGMENTS = (Segments.new, Segments.sparse)
"""User segments the language model profiles."""
SIMULATE_SEGMENTS = (Segments.cold,)
"""Item segments whose candidate users the language model judges (synthetic interactions)."""
JUDGED_PAIRS, DESCRIPTIONS, PROFILES = "judged_pairs", "descriptions", "profiles"
AUDITED_OUTPUTS = (JUDGED_PAIRS, DESCRIPTIONS, PROFILES)
"""The language model's outputs every refresh audits against their no-LLM controls (training._audit)."""
USABLE_OUTPUTS = (JUDGED_PAIRS, DESCRIPTIONS)
"""The audited outputs a cycle can train on once an audit supports them. User profiles are audited only: on
MovieLens-100K's sparse-user validation no weight of them helped (benchmarks/profile_standins.py, docs/benchmarks.md),
so the served model has no place for them; a workspace whose audit finds them helping is told so, and stays off."""
PROFILED_ITEMS = "items"
"""The `user_profiles` column naming the items (ids) each profile was written from: the audit measures a profile
only on held-out users whose held-out events it did not see."""
AUGMENT_LIMIT = 16
"""Most entities per augmentation step of a scheduled refresh (the language model's work per run)."""

# ------------------------------------------------------------------------------------------------ ranking

EVALUATION_USERS = 20_000
"""Most users a time-ordered log's test window is scored for: a seeded sample beyond, named in the split's name (each
brings about 1,400 candidates to score; ALDI's scripts score 2,000). MovieLens-100K and CiteULike-a have fewer."""
CALIBRATION_USERS = 2000
"""Users of the split on which the ranker's cold places are chosen: enough to tell 2 places apart, fast to rank."""
COLD_SLOTS_GRID = (0, 4, 8, 10, 12, 16)
"""Cold places tried on that split (on CiteULike's hybrid_val NDCG@20 rose from 0 to 8 places,
benchmarks/hybrid_exposure.py)."""
TAIL_STRENGTH = 1.0
"""The calibrated tail exposure line re-ranks each user's top k to hold this multiple of their historical share of
tail items (the best validation tail Recall@20 on MovieLens-100K, benchmarks/tail_rerank.py)."""

# ------------------------------------------------------------------------------------------------ users

COLD_USER_SHARE_GRID = (0.0, 0.2, 0.5)
"""Shares of training users the LightGBM ranker is shown without their history, tried on a validation split of the
training users (the protocol's own split drawn again among them) by the cold-user and sparse-user protocols."""
ROUTE_USERS = 5_000
"""Most validation users of each kind (without history, sparse, with a few more events) the newcomer route is chosen
on (training.choose_route): a seeded sample beyond. CiteULike-a and MovieLens have fewer; at scale M (200k users)
scoring every one of them over the catalogue, three ways, was 18% of a retrain."""
NEWCOMER_ROUTE_BOUNDS = (10, 20, 40)
"""Most events of a user the newcomer model may serve beyond the sparse users' (`ModelSettings.newcomers`), each
tried on the route's validation users with more events (training.choose_route): the LightGBM ranker, trained on
a log's latest events, ranked MovieLens-100K users with 8 events far below popularity (docs/benchmarks.md, issue
29)."""
USER_HOLDOUT_SHARE = 0.2
"""Share of users the cold-user and sparse-user protocols hold out (and of training users their validation does)."""
USER_GROUP_ATTRIBUTES: dict[str, tuple[str, ...]] = {"ml-100k": ("gender", "age")}
"""The user attributes attribute-group popularity groups by, per data set (age in bands: ranker.baselines.AGE_BANDS);
a data set not named here groups by all its categorical attributes."""
PROFILE_WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
"""Weights of cos(LLM profile, item text) in the newcomer model's scores (training._profiles) tried on the sparse-user
protocols' validation (benchmarks/profile_standins.py; 0 is the product without profiles)."""
PROFILE_WEIGHT = 0.25
"""The weight the audit measures profiles at: the best of PROFILE_WEIGHT_GRID on the sparse-user validation (mean
NDCG@20 over n = 1, 3, 5: 0.4788 against 0.4787 without profiles, the only weight not below; docs/benchmarks.md)."""
