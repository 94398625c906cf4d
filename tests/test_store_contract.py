"""The store contract: the same behaviour, proved against every storage backend.

The ``backend`` fixture is parametrised over three targets. SQLite (the embedded
default) always runs. The Couchbase backend always runs through the SDK stand-in
(``tests/couchbase_standin.py``, shared by child processes), and against a real
cluster when ``RML_COUCHBASE_URL``, ``RML_COUCHBASE_USERNAME`` and
``RML_COUCHBASE_PASSWORD`` are set (``RML_COUCHBASE_BUCKET``, default ``rml``; each
test gets a scope of its own). So far the Couchbase backend has its fact store:
the tests marked ``facts`` run on it, the others skip there, saying so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.settings import CouchbaseSettings
from learning.features.collections import FeatureCollection, FeatureRow
from messages.facts import Outcome, Reading
from storage import (
    FACTS_FILE,
    FEATURES_FILE,
    MODELS_FILE,
    SYSTEM_FILE,
    StoreError,
    Stores,
    open_sqlite_stores,
)
from storage.couchbase.cluster import CouchbaseConnection, connect
from storage.couchbase.stores import OPENERS, STORES
from storage.facts import FactCounts, FactCursor, FactPage, InsertResult
from storage.sqlite.facts import SQLITE_LOG
from storage.sqlite.features import SQLiteFeatureStore
from tests.couchbase_standin import StandinCluster

REPO = Path(__file__).resolve().parents[1]
STORE_NAMES = ("facts", "features", "registry", "deadletters")  # the fields of Stores
COUCHBASE_CONFIGURED = all(os.environ.get(name) for name in (
    "RML_COUCHBASE_URL", "RML_COUCHBASE_USERNAME", "RML_COUCHBASE_PASSWORD"))
DEADLINE_S = 60.0  # generous bound on a child process; a healthy run takes well under 1 s


def couchbase_settings(location: str) -> CouchbaseSettings:
    """The real cluster's settings, with a scope of this test's own."""
    scope = "t" + hashlib.sha256(location.encode()).hexdigest()[:24]
    return CouchbaseSettings(connection_string=os.environ["RML_COUCHBASE_URL"],
                             username=os.environ["RML_COUCHBASE_USERNAME"],
                             password=os.environ["RML_COUCHBASE_PASSWORD"],
                             bucket=os.environ.get("RML_COUCHBASE_BUCKET", "rml"), scope=scope,
                             durability=os.environ.get("RML_COUCHBASE_DURABILITY", "none"))


def open_couchbase(name: str, location: str, *, read_only: bool = False) -> CouchbaseConnection:
    """A connection to the stand-in (in ``location``) or the real cluster."""
    if name == "couchbase-standin":
        settings = CouchbaseSettings(durability="majority")
        connection = connect(settings, read_only=read_only,
                             cluster_factory=lambda _: StandinCluster(Path(location) / "cb"))
    else:
        connection = connect(couchbase_settings(location), read_only=read_only)
    if not read_only:
        connection.ensure_collections()
    return connection


def open_backend(name: str, location: str, *, read_only: bool = False) -> Stores:
    """Open the stores of backend ``name`` at ``location`` (also used by child processes)."""
    if name == "sqlite":
        return open_sqlite_stores(Path(location), read_only=read_only)
    # Couchbase: the stores that have a Couchbase backend (storage.couchbase.stores); the
    # others stay SQLite until they have one (their tests skip on Couchbase meanwhile).
    sqlite = open_sqlite_stores(Path(location), read_only=read_only)
    connection = open_couchbase(name, location, read_only=read_only)
    opened = {name: (OPENERS[name](connection, None) if name in OPENERS
                     else getattr(sqlite, name)) for name in STORE_NAMES}
    return Stores(**opened, connection=connection)


def tamper_artifact(name: str, location: str, version: int) -> None:
    """Change a stored artifact's bytes behind the registry's back."""
    if name == "sqlite":
        with sqlite3.connect(Path(location) / MODELS_FILE) as conn:
            conn.execute("UPDATE artifacts SET data = ? WHERE version = ?",
                         (b"evil bytes", version))
        return
    # Couchbase: overwrite the artifact's first chunk, which the registry only ever inserts.
    from couchbase.options import UpsertOptions
    from couchbase.transcoder import RawBinaryTranscoder

    from storage.couchbase.registry import CouchbaseModelRegistry, chunk_key

    connection = open_couchbase(name, location)
    try:
        registry = CouchbaseModelRegistry(connection.keyvalue("models"))
        key = chunk_key(registry.get(version).artifact_sha256, 0)
        settings = connection.settings
        if name == "couchbase-standin":
            # The stand-in's layout: data/<bucket>/<scope>/<collection>/<hex of a short key>,
            # each file a 12-byte header (cas, flags) then the value.
            path = (Path(location) / "cb" / "data" / settings.bucket / settings.scope / "models"
                    / key.encode().hex())
            path.write_bytes(path.read_bytes()[:12] + b"evil bytes")
        else:
            collection = connection.bucket.scope(settings.scope).collection("models")
            collection.upsert(key, b"evil bytes", UpsertOptions(transcoder=RawBinaryTranscoder()))
    finally:
        connection.close()


@dataclass(frozen=True)
class Backend:
    """Where one backend's stores live; plain strings so a child process can open them too."""

    name: str
    location: str

    def open(self, *, read_only: bool = False) -> Stores:
        return open_backend(self.name, self.location, read_only=read_only)


