"""Facts from the field: readings and outcomes, immutable once decoded."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ItemError", "Outcome", "Reading"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One sensor reading: how many animals (an interval) and the share of zebras.

    Keyed by ``(sensor_id, reading_id)``; ``timestamp`` is milliseconds since the epoch.
    """

    sensor_id: str
    location_id: int
    reading_id: str
    timestamp: int
    animals_lower: float  # an estimate's bounds: real numbers (a whole one kept as an int)
    animals_upper: float
    percent_zebras: float

    @property
    def key(self) -> tuple[str, str]:
        """The fact's identity: a second reading with this key is a duplicate."""
        return (self.sensor_id, self.reading_id)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A ranger's report: whether a hunt at a location succeeded (the label)."""

    location_id: int
    outcome_id: str
    timestamp: int
    label: bool

    @property
    def key(self) -> tuple[int, str]:
        """The fact's identity: a second outcome with this key is a duplicate."""
        return (self.location_id, self.outcome_id)


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why one item of a batch was rejected: its index, an error code and a detail."""

    index: int
    error: str
    detail: str = ""
