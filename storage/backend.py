"""The stores of one process, on the backend ``[storage] backend`` names.

Actors and CLI verbs ask this for the stores they need instead of naming a backend.
SQLite: each store is a connection to its own file in the data directory. Couchbase:
every store shares one connection of this process, opened on first use, so it is
made after Thespian forked the actor, never inherited (the SDK's threads and sockets
do not survive a fork); the SDK is imported only then, so an SQLite daemon never
loads it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from config.settings import Settings

if TYPE_CHECKING:  # each store's module is imported only by the process that opens it
    from storage import Stores
    from storage.deadletters import DeadLetterStore
    from storage.drift_log import DriftLog
    from storage.facts import FactStore
    from storage.features import FeatureStore
    from storage.registry import ModelRegistry
    from storage.shadow import ShadowTrials
    from storage.training_runs import TrainingRuns

__all__ = ["ACTOR_CONNECT_WAIT_S", "StoreBackend"]

#: How long an actor waits for its Couchbase connection before going on without it (its
#: handlers must keep answering heartbeats; the connection is picked up later).
ACTOR_CONNECT_WAIT_S = 1.0

T = TypeVar("T")


class StoreBackend:
    """Opens stores on the configured backend; ``close`` closes all it opened (and the
    Couchbase connection, last). ``writer``: the fact log's writer id (a collector's
    name), so a restarted collector finishes what its predecessor left unsealed."""

    def __init__(self, settings: Settings, *, read_only: bool = False,
                 writer: str | None = None, connect_wait_s: float | None = None,
                 cluster_factory: Callable[[Any], Any] | None = None) -> None:
        self.settings = settings
        # An actor waits this long for the connection, then goes on (its handlers must
        # keep answering heartbeats); a CLI verb (None) waits for the whole bootstrap.
        self.connect_wait_s = connect_wait_s
        self._cluster_factory = cluster_factory  # tests: the SDK stand-in
        self._connecting: _Attempt | None = None
        self.read_only = read_only
        self.writer = writer
        self._opened: list[Any] = []
        self._connection: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """``sqlite`` or ``couchbase``."""
        return self.settings.storage.backend

    def _sqlite(self, cls: Callable[..., T], file: str) -> T:
        if not self.read_only:
            from storage.errors import StoreUnavailable

            try:
                self.settings.data_path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(f"{self.settings.data_path}: cannot create the data "
                                       f"directory: {exc}") from exc
        return cls(self.settings.data_path / file,
                   busy_timeout_s=self.settings.storage.busy_timeout_s, read_only=self.read_only)

    def connection(self) -> Any:
        """This process's Couchbase connection. Connecting runs in a thread of its own
        (within ``bootstrap_timeout_s``); waited for at most ``connect_wait_s``, after which
        ``StoreUnavailable`` says it is still under way (a later call picks it up). A failed
        attempt is raised once; the next call tries again."""
        with self._lock:
            if self._connection is not None:
                return self._connection
            attempt = self._connecting
            if attempt is None:
                attempt = self._connecting = _Attempt(self._connect)
        if not attempt.done.wait(self.connect_wait_s):
            from storage.errors import StoreUnavailable

            raise StoreUnavailable("couchbase: still connecting (within "
                                   "[storage.couchbase] bootstrap_timeout_s)")
        with self._lock:
            if self._connecting is attempt:
                self._connecting = None
                if attempt.error is None:
                    self._connection = attempt.result
            if self._connection is not None:
                return self._connection
        assert attempt.error is not None
        raise attempt.error

    def _connect(self) -> Any:
        from storage.couchbase.cluster import connect

        extra = {} if self._cluster_factory is None else {"cluster_factory": self._cluster_factory}
        return connect(self.settings.storage.couchbase, read_only=self.read_only, **extra)

    def _open(self, store: str, sqlite: Callable[[], T]) -> T:
        if self.name == "couchbase":
            from storage.couchbase.stores import OPENERS

            opened: T = OPENERS[store](self.connection(), self.writer)
        else:
            opened = sqlite()
        with self._lock:
            self._opened.append(opened)
        return opened

    def facts(self) -> FactStore:
        """A fact store."""
        from storage import FACTS_FILE
        from storage.sqlite.facts import SQLiteFactStore

        return self._open("facts", lambda: self._sqlite(SQLiteFactStore, FACTS_FILE))

    def features(self) -> FeatureStore:
        """A feature store."""
        from storage import FEATURES_FILE
        from storage.sqlite.features import SQLiteFeatureStore

        return self._open("features", lambda: self._sqlite(SQLiteFeatureStore, FEATURES_FILE))

    def registry(self) -> ModelRegistry:
        """A model registry."""
        from storage import MODELS_FILE
        from storage.sqlite.registry import SQLiteModelRegistry

        return self._open("registry", lambda: self._sqlite(SQLiteModelRegistry, MODELS_FILE))

    def shadow_trials(self) -> ShadowTrials:
        """The shadow trials' store."""
        from storage import MODELS_FILE
        from storage.sqlite.shadow import SQLiteShadowTrials

        return self._open("shadow_trials",
                          lambda: self._sqlite(SQLiteShadowTrials, MODELS_FILE))

    def deadletters(self) -> DeadLetterStore:
        """The dead-letter store."""
        from storage import SYSTEM_FILE
        from storage.sqlite.deadletters import SQLiteDeadLetters

        return self._open("deadletters", lambda: self._sqlite(SQLiteDeadLetters, SYSTEM_FILE))

    def training_runs(self) -> TrainingRuns:
        """The training-run log."""
        from storage import SYSTEM_FILE
        from storage.sqlite.training_runs import SQLiteTrainingRuns

        return self._open("training_runs",
                          lambda: self._sqlite(SQLiteTrainingRuns, SYSTEM_FILE))

    def drift_log(self) -> DriftLog:
        """The drift-check log."""
        from storage.drift_log import DRIFT_FILE
        from storage.sqlite.drift_log import SQLiteDriftLog

        return self._open("drift_log", lambda: self._sqlite(SQLiteDriftLog, DRIFT_FILE))

    def stores(self) -> Stores:
        """The four stores most processes use together."""
        from storage import Stores

        return Stores(self.facts(), self.features(), self.registry(), self.deadletters())

    def close(self) -> None:
        """Close every store opened here, then the connection; idempotent. A connection
        still being made is closed when it is made."""
        with self._lock:
            opened, self._opened = self._opened, []
            connection, self._connection = self._connection, None
            attempt, self._connecting = self._connecting, None
        for store in opened:
            store.close()
        if connection is not None:
            connection.close()
        if attempt is not None:
            attempt.abandon()


class _Attempt:
    """One connection attempt, in a daemon thread of its own."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._abandoned = False
        self._lock = threading.Lock()
        threading.Thread(target=self._run, args=(connect,), name="couchbase-connect",
                         daemon=True).start()

    def _run(self, connect: Callable[[], Any]) -> None:
        try:
            result = connect()
        except Exception as exc:  # the StoreError connect raises, or anything unforeseen
            from storage.errors import StoreError, StoreUnavailable

            self.error = exc if isinstance(exc, StoreError) else StoreUnavailable(
                f"couchbase: cannot connect: {exc!r}")
        else:
            with self._lock:
                if self._abandoned:
                    result.close()
                else:
                    self.result = result
        self.done.set()

    def abandon(self) -> None:
        """Nobody will take the connection: close it when (if) it comes."""
        with self._lock:
            self._abandoned = True
            if self.result is not None:
                self.result.close()
