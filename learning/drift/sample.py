"""What drift is measured on: a collection's features over the recent window, on a regular grid.

The online feature rows are not a fair sample of the recent distribution: the feature
generator writes one row per location per batch of facts, so a bulk upload gives a row
or two per location, all at one hour of the day. Instead each location that reported in
the window is sampled at evenly spaced times across it, with the same point-in-time code
as training sets (readings strictly before each time), so recent rows are comparable with
the training rows, which sit at the outcomes' times, spread over the day. Each time is
drawn at random within its slot of the grid (seeded by the location, so the same facts
give the same sample): sensors report on a fixed period, and a strict grid would alias
with it (every point just before, or just after, a sensor's report).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from learning.drift.psi import drift_scores, profiles_from_mapping
from learning.features.batch import ReadLocation
from learning.features.collections import FeatureCollection, FeatureRow
from learning.features.compute import compute_matrix, reading_arrays, summarise_windows
from messages.facts import Reading
from storage.registry import ModelRecord

__all__ = ["DEFAULT_POINTS", "DriftMeasure", "measure_drift", "recent_feature_matrix",
           "sample_recent"]

DEFAULT_POINTS = 48  # per location: every 30 minutes over a day


def recent_feature_matrix(
    readings_by_location: Mapping[int, Sequence[Reading]],
    feature_names: Sequence[str],
    feature_window_ms: int,
    start_ms: int,
    end_ms: int,
    points: int = DEFAULT_POINTS,
) -> np.ndarray:
    """Features (rows x ``feature_names``) at ``points`` times per location in
    ``[start_ms, end_ms)``, one in each of ``points`` equal slots, for each location with a
    reading in ``[start_ms, end_ms)``.

    Each location's readings must cover ``[start_ms - feature_window_ms, end_ms)``; others
    are ignored. No location reported in the window: a matrix with no rows.
    """
    if end_ms <= start_ms:
        raise ValueError(f"the window is empty: start {start_ms} >= end {end_ms}")
    if points < 1:
        raise ValueError(f"points must be at least 1, got {points}")
    step = (end_ms - start_ms) / points
    blocks = []
    for location_id in sorted(readings_by_location):
        own = [r for r in readings_by_location[location_id]
               if start_ms - feature_window_ms <= r.timestamp < end_ms]
        if not any(r.timestamp >= start_ms for r in own):
            continue
        slots = np.arange(points) + np.random.default_rng(location_id).random(points)
        as_of = (start_ms + np.floor(step * slots)).astype(np.int64)
        windows = summarise_windows(*reading_arrays(own), as_of, feature_window_ms)
        blocks.append(compute_matrix(feature_names, windows))
    if not blocks:
        return np.empty((0, len(feature_names)))
    return np.vstack(blocks)


def sample_recent(latest: Sequence[FeatureRow], read_location: ReadLocation,
                  feature_names: Sequence[str], feature_window_ms: int, drift_window_ms: int,
                  points: int = DEFAULT_POINTS) -> tuple[np.ndarray, tuple[int, int]]:
    """``recent_feature_matrix`` over the ``drift_window_ms`` ending at the newest online row
    (``latest``: one per location), for the locations whose newest row falls in it, read
    with ``read_location``; the matrix and the window ``(start, end)``."""
    end = max(row.as_of_ms for row in latest)
    start = end - drift_window_ms
    readings = {row.location_id: read_location(row.location_id, start - feature_window_ms, end)
                for row in latest if row.as_of_ms > start}
    matrix = recent_feature_matrix(readings, feature_names, feature_window_ms, start, end, points)
    return matrix, (start, end)


@dataclass(frozen=True, slots=True)
class DriftMeasure:
    """PSI per feature of the recent window against the champion's training profile."""

    scores: dict[str, float]
    window: tuple[int, int]  # (start, end) ms
    rows: int  # recent rows sampled


def measure_drift(champion: ModelRecord, collection: FeatureCollection | None,
                  latest: Sequence[FeatureRow], read_location: ReadLocation,
                  default_feature_window_ms: int, drift_window_ms: int) -> DriftMeasure | None:
    """The champion's drift on its own collection (``collection``: None when it is gone)
    from the newest online rows ``latest``; None when there is nothing to judge: a champion
    without a training profile (from before evaluation records), no features yet, no recent
    rows. A feature that crashes while sampling raises ``FeatureCrashed``; a profiled
    feature the collection lacks, ``ValueError``."""
    profiles = profiles_from_mapping(json.loads(champion.evaluation).get("profile", {}))
    if not profiles or collection is None or not latest:
        return None
    window_ms = int(json.loads(champion.job).get("window_ms", default_feature_window_ms))
    recent, window = sample_recent(latest, read_location, collection.features, window_ms,
                                   drift_window_ms)
    scores = drift_scores(profiles, recent, collection.features)
    return DriftMeasure(scores, window, int(recent.shape[0])) if scores else None
