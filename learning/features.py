"""Feature types: what each feature means, its valid range, and how it is computed.

A feature is computed for one location over a trailing window of readings,
``as_of_ms - window_ms <= timestamp < as_of_ms``: strictly before ``as_of_ms``, so a
reading at or after the moment being predicted never leaks into its features.

Online rows (``compute_row``) and training rows (``learning.training``) go through the
same code: readings are summarised into ``Windows`` (per-window counts, means, slope,
latest value, per-sensor spread) by ``summarise_windows``, and each ``FeatureType``
maps ``Windows`` to one column with a pure, vectorised function.

An empty window gives NaN for every value-type feature (estimates, width, share, trend,
disagreement, latest) and 0 for ``reading_count``; pipelines impute NaN (median).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from learning.collections import FALLBACK_COLLECTION_ID, FeatureCollection, FeatureRow
from messages.facts import Reading

__all__ = [
    "FEATURE_TYPES",
    "ORIGINAL_FEATURES",
    "FeatureType",
    "Windows",
    "compute_matrix",
    "compute_row",
    "default_collections",
    "reading_arrays",
    "summarise_windows",
    "validate_values",
]

_MS_PER_HOUR = 3_600_000.0
_MS_PER_DAY = 86_400_000


@dataclass(frozen=True, slots=True)
class Windows:
    """Summaries of n trailing windows (one per row), each array of shape (n,)."""

    as_of_ms: np.ndarray  # int64
    count: np.ndarray  # readings in the window
    mean_midpoint: np.ndarray  # NaN when empty
    mean_width: np.ndarray
    mean_zebras: np.ndarray
    slope_per_hour: np.ndarray  # least-squares slope of midpoints; NaN below 2 distinct times
    latest_midpoint: np.ndarray  # the newest reading's midpoint; NaN when empty
    sensor_spread: np.ndarray  # std of per-sensor mean midpoints; NaN below 2 sensors


@dataclass(frozen=True, slots=True)
class FeatureType:
    """A feature: its meaning, its valid range and NaN rate, and a pure vectorised compute."""

    name: str
    description: str
    minimum: float
    maximum: float
    max_nan_rate: float
    original: bool
    compute: Callable[[Windows], np.ndarray]


def _hour_angle(w: Windows) -> np.ndarray:
    return (w.as_of_ms % _MS_PER_DAY) * (2.0 * math.pi / _MS_PER_DAY)


_BIG = 1e6

#: Every registered feature type by name.
FEATURE_TYPES: Mapping[str, FeatureType] = {
    f.name: f
    for f in (
        FeatureType(
            "animal_estimate",
            "mean midpoint of animals_lower..animals_upper",
            0.0,
            _BIG,
            0.5,
            True,
            lambda w: w.mean_midpoint,
        ),
        FeatureType(
            "zebra_share",
            "mean percent_zebras",
            0.0,
            1.0,
            0.5,
            True,
            lambda w: w.mean_zebras,
        ),
        FeatureType(
            "reading_count",
            "readings in the window",
            0.0,
            1e9,
            0.0,
            True,
            lambda w: w.count.astype(np.float64),
        ),
        FeatureType(
            "interval_width",
            "mean animals_upper - animals_lower",
            0.0,
            _BIG,
            0.5,
            False,
            lambda w: w.mean_width,
        ),
        FeatureType(
            "trend",
            "least-squares slope of midpoints, animals per hour",
            -_BIG,
            _BIG,
            0.8,
            False,
            lambda w: w.slope_per_hour,
        ),
        FeatureType(
            "hour_sin",
            "sine of the hour of day (UTC) of as_of",
            -1.0,
            1.0,
            0.0,
            False,
            lambda w: np.sin(_hour_angle(w)),
        ),
        FeatureType(
            "hour_cos",
            "cosine of the hour of day (UTC) of as_of",
            -1.0,
            1.0,
            0.0,
            False,
            lambda w: np.cos(_hour_angle(w)),
        ),
        FeatureType(
            "sensor_disagreement",
            "std of the per-sensor mean midpoints",
            0.0,
            _BIG,
            0.8,
            False,
            lambda w: w.sensor_spread,
        ),
        FeatureType(
            "latest_estimate",
            "midpoint of the newest reading",
            0.0,
            _BIG,
            0.5,
            False,
            lambda w: w.latest_midpoint,
        ),
    )
}

#: The original features: the fallback collection 0.
ORIGINAL_FEATURES: tuple[str, ...] = tuple(n for n, f in FEATURE_TYPES.items() if f.original)


def default_collections(now_ms: int) -> tuple[FeatureCollection, ...]:
    """Collection 0 (the original features, the fallback) and collection 1 (every feature)."""
    return (
        FeatureCollection(id=FALLBACK_COLLECTION_ID, created_at=now_ms, features=ORIGINAL_FEATURES),
        FeatureCollection(id=1, created_at=now_ms, features=tuple(FEATURE_TYPES)),
    )


def summarise_windows(
    timestamps: np.ndarray,
    midpoints: np.ndarray,
    widths: np.ndarray,
    zebras: np.ndarray,
    sensors: np.ndarray,
    as_of_ms: np.ndarray,
    window_ms: int,
) -> Windows:
    """Summarise one location's readings over the trailing window before each ``as_of_ms``.

    The reading arrays must be sorted by timestamp (ties in a fixed order, so "latest" is
    deterministic); ``sensors`` holds small integer codes. Cost: O((r + n) log r).
    """
    as_of = np.asarray(as_of_ms, dtype=np.int64)
    n = len(as_of)
    ts = np.asarray(timestamps, dtype=np.int64)
    lo = np.searchsorted(ts, as_of - window_ms, side="left")
    hi = np.searchsorted(ts, as_of, side="left")  # strictly before as_of: no leakage
    count = hi - lo
    nonempty = count > 0
    safe = np.where(nonempty, count, 1)

    def window_sum(values: np.ndarray) -> np.ndarray:
        cs = np.concatenate(([0.0], np.cumsum(values, dtype=np.float64)))
        return cs[hi] - cs[lo]

    def window_mean(values: np.ndarray) -> np.ndarray:
        return np.where(nonempty, window_sum(values) / safe, np.nan)

    # Time in hours from the location's first reading keeps the sums of squares small.
    hours = (ts - ts[0]) / _MS_PER_HOUR if len(ts) else np.zeros(0)
    s_t = window_sum(hours)
    s_m = window_sum(midpoints)
    sxx = window_sum(hours * hours) - s_t * s_t / safe
    sxy = window_sum(hours * midpoints) - s_t * s_m / safe
    has_slope = (count >= 2) & (sxx > 1e-9)
    slope = np.where(has_slope, sxy / np.where(has_slope, sxx, 1.0), np.nan)

    latest = np.full(n, np.nan)
    if len(ts):
        latest = np.where(nonempty, midpoints[np.maximum(hi - 1, 0)], np.nan)

    spread = np.full(n, np.nan)
    codes = np.unique(sensors)
    if len(codes) >= 2 and n:
        means = np.empty((n, len(codes)))
        for j, code in enumerate(codes):
            own = sensors == code
            s_ts, s_mid = ts[own], midpoints[own]
            s_lo = np.searchsorted(s_ts, as_of - window_ms, side="left")
            s_hi = np.searchsorted(s_ts, as_of, side="left")
            cs = np.concatenate(([0.0], np.cumsum(s_mid, dtype=np.float64)))
            k = s_hi - s_lo
            means[:, j] = np.where(k > 0, (cs[s_hi] - cs[s_lo]) / np.where(k > 0, k, 1), np.nan)
        seen = ~np.isnan(means)
        k = seen.sum(axis=1)
        filled = np.where(seen, means, 0.0)
        centre = filled.sum(axis=1) / np.maximum(k, 1)
        var = (np.where(seen, means - centre[:, None], 0.0) ** 2).sum(axis=1) / np.maximum(k, 1)
        spread = np.where(k >= 2, np.sqrt(var), np.nan)

    return Windows(
        as_of_ms=as_of,
        count=count,
        mean_midpoint=window_mean(midpoints),
        mean_width=window_mean(widths),
        mean_zebras=window_mean(zebras),
        slope_per_hour=slope,
        latest_midpoint=latest,
        sensor_spread=spread,
    )


def compute_matrix(feature_names: Sequence[str], windows: Windows) -> np.ndarray:
    """The feature matrix (n windows x features), columns in ``feature_names`` order."""
    n = len(windows.as_of_ms)
    out = np.empty((n, len(feature_names)), dtype=np.float64)
    for j, name in enumerate(feature_names):
        out[:, j] = FEATURE_TYPES[name].compute(windows)
    return out


def reading_arrays(
    readings: Sequence[Reading],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One location's readings as sorted arrays: timestamps, midpoints, widths, zebras, sensors.

    Sorted by (timestamp, sensor_id, reading_id) so the order does not depend on arrival.
    """
    ordered = sorted(readings, key=lambda r: (r.timestamp, r.sensor_id, r.reading_id))
    ts = np.fromiter((r.timestamp for r in ordered), dtype=np.int64, count=len(ordered))
    lower = np.fromiter((r.animals_lower for r in ordered), dtype=np.float64, count=len(ordered))
    upper = np.fromiter((r.animals_upper for r in ordered), dtype=np.float64, count=len(ordered))
    zebras = np.fromiter((r.percent_zebras for r in ordered), dtype=np.float64, count=len(ordered))
    names = sorted({r.sensor_id for r in ordered})
    code = {name: i for i, name in enumerate(names)}
    sensors = np.fromiter((code[r.sensor_id] for r in ordered), dtype=np.int64, count=len(ordered))
    return ts, (lower + upper) / 2.0, upper - lower, zebras, sensors


