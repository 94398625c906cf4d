"""How fast the fact stores take readings, beside the raw SQLite limit on this machine.

Inserts N readings in B-row batches (one durable commit each) through the store,
then the same rows with plain ``sqlite3`` ``executemany`` into a bare table of the
same shape (same pragmas: WAL, synchronous=FULL; no indexes, no duplicate check),
then into that table with the store's two indexes, and prints rows/s and ratios.
With a cluster given (``RML_COUCHBASE_URL``, ``RML_COUCHBASE_USERNAME``,
``RML_COUCHBASE_PASSWORD``, optional ``RML_COUCHBASE_BUCKET`` and
``RML_COUCHBASE_DURABILITY``), the Couchbase fact store runs the same batches in the
same run, in a scope of its own.

    .venv/bin/python bench/store_insert.py [--rows 100000] [--batch 1000]
        [--sensors 200] [--locations 50] [--ids sequential|uuid]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from messages.facts import Reading  # noqa: E402
from storage.sqlite.facts import SQLiteFactStore  # noqa: E402

_CLUSTER_VARIABLES = ("RML_COUCHBASE_URL", "RML_COUCHBASE_USERNAME", "RML_COUCHBASE_PASSWORD")

_COLUMNS = ("sensor_id TEXT NOT NULL, location_id INTEGER NOT NULL, reading_id TEXT NOT NULL, "
            "timestamp INTEGER NOT NULL, animals_lower INTEGER NOT NULL, "
            "animals_upper INTEGER NOT NULL, percent_zebras REAL NOT NULL")
_INSERT = ("INSERT INTO readings (sensor_id, location_id, reading_id, timestamp, animals_lower, "
           "animals_upper, percent_zebras) VALUES (?, ?, ?, ?, ?, ?, ?)")


def make_readings(n: int, sensors: int, locations: int, ids: str) -> list[Reading]:
    """Readings from ``sensors`` sensors spread over ``locations`` locations, in time order."""
    out = []
    for i in range(n):
        sensor = i % sensors
        reading_id = str(uuid.uuid4()) if ids == "uuid" else f"{i // sensors:010d}"
        out.append(Reading(f"sensor-{sensor:05d}", sensor % locations, reading_id,
                           1_700_000_000_000 + i * 10, i % 7, i % 7 + 3, (i % 100) / 100))
    return out


def timed(batches: Sequence[Sequence[Reading]], insert: Callable[[Sequence[Reading]], object]
          ) -> float:
    start = time.perf_counter()
    for batch in batches:
        insert(batch)
    return time.perf_counter() - start


def raw_inserter(path: Path, indexed: bool) -> Callable[[Sequence[Reading]], object]:
    """Plain sqlite3: one BEGIN/executemany/COMMIT per batch, same durability settings."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    unique = ", UNIQUE (sensor_id, reading_id)" if indexed else ""
    conn.execute(f"CREATE TABLE readings (seq INTEGER PRIMARY KEY, {_COLUMNS}{unique}) STRICT")
    if indexed:
        conn.execute("CREATE INDEX readings_by_location ON readings (location_id, timestamp)")
    sql = _INSERT + (" ON CONFLICT DO NOTHING" if indexed else "")

    def insert(batch: Sequence[Reading]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, [(r.sensor_id, r.location_id, r.reading_id, r.timestamp,
                                r.animals_lower, r.animals_upper, r.percent_zebras)
                               for r in batch])
        conn.execute("COMMIT")
    return insert


def couchbase_rates(batches: Sequence[Sequence[Reading]], rows: int) -> dict[str, float]:
    """The Couchbase fact store's rows/s on the cluster the variables name (a new scope)."""
    from config.settings import CouchbaseSettings
    from storage.couchbase.cluster import connect
    from storage.couchbase.facts import CouchbaseFactStore

    durability = os.environ.get("RML_COUCHBASE_DURABILITY", "majority")
    settings = CouchbaseSettings(connection_string=os.environ["RML_COUCHBASE_URL"],
                                 username=os.environ["RML_COUCHBASE_USERNAME"],
                                 password=os.environ["RML_COUCHBASE_PASSWORD"],
                                 bucket=os.environ.get("RML_COUCHBASE_BUCKET", "rml"),
                                 scope=f"bench{int(time.time())}", durability=durability)
    connection = connect(settings)
    try:
        connection.ensure_collections()
        store = CouchbaseFactStore(connection.keyvalue("facts"), writer="bench")
        rate = {f"couchbase ({durability})": rows / timed(batches, store.insert_readings),
                "couchbase, all duplicates": rows / timed(batches, store.insert_readings)}
        assert store.counts().readings == rows
        return rate
    finally:
        connection.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--locations", type=int, default=50)
    parser.add_argument("--ids", choices=("sequential", "uuid"), default="sequential")
    args = parser.parse_args(argv)
    readings = make_readings(args.rows, args.sensors, args.locations, args.ids)
    batches = [readings[i:i + args.batch] for i in range(0, len(readings), args.batch)]
    rate: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rml-bench-") as tmp:
        store = SQLiteFactStore(Path(tmp) / "facts.sqlite")
        try:
            rate["store"] = args.rows / timed(batches, store.insert_readings)
            rate["store, all duplicates"] = args.rows / timed(batches, store.insert_readings)
            assert store.counts().readings == args.rows
        finally:
            store.close()
        rate["raw bare table"] = args.rows / timed(batches, raw_inserter(Path(tmp) / "b", False))
        rate["raw + same indexes"] = args.rows / timed(batches,
                                                       raw_inserter(Path(tmp) / "i", True))
    if all(os.environ.get(name) for name in _CLUSTER_VARIABLES):
        rate.update(couchbase_rates(batches, args.rows))
    print(f"{args.rows:,} readings in {args.batch:,}-row batches, {args.sensors} sensors, "
          f"{args.locations} locations, {args.ids} reading ids; WAL, synchronous=FULL")
    if "couchbase, all duplicates" not in rate:
        print("  (couchbase: no cluster given; set " + ", ".join(_CLUSTER_VARIABLES) + ")")
    raw = rate["raw bare table"]
    for name, value in rate.items():
        print(f"  {name:<24} {value:>10,.0f} rows/s   {value / raw:5.2f} x raw bare table")


if __name__ == "__main__":
    main()
