"""Feature types and where they come from: the built-in savanna features and plugins.

``learning.features.compute`` is the public surface; this module holds the registry behind it.
A plugin is a module named in ``[features] plugins``; every actor that computes features
imports it at start, and importing it calls ``register_feature_type`` and
``declare_collection``. Registrations are process-global and idempotent, so the same
module imported by several actors (or twice) defines the same thing everywhere.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from learning.features.collections import FALLBACK_COLLECTION_ID, FeatureCollection

__all__ = [
    "FEATURE_TYPES",
    "ORIGINAL_FEATURES",
    "FeatureCrashed",
    "FeatureType",
    "Windows",
    "declare_collection",
    "declared_collections",
    "default_collections",
    "feature_type",
    "load_plugins",
    "register_feature_type",
]
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

#: The built-in feature types by name (plugins add theirs with ``register_feature_type``).
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
    """Collection 0 (the original features, the fallback) and collection 1 (every built-in)."""
    return (
        FeatureCollection(id=FALLBACK_COLLECTION_ID, created_at=now_ms, features=ORIGINAL_FEATURES),
        FeatureCollection(id=1, created_at=now_ms, features=tuple(FEATURE_TYPES)),
    )


# --- plugins: extra feature types and collections, without touching the actors ---------------

_PLUGIN_TYPES: dict[str, FeatureType] = {}
_DECLARED: dict[int, FeatureCollection] = {}
_BUILT_IN_COLLECTIONS = frozenset(c.id for c in default_collections(0))


def feature_type(name: str) -> FeatureType | None:
    """The feature type registered under ``name`` (built-in or plugin), or None."""
    return FEATURE_TYPES.get(name) or _PLUGIN_TYPES.get(name)


def register_feature_type(ftype: FeatureType) -> FeatureType:
    """Register a plugin's feature type; the same definition again is a no-op.

    Raises ``ValueError`` for a name already taken by another definition, a built-in name,
    an inconsistent rule, or ``original`` (the original features are fixed: collection 0).
    """
    if not ftype.name.isidentifier():
        raise ValueError(f"feature name {ftype.name!r} must be an identifier")
    if ftype.name in FEATURE_TYPES:
        raise ValueError(f"feature {ftype.name!r} is built in")
    if ftype.original:
        raise ValueError(f"feature {ftype.name!r}: a plugin cannot add original features")
    if not (ftype.minimum <= ftype.maximum and 0.0 <= ftype.max_nan_rate <= 1.0):
        raise ValueError(f"feature {ftype.name!r}: need minimum <= maximum and "
                         "0 <= max_nan_rate <= 1")
    existing = _PLUGIN_TYPES.setdefault(ftype.name, ftype)
    if _definition(existing) != _definition(ftype):
        raise ValueError(f"feature {ftype.name!r} is already registered differently")
    return existing


def _definition(ftype: FeatureType) -> tuple[object, ...]:
    # The compute by name, not identity: a module imported again defines the same feature.
    compute = ftype.compute
    where = (getattr(compute, "__module__", None), getattr(compute, "__qualname__", None))
    return (ftype.name, ftype.description, ftype.minimum, ftype.maximum, ftype.max_nan_rate,
            ftype.original, where)


def declare_collection(
    collection_id: int, features: Sequence[str], *, created_at: int = 1
) -> FeatureCollection:
    """Declare a plugin's feature collection; the same declaration again is a no-op.

    ``created_at`` is part of the definition, fixed in the plugin's code (not the clock), so
    every process registers the identical collection; with the default, a plugin's
    collections are newer than the built-in ones and ordered among themselves by id.
    """
    if collection_id in _BUILT_IN_COLLECTIONS or collection_id < 0:
        raise ValueError(f"collection id {collection_id} is reserved for the built-in ones")
    unknown = [name for name in features if feature_type(name) is None]
    if unknown:
        raise ValueError(f"collection {collection_id}: unknown features {', '.join(unknown)}")
    if len(set(features)) != len(features) or not features:
        raise ValueError(f"collection {collection_id}: features must be distinct, at least one")
    collection = FeatureCollection(collection_id, created_at, tuple(features))
    existing = _DECLARED.setdefault(collection_id, collection)
    if existing != collection:
        raise ValueError(f"collection {collection_id} is already declared as {existing!r}")
    return collection


def declared_collections() -> tuple[FeatureCollection, ...]:
    """The built-in collections and every collection plugins declared, by id."""
    return default_collections(0) + tuple(_DECLARED[i] for i in sorted(_DECLARED))


def load_plugins(modules: Iterable[str]) -> dict[str, str]:
    """Import each plugin module (which registers its features); module -> error of failures."""
    failed: dict[str, str] = {}
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken plugin is reported, never fatal to the caller
            failed[module] = f"{type(exc).__name__}: {exc}"
    return failed


class FeatureCrashed(Exception):
    """A feature's compute raised (or returned no usable column); ``feature`` names it."""

    def __init__(self, feature: str, error: str) -> None:
        super().__init__(f"feature {feature} crashed: {error}")
        self.feature = feature
        self.error = error
