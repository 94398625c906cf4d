"""Connecting to the cluster: bounded bootstrap, the deployment's scope and collections.

A connection is opened in the process that uses it, after Thespian forked that
process, never inherited: the SDK's I/O threads and sockets do not survive a fork.
``connect`` waits at most ``bootstrap_timeout_s`` for the Data service and turns
every failure (no route, refused login, missing bucket) into ``StoreUnavailable``
naming the setting to look at. ``ensure_collections`` creates the scope and the
project's collections where the user's role allows it, and tolerates their being
there already (another node created them first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from datetime import timedelta
from typing import Any

from couchbase.exceptions import (
    AuthenticationException,
    BucketNotFoundException,
    CollectionAlreadyExistsException,
    CouchbaseException,
    ScopeAlreadyExistsException,
    UnAmbiguousTimeoutException,
)

from config.settings import CouchbaseSettings
from storage.couchbase.kv import KeyValue, Reachability
from storage.errors import StoreUnavailable

__all__ = ["COLLECTIONS", "CouchbaseConnection", "connect"]

#: The collections the project keeps in its scope, one per store.
COLLECTIONS = ("facts", "features", "models", "system")

#: Opens a cluster object (the SDK's ``Cluster``, or a stand-in in tests).
ClusterFactory = Callable[[CouchbaseSettings], Any]


def _sdk_cluster(settings: CouchbaseSettings) -> Any:
    from couchbase.auth import PasswordAuthenticator
    from couchbase.cluster import Cluster
    from couchbase.options import ClusterOptions, ClusterTimeoutOptions

    bootstrap = timedelta(seconds=settings.bootstrap_timeout_s)
    timeouts = ClusterTimeoutOptions(bootstrap_timeout=bootstrap, connect_timeout=bootstrap,
                                     kv_timeout=timedelta(seconds=settings.kv_timeout_s))
    options = ClusterOptions(PasswordAuthenticator(settings.username, settings.password),
                             timeout_options=timeouts)
    return Cluster(settings.connection_string, options)


class CouchbaseConnection:
    """One process's connection: the cluster, and a ``KeyValue`` per collection."""

    def __init__(self, cluster: Any, settings: CouchbaseSettings, read_only: bool) -> None:
        self.cluster = cluster
        self.settings = settings
        self.read_only = read_only
        self.bucket = cluster.bucket(settings.bucket)
        # Shared by every collection of this connection; probed, while the cluster is
        # unreachable, with a get of a key that need not exist (any answer will do).
        self.reachability = Reachability(probe=self._probe)
        self._closed = False

    def keyvalue(self, collection: str) -> KeyValue:
        """The collection ``collection`` of the deployment's scope."""
        where = f"couchbase {self.settings.bucket}.{self.settings.scope}.{collection}"
        handle = self.bucket.scope(self.settings.scope).collection(collection)
        return KeyValue(handle, where, durability=self.settings.durability,
                        timeout_s=self.settings.kv_timeout_s, read_only=self.read_only,
                        reachability=self.reachability)

    def _probe(self) -> None:
        from couchbase.exceptions import DocumentNotFoundException
        from couchbase.options import GetOptions

        handle = self.bucket.scope(self.settings.scope).collection(COLLECTIONS[0])
        with suppress(DocumentNotFoundException):
            handle.get("rml-probe", GetOptions(timeout=timedelta(
                seconds=self.settings.kv_timeout_s)))

    def ensure_collections(self, names: Iterable[str] = COLLECTIONS) -> None:
        """Create the scope and the collections that are missing (idempotent)."""
        manager = self.bucket.collections()
        scope = self.settings.scope
        try:
            existing = {s.name: {c.name for c in s.collections}
                        for s in manager.get_all_scopes()}
            if scope not in existing:
                with suppress(ScopeAlreadyExistsException):  # another node was first
                    manager.create_scope(scope)
            for name in names:
                if name in existing.get(scope, set()):
                    continue
                with suppress(CollectionAlreadyExistsException):
                    manager.create_collection(scope, name)
        except CouchbaseException as exc:
            raise StoreUnavailable(
                f"couchbase: cannot create scope {scope!r} or its collections "
                f"({type(exc).__name__}); create them, or give [storage.couchbase] username "
                "a role that may (Manage Scopes)") from exc

    def close(self) -> None:
        """Close the cluster connection; idempotent."""
        if not self._closed:
            self._closed = True
            with suppress(CouchbaseException):  # closing a connection that already failed
                self.cluster.close()


def _wait_for_bucket(bucket: Any, deadline: float) -> None:
    """Wait until the bucket has a connection to the Data service of every node that holds
    its data. The cluster being ready is not enough: right after the bucket opens, keys
    owned by a node it has not connected to yet wait in the SDK (seen against the mock
    server: such gets timed out while the rest answered)."""
    from couchbase.diagnostics import PingState, ServiceType
    from couchbase.options import PingOptions

    while True:
        report = bucket.ping(PingOptions(service_types=[ServiceType.KeyValue]))
        endpoints = report.endpoints.get(ServiceType.KeyValue, [])
        if endpoints and all(e.state is PingState.OK for e in endpoints):
            return
        if time.monotonic() >= deadline:
            states = ", ".join(f"{e.remote}: {e.state.value}" for e in endpoints) or "none"
            raise UnAmbiguousTimeoutException(
                message=f"the bucket's Data service endpoints are not all ready ({states})")
        time.sleep(0.05)


def connect(settings: CouchbaseSettings, *, read_only: bool = False,
            cluster_factory: ClusterFactory = _sdk_cluster) -> CouchbaseConnection:
    """Open the cluster and wait (at most ``bootstrap_timeout_s``) until its Data service
    answers; ``StoreUnavailable`` naming the setting at fault otherwise."""
    where = f"[storage.couchbase] connection_string {settings.connection_string!r}"
    try:
        cluster = cluster_factory(settings)
    except AuthenticationException as exc:
        raise StoreUnavailable(f"{where}: login refused for username "
                               f"{settings.username!r} (check the password)") from exc
    except CouchbaseException as exc:
        raise StoreUnavailable(f"{where}: cannot connect within bootstrap_timeout_s = "
                               f"{settings.bootstrap_timeout_s:g} s ({type(exc).__name__})"
                               ) from exc
    try:
        from couchbase.diagnostics import ServiceType
        from couchbase.options import WaitUntilReadyOptions

        deadline = time.monotonic() + settings.bootstrap_timeout_s
        cluster.wait_until_ready(timedelta(seconds=settings.bootstrap_timeout_s),
                                 WaitUntilReadyOptions(service_types=[ServiceType.KeyValue]))
        connection = CouchbaseConnection(cluster, settings, read_only)
        _wait_for_bucket(connection.bucket, deadline)
    except AuthenticationException as exc:
        cluster.close()
        raise StoreUnavailable(f"{where}: login refused for username "
                               f"{settings.username!r} (check the password)") from exc
    except BucketNotFoundException as exc:
        cluster.close()
        raise StoreUnavailable(f"[storage.couchbase] bucket {settings.bucket!r} does not "
                               "exist (create it, the project creates only scope and "
                               "collections)") from exc
    except CouchbaseException as exc:
        cluster.close()
        raise StoreUnavailable(f"{where}: no answer within bootstrap_timeout_s = "
                               f"{settings.bootstrap_timeout_s:g} s "
                               f"({type(exc).__name__})") from exc
    return connection
