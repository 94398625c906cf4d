"""MQTT ingress end to end: a real Mosquitto (the project's own config) and a real daemon.

In order, as an operator would meet them: the talk's readings published over MQTT are stored
once and learned from; rejected items are answered; the broker goes away (the HTTP edge
keeps working, status says so) and comes back; the broker is restarted mid-stream and the
collectors are SIGKILLed mid-batch, and every reading a gateway published is stored once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from players.demo import last_midnight_ms
from players.gateway import HttpClient
from players.simulator import Savanna
from tests.e2e_support import (
    BACKENDS,
    TOKEN,
    RunningDaemon,
    running_daemon,
    storage_section,
    wait_for,
)
from tests.mqtt_support import NEEDS_BROKER, Broker, running_broker

pytestmark = [pytest.mark.e2e, NEEDS_BROKER]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with running_broker(tmp_path_factory.mktemp("broker")) as started:
        yield started


@pytest.fixture(scope="module", params=BACKENDS)
def daemon(request: pytest.FixtureRequest, broker: Broker,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    sections: dict[str, dict[str, Any]] = {
        "mqtt": {"url": broker.url, "reconnect_max_s": 1.0}, "predict": {"deadline_ms": 5000},
        **storage_section(request.param)}
    with running_daemon(tmp_path_factory.mktemp("mqtt"), sections, min_outcomes=100) as d:
        wait_for("both collectors connected to the broker", lambda: _connected(d) == 2, 30.0)
        yield d


class Gateway:
    """A field gateway publishing over MQTT with QoS 1 and a persistent session (paho
    resends what the broker has not acknowledged after a reconnect)."""

    def __init__(self, broker: Broker, name: str) -> None:
        self.name = name
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(1, 2)
        self.messages: list[tuple[str, Any]] = []
        self.acked: set[int] = set()  # message ids the broker acknowledged (PUBACK)
        self.client.on_publish = lambda c, u, mid, reason, p: self.acked.add(mid)
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, json.loads(m.payload)))
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", broker.port, clean_start=False, properties=properties)
        self.client.loop_start()

    def publish(self, payload: bytes, topic: str | None = None, timeout_s: float = 60.0,
                properties: Properties | None = None) -> bool:
        """Publish with QoS 1; True once the broker acknowledged it."""
        info = self.client.publish(topic or f"rml/readings/{self.name}", payload, qos=1,
                                   properties=properties)
        # While the broker is away paho keeps the message and sends it again on reconnect:
        # wait for the broker's acknowledgement, not for the first attempt.
        deadline = time.monotonic() + timeout_s
        while info.mid not in self.acked and time.monotonic() < deadline:
            time.sleep(0.005)
        return info.mid in self.acked

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _connected(daemon: RunningDaemon) -> int:
    return int(daemon.status()["mqtt"]["connected"])


def _count(daemon: RunningDaemon, sensor: str) -> int:
    with daemon.stores() as stores:
        return sum(r.sensor_id == sensor for r in stores.facts.all_readings())


def talk(sensor: int, i: int, now_ms: int, **changes: Any) -> dict[str, Any]:
    return {"sensorId": sensor, "locationId": 1 + i % 10, "timestamp": now_ms - 600_000 + i,
            "animalsLowerBound": 2.5 + i % 3, "animalsUpperBound": 8.0 + i % 5,
            "percentZebras": 0.25, **changes}


def test_the_talks_readings_over_mqtt_are_stored_once_and_learned_from(
        broker: Broker, daemon: RunningDaemon) -> None:
    savanna = Savanna(seed=9, n_locations=10, hours=48, end_ms=last_midnight_ms())
    traffic = savanna.traffic()
    malformed = {index for index, _ in traffic.malformed}
    sensors: dict[str, int] = {}
    items = []
    for index, item in enumerate(traffic.items):
        if index not in malformed:
            items.append({"sensorId": sensors.setdefault(item["sensor_id"], 100 + len(sensors)),
                          "locationId": item["location_id"], "timestamp": item["timestamp"],
                          "animalsLowerBound": float(item["animals_lower"]),
                          "animalsUpperBound": float(item["animals_upper"]) + 0.5,
                          "percentZebras": item["percent_zebras"]})
    gateway = Gateway(broker, "savanna-gw")
    try:
        # Batches in JSON, batches in msgpack, and single readings, as gateways send them.
        for start in range(0, len(items) - 20, 500):
            chunk = items[start:start + 500]
            payload = (json.dumps({"readings": chunk}).encode() if start % 1000 == 0
                       else msgpack.packb(chunk))
            assert gateway.publish(payload)
        for item in items[-20:]:
            assert gateway.publish(json.dumps(item).encode())
        outcomes = [{"locationId": o["location_id"], "outcomeId": i, "timestamp": o["timestamp"],
                     "label": o["label"]} for i, o in enumerate(savanna.outcome_items())]
        assert gateway.publish(json.dumps({"outcomes": outcomes}).encode(),
                               "rml/outcomes/savanna-gw")
    finally:
        gateway.close()
    unique = {(i["sensorId"], i["timestamp"]) for i in items}

    def champion() -> Any:
        record = daemon.champion()
        facts = json.loads(record.lineage)["facts"] if record else {}
        done = facts.get("readings") == len(unique) and facts.get("outcomes") == len(outcomes)
        return record if done else None

    record = wait_for("a champion learned from readings sent over MQTT", champion, 120.0, 0.2)
    assert dict(record.metrics)["roc_auc"] > 0.6
    with daemon.stores() as stores:
        stored = [r for r in stores.facts.all_readings() if int(r.sensor_id) >= 100]
    assert len(stored) == len(unique) == len({r.key for r in stored})  # resent: stored once
    client = HttpClient("127.0.0.1", daemon.settings.predict.port, TOKEN)
    try:
        answer = wait_for("a prediction", lambda: (
            (r := client.post("/model", {"location_id": 1}))[0] == 200 and r[1]), 30.0)
    finally:
        client.close()
    assert answer["model_version"] == record.version


def test_rejected_items_are_answered_by_index_and_name(broker: Broker,
                                                        daemon: RunningDaemon) -> None:
    gateway = Gateway(broker, "gw-bad")
    gateway.client.subscribe([("rml/rejected/gw-bad", 1), ("replies/gw-bad", 1)])
    now = int(time.time() * 1000)
    try:
        batch = [talk(7, 0, now), talk(7, 1, now, animalsLowerBound=99.0), talk(7, 2, now)]
        assert gateway.publish(json.dumps({"readings": batch}).encode())
        topic, answer = wait_for("the rejection", lambda: next(iter(gateway.messages), None),
                                 30.0)
        assert topic == "rml/rejected/gw-bad"
        assert (answer["accepted"], answer["rejected"][0]["index"],
                answer["rejected"][0]["error"]) == (2, 1, "bounds_inverted")
        # With an MQTT 5 response topic every message is answered there, correlated.
        asked = Properties(PacketTypes.PUBLISH)
        asked.ResponseTopic = "replies/gw-bad"
        asked.CorrelationData = b"batch-42"
        assert gateway.publish(b"{not json", properties=asked)
        topic, answer = wait_for("the answer", lambda: gateway.messages[1:2] and
                                 gateway.messages[1], 30.0)
        assert topic == "replies/gw-bad" and answer["error"].startswith("malformed_json")
    finally:
        gateway.close()
    assert _count(daemon, "7") == 2


def test_without_the_broker_http_ingest_goes_on_and_status_says_so(
        broker: Broker, daemon: RunningDaemon) -> None:
    broker.stop()
    try:
        wait_for("status showing the collectors disconnected", lambda: _connected(daemon) == 0,
                 30.0, 0.1)
        mqtt_status = daemon.status()["mqtt"]["collectors"]
        assert all(state["error"] for state in mqtt_status.values())
        client = HttpClient("127.0.0.1", daemon.settings.ingest.port, TOKEN)
        try:
            now = int(time.time() * 1000)
            status, answer = client.post("/readings", {"readings": [talk(8, 0, now)]})
        finally:
            client.close()
        assert status == 200 and answer["accepted"] == 1
    finally:
        broker.start()
    wait_for("both collectors connected again", lambda: _connected(daemon) == 2, 30.0, 0.1)


def test_broker_restart_and_collectors_killed_mid_batch_lose_and_double_nothing(
        broker: Broker, daemon: RunningDaemon) -> None:
    now = int(time.time() * 1000)
    batches = [[talk(9, b * 200 + i, now) for i in range(200)] for b in range(60)]
    published: list[int] = []
    failed: list[int] = []
    gateway = Gateway(broker, "gw-chaos")

    def publish_all() -> None:
        for index, batch in enumerate(batches):
            payload = json.dumps({"readings": batch}).encode()
            (published if gateway.publish(payload, timeout_s=90.0) else failed).append(index)
            time.sleep(0.01)

    sender = threading.Thread(target=publish_all)
    sender.start()
    try:
        wait_for("a third of the batches published", lambda: len(published) >= 20, 60.0, 0.01)
        broker.restart()  # mid-stream: sessions and queues are saved and restored
        wait_for("two thirds published", lambda: len(published) >= 40, 90.0, 0.01)
        for actor in daemon.status()["actors"]:
            if actor["role"] == "collector" and actor["state"] == "running":
                os.kill(actor["pid"], signal.SIGKILL)  # mid-batch: its session keeps the rest
        sender.join(180.0)
    finally:
        sender.join(180.0)
        gateway.close()
    assert not failed and len(published) == len(batches)
    expected = {f"{item['timestamp']}" for batch in batches for item in batch}

    def all_stored() -> bool:
        with daemon.stores() as stores:
            ids = [r.reading_id for r in stores.facts.all_readings() if r.sensor_id == "9"]
        return len(ids) == len(expected)

    wait_for("every published reading stored", all_stored, 120.0, 0.2)
    with daemon.stores() as stores:
        ids = [r.reading_id for r in stores.facts.all_readings() if r.sensor_id == "9"]
    assert sorted(ids) == sorted(expected)  # each once
    wait_for("both collectors back and connected", lambda: _connected(daemon) == 2, 30.0, 0.1)
    # The broker kept every collector's session over its restarts (persistence as shipped):
    # only a client's very first connection found none.
    fresh: dict[str, int] = {}
    for line in (daemon.settings.log_dir / "rml.log").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "mqtt_connected" and event.get("session_present") is False:
            fresh[event["client"]] = fresh.get(event["client"], 0) + 1
    assert fresh and all(n == 1 for n in fresh.values()), fresh