@pytest.fixture(params=[
    "sqlite",
    "couchbase-standin",
    pytest.param("couchbase", marks=pytest.mark.skipif(
        not COUCHBASE_CONFIGURED, reason="RML_COUCHBASE_URL and credentials not set")),
])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    marker = request.node.get_closest_marker("store")
    needed = set(marker.args if marker else STORE_NAMES)
    if request.param != "sqlite" and not needed <= STORES:
        pytest.skip(f"no Couchbase backend yet for: {', '.join(sorted(needed - STORES))}")
    return Backend(request.param, str(tmp_path / "data"))


@pytest.fixture
def stores(backend: Backend) -> Iterator[Stores]:
    opened = backend.open()
    yield opened
    opened.close()


def reading(i: int, *, sensor: str = "s1", location: int = 1, ts: int | None = None,
            lower: int = 2, upper: int = 5, zebras: float = 0.25) -> Reading:
    return Reading(sensor, location, f"r{i}", 1_000 + i if ts is None else ts, lower, upper, zebras)


def outcome(i: int, *, location: int = 1, label: bool = True) -> Outcome:
    return Outcome(location, f"o{i}", 5_000 + i, label)


def child_env() -> dict[str, str]:
    """Environment for a child Python process: the repo and the tests importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}


def run_child(script: str, *args: str, returncode: int = 0) -> str:
    """Run ``script`` in a fresh Python process and return its stdout."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env=child_env(), cwd=REPO, timeout=DEADLINE_S)
    assert done.returncode == returncode, done.stderr
    return done.stdout


# -- facts -----------------------------------------------------------------------------------

@pytest.mark.store("facts")
def test_insert_reports_accepted_and_duplicate_counts(stores: Stores) -> None:
    first = stores.facts.insert_readings([reading(1), reading(2), reading(3)])
    second = stores.facts.insert_readings([reading(4), reading(1)])
    assert (first.accepted, first.duplicates) == (3, 0)
    assert (second.accepted, second.duplicates) == (1, 1)
    assert stores.facts.counts().readings == 4


@pytest.mark.store("facts")
def test_duplicate_reading_is_reported_not_overwritten(stores: Stores) -> None:
    original = reading(1, lower=2, upper=5)
    stores.facts.insert_readings([original])
    changed = reading(1, lower=90, upper=99)
    result = stores.facts.insert_readings([changed, reading(2)])
    assert (result.accepted, result.duplicates) == (1, 1)
    assert stores.facts.get_reading("s1", "r1") == original
    assert stores.facts.counts().readings == 2


@pytest.mark.store("facts")
def test_duplicate_within_one_batch_counts_once(stores: Stores) -> None:
    result = stores.facts.insert_readings([reading(1), reading(1, lower=3), reading(2)])
    assert (result.accepted, result.duplicates) == (2, 1)
    assert stores.facts.get_reading("s1", "r1") == reading(1)


