"""Feature types: what each feature means, its valid range, and how it is computed.

A feature is computed for one location over a trailing window of readings,
``as_of_ms - window_ms <= timestamp < as_of_ms``: strictly before ``as_of_ms``, so a
reading at or after the moment being predicted never leaks into its features.

Online rows (``compute_row``) and training rows (``learning.training.sets``) go through the
same code: readings are summarised into ``Windows`` (per-window counts, means, slope,
latest value, per-sensor spread) by ``summarise_windows``, and each ``FeatureType``
maps ``Windows`` to one column with a pure, vectorised function. Feature types are the
built-in ones plus those plugins register (``register_feature_type``,
``declare_collection``, ``load_plugins``; see ``learning.features.registry``).

An empty window gives NaN for every value-type feature (estimates, width, share, trend,
disagreement, latest) and 0 for ``reading_count``; pipelines impute NaN (median).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

from config.settings import ConfiguredCollection, FeatureSettings
from learning.features.collections import FeatureCollection, FeatureRow, NanRates
from learning.features.registry import (
    FEATURE_TYPES,
    ORIGINAL_FEATURES,
    FeatureCrashed,
    FeatureType,
    Windows,
    declare_collection,
    declared_collections,
    default_collections,
    feature_type,
    load_plugins,
    register_feature_type,
)
from messages.facts import Reading

__all__ = [
    "FEATURE_TYPES",
    "ORIGINAL_FEATURES",
    "CollectionStore",
    "FeatureCrashed",
    "FeatureType",
    "Windows",
    "compute_matrix",
    "compute_row",
    "compute_rows",
    "declare_collection",
    "declared_collections",
    "default_collections",
    "newly_invalid",
    "register_collections",
    "FIXED_ID_CREATED_AT",
    "register_configured_collections",
    "register_declared_collections",
    "feature_type",
    "load_plugins",
    "reading_arrays",
    "register_feature_type",
    "summarise_windows",
    "validate_values",
]

_MS_PER_HOUR = 3_600_000.0


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


def _compute_column(name: str, windows: Windows) -> np.ndarray:
    """One feature's column; any failure of its compute becomes ``FeatureCrashed``."""
    ftype = feature_type(name)
    if ftype is None:
        raise FeatureCrashed(name, "no feature type of that name is registered")
    try:
        column = np.asarray(ftype.compute(windows), dtype=np.float64)
    except Exception as exc:  # plugin code: whatever it raises is that feature's crash
        raise FeatureCrashed(name, f"{type(exc).__name__}: {exc}") from exc
    if column.shape != windows.as_of_ms.shape:
        raise FeatureCrashed(name, f"returned shape {column.shape}, "
                                   f"expected {windows.as_of_ms.shape}")
    return column


def compute_matrix(feature_names: Sequence[str], windows: Windows) -> np.ndarray:
    """The feature matrix (n windows x features), columns in ``feature_names`` order.

    Raises ``FeatureCrashed`` naming the first feature whose compute fails.
    """
    n = len(windows.as_of_ms)
    out = np.empty((n, len(feature_names)), dtype=np.float64)
    for j, name in enumerate(feature_names):
        out[:, j] = _compute_column(name, windows)
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
    """The online feature row of one location at ``as_of_ms`` (``compute_rows`` for one
    collection; ``FeatureCrashed`` if a feature's compute fails).

    Readings of other locations and outside the window are ignored, so the caller may
    pass a superset.
    """
    rows, crashes = compute_rows((collection,), readings_of_location, location_id, as_of_ms,
                                 window_ms, computed_at_ms)
    for feature, error in crashes.items():
        raise FeatureCrashed(feature, error)
    return rows[0]


