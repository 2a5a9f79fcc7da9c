"""The rolling choice between timed alternatives: the best overall line among those the gate would not refuse for
giving up what the default keeps, read from the run before."""

from __future__ import annotations

import polars as pl
import pytest

from catalog import ConfigError
from flows.cycle import gate_config, rolling_choice

DEFAULT, RECENT = "choice_recent14_place1", "choice_recent28"
NAMES = [DEFAULT, RECENT]
GATE = gate_config(("overall/ndcg@20", "cold/recall@20"))


def run_before(**lines: tuple[float, float]) -> pl.DataFrame:
    """Metric rows of a run: each named line's overall NDCG@20 and cold Recall@20, beside the product's own."""
    rows = [dict(protocol="temporal", segment="overall", metric="ndcg", k=20, value=0.99)]
    for name, (ndcg, cold) in lines.items():
        rows.append(dict(protocol=f"temporal:{name}", segment="overall", metric="ndcg", k=20, value=ndcg))
        rows.append(dict(protocol=f"temporal:{name}", segment="cold", metric="recall", k=20, value=cold))
    return pl.DataFrame(rows)


def test_without_the_default_measured_the_default_is_served() -> None:
    assert rolling_choice(None, NAMES, GATE) == (DEFAULT, f"{DEFAULT} (no earlier run measured the alternatives)")
    assert rolling_choice(run_before(**{RECENT: (0.5, 0.3)}), NAMES, GATE)[0] == DEFAULT
    at_10 = gate_config(("overall/ndcg@10", "cold/recall@10"))  # the run before measured another cut-off
    assert rolling_choice(run_before(**{DEFAULT: (0.3, 0.1), RECENT: (0.5, 0.3)}), NAMES, at_10)[0] == DEFAULT


def test_the_better_overall_line_is_served_when_it_keeps_the_new_items() -> None:
    # (a cold drop within the gate's tolerance of 0.005 is kept)
    name, why = rolling_choice(run_before(**{DEFAULT: (0.3700, 0.0100), RECENT: (0.3800, 0.0060)}), NAMES, GATE)
    assert name == RECENT
    assert why == (
        f"{RECENT} (in the run before: {DEFAULT} overall/ndcg@20 0.3700, cold/recall@20 0.0100; "
        f"{RECENT} overall/ndcg@20 0.3800, cold/recall@20 0.0060)"
    )


def test_a_line_that_gives_up_the_new_items_is_not_served() -> None:
    # MovieLens-100K's temporal split: the 28-day line wins overall NDCG and keeps no place for new items
    name, why = rolling_choice(run_before(**{DEFAULT: (0.3704, 0.2978), RECENT: (0.3801, 0.0161)}), NAMES, GATE)
    assert name == DEFAULT
    assert why.endswith(f"; {RECENT} fell below {DEFAULT} on cold/recall@20)")


def test_ties_go_to_the_earlier_name_and_no_names_is_an_error() -> None:
    assert rolling_choice(run_before(**{DEFAULT: (0.37, 0.1), RECENT: (0.37, 0.1)}), NAMES, GATE)[0] == DEFAULT
    assert rolling_choice(run_before(**{DEFAULT: (0.37, 0.1), RECENT: (0.37, 0.1)}), NAMES[::-1], GATE)[0] == RECENT
    with pytest.raises(ConfigError, match="at least one timed alternative"):
        rolling_choice(None, [], GATE)
