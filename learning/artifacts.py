"""Model artifacts as skops bytes: no pickle, and only the types our pipelines are made of.

skops already refuses unknown types by default, but it trusts every scikit-learn class,
including ``FunctionTransformer``, which can carry any function. So loading first reads
the artifact's schema and refuses any node whose type is not on ``ALLOWED_TYPES``
(exactly the types of the four model types' pipelines), then lets skops load it trusting
only the two types skops itself would query (``SKOPS_TRUSTED``).
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import skops.io as sio
from sklearn.pipeline import Pipeline

__all__ = ["ALLOWED_TYPES", "SKOPS_TRUSTED", "UntrustedArtifact", "dump_model", "load_model"]

#: Every type a pipeline built by ``learning.pipeline.build_pipeline`` serialises to
#: (found by fitting one pipeline of each model type and reading its schema; see tests).
ALLOWED_TYPES: frozenset[str] = frozenset(
    {
        "builtins.dict",
        "builtins.list",
        "builtins.str",
        "builtins.tuple",
        "numpy.dtype",
        "numpy.float64",
        "numpy.int64",
        "numpy.ndarray",
        "numpy.random.mtrand.RandomState",
        "sklearn._loss._loss.CyHalfBinomialLoss",
        "sklearn._loss.link.Interval",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn.dummy.DummyClassifier",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._gb.GradientBoostingClassifier",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._classes.DecisionTreeRegressor",
        "sklearn.tree._tree.Tree",
    }
)

#: The types among ``ALLOWED_TYPES`` that skops does not trust by default
#: (``skops.io.get_untrusted_types`` of our pipelines).
SKOPS_TRUSTED: tuple[str, ...] = ("numpy.dtype", "sklearn.tree._tree.Tree")


class UntrustedArtifact(ValueError):
    """An artifact that is not one of our pipelines: unknown types, or not a skops file."""

    def __init__(self, reason: str, types: frozenset[str] = frozenset()) -> None:
        super().__init__(reason + (f": {', '.join(sorted(types))}" if types else ""))
        self.types = types


def dump_model(pipeline: Pipeline) -> bytes:
    """The fitted pipeline as skops bytes."""
    return sio.dumps(pipeline)


def artifact_types(data: bytes) -> frozenset[str]:
    """Every ``module.class`` named anywhere in a skops artifact's schema."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise UntrustedArtifact(f"not a skops artifact ({exc})") from exc
    found: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__module__" in node or "__class__" in node:
                found.add(f"{node.get('__module__')}.{node.get('__class__')}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(found)


def load_model(data: bytes) -> Pipeline:
    """Load a pipeline saved by ``dump_model``; ``UntrustedArtifact`` for anything else."""
    unexpected = artifact_types(data) - ALLOWED_TYPES
    if unexpected:
        raise UntrustedArtifact("artifact holds types outside the allowlist", unexpected)
    untrusted = frozenset(sio.get_untrusted_types(data=data)) - frozenset(SKOPS_TRUSTED)
    if untrusted:
        raise UntrustedArtifact("artifact holds types skops does not trust", untrusted)
    try:
        model = sio.loads(data, trusted=list(SKOPS_TRUSTED))
    except Exception as exc:  # skops raises many kinds on a damaged file
        raise UntrustedArtifact(f"artifact does not load ({type(exc).__name__}: {exc})") from exc
    if not isinstance(model, Pipeline):
        raise UntrustedArtifact(f"artifact holds a {type(model).__name__}, not a Pipeline")
    return model
