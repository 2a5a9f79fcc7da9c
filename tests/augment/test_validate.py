"""Validation of generated text: each bad output is rejected with its reason; a good one passes."""

from __future__ import annotations

import pytest

from augment import ITEM_DESCRIPTION, OutputRules, rejection_reason, tidy

GOOD = (
    "This paper studies collaborative filtering for implicit feedback. It proposes a weighted matrix "
    "factorization and shows gains on a television data set."
)


def test_a_good_description_passes() -> None:
    assert rejection_reason(GOOD, ITEM_DESCRIPTION) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("Too short.", "shorter than"),
        ("word " * 400, "longer than"),
        ("the model the model the model the model the model the model the model the model", "degenerate"),
        (GOOD + " " + ITEM_DESCRIPTION.instruction, "prompt echo"),
        ("<|im_start|>assistant " + GOOD, "prompt echo"),
        (GOOD.replace("It", "\x07It"), "control characters"),
        (GOOD + "\ud800", "invalid UTF-8"),
    ],
)
def test_bad_outputs_are_rejected(text: str, reason: str) -> None:
    found = rejection_reason(text, ITEM_DESCRIPTION)
    assert found is not None and found.startswith(reason), found


def test_rules_are_adjustable() -> None:
    assert rejection_reason(GOOD, ITEM_DESCRIPTION, OutputRules(max_chars=50)) == "longer than 50 characters"


def test_tidy_drops_an_unfinished_last_sentence() -> None:
    assert tidy("  One sentence. Two sentences! And a cut-off thou") == "One sentence. Two sentences!"
    assert tidy("No sentence end at all") == "No sentence end at all"
