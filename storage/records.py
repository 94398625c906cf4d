"""The values the learning side makes and the stores keep: feature collections and feature
rows (``FeatureStore``), why a training run started (``Trigger``, kept with each
``TrainingRun``) and drift checks (``DriftLog``).

They live here, below ``learning``, so that the stores never import the layer above them;
the rules that make and judge them stay in ``learning``, and ``learning.features.collections`` and
``learning.training.triggers`` re-export these names, where code and plugins have always found them.
The stores keep their fields (SQL columns, JSON documents), never the pickled classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "COLLECTION", "DRIFT", "KINDS", "NEW_OUTCOMES", "REQUEST", "SCHEDULE",
    "DriftCheck", "FeatureCollection", "FeatureRow", "Trigger",
]

# Why a training run starts: a Trigger's kind.
NEW_OUTCOMES = "outcomes"  # enough new outcomes (or the first model)
SCHEDULE = "schedule"  # [learning] retrain_interval_s passed
DRIFT = "drift"  # a feature's PSI above [learning] drift_threshold
COLLECTION = "collection"  # the champion's feature collection has an invalid feature
REQUEST = "request"  # someone asked (rml train)
KINDS = (NEW_OUTCOMES, SCHEDULE, DRIFT, COLLECTION, REQUEST)


@dataclass(frozen=True, slots=True)
class FeatureCollection:
    """A named set of feature types a model is trained on, plus the label it predicts."""

    id: int
    created_at: int  # ms since the epoch
    features: tuple[str, ...]
    label: str = "hunt_succeeded"


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """One location's feature values for a collection, computed from facts before ``as_of_ms``."""

    collection_id: int
    location_id: int
    as_of_ms: int
    values: tuple[float, ...]  # in the order of the collection's ``features``
    computed_at_ms: int


@dataclass(frozen=True, slots=True)
class Trigger:
    """Why a training run starts: its kind, a sentence, and details (read-only, JSON-able)."""

    kind: str
    reason: str
    detail: Mapping[str, Any] = field(default_factory=dict)  # made read-only on creation

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown trigger kind {self.kind!r}; expected one of {KINDS}")
        object.__setattr__(self, "detail", MappingProxyType(dict(self.detail)))

    def to_mapping(self) -> dict[str, Any]:
        """The lineage form: ``{"kind": ..., "reason": ..., **detail}``."""
        return {**self.detail, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class DriftCheck:
    """One drift check: PSI per feature of the recent window against a champion's profile."""

    at_ms: int
    champion_version: int
    collection_id: int
    window_start_ms: int  # data time: the recent window's span
    window_end_ms: int
    rows: int  # recent feature rows the scores are computed on
    scores: tuple[tuple[str, float], ...]  # (feature, PSI), by feature name
    threshold: float
    episode_started_at_ms: int | None  # the first check of this run above the threshold

    @property
    def max_psi(self) -> float:
        """The largest score (0 when there is none)."""
        return max((score for _, score in self.scores), default=0.0)

    @property
    def above(self) -> bool:
        """Whether this check saw drift."""
        return self.max_psi > self.threshold

    def drifting(self) -> dict[str, float]:
        """The features above the threshold and their scores."""
        return {name: score for name, score in self.scores if score > self.threshold}