@pytest.mark.store("facts")
def test_same_reading_id_from_another_sensor_is_a_new_fact(stores: Stores) -> None:
    result = stores.facts.insert_readings([reading(1, sensor="a"), reading(1, sensor="b")])
    assert (result.accepted, result.duplicates) == (2, 0)


@pytest.mark.store("facts")
def test_duplicate_outcome_is_reported_not_overwritten(stores: Stores) -> None:
    stores.facts.insert_outcomes([outcome(1, label=True)])
    result = stores.facts.insert_outcomes([outcome(1, label=False), outcome(1, location=2)])
    assert (result.accepted, result.duplicates) == (1, 1)
    assert stores.facts.get_outcome(1, "o1") == outcome(1, label=True)
    assert stores.facts.get_outcome(9, "o1") is None
    assert stores.facts.get_reading("s1", "nope") is None


@pytest.mark.store("facts")
def test_outcome_label_round_trips_as_bool(stores: Stores) -> None:
    stores.facts.insert_outcomes([outcome(1, label=True), outcome(2, label=False)])
    labels = [o.label for o in stores.facts.all_outcomes()]
    assert labels == [True, False]
    assert all(type(label) is bool for label in labels)


@pytest.mark.store("facts")
def test_empty_batch_stores_nothing(stores: Stores) -> None:
    stores.facts.insert_readings([reading(1)])
    assert stores.facts.insert_readings([]) == InsertResult(0, 0)
    assert stores.facts.insert_outcomes([]) == InsertResult(0, 0)
    assert stores.facts.counts() == FactCounts(1, 0)


@pytest.mark.store("facts")
def test_a_batch_that_fails_stores_nothing(stores: Stores) -> None:
    bad = Reading("s1", 1, "bad", 1_000, 1, 2, "lots")  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        stores.facts.insert_readings([reading(1), bad])
    assert stores.facts.counts().readings == 0
    assert stores.facts.get_reading("s1", "r1") is None


@pytest.mark.store("facts")
def test_readings_since_pages_through_one_writers_log_in_order(stores: Stores) -> None:
    stores.facts.insert_readings([reading(i) for i in range(10)])
    stores.facts.insert_readings([reading(i) for i in range(3, 15)])  # 3..9 are duplicates
    seen: list[Reading] = []
    cursor = FactCursor()
    while (page := stores.facts.readings_since(cursor, 4)).items:
        assert len(page.items) <= 4
        seen.extend(page.items)
        # A consumer keeps its cursor as text (in the feature store): it must survive that.
        cursor = FactCursor.from_text(page.cursor.to_text())
    assert seen == [reading(i) for i in range(15)]
    assert stores.facts.readings_since(cursor, 10).items == ()
    assert stores.facts.readings_since(cursor, 0) == FactPage((), cursor)
    stores.facts.insert_readings([reading(15)])
    assert stores.facts.readings_since(cursor, 10).items == (reading(15),)


@pytest.mark.store("facts")
def test_outcomes_since_pages_in_order(stores: Stores) -> None:
    stores.facts.insert_outcomes([outcome(i) for i in range(5)])
    first = stores.facts.outcomes_since(FactCursor(), 3)
    rest = stores.facts.outcomes_since(first.cursor, 10)
    assert first.items + rest.items == tuple(outcome(i) for i in range(5))
    assert stores.facts.readings_since(rest.cursor, 10).items == ()  # logs of each kind apart


@pytest.mark.store("facts")
def test_readings_for_location_is_half_open_and_time_ordered(stores: Stores) -> None:
    stores.facts.insert_readings([
        reading(1, ts=300), reading(2, ts=100), reading(3, ts=200), reading(4, ts=400),
        reading(5, ts=200, location=2),
    ])
    window = stores.facts.readings_for_location(1, 100, 400)
    assert [r.timestamp for r in window] == [100, 200, 300]
    assert stores.facts.readings_for_location(2, 0, 1_000) == (reading(5, ts=200, location=2),)
    assert stores.facts.readings_for_location(3, 0, 1_000) == ()


@pytest.mark.store("facts")
def test_all_facts_come_back_in_log_order(stores: Stores) -> None:
    stores.facts.insert_readings([reading(1), reading(2)])
    stores.facts.insert_readings([reading(3), reading(1)])
    stores.facts.insert_outcomes([outcome(1)])
    stores.facts.insert_outcomes([outcome(2)])
    assert stores.facts.all_readings() == (reading(1), reading(2), reading(3))
    assert stores.facts.all_outcomes() == (outcome(1), outcome(2))


