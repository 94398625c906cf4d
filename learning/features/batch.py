"""A batch of new facts -> online feature rows and the features it shows to be invalid.

The feature generator's whole judgement, as a function of what it reads: for each
location with new readings, one row per usable collection as of its newest reading; a
feature whose compute crashes costs only the rows of the collections naming it, and once
it has crashed ``CrashStreaks.limit`` times in a row it is judged invalid and no longer
computed for the rest of the batch; values breaking a feature type's rules make it invalid
too (``newly_invalid``; a NaN rate over ``NanRates.min_rows`` rows at least, from this and
earlier batches). Rows naming a newly invalid feature are not kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from learning.features.collections import (
    CrashStreaks,
    FeatureCollection,
    FeatureRow,
    NanRates,
    usable_collection_ids,
)
from learning.features.compute import compute_rows, newly_invalid
from messages.facts import Reading

__all__ = ["Crash", "FeatureBatch", "compute_batch"]

#: Reads one location's readings in [start, end): the fact store's ``readings_for_location``.
ReadLocation = Callable[[int, int, int], Sequence[Reading]]


@dataclass(frozen=True, slots=True)
class Crash:
    """One feature's compute failing at one location (for the log)."""

    feature: str
    location_id: int
    error: str
    in_a_row: int


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """What a batch gives: the rows to write, the features now invalid and why, the crashes."""

    rows: tuple[FeatureRow, ...]
    invalid: dict[str, str]
    crashes: tuple[Crash, ...]
    locations: int


def compute_batch(readings: Iterable[Reading], read_location: ReadLocation,
                  collections: Sequence[FeatureCollection], invalid: frozenset[str],
                  window_ms: int, computed_at_ms: int, streaks: CrashStreaks,
                  nan_rates: NanRates | None = None) -> FeatureBatch:
    """The rows and verdicts of a batch of new ``readings`` (see the module docstring);
    ``streaks`` and ``nan_rates`` are the caller's, carried from batch to batch (without
    ``nan_rates``, NaN rates are this batch's own)."""
    newest: dict[int, int] = {}
    for reading in readings:
        newest[reading.location_id] = max(newest.get(reading.location_id, 0),
                                          reading.timestamp)
    features_of = {c.id: frozenset(c.features) for c in collections}
    usable = usable_collection_ids(collections, invalid)
    live = tuple(c for c in collections if c.id in usable)
    rows: list[FeatureRow] = []
    crashed: dict[str, str] = {}
    events: list[Crash] = []
    for location_id, latest in sorted(newest.items()):
        as_of = latest + 1
        location_rows, crashes = compute_rows(live, read_location(location_id, as_of - window_ms,
                                                                  as_of),
                                              location_id, as_of, window_ms, computed_at_ms)
        rows.extend(location_rows)
        for name in {n for c in live for n in c.features} - crashes.keys():
            streaks.succeeded(name)
        over: dict[str, str] = {}
        for name, error in crashes.items():
            events.append(Crash(name, location_id, error, streaks.streak(name) + 1))
            if streaks.crashed(name):
                over[name] = f"crashed {streaks.streak(name)} times in a row (last: {error})"
        if over:  # judged: not computed for the rest of the batch
            crashed.update(over)
            live = tuple(c for c in live if not over.keys() & features_of[c.id])
    found = newly_invalid(live, rows, invalid, crashed, nan_rates)
    kept = tuple(r for r in rows if not found.keys() & features_of.get(r.collection_id, set()))
    return FeatureBatch(kept, found, tuple(events), len(newest))
