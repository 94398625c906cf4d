"""Feature drift: a training profile per feature and the population stability index against it.

A profile is what the champion was trained on, per feature: bin edges at the training
quantiles and the share of training rows in each bin, plus the share of rows where the
feature was missing (NaN). Later values are binned the same way and compared with

    PSI = sum over bins of (actual - expected) * ln(actual / expected)

where both shares are floored at ``eps`` so an empty bin gives a large, finite score.
Rule of thumb: below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a major one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_EPS",
    "FeatureProfile",
    "drift_scores",
    "feature_psi",
    "profile_feature",
    "profile_features",
    "profiles_from_mapping",
    "psi",
]

DEFAULT_BINS = 10
DEFAULT_EPS = 1e-4


@dataclass(frozen=True, slots=True)
class FeatureProfile:
    """One feature's training distribution: ``edges`` from its minimum to its maximum (unique
    quantiles), ``proportions`` of all rows per bin and the ``missing`` (NaN) share; the
    proportions and ``missing`` sum to 1."""

    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    missing: float

    def shares(self, values: np.ndarray) -> np.ndarray:
        """Shares of ``values`` per bin of this profile, then the missing share (sums to 1).

        Values below the first or above the last edge count in the outer bins.
        """
        values = np.asarray(values, dtype=np.float64)
        out = np.zeros(max(len(self.proportions), 1) + 1)
        if values.size == 0:
            return out
        finite = values[np.isfinite(values)]
        bins = np.searchsorted(np.asarray(self.edges[1:-1]), finite, side="right")
        out[:-1] = np.bincount(bins, minlength=len(out) - 1)
        out[-1] = values.size - finite.size
        return out / values.size

    def expected(self) -> np.ndarray:
        """The training shares in the layout of ``shares``."""
        return np.array((*(self.proportions or (0.0,)), self.missing))

    def to_mapping(self) -> dict[str, Any]:
        """The JSON form: ``{"edges": [...], "proportions": [...], "missing": m}``."""
        return {"edges": list(self.edges), "proportions": list(self.proportions),
                "missing": self.missing}


def profile_feature(values: np.ndarray, bins: int = DEFAULT_BINS) -> FeatureProfile:
    """The profile of one feature's training values (NaN counts as missing)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("a profile needs a non-empty 1-d array of values")
    finite = values[np.isfinite(values)]
    missing = 1.0 - finite.size / values.size
    if finite.size == 0:
        return FeatureProfile((), (), 1.0)
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size == 1:  # a constant: one bin
        edges = np.repeat(edges, 2)
    profile = FeatureProfile(tuple(float(e) for e in edges), (0.0,) * (edges.size - 1), missing)
    shares = profile.shares(values)
    return FeatureProfile(profile.edges, tuple(float(s) for s in shares[:-1]), missing)


def profile_features(X: np.ndarray, names: Sequence[str],
                     bins: int = DEFAULT_BINS) -> dict[str, FeatureProfile]:
    """A profile per column of ``X`` (rows x features), keyed by feature name."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"X {X.shape} must have one column per feature ({len(names)})")
    return {name: profile_feature(X[:, j], bins) for j, name in enumerate(names)}


def profiles_from_mapping(data: Mapping[str, Any]) -> dict[str, FeatureProfile]:
    """Parse the ``profile`` of an evaluation record; ``ValueError`` naming the bad feature."""
    profiles: dict[str, FeatureProfile] = {}
    for name, entry in data.items():
        try:
            edges = tuple(float(e) for e in entry["edges"])
            proportions = tuple(float(p) for p in entry["proportions"])
            missing = float(entry.get("missing", 0.0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"profile of feature {name!r} is malformed: {exc!r}") from None
        if edges and len(proportions) != len(edges) - 1:
            raise ValueError(f"profile of feature {name!r} has {len(edges)} edges but "
                             f"{len(proportions)} proportions")
        profiles[str(name)] = FeatureProfile(edges, proportions, missing)
    return profiles


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray,
        eps: float = DEFAULT_EPS) -> float:
    """The population stability index of two distributions over the same bins."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    a = np.maximum(np.asarray(actual, dtype=np.float64), eps)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(f"expected {e.shape} and actual {a.shape} must be equal 1-d shapes")
    value = float(np.sum((a - e) * np.log(a / e)))
    return value if math.isfinite(value) else float("inf")


def feature_psi(profile: FeatureProfile, values: np.ndarray, eps: float = DEFAULT_EPS) -> float:
    """PSI of recent ``values`` of one feature against its training profile."""
    return psi(profile.expected(), profile.shares(values), eps)


def drift_scores(profiles: Mapping[str, FeatureProfile], X: np.ndarray,
                 names: Sequence[str], eps: float = DEFAULT_EPS) -> dict[str, float]:
    """PSI per profiled feature of the recent rows ``X`` (columns named by ``names``).

    A profiled feature missing from ``names`` is a ``ValueError``; an empty ``X`` gives
    no scores (nothing recent to judge).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"X {X.shape} must have one column per feature ({len(names)})")
    if X.shape[0] == 0:
        return {}
    column = {name: j for j, name in enumerate(names)}
    absent = sorted(set(profiles) - set(column))
    if absent:
        raise ValueError(f"no recent values for profiled features {absent}")
    return {name: feature_psi(profile, X[:, column[name]], eps)
            for name, profile in profiles.items()}
