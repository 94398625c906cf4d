"""The Couchbase feature store's own promises, beyond the shared contract: rows arriving out
of ``as_of`` order, bounded calls however long a location's history, several processes on
one store, and a crash between two writes mended or harmless.

Run against the SDK stand-in (``tests/couchbase_standin.py``), which counts calls and can
fail the n-th mutation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from config.settings import CouchbaseSettings
from learning.features.collections import FeatureCollection, FeatureRow
from storage.couchbase.cluster import CouchbaseConnection, connect
from storage.couchbase.features import CouchbaseFeatureStore
from storage.errors import StoreError, StoreTimeout
from storage.facts import FactCursor
from tests.couchbase_standin import StandinCluster

COLLECTION = FeatureCollection(1, 2_000, ("animals", "zebras"))
Opener = Callable[..., CouchbaseFeatureStore]


@pytest.fixture
def opened() -> Iterator[list[CouchbaseConnection]]:
    connections: list[CouchbaseConnection] = []
    yield connections
    for connection in connections:
        connection.close()


@pytest.fixture
def open_features(cluster: StandinCluster, opened: list[CouchbaseConnection]) -> Opener:
    """Open a feature store on its own connection, as another process would."""
    def open_(*, read_only: bool = False) -> CouchbaseFeatureStore:
        connection = connect(CouchbaseSettings(), read_only=read_only,
                             cluster_factory=lambda _: StandinCluster(cluster.root))
        if not read_only:
            connection.ensure_collections()
        opened.append(connection)
        return CouchbaseFeatureStore(connection.keyvalue("features"))
    return open_


def row(location: int, as_of: int, value: float = 1.0) -> FeatureRow:
    return FeatureRow(0, location, as_of, (value, value + 1), as_of + 5)


def test_rows_written_out_of_as_of_order_keep_the_newest_as_of_latest(
        open_features: Opener) -> None:
    store = open_features()
    store.write_rows([row(1, 300, 3.0)])
    store.write_rows([row(1, 100, 1.0)])  # late: older than what came before
    store.write_rows([row(1, 200, 2.0), row(2, 50, 5.0)])
    for reader in (store, open_features()):  # the writer's caches, and a fresh process
        assert reader.latest_row(0, 1) == row(1, 300, 3.0)
        assert reader.latest_rows(0) == (row(1, 300, 3.0), row(2, 50, 5.0))
        assert reader.row_as_of(0, 1, 250) == row(1, 200, 2.0)
        assert reader.row_as_of(0, 1, 150) == row(1, 100, 1.0)
        assert reader.row_as_of(0, 1, 99) is None


def test_latest_row_after_a_long_history_costs_a_bounded_number_of_calls(
        cluster: StandinCluster, open_features: Opener) -> None:
    writer = open_features()
    for i in range(300):  # one row log entry each
        writer.write_rows([row(1, 1_000 + i, float(i))])
    fresh = open_features()
    before = cluster.operations()
    assert fresh.latest_row(0, 1) == row(1, 1_299, 299.0)
    assert cluster.operations() - before <= 6  # find the log's end, then one row document
    before = cluster.operations()
    for _ in range(10):
        assert fresh.latest_row(0, 1) == row(1, 1_299, 299.0)
    assert cluster.operations() - before <= 10  # one call each: nothing new past the end
    writer.write_rows([row(1, 2_000, 7.0)])
    before = cluster.operations()
    assert fresh.latest_row(0, 1) == row(1, 2_000, 7.0)
    assert cluster.operations() - before <= 2


def test_a_batch_of_rows_for_many_locations_costs_a_bounded_number_of_calls(
        cluster: StandinCluster, open_features: Opener) -> None:
    store = open_features()
    before = cluster.operations()
    assert store.write_rows([row(loc, 100) for loc in range(500)]) == 500
    assert cluster.operations() - before <= 6
    before = cluster.operations()
    assert store.write_rows([row(loc, 200) for loc in range(500)]) == 500
    assert cluster.operations() - before <= 2  # the row logs, then the rows
    before = cluster.operations()
    assert store.write_rows([row(loc, 200) for loc in range(500)]) == 0  # sent again
    assert cluster.operations() - before <= 1  # logged already: only the rows are tried
    before = cluster.operations()
    assert len(open_features().latest_rows(0)) == 500
    assert cluster.operations() - before <= 4


def test_two_processes_see_each_others_writes(open_features: Opener) -> None:
    a, b = open_features(), open_features()
    assert a.register_collection(COLLECTION) is True
    assert b.register_collection(COLLECTION) is False
    a.write_rows([row(1, 100, 1.0)])
    assert b.latest_row(0, 1) == row(1, 100, 1.0)
    b.write_rows([row(1, 300, 3.0)])  # b appends after a's entry: it reads on to find it
    a.write_rows([row(1, 200, 2.0)])  # a's next number was taken by b: a reads on too
    for store in (a, b):
        assert store.latest_row(0, 1) == row(1, 300, 3.0)
        assert store.row_as_of(0, 1, 250) == row(1, 200, 2.0)
        assert store.latest_rows(0) == (row(1, 300, 3.0),)
    a.advance_cursor("gen", FactCursor.of({"w1": (4, 0)}), 1)
    b.advance_cursor("gen", FactCursor.of({"w2": (2, 1)}), 2)  # merged with a's, not lost
    a.record_switch(1, "started", 3)
    b.mark_invalid("trend", "all NaN", 4)
    for store in (a, b):
        assert store.cursor("gen") == FactCursor.of({"w1": (4, 0), "w2": (2, 1)})
        assert store.active_collection_id() == 1
        assert store.invalid_features() == {"trend"}
        assert store.collections() == (COLLECTION,)


def test_a_crash_between_a_collection_and_its_listing_is_mended_by_the_next_register(
        cluster: StandinCluster, open_features: Opener) -> None:
    store = open_features()
    cluster.fail_after(1)  # the definition lands, its entry in the list does not
    with pytest.raises(StoreTimeout):
        store.register_collection(COLLECTION)
    cluster.fail_after(None)
    assert store.collections() == ()
    restarted = open_features()  # every feature generator registers its collections at start
    assert restarted.register_collection(COLLECTION) is False
    assert store.collections() == restarted.collections() == (COLLECTION,)
    assert restarted.register_collection(COLLECTION) is False
    assert restarted.collections() == (COLLECTION,)  # listed once, however often registered


def test_a_row_logged_but_not_stored_is_skipped_until_written_again(
        cluster: StandinCluster, open_features: Opener) -> None:
    store = open_features()
    store.write_rows([row(1, 100, 1.0)])
    cluster.fail_after(1)  # the row log entry lands, the row itself does not
    with pytest.raises(StoreTimeout):
        store.write_rows([row(1, 200, 2.0)])
    cluster.fail_after(None)
    fresh = open_features()
    assert fresh.latest_row(0, 1) == store.latest_row(0, 1) == row(1, 100, 1.0)
    assert fresh.row_as_of(0, 1, 500) == row(1, 100, 1.0)
    assert store.write_rows([row(1, 200, 2.0)]) == 1  # the retry stores and counts it
    assert fresh.latest_row(0, 1) == row(1, 200, 2.0)
    assert fresh.latest_rows(0) == (row(1, 200, 2.0),)


def test_a_read_only_store_reads_and_refuses_writes_and_a_closed_one_refuses_all(
        open_features: Opener) -> None:
    writer = open_features()
    writer.write_rows([row(1, 100)])
    reader = open_features(read_only=True)
    assert reader.latest_row(0, 1) == row(1, 100)
    for write in (lambda: reader.write_rows([row(1, 200)]),
                  lambda: reader.register_collection(COLLECTION),
                  lambda: reader.advance_cursor("gen", FactCursor.of({"w": (1, 0)}), 1),
                  lambda: reader.record_switch(0, "no", 1),
                  lambda: reader.mark_invalid("trend", "no", 1)):
        with pytest.raises(StoreError):
            write()
    assert writer.latest_row(0, 1) == row(1, 100)
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(StoreError):
        writer.latest_row(0, 1)
