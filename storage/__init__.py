"""Storage: facts, features, models and system records behind narrow protocols.

The protocols and the values they keep are the modules here (``facts``, ``features``,
``registry``, ``shadow``, ``deadletters``, ``drift_log``, ``training_runs``, ``records``);
each backend has its own folder: ``sqlite/`` (the embedded default) and ``couchbase/``.
``backend`` opens the stores on the configured one; ``migrate`` copies one into another.

``open_sqlite_stores`` opens the embedded default: one SQLite file per hot
writer (facts, features, models, system) in the data directory, so writers of
different kinds never queue on one lock. Each process opens its own ``Stores``;
a CLI process may open them ``read_only`` while the daemon writes. Modules that moved
keep their old names (``MOVED``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from runtime.moved import keep_old_names
from storage.deadletters import DeadLetter, DeadLetterStore
from storage.errors import StoreError, StoreTimeout, StoreUnavailable
from storage.facts import FactCounts, FactStore, InsertResult
from storage.features import CollectionSwitch, FeatureStore, InvalidFeature
from storage.registry import ChampionChange, ModelRecord, ModelRegistry, StatusChange
from storage.sqlite.deadletters import SQLiteDeadLetters
from storage.sqlite.facts import SQLiteFactStore
from storage.sqlite.features import SQLiteFeatureStore
from storage.sqlite.registry import SQLiteModelRegistry

#: Old module name -> where it lives now.
MOVED: dict[str, str] = {
    "storage._sqlite": "storage.sqlite.connection",
    "storage.sqlite_facts": "storage.sqlite.facts",
    "storage.sqlite_features": "storage.sqlite.features",
    "storage.sqlite_registry": "storage.sqlite.registry",
    "storage.sqlite_shadow": "storage.sqlite.shadow",
}

keep_old_names(MOVED)

__all__ = [
    "FACTS_FILE", "FEATURES_FILE", "MODELS_FILE", "SYSTEM_FILE",
    "ChampionChange", "CollectionSwitch", "DeadLetter", "DeadLetterStore", "FactCounts",
    "FactStore", "FeatureStore", "InsertResult", "InvalidFeature", "ModelRecord",
    "ModelRegistry", "SQLiteDeadLetters", "SQLiteFactStore", "SQLiteFeatureStore",
    "SQLiteModelRegistry", "StatusChange", "StoreError", "StoreTimeout", "StoreUnavailable",
    "Stores", "open_sqlite_stores",
]

FACTS_FILE = "facts.sqlite"
FEATURES_FILE = "features.sqlite"
MODELS_FILE = "models.sqlite"
SYSTEM_FILE = "system.sqlite"


@dataclass(frozen=True, slots=True)
class Stores:
    """One process's open stores; close them together."""

    facts: FactStore
    features: FeatureStore
    registry: ModelRegistry
    deadletters: DeadLetterStore
    connection: Any = None  # what the stores share (a Couchbase connection), closed last

    def close(self) -> None:
        """Close every store, then their shared connection (each close is idempotent)."""
        for store in (self.facts, self.features, self.registry, self.deadletters):
            store.close()
        if self.connection is not None:
            self.connection.close()

    def __enter__(self) -> Stores:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_sqlite_stores(data_dir: Path, *, busy_timeout_s: float = 10.0,
                       read_only: bool = False) -> Stores:
    """Open (creating unless ``read_only``) the four SQLite stores in ``data_dir``.

    Raises ``StoreUnavailable`` if the directory or a file cannot be created or
    opened (``read_only``: if a file does not exist yet).
    """
    data_dir = Path(data_dir)
    if not read_only:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"{data_dir}: cannot create the data directory: {exc}") from exc
    opened: list[FactStore | FeatureStore | ModelRegistry | DeadLetterStore] = []
    timeout, ro = busy_timeout_s, read_only
    try:
        facts = SQLiteFactStore(data_dir / FACTS_FILE, busy_timeout_s=timeout, read_only=ro)
        opened.append(facts)
        features = SQLiteFeatureStore(data_dir / FEATURES_FILE, busy_timeout_s=timeout,
                                      read_only=ro)
        opened.append(features)
        registry = SQLiteModelRegistry(data_dir / MODELS_FILE, busy_timeout_s=timeout,
                                       read_only=ro)
        opened.append(registry)
        deadletters = SQLiteDeadLetters(data_dir / SYSTEM_FILE, busy_timeout_s=timeout,
                                        read_only=ro)
    except BaseException:
        for store in opened:
            store.close()
        raise
    return Stores(facts, features, registry, deadletters)