@pytest.mark.store("facts")
def test_counts_report_facts(stores: Stores) -> None:
    stores.facts.insert_readings([reading(1), reading(2), reading(2)])
    stores.facts.insert_outcomes([outcome(1)])
    assert stores.facts.counts() == FactCounts(2, 1)


_READ_IN_CHILD = """
import json, sys
from test_store_contract import open_backend
stores = open_backend(sys.argv[1], sys.argv[2], read_only=True)
got = stores.facts.get_reading("s1", "r1")
print(json.dumps({"readings": stores.facts.counts().readings,
                  "lower": None if got is None else got.animals_lower}))
"""

_WRITE_IN_CHILD = """
import sys
from messages.facts import Reading
from test_store_contract import open_backend
stores = open_backend(sys.argv[1], sys.argv[2])
result = stores.facts.insert_readings([Reading("child", 7, "c1", 1, 1, 2, 0.5)])
print(result.accepted)
"""


@pytest.mark.store("facts")
def test_commit_is_visible_to_a_fresh_connection_in_another_process(
        backend: Backend, stores: Stores) -> None:
    stores.facts.insert_readings([reading(1, lower=4), reading(2)])
    seen = json.loads(run_child(_READ_IN_CHILD, backend.name, backend.location))
    assert seen == {"readings": 2, "lower": 4}
    # And the other way: a child's commit is visible to this process's open store.
    assert run_child(_WRITE_IN_CHILD, backend.name, backend.location).strip() == "1"
    assert stores.facts.get_reading("child", "c1") == Reading("child", 7, "c1", 1, 1, 2, 0.5)


_WRITE_THEN_DIE = """
import os, signal, sys
from messages.facts import Reading
from test_store_contract import open_backend
stores = open_backend(sys.argv[1], sys.argv[2])
result = stores.facts.insert_readings([Reading("k", 1, f"k{i}", i, 1, 2, 0.5) for i in range(50)])
print(result.accepted, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close, no cleanup: only what was committed remains
"""


@pytest.mark.store("facts")
def test_acknowledged_batch_survives_its_writer_being_killed(backend: Backend) -> None:
    out = run_child(_WRITE_THEN_DIE, backend.name, backend.location, returncode=-signal.SIGKILL)
    assert out.strip() == "50"
    with backend.open() as reopened:
        assert reopened.facts.counts().readings == 50


_CONCURRENT_WRITER = """
import json, sys
from messages.facts import Reading
from test_store_contract import open_backend
name, location, worker, n, batch = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
stores = open_backend(name, location)
# Overlapping keys: each worker shares half its keys with the next, all share 'common'.
keys = [("common", f"c{i}") for i in range(300)]
keys += [(f"s{(worker * n // 2 + i) % 7}", f"r{worker * n // 2 + i}") for i in range(n)]
if worker % 2:
    keys.reverse()
print("ready", flush=True)
sys.stdin.readline()  # start together
accepted = duplicates = 0
for start in range(0, len(keys), batch):
    chunk = [Reading(s, 1, r, 1, 1, 2, 0.5) for s, r in keys[start:start + batch]]
    result = stores.facts.insert_readings(chunk)
    accepted += result.accepted
    duplicates += result.duplicates
print(json.dumps({"accepted": accepted, "duplicates": duplicates, "sent": len(keys)}))
"""


@pytest.mark.store("facts")
def test_concurrent_writers_store_each_key_once(backend: Backend, stores: Stores) -> None:
    workers, n, batch = 4, 1_200, 150
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_WRITER, backend.name,
                               backend.location, str(w), str(n), str(batch)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=child_env(), cwd=REPO)
             for w in range(workers)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=DEADLINE_S)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    distinct = {("common", f"c{i}") for i in range(300)}
    for w in range(workers):
        distinct |= {(f"s{(w * n // 2 + i) % 7}", f"r{w * n // 2 + i}") for i in range(n)}
    assert sum(r["accepted"] for r in results) == len(distinct)
    assert sum(r["accepted"] + r["duplicates"] for r in results) == sum(r["sent"] for r in results)
    stored = stores.facts.all_readings()
    assert len(stored) == len({r.key for r in stored}) == len(distinct)
    assert stores.facts.counts().readings == len(distinct)
    # A consumer paging through every writer's log sees each stored fact exactly once.
    paged: list[tuple[str, str]] = []
    cursor = FactCursor()
    while (page := stores.facts.readings_since(cursor, 97)).items:
        paged.extend(r.key for r in page.items)
        cursor = page.cursor
    assert len(paged) == len(distinct) and set(paged) == distinct


