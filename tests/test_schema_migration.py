"""A data directory written by the release before schema 1 keeps working.

``tests/fixtures/data-before-schema-1.tar.gz`` is a real daemon's data directory (readings
with integer bounds, outcomes, features, a published model), written by commit 4dfdfd7, the
last one whose fact store had INTEGER bounds in a STRICT table. Opening it migrates the
fact file once (``PRAGMA user_version`` 0 -> 1); every row reads back as it was stored,
under the same ``seq`` (consumers' cursors stay valid), and fractional bounds fit.
"""

from __future__ import annotations

import json
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import pytest

from learning.models.lineage import facts_fingerprint
from messages.facts import Reading
from players.gateway import HttpClient
from storage.facts import FactCursor, InsertResult
from storage.sqlite.facts import SQLiteFactStore
from tests.e2e_support import TOKEN, running_daemon, wait_for

FIXTURE = Path(__file__).parent / "fixtures" / "data-before-schema-1.tar.gz"
_ROWS = ("SELECT seq, sensor_id, location_id, reading_id, timestamp, animals_lower, "
         "typeof(animals_lower), animals_upper, typeof(animals_upper), percent_zebras "
         "FROM readings ORDER BY seq")


def unpack(tmp_path: Path) -> Path:
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path / "data"


def raw(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_the_fact_file_is_migrated_once_and_reads_back_unchanged(tmp_path: Path) -> None:
    facts = unpack(tmp_path) / "facts.sqlite"
    before = raw(facts, _ROWS)
    assert raw(facts, "PRAGMA user_version") == [(0,)] and len(before) > 1000
    assert {row[6] for row in before} == {"integer"}
    store = SQLiteFactStore(facts)
    try:
        assert store._db.version() == 1
        assert raw(facts, _ROWS) == before  # same seq, values and types
        page = store.readings_since(FactCursor(), 10)
        assert [r.key for r in page.items] == [(row[1], row[3]) for row in before[:10]]
        fractional = Reading("talk", 1, "r", before[-1][4], 12.5, 18.25, 0.6)
        assert store.insert_readings([fractional]) == InsertResult(1, 0)
        assert store.get_reading("talk", "r") == fractional
        assert raw(facts, "SELECT max(seq) FROM readings") == [(before[-1][0] + 1,)]
    finally:
        store.close()
    # Opening it again changes nothing more.
    SQLiteFactStore(facts).close()
    assert raw(facts, "PRAGMA user_version") == [(1,)]


def test_a_model_trained_before_still_matches_its_facts(tmp_path: Path) -> None:
    data = unpack(tmp_path)
    lineage = json.loads(raw(data / "models.sqlite",
                             "SELECT lineage FROM models ORDER BY version LIMIT 1")[0][0])
    store = SQLiteFactStore(data / "facts.sqlite")
    try:
        readings, outcomes = store.all_readings(), store.all_outcomes()
    finally:
        store.close()
    if lineage["facts"]["readings"] != len(readings):
        pytest.skip("the fixture's model saw fewer facts than it holds")
    assert facts_fingerprint(readings, outcomes).content_hash == \
        lineage["facts"]["content_hash"]


@pytest.mark.e2e
def test_rml_start_migrates_it_and_the_daemon_serves_from_it(tmp_path: Path) -> None:
    data = unpack(tmp_path)
    counts = raw(data / "facts.sqlite",
                 "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM outcomes)")[0]
    with running_daemon(tmp_path, store=data, min_outcomes=100) as daemon:
        assert "from schema 0 to 1" in daemon.started
        status = daemon.status()
        assert (status["counters"]["readings_stored"],
                status["counters"]["outcomes_stored"]) == counts
        version = status["model"]["version"]
        client = HttpClient("127.0.0.1", daemon.settings.predict.port, TOKEN)
        try:
            answer = wait_for("a prediction from the migrated store", lambda: (
                (r := client.post("/model", {"location_id": 1}))[0] == 200 and r[1]), 30.0)
        finally:
            client.close()
        assert answer["model_version"] == version
