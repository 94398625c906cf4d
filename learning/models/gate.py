"""The publish gate: may a candidate become the champion? Pure, with the numbers stated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["GateDecision", "judge_candidate"]


@dataclass(frozen=True, slots=True)
class GateDecision:
    """Publish or not, and why (the reason quotes the numbers compared)."""

    publish: bool
    reason: str


def judge_candidate(
    metrics: Mapping[str, float], has_champion: bool, margin: float = 0.0, force: bool = False
) -> GateDecision:
    """Better than random (ROC AUC > 0.5), and not worse than the champion by ``margin``
    on the same holdout (``champion_roc_auc``); ``force`` skips only the second test."""
    auc = float(metrics.get("roc_auc", 0.0))
    if not auc > 0.5:
        return GateDecision(False, f"holdout ROC AUC {auc:.4f} is not better than random (0.5)")
    if not has_champion:
        return GateDecision(True, f"first model: holdout ROC AUC {auc:.4f} > 0.5")
    champion_auc = metrics.get("champion_roc_auc")
    if champion_auc is None:
        # The champion could not be scored on this holdout (e.g. its collection is gone).
        return GateDecision(True, f"holdout ROC AUC {auc:.4f} > 0.5; champion not comparable")
    if force:
        return GateDecision(True, f"forced: ROC AUC {auc:.4f} vs champion {champion_auc:.4f}")
    if auc >= champion_auc + margin:
        return GateDecision(True, f"ROC AUC {auc:.4f} >= champion {champion_auc:.4f} + "
                                  f"margin {margin:.4f} on the same holdout")
    return GateDecision(False, f"ROC AUC {auc:.4f} < champion {champion_auc:.4f} + margin "
                               f"{margin:.4f} on the same holdout")
