"""The predictors' in-memory rows: the freshness bound, newest-wins, and the feed's pushes."""

from __future__ import annotations

import pytest

from actors.row_feed import RowFeed
from learning.features.collections import FeatureRow
from learning.serving.row_table import RowTable
from storage.errors import StoreError


def row(collection: int, location: int, as_of: int, value: float = 0.0) -> FeatureRow:
    return FeatureRow(collection, location, as_of, (value,), as_of)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """A feature store's ``latest_row``, counting reads (and failing on demand)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, int], FeatureRow] = {}
        self.reads = 0
        self.down = False

    def __call__(self, collection: int, location: int) -> FeatureRow | None:
        self.reads += 1
        if self.down:
            raise StoreError("store unreachable")
        return self.rows.get((collection, location))


def test_fresh_table_answers_from_memory_and_a_stale_one_from_the_store() -> None:
    clock, store = Clock(), Store()
    table = RowTable(freshness_s=1.0, clock=clock)
    table.load(1, [row(1, 7, 100, 1.0)])
    table.confirm(clock.now)
    lookup = table.reader(store)
    assert lookup(1, 7) == row(1, 7, 100, 1.0)
    assert store.reads == 0

    store.rows[(1, 7)] = row(1, 7, 200, 2.0)  # written, but no push came
    clock.now += 1.0  # exactly the bound: still fresh
    assert as_of(lookup(1, 7)) == 100
    clock.now += 0.001  # past it: the store, the truth
    assert as_of(lookup(1, 7)) == 200
    assert store.reads == 1
    assert table.counts() == (2, 1)

    table.apply([row(1, 7, 200, 2.0)])  # the push arrives, sent just now
    table.confirm(clock.now)
    assert as_of(lookup(1, 7)) == 200
    assert store.reads == 1


def test_a_location_not_held_is_read_from_the_store() -> None:
    clock, store = Clock(), Store()
    table = RowTable(1.0, clock)
    table.load(1, [])
    table.confirm(clock.now)
    store.rows[(1, 9)] = row(1, 9, 50)
    assert table.reader(store)(1, 9) == row(1, 9, 50)
    assert table.reader(store)(1, 10) is None  # unknown: the store says so


def test_in_an_outage_the_held_row_answers_however_old() -> None:
    clock, store = Clock(), Store()
    table = RowTable(1.0, clock)
    table.load(1, [row(1, 7, 100)])
    table.confirm(clock.now)
    clock.now += 60
    store.down = True
    lookup = table.reader(store)
    assert lookup(1, 7) == row(1, 7, 100)
    with pytest.raises(StoreError):
        lookup(1, 8)  # nothing held: the outage is the answer


def test_pushes_and_loads_keep_the_newest_row_only_for_held_collections() -> None:
    table = RowTable(1.0, Clock())
    table.load(1, [row(1, 7, 100)])
    assert table.apply([row(1, 7, 90), row(1, 7, 120), row(2, 7, 500)]) == 1
    table.load(1, [row(1, 7, 110), row(1, 8, 10)])  # a read older than a push already taken
    table.confirm(Clock().now)
    lookup = table.reader(Store())
    assert as_of(lookup(1, 7)) == 120
    assert as_of(lookup(1, 8)) == 10
    assert table.collections == {1}
    table.keep({2})
    assert table.collections == frozenset()


def test_confirmation_never_goes_back() -> None:
    table = RowTable(1.0, Clock())
    table.confirm(50.0)
    table.confirm(40.0)  # an older push, resent, arriving late
    assert table.confirmed_at == 50.0


# --- the feed ----------------------------------------------------------------------------


def as_of(found: FeatureRow | None) -> int:
    assert found is not None
    return found.as_of_ms


def rows_of(push) -> list[FeatureRow]:
    return [FeatureRow(*r) for r in push.rows]


def test_a_new_receiver_reloads_then_gets_each_written_row_once_acknowledged() -> None:
    feed = RowFeed(heartbeat_s=0.25)
    feed.written([row(1, 7, 100)])
    [(to, first)] = feed.pushes(["p1"], now=0.0, wall=10.0)
    assert to == "p1" and first.reload and first.rows == () and first.sent_at == 10.0
    feed.written([row(1, 7, 200), row(1, 8, 200)])
    assert feed.pushes(["p1"], now=0.1, wall=10.1) == []  # one at a time
    feed.noted("p1", first.version)
    [(_, second)] = feed.pushes(["p1"], now=0.1, wall=10.1)
    assert not second.reload
    assert sorted(rows_of(second), key=lambda r: r.location_id) == [row(1, 7, 200), row(1, 8, 200)]
    feed.noted("p1", second.version)
    assert feed.pushes(["p1"], now=0.2, wall=10.2) == []  # nothing new, heartbeat not due
    [(_, beat)] = feed.pushes(["p1"], now=0.36, wall=10.36)
    assert beat.rows == () and beat.sent_at == 10.36


def test_rows_are_coalesced_newest_per_location() -> None:
    feed = RowFeed(heartbeat_s=0.25)
    [(_, first)] = feed.pushes(["p1"], 0.0, 0.0)
    for as_of in (300, 100, 200):
        feed.written([row(1, 7, as_of)])
    feed.noted("p1", first.version)
    [(_, push)] = feed.pushes(["p1"], 0.0, 0.0)
    assert rows_of(push) == [row(1, 7, 300)]


def test_an_unacknowledged_push_is_sent_again_with_what_came_since() -> None:
    feed = RowFeed(heartbeat_s=0.25, resend_after_s=5.0)
    [(_, first)] = feed.pushes(["p1"], 0.0, 0.0)
    feed.noted("p1", first.version)
    feed.written([row(1, 7, 100)])
    [(_, lost)] = feed.pushes(["p1"], 1.0, 1.0)
    feed.written([row(1, 8, 100)])
    assert feed.pushes(["p1"], 5.9, 5.9) == []
    [(_, again)] = feed.pushes(["p1"], 6.0, 6.0)
    assert {r.location_id for r in rows_of(again)} == {7, 8}
    feed.noted("p1", lost.version)  # the first one did arrive, late: the resend still counts
    assert feed.waiting() == 1
    feed.noted("p1", again.version)
    assert feed.waiting() == 0


def test_a_receiver_too_far_behind_reloads_instead() -> None:
    feed = RowFeed(heartbeat_s=0.25, max_backlog_rows=3)
    [(_, a)] = feed.pushes(["fast"], 0.0, 0.0)
    [(_, b)] = feed.pushes(["slow"], 0.0, 0.0)
    feed.noted("fast", a.version)
    feed.noted("slow", b.version)
    feed.pushes(["fast", "slow"], 1.0, 1.0)  # heartbeats: both in flight now
    for location in range(5):
        feed.written([row(1, location, 100)])
        for to, _ in feed.pushes(["fast", "slow"], 1.0, 1.0):
            assert to == "fast"
        feed.noted("fast", feed.version)
    assert feed.pushes(["slow"], 5.9, 5.9) == []  # its heartbeat is still in flight
    [(_, resent)] = [p for p in feed.pushes(["fast", "slow"], 7.0, 7.0) if p[0] == "slow"]
    assert resent.reload  # its rows were dropped: it reads the store first


def test_receivers_that_are_gone_are_forgotten() -> None:
    feed = RowFeed(heartbeat_s=0.25)
    feed.pushes(["p1", "p2"], 0.0, 0.0)
    assert feed.waiting() == 2
    feed.pushes(["p2"], 0.0, 0.0)
    assert feed.waiting() == 1
