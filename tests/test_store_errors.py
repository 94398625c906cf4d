"""SQLite backend failures surface as the project's own errors, never raw sqlite3 ones."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from messages.facts import Reading
from storage import (
    FACTS_FILE,
    MODELS_FILE,
    SQLiteFactStore,
    SQLiteFeatureStore,
    SQLiteModelRegistry,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    open_sqlite_stores,
)

READING = Reading("s1", 1, "r1", 1_000, 1, 2, 0.5)


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A second, raw connection that holds the facts file's write lock (BEGIN IMMEDIATE)."""
    open_sqlite_stores(tmp_path).close()  # create the files and schema
    holder = sqlite3.connect(tmp_path / FACTS_FILE, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO outcomes (location_id, outcome_id, timestamp, label) "
                   "VALUES (1, 'held', 1, 1)")
    yield holder
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()


def test_data_dir_below_a_regular_file_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StoreUnavailable):
        open_sqlite_stores(blocker / "data")


def test_database_path_that_is_a_directory_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / FACTS_FILE).mkdir()
    with pytest.raises(StoreUnavailable):
        SQLiteFactStore(tmp_path / FACTS_FILE)


def test_missing_parent_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        SQLiteModelRegistry(tmp_path / "missing" / MODELS_FILE)


def test_corrupt_database_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / FACTS_FILE).write_bytes(b"this is not an sqlite database" * 200)
    with pytest.raises(StoreUnavailable):
        SQLiteFactStore(tmp_path / FACTS_FILE)


def test_read_only_open_never_creates_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        open_sqlite_stores(tmp_path / "data", read_only=True)
    assert not (tmp_path / "data").exists()
    with pytest.raises(StoreUnavailable):
        SQLiteFeatureStore(tmp_path / "features.sqlite", read_only=True)
    assert not (tmp_path / "features.sqlite").exists()


def test_writer_holding_the_lock_past_the_busy_timeout_gives_store_timeout(
        tmp_path: Path, lock_holder: sqlite3.Connection) -> None:
    store = SQLiteFactStore(tmp_path / FACTS_FILE, busy_timeout_s=0.05)
    try:
        with pytest.raises(StoreTimeout):
            store.insert_readings([READING])
        lock_holder.execute("COMMIT")
        result = store.insert_readings([READING])  # the lock is free again
        assert (result.accepted, result.duplicates) == (1, 0)
        assert store.counts().outcomes == 1
    finally:
        store.close()


def test_reader_is_not_blocked_by_a_writer_holding_the_lock(
        tmp_path: Path, lock_holder: sqlite3.Connection) -> None:
    store = SQLiteFactStore(tmp_path / FACTS_FILE, busy_timeout_s=0.05)
    try:
        counts = store.counts()  # WAL: the snapshot before the holder's uncommitted insert
        assert (counts.readings, counts.outcomes) == (0, 0)
    finally:
        store.close()


def test_a_timed_out_batch_stores_nothing(tmp_path: Path,
                                          lock_holder: sqlite3.Connection) -> None:
    store = SQLiteFactStore(tmp_path / FACTS_FILE, busy_timeout_s=0.05)
    try:
        with pytest.raises(StoreTimeout):
            store.insert_readings([READING, Reading("s1", 1, "r2", 1, 1, 2, 0.5)])
        lock_holder.execute("ROLLBACK")
        assert store.counts().readings == 0
    finally:
        store.close()


def test_closed_store_raises_store_error(tmp_path: Path) -> None:
    stores = open_sqlite_stores(tmp_path)
    stores.close()
    stores.close()  # idempotent
    with pytest.raises(StoreError):
        stores.facts.counts()
    with pytest.raises(StoreError):
        stores.registry.versions()


def test_negative_busy_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SQLiteFactStore(tmp_path / FACTS_FILE, busy_timeout_s=-1)