@pytest.mark.store("facts")
def test_read_only_stores_see_the_writers_commits_and_refuse_writes(
        backend: Backend, stores: Stores) -> None:
    with backend.open(read_only=True) as reader:
        stores.facts.insert_readings([reading(1)])
        assert reader.facts.counts().readings == 1
        with pytest.raises(StoreError):
            reader.facts.insert_readings([reading(2)])
    assert stores.facts.counts().readings == 1


# -- features --------------------------------------------------------------------------------

FALLBACK = FeatureCollection(0, 1_000, ("animals", "zebras"))
RICHER = FeatureCollection(1, 2_000, ("animals", "zebras", "trend"))


def row(location: int, as_of: int, *values: float, collection: int = 0) -> FeatureRow:
    return FeatureRow(collection, location, as_of, tuple(values), as_of + 5)


@pytest.mark.store("features")
def test_registering_the_same_collection_twice_is_a_no_op(stores: Stores) -> None:
    assert stores.features.register_collection(RICHER) is True
    assert stores.features.register_collection(FALLBACK) is True
    assert stores.features.register_collection(RICHER) is False
    assert stores.features.collections() == (FALLBACK, RICHER)


@pytest.mark.store("features")
def test_a_different_collection_under_a_known_id_is_refused(stores: Stores) -> None:
    stores.features.register_collection(RICHER)
    with pytest.raises(ValueError):
        stores.features.register_collection(FeatureCollection(1, 2_000, ("animals",)))
    assert stores.features.collections() == (RICHER,)


@pytest.mark.store("features")
def test_invalid_features_accumulate_with_their_reasons(stores: Stores) -> None:
    assert stores.features.invalid_features() == frozenset()
    stores.features.mark_invalid("trend", "all NaN", 10)
    stores.features.mark_invalid("zebras", "out of range", 20)
    stores.features.mark_invalid("trend", "still NaN", 30)
    assert stores.features.invalid_features() == {"trend", "zebras"}
    log = stores.features.invalid_feature_log()
    assert [(e.feature, e.reason, e.at_ms) for e in log] == [
        ("trend", "all NaN", 10), ("zebras", "out of range", 20), ("trend", "still NaN", 30)]


@pytest.mark.store("features")
def test_active_collection_is_the_newest_switch_and_every_switch_is_logged(
        stores: Stores) -> None:
    assert stores.features.active_collection_id() is None
    stores.features.record_switch(1, "started", 100)
    stores.features.record_switch(0, "invalid features: trend", 200)
    assert stores.features.active_collection_id() == 0
    assert [(s.collection_id, s.reason, s.at_ms) for s in stores.features.switches()] == [
        (1, "started", 100), (0, "invalid features: trend", 200)]


@pytest.mark.store("features")
def test_existing_feature_row_is_not_overwritten(stores: Stores) -> None:
    assert stores.features.write_rows([row(1, 100, 1.0, 2.0), row(2, 100, 3.0, 4.0)]) == 2
    assert stores.features.write_rows([row(1, 100, 9.0, 9.0), row(1, 200, 5.0, 6.0)]) == 1
    assert stores.features.row_as_of(0, 1, 100) == row(1, 100, 1.0, 2.0)
    assert stores.features.write_rows([]) == 0


@pytest.mark.store("features")
def test_latest_rows_give_the_newest_row_of_each_location(stores: Stores) -> None:
    stores.features.write_rows([row(2, 300, 3.0), row(1, 100, 1.0), row(1, 200, 2.0),
                                row(1, 900, 7.0, collection=1)])
    assert stores.features.latest_row(0, 1) == row(1, 200, 2.0)
    assert stores.features.latest_row(0, 3) is None
    assert stores.features.latest_rows(0) == (row(1, 200, 2.0), row(2, 300, 3.0))
    assert stores.features.latest_rows(5) == ()


