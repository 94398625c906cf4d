"""The Couchbase fact store's own promises, beyond the shared contract: a crash between
any two writes of a batch loses nothing acknowledged and doubles nothing, a batch costs a
bounded number of calls, and an outage refuses writes without acknowledging any.

Run against the SDK stand-in (``tests/couchbase_standin.py``), which can fail the n-th
mutation or end the writing process there.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from config.settings import CouchbaseSettings
from messages.facts import Outcome, Reading
from storage.couchbase.cluster import connect
from storage.couchbase.facts import HOUR_MS, CouchbaseFactStore
from storage.errors import StoreError, StoreTimeout, StoreUnavailable
from storage.facts import FactCursor
from tests.couchbase_standin import CRASH_EXIT_CODE, StandinCluster
from tests.e2e_support import wait_for
from tests.test_store_contract import DEADLINE_S, REPO, child_env

WARM_UP = [Reading("w", 1, f"w{i}", i * HOUR_MS, 1, 2, 0.5) for i in range(3)]
# Five readings over two locations and two hours: 1 entry + 5 facts + 3 index docs + 1 seal.
BATCH = [Reading("s", 1 + i % 2, f"b{i}", 10 * HOUR_MS + i * 1_000_000, 1, 3, 0.25)
         for i in range(5)]
WRITES_PER_BATCH = 1 + 5 + 3 + 1


def open_facts(cluster: StandinCluster, *, writer: str | None = None,
               repair_after_ms: int = 30_000, read_only: bool = False) -> CouchbaseFactStore:
    connection = connect(CouchbaseSettings(), read_only=read_only,
                         cluster_factory=lambda _: StandinCluster(cluster.root))
    if not read_only:
        connection.ensure_collections()
    return CouchbaseFactStore(connection.keyvalue("facts"), writer=writer,
                              repair_after_ms=repair_after_ms, on_close=connection.close)


def consumed(store: CouchbaseFactStore) -> list[tuple[str, str]]:
    """Every reading key a consumer paging through the logs sees, in order."""
    keys: list[tuple[str, str]] = []
    cursor = FactCursor()
    while (page := store.readings_since(cursor, 4)).items:
        keys.extend(r.key for r in page.items)
        cursor = page.cursor
    return keys


def all_keys() -> set[tuple[str, str]]:
    return {r.key for r in WARM_UP + BATCH}


@pytest.mark.parametrize("writes", range(WRITES_PER_BATCH))
@pytest.mark.parametrize("retry_by", ["same writer", "another writer"])
def test_a_failure_between_any_two_writes_loses_and_doubles_nothing(
        cluster: StandinCluster, writes: int, retry_by: str) -> None:
    writer = open_facts(cluster, writer="collector-1")
    writer.insert_readings(WARM_UP)
    cluster.fail_after(writes, "TemporaryFailException")  # a write refused mid-batch
    with pytest.raises(StoreTimeout):
        writer.insert_readings(BATCH)  # not acknowledged
    cluster.fail_after(None)
    # The gateway sends the batch again: to the same collector, or to another one.
    again = writer if retry_by == "same writer" else open_facts(cluster, writer="collector-2")
    result = again.insert_readings(BATCH)
    assert result.accepted + result.duplicates == len(BATCH)
    # Acknowledged is visible: a read-only consumer (it finishes nothing itself) sees it all.
    consumer = open_facts(cluster, read_only=True)
    keys = consumed(consumer)
    assert len(keys) == len(set(keys)) and set(keys) == all_keys()
    assert consumer.counts().readings == len(all_keys())
    for reading in BATCH:
        window = consumer.readings_for_location(reading.location_id, 0, 20 * HOUR_MS)
        assert window.count(reading) == 1


_CRASH_IN_CHILD = """
import sys
from pathlib import Path
from tests.couchbase_standin import StandinCluster
from tests.test_couchbase_facts import BATCH, open_facts
store = open_facts(StandinCluster(Path(sys.argv[1])), writer="collector-1")
StandinCluster(Path(sys.argv[1])).fail_after(int(sys.argv[2]), crash=True)
store.insert_readings(BATCH)
print("acknowledged", flush=True)
"""


@pytest.mark.parametrize("writes", range(0, WRITES_PER_BATCH + 1, 3))
def test_a_writer_dying_between_two_writes_is_finished_by_its_successor(
        cluster: StandinCluster, writes: int) -> None:
    open_facts(cluster, writer="collector-1").insert_readings(WARM_UP)
    done = subprocess.run([sys.executable, "-c", _CRASH_IN_CHILD, str(cluster.root),
                           str(writes)], capture_output=True, text=True, env=child_env(),
                          cwd=REPO, timeout=DEADLINE_S)
    cluster.fail_after(None)
    acknowledged = "acknowledged" in done.stdout
    assert done.returncode == (0 if acknowledged else CRASH_EXIT_CODE), done.stderr
    # The restarted collector (same writer id) finishes its predecessor's entry first.
    successor = open_facts(cluster, writer="collector-1")
    successor.insert_readings([Reading("n", 3, "n1", 1, 1, 2, 0.5)])
    keys = consumed(open_facts(cluster, read_only=True))
    assert len(keys) == len(set(keys))
    if acknowledged:
        assert all_keys() <= set(keys)
    # Whatever the crash left stored is seen (once); a resent batch is duplicates for it.
    stored = {r.key for r in BATCH if successor.get_reading(*r.key) is not None}
    assert stored <= set(keys)
    result = successor.insert_readings(BATCH)
    assert (result.accepted, result.duplicates) == (len(BATCH) - len(stored), len(stored))


def test_a_batch_of_a_thousand_readings_costs_a_bounded_number_of_calls(
        cluster: StandinCluster) -> None:
    store = open_facts(cluster, writer="collector-1")
    store.insert_readings(WARM_UP)
    batch = [Reading(f"s{i % 50}", i % 20, f"r{i}", 5 * HOUR_MS + i, 1, 2, 0.5)
             for i in range(1_000)]
    before = cluster.operations()
    assert store.insert_readings(batch).accepted == 1_000
    calls = cluster.operations() - before
    # entry, facts, index probe, index, seal: five calls, not a thousand.
    assert calls <= 6, calls
    before = cluster.operations()
    assert store.insert_readings(batch).duplicates == 1_000
    assert cluster.operations() - before <= 6


def test_an_outage_refuses_writes_acknowledges_nothing_and_passes(
        cluster: StandinCluster) -> None:
    store = open_facts(cluster, writer="collector-1")
    store.insert_outcomes([Outcome(1, "o1", 1, True)])
    cluster.set_down(True)
    try:
        with pytest.raises(StoreTimeout):
            store.insert_outcomes([Outcome(1, "o2", 2, False)])
        with pytest.raises(StoreError):
            store.counts()
    finally:
        cluster.set_down(False)
    # Calls failed at once until the connection's probe found the cluster back.
    wait_for("the cluster to answer again", lambda: _answers(store), 10.0, 0.02)
    assert store.insert_outcomes([Outcome(1, "o2", 2, False)]).accepted == 1
    assert store.all_outcomes() == (Outcome(1, "o1", 1, True), Outcome(1, "o2", 2, False))


def _answers(store: CouchbaseFactStore) -> bool:
    try:
        store.counts()
    except StoreError:
        return False
    return True


def test_keys_too_long_for_couchbase_are_hashed_and_still_found(
        cluster: StandinCluster) -> None:
    store = open_facts(cluster)
    long = Reading("s" * 128, 1, "r:%" * 42, 1, 1, 2, 0.5)
    assert store.insert_readings([long, long]).accepted == 1
    assert store.get_reading(long.sensor_id, long.reading_id) == long
    assert store.insert_readings([long]).duplicates == 1


def test_an_unreachable_cluster_is_a_clear_error_naming_the_setting(
        cluster: StandinCluster) -> None:
    cluster.set_down(True)
    try:
        with pytest.raises(StoreUnavailable, match="connection_string.*bootstrap_timeout_s"):
            connect(CouchbaseSettings(), cluster_factory=lambda _: StandinCluster(cluster.root))
    finally:
        cluster.set_down(False)
