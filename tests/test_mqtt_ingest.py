"""A collector's MQTT client against a real Mosquitto, without a daemon: client ids, and a
store that fails (its messages held unacknowledged, then committed once, in order)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import structlog

from actors.mqtt_ingest import MqttIngest, client_id
from config.settings import MqttSettings
from messages.facts import Reading
from storage.errors import StoreUnavailable
from storage.facts import InsertResult
from storage.sqlite.facts import SQLiteFactStore
from tests.e2e_support import wait_for
from tests.mqtt_support import NEEDS_BROKER, Broker, running_broker


def test_a_slot_keeps_its_client_id_on_every_node() -> None:
    settings = MqttSettings(url="mqtt://127.0.0.1", client_id_prefix="farm")
    assert client_id(settings, "collector-1") == "farm-collector-1"
    assert client_id(settings, "collector-2@b") == "farm-collector-2.b"


class FlakyStore:
    """A real SQLite fact store that refuses the first ``failures`` inserts, as a store in
    an outage does (``StoreUnavailable``)."""

    def __init__(self, path: Path, failures: int) -> None:
        self.store = SQLiteFactStore(path)
        self.failures = failures
        self.attempts = 0
        self.lock = threading.Lock()

    def insert_readings(self, readings: Sequence[Reading]) -> InsertResult:
        with self.lock:
            self.attempts += 1
            if self.attempts <= self.failures:
                raise StoreUnavailable("the store is down (injected)")
        return self.store.insert_readings(readings)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with running_broker(tmp_path / "broker") as started:
        yield started


@NEEDS_BROKER
def test_messages_the_store_refuses_are_held_then_committed_once_in_order(
        broker: Broker, tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "facts.sqlite", failures=3)
    accepted: list[int] = []
    ingest = MqttIngest(MqttSettings(url=broker.url, reconnect_max_s=1.0), "rml-test-1",
                        lambda: store, lambda kind, n: accepted.append(n),
                        structlog.get_logger())
    ingest.start()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw",
                            protocol=mqtt.MQTTv5)
    try:
        wait_for("the client connected", lambda: ingest.state().connected, 10.0)
        time.sleep(0.3)  # its subscriptions are made on connect
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        now = int(time.time() * 1000)
        for i in range(3):
            item = {"sensorId": 5, "locationId": 1, "timestamp": now - 1000 + i,
                    "animalsLowerBound": 1.5, "animalsUpperBound": 2.0, "percentZebras": 0.1}
            publisher.publish("rml/readings/gw", json.dumps(item), qos=1).wait_for_publish(10)
        wait_for("the messages held while the store refuses them",
                 lambda: ingest.state().held >= 1, 10.0, 0.01)
        wait_for("all three committed", lambda: sum(accepted) == 3, 30.0, 0.05)
        state = ingest.state()
        assert state.held == 0 and state.messages == 3 and store.attempts >= 6
        stored = store.store.all_readings()
        assert [r.reading_id for r in stored] == [str(now - 1000 + i) for i in range(3)]
    finally:
        publisher.loop_stop()
        ingest.stop()
        store.store.close()
