"""Model artifacts as skops bytes: no pickle, and only the types our pipelines are made of.

skops already refuses unknown types by default, but it trusts every scikit-learn class,
including ``FunctionTransformer``, which can carry any function. So loading first reads
the artifact's schema and refuses any node whose type is not on ``ALLOWED_TYPES``
(exactly the types of the four model types' pipelines), then lets skops load it trusting
only the two types skops itself would query (``SKOPS_TRUSTED``). Before any of that, the
zip's declared sizes and member count are held against fixed limits, so a zip bomb is refused
unread; and whatever goes wrong while checking or loading is an ``UntrustedArtifact``.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import skops.io as sio
from sklearn.pipeline import Pipeline

__all__ = [
    "ALLOWED_TYPES",
    "MAX_MEMBERS",
    "MAX_SCHEMA_BYTES",
    "MAX_UNCOMPRESSED_BYTES",
    "SKOPS_TRUSTED",
    "UntrustedArtifact",
    "artifact_types",
    "dump_model",
    "load_model",
]

#: The most an artifact may unpack to, all members together: twice the largest answer a
#: trainer may send (``learning.training.external.MAX_ARTIFACT_BYTES``), as ``dump_model`` stores
#: members uncompressed (a 500-tree random forest of deep trees is ~100 MB).
MAX_UNCOMPRESSED_BYTES = 512 * 1024 * 1024
#: The most members an artifact may hold (a skops file has ~4 per tree: ~4,000 for the largest
#: gradient boosting model a job allows, 1,000 stages).
MAX_MEMBERS = 20_000
#: The most ``schema.json`` may unpack to (it is parsed whole; ~28 MB for 1,000 stages).
MAX_SCHEMA_BYTES = 128 * 1024 * 1024
_DIRECTORY_ENTRY = b"PK\x01\x02"

#: Every type a pipeline built by ``learning.training.pipeline.build_pipeline`` serialises to
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
    """Every ``module.class`` named anywhere in a skops artifact's schema; ``UntrustedArtifact``
    for a file that is no zip, is over the size limits, or has no readable schema."""
    # Every central directory entry zipfile parses starts with this signature, so the count
    # bounds the members from above, at C speed, before zipfile builds one object per entry.
    if data.count(_DIRECTORY_ENTRY) > MAX_MEMBERS:
        raise UntrustedArtifact(f"artifact has over {MAX_MEMBERS} members")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _check_sizes(archive.infolist())
            schema = json.loads(archive.read("schema.json"))
    except UntrustedArtifact:
        raise
    except Exception as exc:  # BadZipFile, KeyError, bad JSON, RecursionError, ...
        raise UntrustedArtifact(f"not a skops artifact ({type(exc).__name__}: {exc})") from exc
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


def _check_sizes(members: list[zipfile.ZipInfo]) -> None:
    """Refuse an archive by its declared sizes, before anything is decompressed (zipfile
    never unpacks a member past its declared ``file_size``: a lie fails its CRC instead)."""
    if len(members) > MAX_MEMBERS:
        raise UntrustedArtifact(f"artifact has {len(members)} members, over {MAX_MEMBERS}")
    total = sum(member.file_size for member in members)
    if total > MAX_UNCOMPRESSED_BYTES:
        raise UntrustedArtifact(f"artifact unpacks to {total} bytes, "
                                f"over {MAX_UNCOMPRESSED_BYTES}")
    schema = next((m.file_size for m in members if m.filename == "schema.json"), 0)
    if schema > MAX_SCHEMA_BYTES:
        raise UntrustedArtifact(f"artifact schema of {schema} bytes is over {MAX_SCHEMA_BYTES}")


def load_model(data: bytes) -> Pipeline:
    """Load a pipeline saved by ``dump_model``; ``UntrustedArtifact`` (chained to the cause)
    for anything else, whatever skops or zipfile would have raised."""
    try:
        model = _checked_load(data)
    except UntrustedArtifact:
        raise
    except Exception as exc:  # skops raises many kinds on a damaged or hostile file
        raise UntrustedArtifact(f"artifact does not load ({type(exc).__name__}: {exc})") from exc
    if not isinstance(model, Pipeline):
        raise UntrustedArtifact(f"artifact holds a {type(model).__name__}, not a Pipeline")
    return model


def _checked_load(data: bytes) -> Any:
    """The object in ``data`` once its schema names only allowed types."""
    unexpected = artifact_types(data) - ALLOWED_TYPES
    if unexpected:
        raise UntrustedArtifact("artifact holds types outside the allowlist", unexpected)
    untrusted = frozenset(sio.get_untrusted_types(data=data)) - frozenset(SKOPS_TRUSTED)
    if untrusted:
        raise UntrustedArtifact("artifact holds types skops does not trust", untrusted)
    return sio.loads(data, trusted=list(SKOPS_TRUSTED))