@pytest.mark.store("features")
def test_row_as_of_is_a_point_in_time_lookup(stores: Stores) -> None:
    stores.features.write_rows([row(1, 100, 1.0), row(1, 200, 2.0), row(1, 300, 3.0)])
    assert stores.features.row_as_of(0, 1, 99) is None
    assert stores.features.row_as_of(0, 1, 100) == row(1, 100, 1.0)
    assert stores.features.row_as_of(0, 1, 299) == row(1, 200, 2.0)
    assert stores.features.row_as_of(0, 1, 10_000) == row(1, 300, 3.0)


@pytest.mark.store("features")
def test_nan_and_other_special_feature_values_round_trip_exactly(stores: Stores) -> None:
    payload_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_BEEF))[0]
    values = (math.nan, payload_nan, math.inf, -math.inf, -0.0, 5e-324, 0.1)
    stores.features.write_rows([FeatureRow(0, 1, 100, values, 105)])
    got = stores.features.latest_row(0, 1)
    assert got is not None
    assert struct.pack("<7d", *got.values) == struct.pack("<7d", *values)
    assert stores.features.write_rows([FeatureRow(0, 2, 100, (), 105)]) == 1
    assert stores.features.latest_row(0, 2) == FeatureRow(0, 2, 100, (), 105)


@pytest.mark.store("features")
def test_a_consumers_cursor_only_moves_forward(stores: Stores) -> None:
    assert stores.features.cursor("gen") == FactCursor()
    stores.features.advance_cursor("gen", FactCursor.of({"a": (10, 0)}), 1)
    stores.features.advance_cursor("gen", FactCursor.of({"a": (7, 3)}), 2)  # late: no change
    stores.features.advance_cursor("gen", FactCursor.of({"b": (2, 5)}), 3)  # another writer
    stores.features.advance_cursor("other", FactCursor.of({"a": (3, 0)}), 3)
    assert stores.features.cursor("gen") == FactCursor.of({"a": (10, 0), "b": (2, 5)})
    stores.features.advance_cursor("gen", FactCursor.of({"a": (10, 4), "b": (1, 0)}), 4)
    assert stores.features.cursor("gen") == FactCursor.of({"a": (10, 4), "b": (2, 5)})
    assert stores.features.cursor("other") == FactCursor.of({"a": (3, 0)})


# -- model registry --------------------------------------------------------------------------

def register(stores: Stores, *, collection: int = 0, artifact: bytes = b"model",
             at: int = 1_000, status: str = "candidate") -> int:
    return stores.registry.register(
        feature_collection_id=collection, job={"model": "tree", "max_depth": 3},
        metrics={"roc_auc": 0.8, "accuracy": 0.75}, lineage={"facts": {"count": 10}},
        artifact=artifact, created_at_ms=at, status=status)


@pytest.mark.store("registry")
def test_versions_are_numbered_from_one_and_keep_what_was_registered(stores: Stores) -> None:
    assert [register(stores), register(stores, collection=1)] == [1, 2]
    record = stores.registry.get(2)
    assert (record.version, record.status, record.feature_collection_id) == (2, "candidate", 1)
    assert json.loads(record.job) == {"model": "tree", "max_depth": 3}
    assert json.loads(record.lineage) == {"facts": {"count": 10}}
    assert record.metrics == (("roc_auc", 0.8), ("accuracy", 0.75))
    assert record.created_at_ms == 1_000
    assert [r.version for r in stores.registry.versions()] == [1, 2]
    assert stores.registry.champion() is None


@pytest.mark.store("registry")
def test_artifact_round_trips_with_its_sha256(stores: Stores) -> None:
    import hashlib

    blob = bytes(range(256)) * 100
    version = register(stores, artifact=blob)
    assert stores.registry.artifact(version) == blob
    assert stores.registry.get(version).artifact_sha256 == hashlib.sha256(blob).hexdigest()


@pytest.mark.store("registry")
def test_tampered_artifact_is_refused(backend: Backend, stores: Stores) -> None:
    version = register(stores, artifact=b"honest model")
    tamper_artifact(backend.name, backend.location, version)
    with pytest.raises(StoreError, match="sha256"):
        stores.registry.artifact(version)


