"""Feature drift: is what the champion sees now still what it was trained on?

``psi`` profiles each feature at training time and scores later values against the profile
(the population stability index); ``sample`` draws the recent values those scores are
measured on. The names ``learning.drift`` had as one module are re-exported here.
"""

from learning.drift.psi import (
    DEFAULT_BINS,
    DEFAULT_EPS,
    FeatureProfile,
    drift_scores,
    feature_psi,
    profile_feature,
    profile_features,
    profiles_from_mapping,
    psi,
)

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
