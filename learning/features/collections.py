"""Feature collections and the rule that picks the one to use (the seed's validCollection).

``FeatureCollection`` and ``FeatureRow`` are defined in ``storage.records`` (the feature store
keeps them, and storage sits below learning) and re-exported here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from storage.records import FeatureCollection, FeatureRow

__all__ = [
    "FALLBACK_COLLECTION_ID",
    "CrashStreaks",
    "FeatureCollection",
    "FeatureRow",
    "NanRates",
    "usable_collection_ids",
    "valid_collection",
]

#: The collection of original features every system starts with; used when no
#: newer collection is valid.
FALLBACK_COLLECTION_ID = 0


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


def usable_collection_ids(
    collections: Iterable[FeatureCollection], invalid_features: Iterable[str]
) -> frozenset[int]:
    """Ids of the collections a model may be served on and features computed for.

    Those with no invalid feature; when there is none, the fallback collection alone (what
    ``valid_collection`` then picks), so the active collection is always among them.
    """
    bad = frozenset(invalid_features)
    known = tuple(collections)
    valid = frozenset(c.id for c in known if not bad.intersection(c.features))
    if valid:
        return valid
    return frozenset(c.id for c in known if c.id == FALLBACK_COLLECTION_ID)


@dataclass(slots=True)
class CrashStreaks:
    """Crashes in a row per feature: a success resets the streak; ``limit`` makes it invalid.

    Actor-local on purpose: a restarted generator starts its streaks from zero, which costs at
    most ``limit`` more crashes before the verdict; the verdict itself is in the store.
    """

    limit: int
    _streaks: dict[str, int] = field(default_factory=dict)

    def crashed(self, feature: str) -> bool:
        """Count one crash; True when the streak reaches ``limit`` (the feature is invalid)."""
        streak = self._streaks.get(feature, 0) + 1
        self._streaks[feature] = streak
        return streak >= self.limit

    def succeeded(self, feature: str) -> None:
        """A clean computation ends the streak."""
        self._streaks.pop(feature, None)

    def streak(self, feature: str) -> int:
        """Crashes in a row so far."""
        return self._streaks.get(feature, 0)


@dataclass(slots=True)
class NanRates:
    """Each feature's NaN rate over its latest rows, judged once there are ``min_rows``.

    A batch of new facts may hold a row or two per feature, and its NaNs may say nothing
    about the feature: after a quiet spell longer than the feature window, each location's
    window holds one reading, so ``trend`` (a slope) and ``sensor_disagreement`` (a spread
    between sensors) are NaN in every row of that batch. So a rate is taken over the latest
    batches that together hold at least ``min_rows`` rows of the feature (a larger batch
    alone), per collection. Actor-local, like ``CrashStreaks``: a restarted generator counts
    again from zero; a verdict, once given, is in the store.
    """

    min_rows: int
    _batches: dict[tuple[int, str], deque[tuple[int, int]]] = field(default_factory=dict)

    def rate(self, collection_id: int, feature: str, rows: int, nans: int,
             ) -> tuple[float, int] | None:
        """Count a batch's ``rows`` of ``feature`` in collection ``collection_id``, ``nans``
        of them NaN: the NaN rate over the latest batches holding at least ``min_rows`` rows
        and how many rows that is, or None while fewer have been seen."""
        batches = self._batches.setdefault((collection_id, feature), deque())
        batches.append((rows, nans))
        total = sum(n for n, _ in batches)
        while len(batches) > 1 and total - batches[0][0] >= self.min_rows:
            # the oldest is not needed
            total -= batches.popleft()[0]
        if total < self.min_rows or total == 0:
            return None
        return sum(k for _, k in batches) / total, total
