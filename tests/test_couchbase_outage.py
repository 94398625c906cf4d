"""An unreachable cluster: calls fail fast instead of each waiting out its timeout, and an
actor's connection is made in the background, so neither blocks an actor's handler for
long (its supervisor would kill it as hung, over and over, while the cluster is down)."""

from __future__ import annotations

import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from couchbase.exceptions import CollectionAlreadyExistsException, ScopeAlreadyExistsException

from config.settings import Settings, StorageSettings
from storage.backend import StoreBackend
from storage.couchbase.kv import KeyValue, Reachability
from storage.errors import StoreTimeout, StoreUnavailable
from tests.couchbase_standin import StandinCluster
from tests.e2e_support import wait_for


def keyvalue(cluster: StandinCluster, retry_s: float) -> KeyValue:
    bucket = cluster.bucket("rml")
    with suppress(ScopeAlreadyExistsException):
        bucket.collections().create_scope("s")
    with suppress(CollectionAlreadyExistsException):
        bucket.collections().create_collection("s", "c")
    return KeyValue(bucket.scope("s").collection("c"), "test",
                    reachability=Reachability(retry_s=retry_s))


def test_after_a_timeout_calls_fail_at_once_until_a_probe_gets_through(
        tmp_path: Path) -> None:
    cluster = StandinCluster(tmp_path / "cb")
    kv = keyvalue(cluster, retry_s=0.2)
    assert kv.insert("a", {"v": 1})
    cluster.set_down(True)
    with pytest.raises(StoreTimeout):
        kv.get("a")  # this one reached the SDK and timed out
    calls = cluster.operations()
    for _ in range(50):
        with pytest.raises(StoreUnavailable, match="unreachable"):
            kv.get("a")
    assert cluster.operations() == calls  # none of them waited on the cluster
    cluster.set_down(False)
    wait_for("the retry period", lambda: kv.reachability.reachable, 5.0, 0.01)
    assert kv.get("a") == {"v": 1}
    assert kv.insert("b", {"v": 2}) and kv.reachability.reachable


def test_a_refused_request_does_not_mark_the_cluster_unreachable(tmp_path: Path) -> None:
    cluster = StandinCluster(tmp_path / "cb")
    kv = keyvalue(cluster, retry_s=60.0)
    cluster.fail_after(0, "DurabilityImpossibleException")
    try:
        with pytest.raises(StoreUnavailable, match="durability"):
            kv.insert("a", {"v": 1})
    finally:
        cluster.fail_after(None)
    assert kv.reachability.reachable and kv.insert("a", {"v": 1})


def test_an_actor_waits_briefly_for_its_connection_and_picks_it_up_later(
        tmp_path: Path) -> None:
    release = threading.Event()

    def slow_cluster(_: Any) -> StandinCluster:
        release.wait(30.0)  # a bootstrap that takes its time (or a cluster that is down)
        return StandinCluster(tmp_path / "cb")

    settings = Settings(data_dir=str(tmp_path / "data"),
                        storage=StorageSettings(backend="couchbase"))
    backend = StoreBackend(settings, connect_wait_s=0.05, cluster_factory=slow_cluster)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="still connecting"):
            backend.connection()
        assert time.monotonic() - started < 5.0  # bounded by connect_wait_s, not bootstrap
        release.set()
        connection = wait_for("the connection", lambda: _connection(backend), 10.0, 0.01)
        assert connection is backend.connection()  # one connection, kept
    finally:
        backend.close()


def _connection(backend: StoreBackend) -> Any:
    try:
        return backend.connection()
    except StoreUnavailable:
        return None


def test_with_a_probe_no_call_waits_on_the_cluster_until_it_answers_again(
        tmp_path: Path) -> None:
    cluster = StandinCluster(tmp_path / "cb")
    kv = keyvalue(cluster, retry_s=0.05)
    probe_kv = keyvalue(cluster, retry_s=0.05)
    kv.reachability.probe = lambda: probe_kv.get("probe")  # its own, as the connection's
    assert kv.insert("a", {"v": 1})
    cluster.set_down(True)
    with pytest.raises(StoreTimeout):
        kv.get("a")
    # Calls fail at once however long the outage lasts: the probe runs in a thread.
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            kv.get("a")
    cluster.set_down(False)
    wait_for("the probe to find the cluster back", lambda: kv.reachability.reachable, 5.0, 0.01)
    assert kv.get("a") == {"v": 1}
