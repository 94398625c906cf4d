"""The Couchbase stores of one process, each on its own collection of the deployment's scope.

``OPENERS`` names every store that has a Couchbase backend and how to open it on a
connection; ``STORES`` is that set of names (``Stores`` field names).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from storage.couchbase.cluster import CouchbaseConnection
from storage.couchbase.facts import CouchbaseFactStore
from storage.couchbase.features import CouchbaseFeatureStore
from storage.couchbase.registry import CouchbaseModelRegistry
from storage.couchbase.system import (
    CouchbaseDeadLetters,
    CouchbaseDriftLog,
    CouchbaseShadowTrials,
    CouchbaseTrainingRuns,
)

__all__ = ["OPENERS", "STORES"]

#: How each store opens on a connection (``writer``: the fact store's writer id, if any).
OPENERS: Mapping[str, Callable[[CouchbaseConnection, str | None], Any]] = {
    "facts": lambda c, writer: CouchbaseFactStore(c.keyvalue("facts"), writer=writer),
    "features": lambda c, writer: CouchbaseFeatureStore(c.keyvalue("features")),
    "registry": lambda c, writer: CouchbaseModelRegistry(c.keyvalue("models")),
    "deadletters": lambda c, writer: CouchbaseDeadLetters(c.keyvalue("system")),
    "training_runs": lambda c, writer: CouchbaseTrainingRuns(c.keyvalue("system")),
    "drift_log": lambda c, writer: CouchbaseDriftLog(c.keyvalue("system")),
    "shadow_trials": lambda c, writer: CouchbaseShadowTrials(c.keyvalue("system")),
}
STORES = frozenset(OPENERS)
