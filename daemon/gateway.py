"""HTTP clients that play field gateways and services (the demo, tests and benches use them).

A client, not a server: ``http.client`` with keep-alive, reconnecting when a
collector or predictor it was talking to is killed. A batch whose answer was
lost is sent again; the store reports what it already had as duplicates, so
nothing is lost and nothing is stored twice.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = ["HttpClient", "IngestTally", "send_items"]


class HttpClient:
    """One keep-alive connection to ``host:port`` with a bearer token."""

    def __init__(self, host: str, port: int, token: str, timeout_s: float = 30.0) -> None:
        self.host, self.port, self.token, self.timeout_s = host, port, token, timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: bytes = b"",
                content_type: str = "application/json", retries: int = 20,
                auth: bool = True) -> tuple[int, dict[str, str], bytes]:
        """Send once; on a broken connection reconnect and send again (bounded)."""
        headers = {"Content-Type": content_type}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        last: Exception | None = None
        for attempt in range(retries + 1):
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self.host, self.port,
                                                            timeout=self.timeout_s)
                self._conn.request(method, path, body=body or None, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
                answer_headers = {k.lower(): v for k, v in response.getheaders()}
                if response.status == 503 and attempt < retries:
                    # Overloaded or restarting: back off as told, then try again.
                    time.sleep(min(float(answer_headers.get("retry-after", "0.2")), 1.0))
                    continue
                if answer_headers.get("connection", "").lower() == "close":
                    self.close()
                return response.status, answer_headers, data
            except (OSError, http.client.HTTPException) as exc:
                last = exc
                self.close()
                time.sleep(min(0.02 * (attempt + 1), 0.5))
        raise ConnectionError(f"{self.host}:{self.port}{path}: {last}")

    def post(self, path: str, payload: Mapping[str, Any], fmt: str = "json",
             retries: int = 20) -> tuple[int, Any]:
        """POST ``payload`` as JSON or msgpack; the answer decoded the same way."""
        if fmt == "msgpack":
            status, headers, data = self.request("POST", path, msgpack.packb(payload),
                                                 "application/msgpack", retries)
        else:
            status, headers, data = self.request("POST", path, json.dumps(payload).encode(),
                                                 "application/json", retries)
        if headers.get("content-type", "").startswith("application/msgpack"):
            return status, msgpack.unpackb(data)
        return status, json.loads(data) if data else None


@dataclass
class IngestTally:
    """What the collectors answered for a stream of batches."""

    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    failed_batches: int = 0

    def add(self, answer: Mapping[str, Any]) -> None:
        self.accepted += int(answer["accepted"])
        self.duplicates += int(answer["duplicates"])
        for item in answer["rejected"]:
            self.rejected[item["error"]] += 1
        self.batches += 1


def send_items(client: HttpClient, kind: str, items: Iterable[dict[str, Any]],
               batch_size: int = 1000, fmt: str = "json",
               tally: IngestTally | None = None) -> IngestTally:
    """POST ``items`` to ``/readings`` or ``/outcomes`` in batches; tally the answers."""
    tally = tally if tally is not None else IngestTally()
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        status, answer = client.post(f"/{kind}", {kind: batch}, fmt)
        if status == 200:
            tally.add(answer)
        else:
            tally.failed_batches += 1

    for item in items:
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
            batch = []
    if batch:
        flush()
    return tally


#: The talk's names for a reading's fields (``messages._wire_fields.READING_ALIASES``).
_TALK_NAMES = {"sensor_id": "sensorId", "location_id": "locationId",
               "reading_id": "readingId", "animals_lower": "animalsLowerBound",
               "animals_upper": "animalsUpperBound", "percent_zebras": "percentZebras"}


def talk_item(item: dict[str, Any]) -> dict[str, Any]:
    """A reading item as a gateway written from the talk sends it: camelCase names and
    real-valued bounds (other keys and values, even malformed ones, kept as they are)."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        if key in ("animals_lower", "animals_upper") and type(value) is int:
            value = float(value)
        out[_TALK_NAMES.get(key, key)] = value
    return out


def publish_items(host: str, port: int, gateway: str, kind: str,
                  items: Iterable[dict[str, Any]], batch_size: int = 1000,
                  timeout_s: float = 120.0) -> IngestTally:
    """Publish ``items`` over MQTT (QoS 1, msgpack batches on ``rml/<kind>/<gateway>``), each
    message asking for its answer on a response topic (MQTT 5), and tally the answers: the
    collectors answer once a message's items are committed."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    tally = IngestTally()
    answers: list[dict[str, Any]] = []
    done = threading.Event()
    expected = [0]
    lock = threading.Lock()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        with lock:
            answers.append(json.loads(message.payload))
            if len(answers) >= expected[0]:
                done.set()

    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{gateway}-{kind}",
                         protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(host, port)
    client.loop_start()
    replies = f"rml/answers/{gateway}"
    try:
        client.subscribe(replies, qos=1)
        subscribed.wait(10.0)  # the answers' subscription is in place before any question
        batch: list[dict[str, Any]] = []
        chunks = []
        for item in items:
            batch.append(item)
            if len(batch) >= batch_size:
                chunks.append(batch)
                batch = []
        if batch:
            chunks.append(batch)
        expected[0] = len(chunks)
        for chunk in chunks:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = replies
            properties.ContentType = "application/msgpack"
            client.publish(f"rml/{kind}/{gateway}", msgpack.packb({kind: chunk}), qos=1,
                           properties=properties)
        if chunks and not done.wait(timeout_s):
            tally.failed_batches = len(chunks) - len(answers)
    finally:
        client.disconnect()
        client.loop_stop()
    for answer in answers:
        if "error" in answer:
            tally.failed_batches += 1
        else:
            tally.add(answer)
    return tally