@pytest.mark.store("registry")
def test_compiled_form_round_trips_and_is_none_when_registered_without(
        backend: Backend, stores: Stores) -> None:
    form = bytes(range(256)) * 10
    with_form = stores.registry.register(
        feature_collection_id=0, job={}, metrics={}, lineage={}, artifact=b"model",
        created_at_ms=1, compiled=form)
    without = register(stores)
    assert stores.registry.compiled_form(with_form) == form
    assert stores.registry.compiled_form(without) is None
    stores.registry.add_compiled_form(without, b"late form")  # one registered before forms
    stores.registry.add_compiled_form(without, b"another")  # a no-op: it has one now
    stores.registry.add_compiled_form(with_form, b"another")
    assert stores.registry.compiled_form(without) == b"late form"
    assert stores.registry.compiled_form(with_form) == form
    with pytest.raises(KeyError):
        stores.registry.add_compiled_form(99, b"form")
    if backend.name == "sqlite":  # a form changed behind the registry's back is refused
        with sqlite3.connect(Path(backend.location) / MODELS_FILE) as conn:
            conn.execute("UPDATE compiled_forms SET data = ? WHERE version = ?",
                         (b"evil", with_form))
        with pytest.raises(StoreError, match="sha256"):
            stores.registry.compiled_form(with_form)


@pytest.mark.store("registry")
def test_unknown_version_raises_key_error(stores: Stores) -> None:
    with pytest.raises(KeyError):
        stores.registry.get(1)
    with pytest.raises(KeyError):
        stores.registry.artifact(1)
    with pytest.raises(KeyError):
        stores.registry.promote(1, "nope", 1)
    with pytest.raises(KeyError):
        stores.registry.set_status(1, "rejected", "nope", 1)


@pytest.mark.store("registry")
def test_promote_retires_the_previous_champion_and_keeps_history(stores: Stores) -> None:
    v1, v2 = register(stores), register(stores)
    stores.registry.promote(v1, "first model", 10)
    stores.registry.promote(v2, "beats v1", 20)
    champion = stores.registry.champion()
    assert champion is not None and (champion.version, champion.status_reason) == (v2, "beats v1")
    assert stores.registry.get(v1).status == "retired"
    assert [(c.version, c.previous_version, c.reason, c.at_ms)
            for c in stores.registry.champion_history()] == [
        (v1, None, "first model", 10), (v2, v1, "beats v1", 20)]
    assert [s.status for s in stores.registry.status_history(v1)] == [
        "candidate", "champion", "retired"]
    stores.registry.promote(v1, "rollback", 30)  # a retired model can come back
    assert [c.version for c in stores.registry.champion_history()] == [v1, v2, v1]
    assert stores.registry.get(v2).status == "retired"


@pytest.mark.store("registry")
def test_promoting_the_champion_again_changes_nothing(stores: Stores) -> None:
    v1 = register(stores)
    stores.registry.promote(v1, "first", 10)
    stores.registry.promote(v1, "redelivered", 11)
    stores.registry.set_status(v1, "champion", "again", 12)
    assert len(stores.registry.champion_history()) == 1
    assert len(stores.registry.status_history(v1)) == 2


@pytest.mark.store("registry")
def test_set_status_appends_and_refuses_unknown_statuses(stores: Stores) -> None:
    v1 = register(stores)
    stores.registry.set_status(v1, "rejected", "worse than random", 10)
    record = stores.registry.get(v1)
    assert (record.status, record.status_reason) == ("rejected", "worse than random")
    with pytest.raises(ValueError):
        stores.registry.set_status(v1, "deployed", "?", 11)
    with pytest.raises(ValueError):
        register(stores, status="deployed")
    assert [r.version for r in stores.registry.versions()] == [v1]


@pytest.mark.store("registry")
def test_registering_as_champion_promotes_it(stores: Stores) -> None:
    v1 = register(stores, status="champion")
    v2 = register(stores, status="champion")
    champion = stores.registry.champion()
    assert champion is not None and champion.version == v2
    assert stores.registry.get(v1).status == "retired"