def compute_row(
    collection: FeatureCollection,
    readings_of_location: Iterable[Reading],
    location_id: int,
    as_of_ms: int,
    window_ms: int,
    computed_at_ms: int,
) -> FeatureRow:
    """The online feature row of one location at ``as_of_ms``.

    Readings of other locations and outside the window are ignored, so the caller may
    pass a superset.
    """
    start = as_of_ms - window_ms
    own = [
        r
        for r in readings_of_location
        if r.location_id == location_id and start <= r.timestamp < as_of_ms
    ]
    windows = summarise_windows(*reading_arrays(own), np.array([as_of_ms]), window_ms)
    values = compute_matrix(collection.features, windows)[0]
    return FeatureRow(
        collection_id=collection.id,
        location_id=location_id,
        as_of_ms=as_of_ms,
        values=tuple(float(v) for v in values),
        computed_at_ms=computed_at_ms,
    )


def validate_values(
    collection: FeatureCollection, rows: Iterable[FeatureRow] | np.ndarray
) -> dict[str, str]:
    """Feature name -> why its values break its type's rules (range, NaN rate, infinities).

    ``rows`` are feature rows of ``collection`` or a matrix in its feature order. No rows,
    no verdict: an empty input gives an empty dict. A feature with no registered type is
    reported as unknown.
    """
    if isinstance(rows, np.ndarray):
        matrix = rows.astype(np.float64, copy=False).reshape(-1, len(collection.features))
    else:
        values = [row.values for row in rows]
        matrix = np.array(values, dtype=np.float64).reshape(len(values), len(collection.features))
    problems: dict[str, str] = {}
    if matrix.shape[0] == 0:
        return problems
    for j, name in enumerate(collection.features):
        ftype = FEATURE_TYPES.get(name)
        if ftype is None:
            problems[name] = "unknown feature type"
            continue
        column = matrix[:, j]
        nan = np.isnan(column)
        infinite = np.isinf(column)
        finite = column[~nan & ~infinite]
        nan_rate = float(nan.mean())
        if infinite.any():
            problems[name] = f"{int(infinite.sum())} non-finite values"
        elif nan_rate > ftype.max_nan_rate:
            problems[name] = f"NaN rate {nan_rate:.3f} above {ftype.max_nan_rate}"
        elif finite.size and (finite.min() < ftype.minimum or finite.max() > ftype.maximum):
            problems[name] = (
                f"values in [{finite.min():g}, {finite.max():g}] outside "
                f"[{ftype.minimum:g}, {ftype.maximum:g}]"
            )
    return problems
