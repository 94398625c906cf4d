"""Shadow trials: how far a model serving in shadow has got towards its promotion.

A candidate that passes the gate may first serve in shadow for a number of requests
(``[learning] shadow_requests``). Predictors report how many shadow predictions each of
their incarnations made, cumulatively; the trial keeps the largest count per reporter, so a
report delivered twice, late or after a newer one changes nothing, and a restarted
predictor (a new reporter) adds to what its predecessor served. The trial's status
(shadow, then champion or rejected) is the registry's; this store only keeps the counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ShadowCounts", "ShadowTrial", "ShadowTrials"]


@dataclass(frozen=True, slots=True)
class ShadowCounts:
    """Cumulative shadow predictions of one reporter (or summed over all of them)."""

    served: int = 0  # shadow predictions made beside a champion's answer
    agreed: int = 0  # of those, how many gave the champion's label
    errors: int = 0  # requests the shadow model could not answer (e.g. missing features)


@dataclass(frozen=True, slots=True)
class ShadowTrial:
    """One version's time in shadow: the requests it must serve and what it has served."""

    version: int
    target: int
    started_at_ms: int
    counts: ShadowCounts
    updated_at_ms: int

    @property
    def done(self) -> bool:
        """Whether it has served its ``target`` requests (and is due for promotion)."""
        return self.counts.served >= self.target

    def to_mapping(self) -> dict[str, Any]:
        """The form the views show (``rml status``, ``rml models``): every field, the counts
        flattened into ``served``, ``agreed`` and ``errors``."""
        return {"version": self.version, "target": self.target, "served": self.counts.served,
                "agreed": self.counts.agreed, "errors": self.counts.errors,
                "started_at_ms": self.started_at_ms, "updated_at_ms": self.updated_at_ms}


class ShadowTrials(Protocol):
    """The durable progress of every shadow trial."""

    def start(self, version: int, target: int, at_ms: int) -> ShadowTrial:
        """Begin ``version``'s trial (idempotent: a trial already begun is returned as is)."""
        ...

    def record(self, version: int, reporter: str, counts: ShadowCounts,
               at_ms: int) -> ShadowTrial:
        """Keep ``reporter``'s cumulative counts (the largest seen); the trial's new totals.
        ``KeyError`` if ``version`` has no trial."""
        ...

    def get(self, version: int) -> ShadowTrial | None:
        """``version``'s trial, or None."""
        ...

    def trials(self) -> tuple[ShadowTrial, ...]:
        """Every trial, by version."""
        ...

    def close(self) -> None:
        """Release the backend's connection; idempotent."""
        ...