def compute_rows(
    collections: Iterable[FeatureCollection],
    readings_of_location: Iterable[Reading],
    location_id: int,
    as_of_ms: int,
    window_ms: int,
    computed_at_ms: int,
) -> tuple[tuple[FeatureRow, ...], dict[str, str]]:
    """One location's online rows for several collections, and the features that crashed.

    Each feature is computed once, whatever the number of collections naming it. A crash is
    contained to its feature: the collections that need it get no row this time (the feature
    name -> error is returned), every other collection gets its row.
    """
    start = as_of_ms - window_ms
    own = [
        r
        for r in readings_of_location
        if r.location_id == location_id and start <= r.timestamp < as_of_ms
    ]
    windows = summarise_windows(*reading_arrays(own), np.array([as_of_ms]), window_ms)
    columns: dict[str, float] = {}
    crashes: dict[str, str] = {}
    rows = []
    for collection in collections:
        for name in collection.features:
            if name not in columns and name not in crashes:
                try:
                    columns[name] = float(_compute_column(name, windows)[0])
                except FeatureCrashed as exc:
                    crashes[name] = exc.error
        if not crashes.keys() & set(collection.features):
            rows.append(FeatureRow(collection.id, location_id, as_of_ms,
                                   tuple(columns[n] for n in collection.features),
                                   computed_at_ms))
    return tuple(rows), crashes


