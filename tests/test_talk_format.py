"""Gateways as they are: the talk's ``PreyReading`` (camelCase, integer ids, real-valued
bounds, no reading id), decoded, stored once, and learned from on a real daemon."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgpack
import pytest

from messages.codec import decode_outcomes, decode_readings
from messages.facts import Reading
from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.simulator import Savanna
from storage.facts import InsertResult
from storage.sqlite.facts import SQLiteFactStore
from tests.e2e_support import TOKEN, running_daemon, wait_for

NOW_MS = 1_700_000_000_000
#: The talk's reading, as its JSON formatter writes it.
TALK = {"sensorId": 36, "locationId": 12, "timestamp": 1457403598289,
        "animalsLowerBound": 12.0, "animalsUpperBound": 18.0, "percentZebras": 0.6}


def readings(items: list[Any], fmt: str = "json") -> Any:
    body = (json.dumps({"readings": items}).encode() if fmt == "json"
            else msgpack.packb({"readings": items}, use_bin_type=True))
    content_type = "application/json" if fmt == "json" else "application/msgpack"
    return decode_readings(body, content_type, now_ms=NOW_MS)


def only_error(item: dict[str, Any]) -> tuple[str, str]:
    batch = readings([item])
    assert not batch.items and len(batch.rejected) == 1
    return batch.rejected[0].error, batch.rejected[0].detail


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_the_talks_reading_is_accepted_unchanged(fmt: str) -> None:
    batch = readings([TALK], fmt)
    assert batch.rejected == ()
    assert batch.items == (Reading("36", 12, "1457403598289", 1457403598289, 12, 18, 0.6),)
    stored = batch.items[0]
    assert type(stored.animals_lower) is int  # 12.0 and 12 are one bound


def test_integer_ids_are_the_same_identity_as_their_decimal_strings() -> None:
    as_ints = readings([{**TALK, "readingId": 7}]).items[0]
    as_text = readings([{"sensor_id": "36", "location_id": 12, "reading_id": "7",
                         "timestamp": TALK["timestamp"], "animals_lower": 12,
                         "animals_upper": 18, "percent_zebras": 0.6}]).items[0]
    assert as_ints == as_text and as_ints.key == ("36", "7")
    big = readings([{**TALK, "sensorId": 2**63 - 1}]).items[0]
    assert big.sensor_id == str(2**63 - 1)
    assert only_error({**TALK, "sensorId": 2**63})[0] == "out_of_range"
    assert only_error({**TALK, "sensorId": True})[0] == "wrong_type"


def test_real_valued_bounds_are_kept_and_checked() -> None:
    reading = readings([{**TALK, "animalsLowerBound": 12.5, "animalsUpperBound": 18.25}]).items[0]
    assert (reading.animals_lower, reading.animals_upper) == (12.5, 18.25)
    error, detail = only_error({**TALK, "animalsLowerBound": 19.5})
    assert error == "bounds_inverted" and "animalsLowerBound" in detail
    error, detail = only_error({**TALK, "animalsLowerBound": -0.5})
    assert error == "out_of_range" and detail.startswith("animalsLowerBound: ")
    assert only_error({**TALK, "animalsUpperBound": math.inf})[0] == "not_finite"
    assert only_error({**TALK, "animalsUpperBound": "18"})[0] == "wrong_type"


def test_without_a_reading_id_the_reading_is_its_sensor_and_timestamp() -> None:
    first, again, other = readings([TALK, dict(TALK), {**TALK, "timestamp": 1457403598290}]).items
    assert first.key == again.key == ("36", "1457403598289") != other.key


def test_one_field_by_both_names_is_a_duplicate_and_other_mixes_are_fine() -> None:
    error, detail = only_error({**TALK, "sensor_id": "36"})
    assert error == "duplicate_field" and "sensorId" in detail and "sensor_id" in detail
    mixed = {"sensor_id": "36", "locationId": 12, "timestamp": TALK["timestamp"],
             "animals_lower": 12, "animalsUpperBound": 18.0, "percentZebras": 0.6}
    assert readings([mixed]).items[0] == readings([TALK]).items[0]
    assert only_error({**TALK, "sensorID": 1})[0] == "unknown_field"
    error, detail = only_error({k: v for k, v in TALK.items() if k != "percentZebras"})
    assert (error, detail) == ("missing_field", "percent_zebras: required")


def test_outcomes_in_camel_case_with_integer_ids() -> None:
    body = json.dumps({"outcomes": [{"locationId": 12, "outcomeId": 5, "timestamp": NOW_MS - 1,
                                     "label": True}]}).encode()
    batch = decode_outcomes(body, "application/json", now_ms=NOW_MS)
    assert batch.rejected == () and batch.items[0].key == (12, "5")


def test_the_store_keeps_a_resent_talk_reading_once_and_real_bounds_exactly(
        tmp_path: Path) -> None:
    store = SQLiteFactStore(tmp_path / "facts.sqlite")
    try:
        talk, fractional = readings([TALK, {**TALK, "timestamp": 1457403598290,
                                            "animalsLowerBound": 12.5}]).items
        assert store.insert_readings([talk, fractional]) == InsertResult(2, 0)
        assert store.insert_readings(readings([TALK]).items) == InsertResult(0, 1)  # resent
        assert store.get_reading("36", "1457403598290") == fractional
        back = store.get_reading("36", "1457403598289")
        assert back == talk and type(back.animals_lower) is int  # type: ignore[union-attr]
    finally:
        store.close()


def talk_item(item: dict[str, Any], sensors: dict[str, int]) -> dict[str, Any]:
    """A simulator reading as a gateway written from the talk sends it."""
    return {"sensorId": sensors.setdefault(item["sensor_id"], len(sensors) + 1),
            "locationId": item["location_id"], "timestamp": item["timestamp"],
            "animalsLowerBound": float(item["animals_lower"]) + 0.5,
            "animalsUpperBound": float(item["animals_upper"]) + 0.5,
            "percentZebras": item["percent_zebras"]}


@pytest.mark.e2e
def test_a_talk_gateway_is_stored_and_learned_from_on_a_real_daemon(tmp_path: Path) -> None:
    savanna = Savanna(seed=5, n_locations=10, hours=48, end_ms=last_midnight_ms())
    sensors: dict[str, int] = {}
    traffic = savanna.traffic()
    malformed = {index for index, _ in traffic.malformed}
    items = [talk_item(item, sensors) for i, item in enumerate(traffic.items)
             if i not in malformed]
    outcomes = [{"locationId": o["location_id"], "outcomeId": i, "timestamp": o["timestamp"],
                 "label": o["label"]} for i, o in enumerate(savanna.outcome_items())]
    with running_daemon(tmp_path, min_outcomes=100) as daemon:
        client = HttpClient("127.0.0.1", daemon.settings.ingest.port, TOKEN, timeout_s=60.0)
        try:
            tally = send_items(client, "readings", items, batch_size=1000)
            assert tally.failed_batches == 0 and not tally.rejected, tally.rejected
            unique = {(i["sensorId"], i["timestamp"]) for i in items}
            assert tally.accepted == len(unique)  # a resent reading is its sensor and time
            assert tally.duplicates == len(items) - len(unique)
            assert send_items(client, "outcomes", outcomes).accepted == len(outcomes)
        finally:
            client.close()
        record = wait_for("a champion learned from the talk's readings", lambda: (
            (c := daemon.champion()) is not None
            and json.loads(c.lineage)["facts"]["readings"] == len(unique) and c), 120.0, 0.2)
        assert dict(record.metrics)["roc_auc"] > 0.6
        with daemon.stores() as stores:
            stored = stores.facts.get_reading("1", str(items[0]["timestamp"]))
        assert stored is not None and stored.animals_lower % 1 == 0.5
        predict = HttpClient("127.0.0.1", daemon.settings.predict.port, TOKEN)
        try:
            answer = wait_for("a prediction", lambda: (
                (r := predict.post("/model", {"location_id": 1}))[0] == 200 and r[1]), 30.0)
        finally:
            predict.close()
        assert answer["model_version"] == record.version