@pytest.mark.store("registry")
def test_retiring_the_champion_leaves_none(stores: Stores) -> None:
    v1 = register(stores)
    stores.registry.promote(v1, "first", 10)
    stores.registry.set_status(v1, "retired", "withdrawn", 20)
    assert stores.registry.champion() is None


@pytest.mark.store("registry")
def test_champion_for_collection_falls_back_to_the_newest_former_champion(
        stores: Stores) -> None:
    old, newer, other = (register(stores, collection=0), register(stores, collection=0),
                         register(stores, collection=1))
    register(stores, collection=0)  # a newer candidate never served: not a fallback
    assert stores.registry.champion_for_collection(0) is None
    stores.registry.promote(old, "first", 10)
    stores.registry.promote(newer, "better", 20)
    stores.registry.promote(other, "richer features", 30)
    fallback = stores.registry.champion_for_collection(0)
    assert fallback is not None and (fallback.version, fallback.status) == (newer, "retired")
    found = stores.registry.champion_for_collection(1)
    assert found is not None and found.version == other


# -- dead letters and the stores as a whole --------------------------------------------------

@pytest.mark.store("deadletters")
def test_dead_letters_keep_a_truncated_repr_newest_first(stores: Stores) -> None:
    stores.deadletters.record(at_ms=1, actor="collector", message=("x" * 5_000,),
                              error=RuntimeError("boom"))
    stored = stores.deadletters.record(at_ms=2, actor="learner", message="Init",
                                       message_type="Init", error="bad config")
    newest, oldest = stores.deadletters.list()
    assert newest == stored
    assert (oldest.actor, oldest.message_type, oldest.error) == ("collector", "tuple",
                                                                 "RuntimeError: boom")
    assert len(oldest.message) == 2_000 and oldest.message.startswith("('xxx")
    assert stores.deadletters.count() == 2
    assert stores.deadletters.list(limit=1) == (newest,)


@pytest.mark.store("facts", "features", "registry")
def test_stores_survive_a_restart(backend: Backend) -> None:
    with backend.open() as first:
        first.facts.insert_readings([reading(1)])
        first.features.advance_cursor("gen", FactCursor.of({"w": (4, 1)}), 1)
        first.registry.promote(register(first), "first", 1)
    with backend.open() as again:
        assert again.facts.get_reading("s1", "r1") == reading(1)
        assert again.features.cursor("gen") == FactCursor.of({"w": (4, 1)})
        champion = again.registry.champion()
        assert champion is not None and champion.version == 1


def test_sqlite_stores_keep_each_writer_in_its_own_file(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"
    with open_sqlite_stores(data):
        names = {p.name for p in data.iterdir() if p.suffix == ".sqlite"}
        assert names == {FACTS_FILE, FEATURES_FILE, MODELS_FILE, SYSTEM_FILE}
        for name in names:
            with sqlite3.connect(data / name) as conn:
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_feature_file_from_before_cursors_keeps_its_watermark_as_the_cursor(
        tmp_path: Path) -> None:
    path = tmp_path / FEATURES_FILE
    with sqlite3.connect(path) as conn:  # the watermark table as the release before wrote it
        conn.execute("CREATE TABLE watermarks (seq INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                     "value INTEGER NOT NULL, at_ms INTEGER NOT NULL) STRICT")
        conn.executemany("INSERT INTO watermarks (name, value, at_ms) VALUES (?, ?, ?)",
                         [("gen", 40, 1), ("gen", 42, 2), ("other", 7, 3)])
    conn.close()
    old = FactCursor(((SQLITE_LOG, 42, 0),))
    reader = SQLiteFeatureStore(path, read_only=True)
    try:
        assert reader.cursor("gen") == old
    finally:
        reader.close()
    store = SQLiteFeatureStore(path)
    try:
        assert store.cursor("gen") == old
        assert store.cursor("new") == FactCursor()
        store.advance_cursor("gen", FactCursor(((SQLITE_LOG, 41, 0),)), 4)  # behind: no change
        assert store.cursor("gen") == old
        store.advance_cursor("gen", FactCursor(((SQLITE_LOG, 50, 0),)), 5)
        assert store.cursor("gen") == FactCursor(((SQLITE_LOG, 50, 0),))
    finally:
        store.close()
