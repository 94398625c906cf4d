"""Feature collections and the rule that picks the one to use (the seed's validCollection)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["FALLBACK_COLLECTION_ID", "FeatureCollection", "FeatureRow", "valid_collection"]

#: The collection of original features every system starts with; used when no
#: newer collection is valid.
FALLBACK_COLLECTION_ID = 0


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


def valid_collection(
    collections: Iterable[FeatureCollection], invalid_features: Iterable[str]
) -> FeatureCollection:
    """The newest collection with no invalid feature, else the fallback collection.

    Raises ``LookupError`` when there is neither.
    """
    bad = frozenset(invalid_features)
    by_newest = sorted(collections, key=lambda c: (c.created_at, c.id), reverse=True)
    for collection in by_newest:
        if collection.id != FALLBACK_COLLECTION_ID and not bad.intersection(collection.features):
            return collection
    for collection in by_newest:
        if collection.id == FALLBACK_COLLECTION_ID:
            return collection
    raise LookupError("no feature collection is registered, not even the fallback")
