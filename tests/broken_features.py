"""A deliberately broken feature plugin (``[features] plugins = ["tests.broken_features"]``).

``broken_range`` computes fine but every value lies outside its type's range (invalid
values); ``broken_crash`` raises every time it is computed (a crash). Each sits in a
collection of its own, declared newer than the built-in ones, so a daemon loading this
plugin starts on collection 3 and must fall back, once both are judged, to collection 1.
"""

from __future__ import annotations

import numpy as np

from learning.features import (
    ORIGINAL_FEATURES,
    FeatureType,
    Windows,
    declare_collection,
    register_feature_type,
)

__all__ = ["BROKEN_CRASH", "BROKEN_RANGE", "CRASH_COLLECTION", "RANGE_COLLECTION"]


def _below_range(w: Windows) -> np.ndarray:
    return -1.0 - w.count.astype(np.float64)  # always negative; its type says [0, 1e6]


def _crash(w: Windows) -> np.ndarray:
    raise RuntimeError("broken_crash is broken on purpose")


BROKEN_RANGE = register_feature_type(FeatureType(
    "broken_range", "negative on purpose: outside its own range", 0.0, 1e6, 0.5, False,
    _below_range))
BROKEN_CRASH = register_feature_type(FeatureType(
    "broken_crash", "raises on purpose", 0.0, 1.0, 0.5, False, _crash))

RANGE_COLLECTION = declare_collection(2, (*ORIGINAL_FEATURES, "interval_width", "broken_range"))
CRASH_COLLECTION = declare_collection(3, (*ORIGINAL_FEATURES, "hour_sin", "broken_crash"))
