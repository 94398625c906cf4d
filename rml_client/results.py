"""What the daemon answers, as typed, immutable values."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BatchResult", "Prediction", "RejectedItem"]


@dataclass(frozen=True, slots=True)
class Prediction:
    """One prediction: the label, its probability, the model that made it and the feature
    collection it read; ``fallback`` marks an answer from the fallback model (the champion
    failed or missed the deadline)."""

    label: bool
    probability: float
    model_version: int
    feature_collection_id: int
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class RejectedItem:
    """An item the collector refused: its ``index`` in what was sent, the ``item`` itself
    (None for a batch sent already encoded), the ``error`` name (``bounds_inverted``,
    ``unknown_field``, ...) and the server's ``detail``. The items next to it were kept."""

    index: int
    item: Mapping[str, Any] | None
    error: str
    detail: str


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What the collectors answered for the batches of one send: items newly stored
    (``accepted``), already stored (``duplicates``: a resent reading is one, never stored
    twice), refused (``rejected``); ``batches`` acknowledged and how many times a batch was
    ``resent`` because no answer came (a lost answer, a 503, a broken connection)."""

    accepted: int = 0
    duplicates: int = 0
    rejected: tuple[RejectedItem, ...] = ()
    batches: int = 0
    resent: int = 0

    def rejected_by_error(self) -> dict[str, int]:
        """How many items were refused, by error name."""
        return dict(Counter(item.error for item in self.rejected))

    def __add__(self, other: BatchResult) -> BatchResult:
        """Both results together (each rejected item keeps the index its own send gave it)."""
        if not isinstance(other, BatchResult):
            return NotImplemented
        return BatchResult(self.accepted + other.accepted, self.duplicates + other.duplicates,
                           self.rejected + other.rejected, self.batches + other.batches,
                           self.resent + other.resent)