def validate_values(
    collection: FeatureCollection, rows: Iterable[FeatureRow] | np.ndarray,
    nan_rates: NanRates | None = None,
) -> dict[str, str]:
    """Feature name -> why its values break its type's rules (range, NaN rate, infinities).

    ``rows`` are feature rows of ``collection`` or a matrix in its feature order. No rows,
    no verdict: an empty input gives an empty dict. A feature with no registered type is
    reported as unknown. The NaN rate is the rows' own, or with ``nan_rates`` (the feature
    generator's, from batch to batch) the rate over the feature's latest rows, none until
    there are enough of them.
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
        ftype = feature_type(name)
        if ftype is None:
            problems[name] = "unknown feature type"
            continue
        column = matrix[:, j]
        nan = np.isnan(column)
        infinite = np.isinf(column)
        finite = column[~nan & ~infinite]
        nans = int(nan.sum())
        if nan_rates is None:
            nan_rate: tuple[float, int] | None = nans / column.size, column.size
        else:
            nan_rate = nan_rates.rate(collection.id, name, column.size, nans)
        if infinite.any():
            problems[name] = f"{int(infinite.sum())} non-finite values"
        elif nan_rate is not None and nan_rate[0] > ftype.max_nan_rate:
            problems[name] = (f"NaN rate {nan_rate[0]:.3f} above {ftype.max_nan_rate} "
                              f"(over {nan_rate[1]} rows)")
        elif finite.size and (finite.min() < ftype.minimum or finite.max() > ftype.maximum):
            problems[name] = (
                f"values in [{finite.min():g}, {finite.max():g}] outside "
                f"[{ftype.minimum:g}, {ftype.maximum:g}]"
            )
    return problems


def newly_invalid(
    collections: Iterable[FeatureCollection], rows: Iterable[FeatureRow],
    already: frozenset[str], crashed: Mapping[str, str], nan_rates: NanRates | None = None,
) -> dict[str, str]:
    """Feature -> why it is invalid now, for features not already invalid: those that
    crashed too often (``crashed``), then those whose values in ``rows`` break their
    type's rules, judged per collection (NaN rates over ``nan_rates``, see
    ``validate_values``)."""
    rows = tuple(rows)
    found = {name: reason for name, reason in crashed.items() if name not in already}
    for collection in collections:
        own = [r for r in rows if r.collection_id == collection.id]
        for name, reason in validate_values(collection, own, nan_rates).items():
            if name not in already and name not in found:
                found[name] = reason
    return found


def register_declared_collections(
    plugins: Iterable[str], register: Callable[[FeatureCollection], object]
) -> dict[str, str]:
    """Import the plugin modules, then hand every declared collection to ``register`` (a
    store's insert-only ``register_collection``: fixed definitions, so every process
    registers the same). What failed -> why, for the caller to log; nothing is fatal."""
    problems = {f"plugin {module}": error for module, error in load_plugins(plugins).items()}
    for collection in declared_collections():
        try:
            register(collection)
        except ValueError as exc:  # a plugin changed a collection already in the store
            problems[f"collection {collection.id}"] = str(exc)
    return problems


#: ``created_at`` of a configured collection with a fixed ``id``: like a plugin's declared
#: collection (``declare_collection``'s default), so those two rank among themselves by id.
FIXED_ID_CREATED_AT = 1


def register_configured_collections(
    configured: Iterable[ConfiguredCollection],
    registered: Callable[[], Iterable[FeatureCollection]],
    register: Callable[[FeatureCollection], object],
    now_ms: int,
) -> tuple[dict[str, FeatureCollection], dict[str, str]]:
    """Give each ``[[features.collections]]`` entry its collection; ``registered`` and
    ``register`` are the feature store's. Call after ``register_declared_collections``, so
    that the plugins' collections hold their ids first.

    With an ``id``: that id, created at ``FIXED_ID_CREATED_AT`` (ranked with the plugins'
    collections, by id); the same id with the same set of features is the same collection.
    Without: the registered collection with the same set of features, else a new one
    numbered after every registered collection and every fixed id, created ``now_ms`` (so the
    newest, in configuration order). Idempotent across restarts; when several processes
    register at once, an id another took meanwhile is looked up again.

    Returns ``features.collections[i] (name)`` -> its collection, and the same key -> why it
    was not registered (an unknown feature type, an id taken by other features), for the
    caller to log; nothing is fatal.
    """
    specs = tuple(configured)
    fixed = {spec.id for spec in specs if spec.id is not None}
    found: dict[str, FeatureCollection] = {}
    problems: dict[str, str] = {}
    for i, spec in enumerate(specs):
        what = f"features.collections[{i}]" + (f" ({spec.name})" if spec.name else "")
        unknown = [name for name in spec.features if feature_type(name) is None]
        if unknown:
            problems[what] = (f"unknown feature type {', '.join(map(repr, unknown))}: neither "
                              "built in nor registered by a plugin in [features] plugins")
            continue
        for _ in range(20):
            every = tuple(registered())
            if spec.id is not None:
                same = next((c for c in every if c.id == spec.id), None)
                if same is not None and set(same.features) != set(spec.features):
                    problems[what] = (f"id {spec.id} is already the collection of "
                                      f"{', '.join(same.features)}")
                    break
            else:
                same = next((c for c in every if set(c.features) == set(spec.features)), None)
            if same is not None:
                found[what] = same
                break
            if spec.id is not None:
                new = FeatureCollection(spec.id, FIXED_ID_CREATED_AT, tuple(spec.features))
            else:
                new = FeatureCollection(max({c.id for c in every} | fixed, default=0) + 1,
                                        now_ms, tuple(spec.features))
            try:
                register(new)
            except ValueError:  # another process took this id first: look again
                continue
            found[what] = new
            break
        else:
            problems[what] = "could not register: its id kept being taken"
    return found, problems


class CollectionStore(Protocol):
    """What ``register_collections`` needs of a feature store."""

    def collections(self) -> tuple[FeatureCollection, ...]: ...

    def register_collection(self, collection: FeatureCollection) -> object: ...


def register_collections(settings: FeatureSettings, store: CollectionStore,
                         now_ms: int) -> tuple[dict[str, FeatureCollection], dict[str, str]]:
    """Every collection ``[features]`` asks for, into ``store``: the plugins' declared ones
    first (they hold their ids), then ``[[features.collections]]``. Returns the configured
    ones by key, and what failed -> why, for the caller to log (nothing is fatal)."""
    problems = register_declared_collections(settings.plugins, store.register_collection)
    configured, refused = register_configured_collections(
        settings.collections, store.collections, store.register_collection, now_ms)
    return configured, {**problems, **refused}
