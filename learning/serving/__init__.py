"""Serving: answering a prediction from what the predictor holds in memory.

``answer`` answers one prediction from an immutable snapshot of the serving models
(champion, fallback, shadow), with deadlines and fallbacks; ``compiled`` turns a fitted model
into plain arrays walked without scikit-learn; ``inference`` freezes a fitted pipeline for
the hot path; ``row_table`` keeps each location's latest feature row, pushed fresh by the
feature generator; ``shadow`` runs a challenger beside the champion before its promotion.
The names ``learning.serving`` had as one module are re-exported here.
"""

from learning.serving.answer import (
    NO_MODEL_YET,
    HeldRows,
    LoadedModel,
    RegisteredModel,
    RowLookup,
    ServingChoice,
    ServingSnapshot,
    choose_models,
    feature_values,
    load_serving_model,
    predict,
)

__all__ = [
    "NO_MODEL_YET",
    "HeldRows",
    "LoadedModel",
    "RegisteredModel",
    "RowLookup",
    "ServingChoice",
    "ServingSnapshot",
    "choose_models",
    "feature_values",
    "load_serving_model",
    "predict",
]
