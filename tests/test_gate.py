"""The publish gate: better than random, then at least the champion (plus a margin)."""

from __future__ import annotations

import pytest

from learning.models.gate import judge_candidate


@pytest.mark.parametrize("auc", [0.5, 0.42, 0.0, float("nan")])
def test_model_not_better_than_random_is_refused(auc: float) -> None:
    decision = judge_candidate({"roc_auc": auc}, has_champion=False)
    assert not decision.publish
    assert "random" in decision.reason


def test_metrics_without_roc_auc_are_refused() -> None:
    assert not judge_candidate({"accuracy": 0.9}, has_champion=False).publish


def test_first_model_better_than_random_is_published() -> None:
    decision = judge_candidate({"roc_auc": 0.51}, has_champion=False)
    assert decision.publish
    assert "0.5100" in decision.reason


def test_challenger_below_champion_plus_margin_is_refused_with_both_numbers() -> None:
    decision = judge_candidate(
        {"roc_auc": 0.71, "champion_roc_auc": 0.70}, has_champion=True, margin=0.02
    )
    assert not decision.publish
    assert "0.7100" in decision.reason and "0.7000" in decision.reason
    assert "0.0200" in decision.reason


def test_challenger_below_champion_is_refused_with_both_numbers() -> None:
    decision = judge_candidate({"roc_auc": 0.66, "champion_roc_auc": 0.74}, has_champion=True)
    assert not decision.publish
    assert "0.6600" in decision.reason and "0.7400" in decision.reason


@pytest.mark.parametrize(("auc", "margin"), [(0.74, 0.0), (0.80, 0.0), (0.76, 0.02)])
def test_challenger_equal_or_better_than_champion_plus_margin_is_published(
    auc: float, margin: float
) -> None:
    decision = judge_candidate(
        {"roc_auc": auc, "champion_roc_auc": 0.74}, has_champion=True, margin=margin
    )
    assert decision.publish
    assert f"{auc:.4f}" in decision.reason and "0.7400" in decision.reason


def test_champion_not_comparable_on_this_holdout_lets_a_better_than_random_model_in() -> None:
    decision = judge_candidate({"roc_auc": 0.6}, has_champion=True)
    assert decision.publish
    assert "not comparable" in decision.reason


def test_force_publishes_a_weaker_than_champion_model_that_beats_random() -> None:
    decision = judge_candidate(
        {"roc_auc": 0.6, "champion_roc_auc": 0.8}, has_champion=True, force=True
    )
    assert decision.publish
    assert "forced" in decision.reason
    assert "0.6000" in decision.reason and "0.8000" in decision.reason


@pytest.mark.parametrize("auc", [0.5, 0.3])
def test_force_never_publishes_a_model_at_or_below_random(auc: float) -> None:
    for has_champion, metrics in (
        (True, {"roc_auc": auc, "champion_roc_auc": 0.8}),
        (False, {"roc_auc": auc}),
    ):
        decision = judge_candidate(metrics, has_champion=has_champion, force=True)
        assert not decision.publish
        assert "random" in decision.reason
